"""scikit-learn's promises, kept by the estimators whose input is not a 2-D array.

``check_estimator`` (tests/test_estimator_checks.py) runs only on 2-D input.
The image steps and the pipeline take lists of images or records, so the same
ideas are checked here on such lists: clone, the get/set_params round trip,
``__init__`` that only stores, inputs never modified, pickling, fitted-state
errors, ``n_jobs`` invariance and ``random_state`` reproducibility. The
segmenter used alone on a plain matrix is checked as scikit-learn's clusterers
are used: ``GridSearchCV`` with ``scoring="adjusted_rand_score"`` and without
``scoring``, ``predict``, ``set_output``.
"""

import inspect
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn import config_context
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.utils import get_tags
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from sklearn_clasp import (
    AdaptiveSpectralSegmenter,
    CosineAffinity,
    CRFRefiner,
    HandcraftedPatchEmbedder,
    PatchGrid,
    make_clasp_pipeline,
)
from sklearn_clasp.datasets import make_planted_partition, make_shapes_image
from sklearn_clasp.pipeline import clasp_one

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _one_openmp_thread():
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


@pytest.fixture(scope="module")
def images():
    out = [make_shapes_image(h, w, n_shapes=n, noise=4.0, random_state=n)[0]
           for n, (h, w) in enumerate([(84, 98), (98, 84), (70, 112)], start=1)]
    out[2] = out[2][:, :, 0]  # grayscale too
    return out


def _dino(**kw):
    from sklearn_clasp.embedding import DinoPatchEmbedder

    return DinoPatchEmbedder("dinov2_vits14", weights="random", short_side=None,
                             download=False, random_state=0, **kw)


