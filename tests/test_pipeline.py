"""The composed CLASP pipeline: shapes, exact results, model selection, params."""

import numpy as np
import pytest
from sklearn import config_context
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.utils import get_tags
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from sklearn_clasp import (
    PAPER_SETTINGS,
    AdaptiveSpectralSegmenter,
    CosineAffinity,
    CRFRefiner,
    HandcraftedPatchEmbedder,
    PatchGrid,
    make_clasp_pipeline,
)
from sklearn_clasp.datasets import make_planted_partition, make_shapes_image
from sklearn_clasp.metrics import (
    miou_scorer,
    pixel_accuracy_scorer,
    segmentation_scores,
    silhouette_scorer,
)
from sklearn_clasp.pipeline import STEP_NAMES, ClaspPipeline, clasp_one


@pytest.fixture(autouse=True)
def _one_openmp_thread():
    """k-means on a few dozen patches is 10-25x slower with OpenMP threads on a busy
    2-core machine (thread start-up dominates); one thread keeps this file fast."""
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def _small_pipeline(**kwargs):
    """The handcrafted pipeline at the images' own size (small grids, fast)."""
    kwargs.setdefault("random_state", 0)
    return make_clasp_pipeline("handcrafted", short_side=None, **kwargs)


@pytest.fixture(scope="module")
def shapes_data():
    """Four small synthetic images with ground truth (3 shapes + background)."""
    images, truths = [], []
    for seed, (h, w) in enumerate([(112, 140), (126, 126), (112, 154), (140, 112)]):
        image, truth = make_shapes_image(h, w, n_shapes=3, noise=5.0, random_state=seed)
        images.append(image)
        truths.append(truth)
    return images, truths


# --------------------------------------------------------------------------
# composition and output
# --------------------------------------------------------------------------
def test_hand_built_pipeline_returns_full_resolution_masks():
    sizes = [(112, 140), (100, 131), (150, 120)]  # 100 x 131: not multiples of 14
    images = [make_shapes_image(h, w, n_shapes=2, noise=3.0, random_state=i)[0]
              for i, (h, w) in enumerate(sizes)]
    images[2] = images[2][:, :, 0]  # a grayscale image too
    pipe = Pipeline([
        ("embed", HandcraftedPatchEmbedder()),
        ("affinity", CosineAffinity()),
        ("segment", AdaptiveSpectralSegmenter(random_state=0)),
        ("refine", CRFRefiner()),
    ])
    masks = pipe.fit_predict(images)
    assert isinstance(masks, list) and len(masks) == len(images)
    for mask, (h, w) in zip(masks, sizes):
        assert mask.shape == (h, w)
        assert np.issubdtype(mask.dtype, np.integer)
        assert mask.min() >= 0
    # the refined labels are patch-cluster ids of that image; each image's K is in
    # its record, not on the estimator
    records = pipe[:-1].transform(images)
    for mask, rec in zip(masks, records):
        assert mask.max() < rec.info["n_clusters"]
    assert not hasattr(pipe.named_steps["segment"], "n_clusters_")


def test_make_clasp_pipeline_steps_and_settings():
    pipe = make_clasp_pipeline("handcrafted", k_min=3, k_max=9, beta=0.25, refine="bilinear",
                               random_state=7, short_side=224, color_sigma=20.0)
    assert isinstance(pipe, ClaspPipeline) and isinstance(pipe, Pipeline)
    assert tuple(name for name, _ in pipe.steps) == STEP_NAMES
    embed, affinity, segment, refine = (pipe.named_steps[n] for n in STEP_NAMES)
    assert isinstance(embed, HandcraftedPatchEmbedder)
    assert (embed.short_side, embed.color_sigma) == (224, 20.0)
    assert isinstance(affinity, CosineAffinity)
    assert isinstance(segment, AdaptiveSpectralSegmenter)
    assert (segment.k_min, segment.k_max, segment.beta, segment.random_state) == (3, 9, 0.25, 7)
    # Package defaults, not the paper's K rule.
    assert segment.get_params()["eigengap_rule"] == AdaptiveSpectralSegmenter().eigengap_rule
    assert segment.eigengap_rule != PAPER_SETTINGS["eigengap_rule"]
    assert isinstance(refine, CRFRefiner) and refine.method == "bilinear"


