"""Properties that hold for any input, checked on inputs drawn by hypothesis."""

import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sklearn_clasp import AdaptiveSpectralSegmenter, PatchGrid, cosine_affinity, make_clasp_pipeline
from sklearn_clasp.affinity import unit_rows
from sklearn_clasp.embedding import patch_grid_shape
from sklearn_clasp.pipeline import clasp_one

# No example database: the tests leave no files behind.
# derandomize: the same examples on every run, so that a failure is reproducible
# (set derandomize=False and raise max_examples to explore further)
SETTINGS = settings(max_examples=30, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def _check_labelling(labels, k):
    """Labels are exactly 0 .. k-1, each used."""
    assert labels.dtype == np.int64
    assert sorted(np.unique(labels).tolist()) == list(range(k))


@st.composite
def feature_problems(draw):
    """Features around a few random centres (distinct rows almost surely)."""
    n = draw(st.integers(3, 120))
    d = draw(st.integers(1, 24))
    k_min = draw(st.integers(1, 6))
    k_max = draw(st.integers(k_min, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.RandomState(seed)
    centres = rng.randn(draw(st.integers(1, 6)), d)
    X = centres[rng.randint(len(centres), size=n)] + draw(
        st.sampled_from([0.01, 0.3, 1.0])) * rng.randn(n, d)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return X.astype(dtype), k_min, k_max


@SETTINGS
@given(feature_problems(), st.integers(0, 1000))
def test_segmenter_returns_k_labels_within_the_bounds(problem, seed):
    X, k_min, k_max = problem
    n = len(X)
    k_min = min(k_min, n - 1)
    seg = AdaptiveSpectralSegmenter(k_min=k_min, k_max=k_max, random_state=seed)
    labels = seg.fit_predict(X)
    k = seg.n_clusters_
    assert labels.shape == (n,)
    _check_labelling(labels, k)
    # K = 1 only where k_min allows it; never more than k_max. (Fewer than
    # k_min only when the inputs have fewer distinct directions than that.)
    distinct = len(np.unique(np.round(unit_rows(X.astype(np.float64)), 5), axis=0))
    assert k <= min(k_max, n - 1)
    assert k >= min(k_min, distinct)
    if k == 1:
        assert k_min == 1 and seg.silhouette_scores_ == {}
    else:
        assert k in seg.silhouette_scores_
    np.testing.assert_allclose(seg.proba_.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(seg.proba_.argmax(axis=1), labels)
    again = AdaptiveSpectralSegmenter(k_min=k_min, k_max=k_max,
                                      random_state=seed).fit_predict(X)
    np.testing.assert_array_equal(labels, again)


@SETTINGS
@given(feature_problems(), feature_problems(), st.integers(0, 1000))
def test_an_images_segmentation_does_not_depend_on_the_other_images(a, b, seed):
    records = []
    for X, _, _ in (a, b):
        n = len(X)
        records.append(PatchGrid(image=np.zeros((14, 14 * n, 3), np.uint8), grid_shape=(1, n),
                                 features=X.reshape(1, n, -1)))
    pair = AdaptiveSpectralSegmenter(random_state=seed).fit_transform(records)
    alone = AdaptiveSpectralSegmenter(random_state=seed).fit_transform(records[1:])
    np.testing.assert_array_equal(pair[1].labels, alone[0].labels)
    assert pair[1].info["n_clusters"] == alone[0].info["n_clusters"]


@SETTINGS
@given(arrays(np.float64, st.tuples(st.integers(2, 40), st.integers(1, 6)),
              elements=st.floats(-1e3, 1e3, allow_nan=False, width=32)))
def test_segmenter_never_fails_on_finite_features(X):
    """Duplicates, zero rows, constant columns: always a valid labelling."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k-means on duplicate points warns
        seg = AdaptiveSpectralSegmenter(random_state=0).fit(X)
    n = len(X)
    _check_labelling(seg.labels_, seg.n_clusters_)
    assert 1 <= seg.n_clusters_ <= max(1, min(15, n - 1)) or (n == 2 and seg.n_clusters_ == 2)
    np.testing.assert_array_equal(seg.proba_.argmax(axis=1), seg.labels_)


@SETTINGS
@given(arrays(np.float32, st.tuples(st.integers(1, 30), st.integers(1, 5)),
              elements=st.floats(-10, 10, allow_nan=False, width=32)),
       st.booleans(), st.integers(1, 8))
def test_affinity_is_a_symmetric_similarity(X, clip, k):
    A = cosine_affinity(X, clip_negative=clip)
    assert A.dtype == np.float32
    np.testing.assert_array_equal(A, A.T)
    np.testing.assert_array_equal(np.diag(A), 1.0)
    assert A.min() >= (0.0 if clip else -1.0) and A.max() <= 1.0
    S = cosine_affinity(X, clip_negative=clip, n_neighbors=k)
    assert (S != S.T).nnz == 0
    # every entry kept is the dense similarity
    rows, cols = S.nonzero()
    np.testing.assert_array_equal(np.asarray(S[rows, cols]).ravel(), A[rows, cols])


@SETTINGS
@given(st.integers(1, 40_000), st.integers(1, 40_000), st.integers(1, 20_000),
       st.sampled_from([None, 448, 224, 14]))
def test_patch_grid_respects_the_budget(height, width, budget, short_side):
    rows, cols = patch_grid_shape(height, width, short_side=short_side, max_patches=budget)
    assert rows >= 1 and cols >= 1 and rows * cols <= budget


@st.composite
def small_images(draw):
    """Small images: a background and up to three flat rectangles, some noise."""
    h, w = draw(st.integers(1, 90)), draw(st.integers(1, 90))
    rng = np.random.RandomState(draw(st.integers(0, 2**31 - 1)))
    image = np.empty((h, w, 3), np.uint8)
    image[:] = rng.randint(0, 256, 3)
    for _ in range(draw(st.integers(0, 3))):
        r0, c0 = rng.randint(h), rng.randint(w)
        image[r0:r0 + rng.randint(1, h + 1), c0:c0 + rng.randint(1, w + 1)] = \
            rng.randint(0, 256, 3)
    noise = draw(st.sampled_from([0, 0, 10]))
    if noise:
        image = np.clip(image + rng.normal(0, noise, image.shape), 0, 255).astype(np.uint8)
    return image


@settings(SETTINGS, max_examples=25)
@given(small_images(), st.sampled_from([None, 56]), st.sampled_from(["crf", "nearest"]),
       st.integers(0, 100))
def test_pipeline_masks_have_the_images_shape(image, short_side, refine, seed):
    pipe = make_clasp_pipeline("handcrafted", short_side=short_side, refine=refine,
                               random_state=seed)
    mask, record = clasp_one(pipe, image)
    k = record.info["n_clusters"]
    assert mask.shape == image.shape[:2] and mask.dtype == np.int64
    _check_labelling(record.labels, k)
    # the refiner keeps (a subset of) the patch labels, never invents one
    assert set(np.unique(mask).tolist()) <= set(range(k))
    mask2, record2 = clasp_one(
        make_clasp_pipeline("handcrafted", short_side=short_side, refine=refine,
                            random_state=seed), image)
    np.testing.assert_array_equal(mask, mask2)
    np.testing.assert_array_equal(record.labels, record2.labels)