def _quiet_fit(est, X=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights
        return est.fit(X)


@pytest.fixture(scope="module")
def embedded(images):
    return HandcraftedPatchEmbedder(short_side=None).transform(images)


@pytest.fixture(scope="module")
def with_affinity(embedded):
    return CosineAffinity().transform(embedded)


@pytest.fixture(scope="module")
def segmented(with_affinity):
    return AdaptiveSpectralSegmenter(random_state=0).transform(with_affinity)


# name -> (estimator factory, input fixture name, method that produces the output)
CASES = {
    "HandcraftedPatchEmbedder": (lambda: HandcraftedPatchEmbedder(short_side=None),
                                 "images", "transform"),
    "DinoPatchEmbedder": (_dino, "images", "transform"),
    "CosineAffinity": (CosineAffinity, "embedded", "transform"),
    "AdaptiveSpectralSegmenter": (lambda: AdaptiveSpectralSegmenter(random_state=0),
                                  "with_affinity", "transform"),
    "CRFRefiner": (CRFRefiner, "segmented", "transform"),
    "pipeline-handcrafted": (lambda: make_clasp_pipeline("handcrafted", short_side=None,
                                                         random_state=0), "images", "predict"),
    "pipeline-dinov2": (lambda: make_clasp_pipeline("dinov2", weights="random",
                                                    model="dinov2_vits14", short_side=None,
                                                    download=False, random_state=0),
                        "images", "predict"),
}


def _output(est, method, X):
    out = getattr(est, method)(X)
    return [r.features if isinstance(r, PatchGrid) and r.labels is None and r.affinity is None
            else r.affinity if isinstance(r, PatchGrid) and r.labels is None
            else r.labels if isinstance(r, PatchGrid) else r for r in out]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _fitted(est, X):
    return _quiet_fit(est, X)


def _snapshot(X):
    """Copies of every array an input holds (images, or the records' fields)."""
    out = []
    for item in X:
        if isinstance(item, PatchGrid):
            out.append({k: np.array(getattr(item, k)) for k in
                        ("image", "features", "affinity", "labels", "proba")
                        if getattr(item, k) is not None})
        else:
            out.append(np.array(item))
    return out


@pytest.fixture(params=list(CASES))
def case(request):
    make, data, method = CASES[request.param]
    return request.param, make, request.getfixturevalue(data), method


def test_clone_and_params_round_trip(case):
    name, make, X, method = case
    est = make()
    twin = clone(est)
    assert twin is not est and type(twin) is type(est)
    params = est.get_params(deep=False)
    for key, value in twin.get_params(deep=False).items():
        if key == "steps":
            assert [n for n, _ in value] == [n for n, _ in params["steps"]]
        else:
            assert value is params[key] or value == params[key], key
    # set_params(**get_params()) changes nothing
    est.set_params(**params)
    assert est.get_params(deep=False) == params
    simple = {k: v for k, v in est.get_params(deep=True).items()
              if "__" in k and not hasattr(v, "get_params")}
    est.set_params(**simple)
    assert {k: est.get_params(deep=True)[k] for k in simple} == simple
    # a clone of a fitted estimator is not fitted (unless it needs no fit)
    fitted = clone(_fitted(make(), X))
    if get_tags(fitted).requires_fit:
        with pytest.raises(NotFittedError):
            check_is_fitted(fitted)


def test_init_only_stores_its_parameters(case):
    name, make, X, method = case
    est = make()
    if name.startswith("pipeline"):
        return  # scikit-learn's Pipeline, with CLASP steps checked one by one here
    signature = inspect.signature(type(est).__init__)
    names = [p for p in signature.parameters if p != "self"]
    assert set(vars(est)) == set(names)
    assert set(est.get_params(deep=False)) == set(names)


def test_inputs_are_never_modified(case):
    name, make, X, method = case
    before = _snapshot(X)
    est = _fitted(make(), X)
    getattr(est, method)(X)
    if not name.startswith("pipeline"):
        _quiet_fit(clone(est), X)
    after = _snapshot(X)
    for a, b in zip(before, after):
        if isinstance(a, dict):
            for key in a:
                a_val, b_val = a[key], b[key]
                if hasattr(a_val, "toarray"):
                    a_val, b_val = a_val.toarray(), b_val.toarray()
                np.testing.assert_array_equal(a_val, b_val, err_msg=f"{name}: {key}")
        else:
            np.testing.assert_array_equal(a, b)


def test_read_only_images_are_accepted(images):
    frozen = [np.array(im) for im in images]
    for im in frozen:
        im.setflags(write=False)
    pipe = make_clasp_pipeline("handcrafted", short_side=None, random_state=0)
    _same(pipe.predict(frozen), pipe.predict(images))


def test_pickling_keeps_the_results(case):
    name, make, X, method = case
    est = _fitted(make(), X)
    expected = _output(est, method, X)
    twin = pickle.loads(pickle.dumps(est))
    _same(_output(twin, method, X), expected)


def test_fitted_state(case):
    name, make, X, method = case
    est = make()
    if name in ("CosineAffinity", "AdaptiveSpectralSegmenter"):
        # a fit is needed on a plain matrix, none on records (nothing to learn)
        with pytest.raises(NotFittedError):
            check_is_fitted(est)
        _same(_output(est, method, X), _output(_fitted(clone(est), X), method, X))
        check_is_fitted(_fitted(clone(est), X))
    elif get_tags(est).requires_fit:
        with pytest.raises(NotFittedError):
            check_is_fitted(est)
        with pytest.raises(NotFittedError):
            getattr(est, method)(X)
        _fitted(est, X)
        check_is_fitted(est)
    else:
        # needs no fit: check_is_fitted agrees and the output is that of a fitted one
        check_is_fitted(est)
        _same(_output(est, method, X), _output(_fitted(clone(est), X), method, X))


@pytest.mark.slow
def test_results_do_not_depend_on_n_jobs(images, segmented):
    a = HandcraftedPatchEmbedder(short_side=None, n_jobs=1).transform(images)
    b = HandcraftedPatchEmbedder(short_side=None, n_jobs=2).transform(images)
    _same([r.features for r in a], [r.features for r in b])
    _same(CRFRefiner(n_jobs=1).transform(segmented), CRFRefiner(n_jobs=2).transform(segmented))
    one = make_clasp_pipeline("handcrafted", short_side=None, random_state=0, n_jobs=1)
    two = clone(one).set_params(embed__n_jobs=2, refine__n_jobs=2)
    _same(one.predict(images), two.predict(images))


def test_random_state_makes_results_repeatable(images, with_affinity):
    for seed in (0, 7):
        a = AdaptiveSpectralSegmenter(random_state=seed).predict(with_affinity)
        b = AdaptiveSpectralSegmenter(random_state=seed).predict(with_affinity)
        _same(a, b)
        p = make_clasp_pipeline("handcrafted", short_side=None, random_state=seed)
        _same(p.predict(images), clone(p).predict(images))
    d1 = _quiet_fit(_dino()).transform(images[:1])[0].features
    d2 = _quiet_fit(_dino()).transform(images[:1])[0].features
    d3 = _quiet_fit(_dino().set_params(random_state=1)).transform(images[:1])[0].features
    np.testing.assert_array_equal(d1, d2)
    assert not np.allclose(d1, d3)


def test_image_inputs_are_tagged_as_not_2d(case):
    name, make, X, method = case
    assert get_tags(make()).input_tags.two_d_array is (name in ("CosineAffinity",
                                                                "AdaptiveSpectralSegmenter"))


def test_set_output_on_image_steps(case, images):
    name, make, X, method = case
    est = make()
    assert est.set_output(transform="default") is est
    if name in ("CosineAffinity", "AdaptiveSpectralSegmenter"):
        return  # a table on plain matrices: see test_segmenter_on_a_matrix_set_output
    with pytest.raises(ValueError, match="not a feature table"):
        make().set_output(transform="pandas")


def test_table_output_config_is_refused_for_records(with_affinity, embedded):
    with config_context(transform_output="pandas"):
        for est, X in ((AdaptiveSpectralSegmenter(random_state=0), with_affinity),
                       (CosineAffinity(), embedded)):
            with pytest.raises(ValueError, match="returns PatchGrid records"):
                est.transform(X)
            with pytest.raises(ValueError, match="returns PatchGrid records"):
                est.fit_transform(X)
        # predict is not a transform: its output is never wrapped
        labels = AdaptiveSpectralSegmenter(random_state=0).predict(with_affinity)
    assert len(labels) == len(with_affinity)


def test_fit_on_records_leaves_no_attributes_and_forgets_a_matrix_fit(with_affinity):
    X, _ = make_planted_partition(3, n_samples=60, random_state=0)
    seg = AdaptiveSpectralSegmenter(random_state=0).fit(X)
    assert isinstance(seg.n_clusters_, int) and seg.n_clusters_ == 3
    seg.fit(with_affinity)
    assert not hasattr(seg, "labels_") and not hasattr(seg, "n_clusters_")
    check_is_fitted(seg)  # a pipeline ending with it counts as fitted
    with pytest.raises(ValueError, match="fitted on image records"):
        seg.predict(X)
    labels = seg.fit_predict(with_affinity)
    assert [lab.shape for lab in labels] == [r.grid_shape for r in with_affinity]
    assert not hasattr(seg, "labels_")
    affinity = CosineAffinity().fit(X)
    affinity.fit(list(with_affinity))
    assert not hasattr(affinity, "X_fit_")
    with pytest.raises(ValueError, match="fitted on image records"):
        affinity.transform(X)


def test_clasp_one_returns_the_diagnostics_with_the_mask(images):
    pipe = make_clasp_pipeline("handcrafted", short_side=None, random_state=0)
    for image, mask in zip(images, pipe.predict(images)):
        got, record = clasp_one(pipe, image)
        np.testing.assert_array_equal(got, mask)
        for key in ("n_clusters", "eigengap_k", "eigenvalues", "silhouette_scores",
                    "stage_timings"):
            assert key in record.info


# --------------------------------------------------------------------------
# the segmenter alone, on a plain matrix, as scikit-learn's clusterers are used
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def blobs():
    return make_planted_partition(5, n_samples=300, noise=0.8, random_state=0)


def test_segmenter_grid_search_with_ari(blobs):
    X, y = blobs
    search = GridSearchCV(AdaptiveSpectralSegmenter(random_state=0), {"k_max": [3, 5, 8]},
                          scoring="adjusted_rand_score", cv=KFold(3, shuffle=True,
                                                                  random_state=0))
    search.fit(X, y)
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores))
    assert search.best_params_["k_max"] >= 5 and search.best_score_ > 0.9
    assert scores[0] < search.best_score_  # k_max=3 cannot find five groups
    labels = search.best_estimator_.predict(X)
    assert adjusted_rand_score(y, labels) > 0.9