def test_paper_settings_are_applied_to_the_segmenter():
    segment = make_clasp_pipeline("handcrafted", paper=True).named_steps["segment"]
    for key, value in PAPER_SETTINGS.items():
        assert getattr(segment, key) == value
    default = make_clasp_pipeline("handcrafted").named_steps["segment"]
    assert any(getattr(default, k) != v for k, v in PAPER_SETTINGS.items())


def test_embedder_instance_is_cloned():
    mine = HandcraftedPatchEmbedder(short_side=None, texture_weight=0.3)
    pipe = make_clasp_pipeline(mine)
    assert pipe.named_steps["embed"] is not mine
    assert pipe.named_steps["embed"].get_params() == mine.get_params()


def test_dinov2_pipeline_is_built_without_loading_weights():
    pipe = make_clasp_pipeline("dinov2", random_state=3, short_side=None, download=False)
    embed = pipe.named_steps["embed"]
    assert type(embed).__name__ == "DinoPatchEmbedder"
    assert (embed.random_state, embed.short_side, embed.download) == (3, None, False)
    assert not hasattr(embed, "model_")  # nothing loaded until fit
    params = clone(pipe).get_params(deep=True)
    assert params["embed__model"] == "dinov2_vits14_reg"
    # clasp_one refuses an unfitted embedder, naming the fix
    with pytest.raises(NotFittedError, match=r"pipeline\[0\]\.fit"):
        clasp_one(pipe, np.zeros((28, 28, 3), np.uint8))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"embedder": "dino"}, ValueError, "embedder"),
        ({"embedder": "handcrafted", "refine": "gaussian"}, ValueError, "refine"),
        ({"embedder": "handcrafted", "beta": -1}, ValueError, "beta"),
        ({"embedder": "handcrafted", "patch_sise": 14}, TypeError, "patch_sise"),
        ({"embedder": HandcraftedPatchEmbedder(), "short_side": 224}, TypeError,
         "set them on the HandcraftedPatchEmbedder instance"),
    ],
)
def test_make_clasp_pipeline_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_clasp_pipeline(**kwargs)


def test_k_bounds_are_checked_where_the_segmenter_checks_them(shapes_data):
    pipe = make_clasp_pipeline("handcrafted", k_min=5, k_max=3)  # parameters are only stored
    with pytest.raises(ValueError, match="k_min=5 is larger than k_max=3"):
        pipe.fit_predict(shapes_data[0][:1])


@pytest.mark.parametrize("step, name, value", [
    ("segment", "k_max", 65), ("segment", "n_init", 101),
    ("refine", "n_iter", 1001), ("refine", "n_jobs", 10**5), ("embed", "n_jobs", -10**5),
])
def test_work_parameters_of_the_estimators_are_bounded(shapes_data, step, name, value):
    """Each bound holds where sklearn validates: when the step is fitted, before any work."""
    from sklearn.utils._param_validation import InvalidParameterError

    pipe = make_clasp_pipeline("handcrafted").set_params(**{f"{step}__{name}": value})
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter .* must be"):
        pipe.fit_predict(shapes_data[0][:1])


# --------------------------------------------------------------------------
# exact results on constructed inputs
# --------------------------------------------------------------------------
@pytest.mark.parametrize("size, short_side", [((112, 140), None), ((224, 224), None),
                                              ((112, 126), 224)])
def test_shapes_image_is_segmented(size, short_side):
    image, truth = make_shapes_image(*size, n_shapes=3, noise=6.0, random_state=1)
    pipe = make_clasp_pipeline("handcrafted", short_side=short_side, random_state=0)
    mask, = pipe.fit_predict([image])
    scores = segmentation_scores(truth, mask)
    assert scores["miou"] > 0.9, scores
    assert scores["n_clusters"] == 4  # background + 3 shapes, after the CRF


@pytest.mark.parametrize("noise", [0.0, 3.0])
def test_constant_image_gives_one_segment(noise):
    rng = np.random.RandomState(0)
    image = np.clip(np.full((98, 126, 3), (70.0, 140.0, 90.0)) + noise * rng.randn(98, 126, 3),
                    0, 255).astype(np.uint8)
    pipe = _small_pipeline()
    mask, record = clasp_one(pipe, image)
    assert mask.shape == (98, 126)
    assert np.all(mask == 0)
    assert record.info["n_clusters"] == 1