def test_segmenter_grid_search_without_scoring(blobs):
    X, y = blobs
    cv = KFold(3, shuffle=True, random_state=0)
    # with y, score is the adjusted Rand index against it: the same as above
    with_y = GridSearchCV(AdaptiveSpectralSegmenter(random_state=0), {"k_max": [3, 5, 8]},
                          cv=cv).fit(X, y)
    ari = GridSearchCV(AdaptiveSpectralSegmenter(random_state=0), {"k_max": [3, 5, 8]},
                       scoring="adjusted_rand_score", cv=cv).fit(X, y)
    np.testing.assert_allclose(with_y.cv_results_["mean_test_score"],
                               ari.cv_results_["mean_test_score"])
    # without y there is no default score (none measured beats the silhouette)
    with pytest.raises(ValueError, match="needs the true labels y"):
        AdaptiveSpectralSegmenter(random_state=0).fit(X).score(X)


def test_segmenter_predict_and_attributes_on_a_matrix(blobs):
    X, y = blobs
    seg = AdaptiveSpectralSegmenter(random_state=0).fit(X)
    np.testing.assert_array_equal(seg.predict(X), seg.labels_)
    assert type(seg.n_clusters_) is int and type(seg.eigengap_k_) is int
    assert isinstance(seg.silhouette_scores_, dict)
    assert seg.cluster_centers_.shape == (seg.n_clusters_, seg.n_clusters_)
    X_new, y_new = make_planted_partition(5, n_samples=100, noise=0.8, random_state=0)
    assert adjusted_rand_score(y_new, seg.predict(X_new)) > 0.9
    assert seg.score(X, y) == adjusted_rand_score(y, seg.labels_)
    with pytest.raises(NotFittedError):
        AdaptiveSpectralSegmenter().predict(X)