@pytest.mark.parametrize("n_clusters", [3, 5])
def test_same_steps_recover_a_planted_partition_from_a_feature_matrix(n_clusters):
    X, y = make_planted_partition(n_clusters, n_samples=300, noise=0.5, random_state=0)
    pipe = make_pipeline(CosineAffinity(),
                         AdaptiveSpectralSegmenter(affinity="precomputed", random_state=0))
    labels = pipe.fit_predict(X)
    assert labels.shape == (300,)
    assert adjusted_rand_score(y, labels) == 1.0


def test_predict_after_fit_repeats_fit_predict(shapes_data):
    images, _ = shapes_data
    pipe = _small_pipeline()
    expected = pipe.fit_predict(images[:2])
    pipe.fit(images[2:])
    masks = pipe.predict(images[:2])  # transductive: segments these images afresh
    assert len(masks) == 2
    for got, want in zip(masks, expected):
        np.testing.assert_array_equal(got, want)


def test_no_stale_attributes_next_to_fresh_masks(shapes_data):
    images, _ = shapes_data
    pipe = _small_pipeline()
    pipe.fit(images[:2])
    mask, = pipe.predict(images[2:3])
    # the estimators keep nothing about images: the K chosen for this image is in
    # its record, and no attribute describes the images of an earlier call
    segment = pipe.named_steps["segment"]
    for name in ("labels_", "n_clusters_", "eigengap_k_", "silhouette_scores_"):
        assert not hasattr(segment, name)
    _, record = clasp_one(pipe, images[2])
    assert record.info["n_clusters"] == len(np.unique(record.labels))
    assert mask.max() < record.info["n_clusters"]


def test_fitted_state_of_the_training_free_and_the_dinov2_pipelines(shapes_data):
    images, _ = shapes_data
    fresh = make_clasp_pipeline("handcrafted", short_side=None, random_state=0)
    # nothing to learn: the tags say so, check_is_fitted agrees, and predict works
    assert get_tags(fresh).requires_fit is False
    check_is_fitted(fresh)
    np.testing.assert_array_equal(fresh.predict(images[:1])[0],
                                  clone(fresh).fit().predict(images[:1])[0])
    dino = make_clasp_pipeline("dinov2", weights="random", random_state=0, download=False)
    assert get_tags(dino).requires_fit is True
    with pytest.raises(NotFittedError):
        check_is_fitted(dino)
    with pytest.raises(NotFittedError, match=r"'embed' \(DinoPatchEmbedder\) needs fit"):
        dino.predict(images[:1])
    with pytest.warns(UserWarning, match="random weights"):
        dino.fit()  # loads the weights, reads no image
    check_is_fitted(dino)
    assert get_tags(fresh).input_tags.two_d_array is False


class CountingEmbedder(HandcraftedPatchEmbedder):
    """The handcrafted embedder, counting the images it embeds (class-wide)."""

    embedded = []

    def transform(self, X):
        type(self).embedded.append(len(X))
        return super().transform(X)


def test_a_search_segments_each_image_once_per_candidate(shapes_data):
    images, truths = shapes_data
    CountingEmbedder.embedded.clear()
    pipe = make_clasp_pipeline(CountingEmbedder(short_side=None), random_state=0)
    grid = {"segment__k_max": [2, 4, 15]}
    search = GridSearchCV(pipe, grid, scoring=miou_scorer, cv=KFold(2),
                          error_score="raise").fit(images, truths)
    # fit learns nothing and reads no image: 3 candidates x 4 images, each in the
    # fold that scores it; the refit reads none either
    assert sum(CountingEmbedder.embedded) == 3 * len(images)
    # without scoring=, the pipeline's own score (mean mIoU) ranks the same
    default = GridSearchCV(pipe, grid, cv=KFold(2)).fit(images, truths)
    np.testing.assert_allclose(default.cv_results_["mean_test_score"],
                               search.cv_results_["mean_test_score"])


def test_set_output(shapes_data):
    images, _ = shapes_data
    pipe = make_clasp_pipeline("handcrafted", short_side=None, random_state=0)
    with pytest.raises(ValueError, match="PatchGrid records, not a feature table"):
        clone(pipe).set_output(transform="pandas")
    # a global table output is not silently ignored: it raises, naming the fix ...
    with config_context(transform_output="pandas"):
        with pytest.raises(ValueError, match=r"set_output\(transform='default'\)"):
            pipe.predict(images[:1])
        # ... which works (and is kept by clone, as scikit-learn's clone does)
        assert pipe.set_output(transform="default") is pipe
        mask, = clone(pipe).predict(images[:1])
    np.testing.assert_array_equal(mask, make_clasp_pipeline(
        "handcrafted", short_side=None, random_state=0).predict(images[:1])[0])


def _cache_bytes(path):
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_memory_caches_features_once_whatever_the_later_settings(shapes_data, tmp_path):
    images, truths = shapes_data
    pipe = make_clasp_pipeline("handcrafted", short_side=None, random_state=0,
                               memory=str(tmp_path))
    assert pipe.named_steps["embed"].memory == str(tmp_path) and pipe.memory is None
    masks = pipe.predict(images)
    one = _cache_bytes(tmp_path)
    features = sum(r.features.nbytes for r in pipe[0].transform(images))
    assert features <= one < 1.3 * features  # the features, once, and little else
    records = pipe[0].transform(images)
    assert all(r.info["cached"] for r in records)
    GridSearchCV(pipe, {"segment__k_max": [3, 8, 15]}, scoring=miou_scorer,
                 cv=KFold(2)).fit(images, truths)
    assert _cache_bytes(tmp_path) == one  # other K: nothing added
    for got, want in zip(clone(pipe).predict(images), masks):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(TypeError, match="has no memory parameter"):
        make_clasp_pipeline(_NoMemoryEmbedder(), memory=str(tmp_path))


class _NoMemoryEmbedder(TransformerMixin, BaseEstimator):
    def fit(self, X=None, y=None):
        return self

    def transform(self, X):
        return HandcraftedPatchEmbedder().transform(X)


def test_segment_image_matches_fit_predict(shapes_data):
    images, _ = shapes_data
    pipe = _small_pipeline()
    expected, = clone(pipe).fit_predict([images[0]])
    mask, record = clasp_one(pipe, images[0])
    np.testing.assert_array_equal(mask, expected)
    assert isinstance(record, PatchGrid)
    assert record.labels.shape == record.grid_shape == (8, 10)
    assert record.info["n_clusters"] == int(record.labels.max()) + 1
    assert record.info["eigengap_k"] >= 1
    with pytest.raises(TypeError, match="CLASP Pipeline"):
        clasp_one(pipe.named_steps["segment"], images[0])


def test_each_step_passes_on_what_later_steps_need(shapes_data):
    images, _ = shapes_data
    records = _small_pipeline()[:-1].fit_transform(images)
    assert len(records) == len(images)
    for rec, image in zip(records, images):
        assert isinstance(rec, PatchGrid)
        np.testing.assert_array_equal(rec.image, image)
        h, w = rec.grid_shape
        assert rec.features.shape[:2] == (h, w) and rec.features.dtype == np.float32
        assert rec.affinity.shape == (h * w, h * w)
        assert rec.labels.shape == (h, w) and rec.labels.dtype == np.int64
        assert rec.info["n_clusters"] == int(rec.labels.max()) + 1
        assert rec.info["embedder"] == "handcrafted"


# --------------------------------------------------------------------------
# model selection
# --------------------------------------------------------------------------
def test_grid_search_with_miou_scorer_prefers_enough_segments(shapes_data):
    images, truths = shapes_data
    grid = {"segment__k_max": [2, 15], "segment__beta": [0.5], "refine__n_iter": [10, 20]}
    search = GridSearchCV(_small_pipeline(), grid, scoring=miou_scorer, cv=2,
                          error_score="raise")
    search.fit(images, truths)
    # four classes per image: at most two segments cannot score well
    assert search.best_params_["segment__k_max"] == 15
    assert search.best_params_["refine__n_iter"] in (10, 20)
    scores = search.cv_results_["mean_test_score"]
    assert scores.shape == (4,) and np.all(np.isfinite(scores))
    assert search.best_score_ > 0.85
    k2 = np.asarray(search.cv_results_["param_segment__k_max"]) == 2
    assert np.all(scores[k2] < 0.6)
    masks = search.best_estimator_.fit_predict(images[:1])
    assert masks[0].shape == images[0].shape[:2]