def test_segmenter_on_a_matrix_set_output(blobs):
    pd = pytest.importorskip("pandas")
    X, _ = blobs
    seg = AdaptiveSpectralSegmenter(random_state=0).set_output(transform="pandas")
    emb = seg.fit_transform(X)
    assert isinstance(emb, pd.DataFrame)
    assert list(emb.columns) == list(seg.get_feature_names_out())
    assert list(emb.columns) == [f"adaptivespectralsegmenter{i}"
                                 for i in range(seg.n_clusters_)]
    aff = CosineAffinity().set_output(transform="pandas").fit(X[:50])
    table = aff.transform(X[:5])
    assert isinstance(table, pd.DataFrame) and table.shape == (5, 50)
    with config_context(transform_output="pandas"):
        assert isinstance(AdaptiveSpectralSegmenter(random_state=0).fit(X).transform(X),
                          pd.DataFrame)


# --------------------------------------------------------------------------
# the three uses on real labelled images, when ../shared/data is there
# --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "camvid" / "val").is_dir(), reason="no CamVid data")
def test_the_three_uses_on_camvid():
    from PIL import Image

    from sklearn_clasp.io import load_image
    from sklearn_clasp.metrics import make_segmentation_scorer, segmentation_scores

    names = sorted((SHARED / "camvid" / "val").glob("*.png"))[:3]
    images = [load_image(p) for p in names]
    truths = []
    for p in names:
        with Image.open(SHARED / "camvid" / "valannot" / p.name) as im:
            truth = np.asarray(im).astype(np.int64)
        truths.append(np.where(truth == 11, -1, truth))
    pipe = make_clasp_pipeline("handcrafted", short_side=224, random_state=0)
    # composition: one mask per image, at its size, better than one segment
    masks = pipe.predict(images)
    for truth, mask in zip(truths, masks):
        assert mask.shape == truth.shape
        assert segmentation_scores(truth, mask)["miou"] > segmentation_scores(
            truth, np.zeros_like(mask))["miou"]
    # the K range searched, one pass per candidate
    search = GridSearchCV(pipe, {"segment__k_max": [2, 8]}, cv=KFold(3),
                          scoring=make_segmentation_scorer("miou"), error_score="raise")
    search.fit(images, truths)
    assert search.best_params_["segment__k_max"] == 8
    # each component alone: the segmenter on one image's patch features
    rec = pipe[0].transform(images[:1])[0]
    seg = AdaptiveSpectralSegmenter(random_state=0).fit(rec.feature_matrix)
    _, record = clasp_one(pipe, images[0])
    np.testing.assert_array_equal(seg.labels_, record.labels.ravel())