@pytest.mark.slow
def test_grid_search_with_several_scorers(shapes_data):
    images, truths = shapes_data
    grid = {"segment__k_max": [3, 15], "refine__n_iter": [20]}
    scoring = {"miou": miou_scorer, "accuracy": pixel_accuracy_scorer}
    search = GridSearchCV(_small_pipeline(), grid, scoring=scoring, refit="miou",
                          cv=KFold(2, shuffle=True, random_state=0), error_score="raise")
    search.fit(images, truths)
    assert search.best_params_ in [{"segment__k_max": k, "refine__n_iter": 20} for k in (3, 15)]
    for name in ("miou", "accuracy"):
        values = search.cv_results_[f"mean_test_{name}"]
        assert np.all(np.isfinite(values)) and np.all((values >= 0) & (values <= 1))
    # the refit follows "miou"
    best = int(np.argmax(search.cv_results_["mean_test_miou"]))
    assert search.best_index_ == best


@pytest.mark.slow
def test_grid_search_with_unsupervised_silhouette_scorer(shapes_data):
    images, _ = shapes_data
    search = GridSearchCV(_small_pipeline(), {"segment__k_max": [2, 4, 15]},
                          scoring=silhouette_scorer, cv=2, error_score="raise")
    search.fit(images)
    assert search.best_params_["segment__k_max"] in (2, 4, 15)
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores)) and np.all((scores >= -1) & (scores <= 1))


# --------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------
def _same_params(a, b):
    pa, pb = a.get_params(deep=False), b.get_params(deep=False)
    assert pa.keys() == pb.keys()
    for key in pa:
        if hasattr(pa[key], "get_params"):
            assert type(pa[key]) is type(pb[key])
        elif key != "steps":
            assert pa[key] == pb[key], key


def test_clone_get_params_set_params_round_trip():
    pipe = make_clasp_pipeline("handcrafted", k_max=9, random_state=0)
    for name, step in pipe.steps:
        twin = clone(step)
        assert twin is not step
        _same_params(twin, step)
        twin.set_params(**step.get_params(deep=False))
        _same_params(twin, step)
    params = pipe.get_params(deep=True)
    for key in ("embed__short_side", "affinity__clip_negative", "segment__k_max",
                "segment__beta", "refine__n_iter", "refine__method", "memory"):
        assert key in params
    assert params["segment__k_max"] == 9

    twin = clone(pipe)
    assert all(a is not b for (_, a), (_, b) in zip(twin.steps, pipe.steps))
    deep = twin.get_params(deep=True)
    assert {k: v for k, v in deep.items() if not hasattr(v, "get_params") and k != "steps"} == \
        {k: v for k, v in params.items() if not hasattr(v, "get_params") and k != "steps"}

    twin.set_params(segment__k_max=4, refine__method="nearest", embed__short_side=None)
    assert twin.named_steps["segment"].k_max == 4
    assert twin.named_steps["refine"].method == "nearest"
    assert twin.named_steps["embed"].short_side is None
    assert pipe.named_steps["segment"].k_max == 9  # the original is untouched
    with pytest.raises(ValueError, match="segment__k_maxx|Invalid parameter"):
        twin.set_params(segment__k_maxx=3)


@pytest.mark.parametrize("embedder, extra", [
    ("dinov2", {"embed__weights": "random", "embed__random_state": 5}),
    ("handcrafted", {"embed__memory": "feature-cache"}),
])
def test_settings_round_trip_with_the_embedders_own_random_state_and_memory(embedder, extra,
                                                                          tmp_path):
    """Every DINOv2 record has embed__random_state: fed back, it failed with "got multiple
    values for keyword argument 'random_state'" (and embed__memory with 'memory')."""
    from sklearn_clasp.pipeline import pipeline_from_settings, pipeline_settings

    extra = {k: str(tmp_path / v) if k.endswith("memory") else v for k, v in extra.items()}
    pipe = make_clasp_pipeline(embedder, random_state=0).set_params(**extra)
    settings = pipeline_settings(pipe)
    assert pipeline_settings(pipeline_from_settings(settings)) == settings
    rebuilt = pipeline_from_settings({**settings, **extra})  # memory is not a setting
    for key, value in extra.items():
        assert rebuilt.get_params()[key] == value
    if embedder == "dinov2":  # the embedder's own random_state wins over the pipeline-wide
        both = pipeline_from_settings({"embed": embedder, "random_state": 3,
                                       "embed__random_state": None})
        assert both.get_params()["segment__random_state"] == 3
        assert both.get_params()["embed__random_state"] is None
