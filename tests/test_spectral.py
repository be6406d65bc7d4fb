import numpy as np
import pytest
from scipy import linalg, sparse
from sklearn.base import clone
from sklearn.metrics import adjusted_rand_score, silhouette_score

from sklearn_clasp import (
    PAPER_SETTINGS,
    AdaptiveSpectralSegmenter,
    PatchGrid,
    adaptive_spectral_clustering,
    cosine_affinity,
)
from sklearn_clasp.datasets import make_planted_partition
from sklearn_clasp.spectral import (
    _k_range,
    eigengap_k,
    leading_eigenpairs,
    silhouette_scores_cosine,
    silhouette_scores_for_labels,
)


@pytest.mark.parametrize("k", range(2, 9))
def test_planted_partition_gives_exact_k(k):
    X, y = make_planted_partition(k, n_samples=400, noise=0.8, random_state=k)
    seg = AdaptiveSpectralSegmenter(random_state=0).fit(X)
    assert seg.n_clusters_ == k
    assert adjusted_rand_score(y, seg.labels_) > 0.99


@pytest.mark.parametrize("k", [3, 6])
def test_planted_partition_unbalanced_groups(k):
    X, y = make_planted_partition(k, n_samples=500, imbalance=5.0, noise=0.8, random_state=1)
    seg = AdaptiveSpectralSegmenter(random_state=0).fit(X)
    assert seg.n_clusters_ == k


def test_precomputed_affinity_matches_feature_input():
    X, _ = make_planted_partition(4, n_samples=200, random_state=3)
    a = AdaptiveSpectralSegmenter(random_state=0).fit_predict(X)
    b = AdaptiveSpectralSegmenter(affinity="precomputed", random_state=0).fit_predict(
        cosine_affinity(X)
    )
    # Same partition; the silhouette uses 1 - affinity (capped cosine distance).
    assert adjusted_rand_score(a, b) == 1.0


def test_sparse_knn_affinity():
    X, y = make_planted_partition(3, n_samples=300, noise=0.5, random_state=4)
    A = cosine_affinity(X, n_neighbors=15)
    labels, info = adaptive_spectral_clustering(A, random_state=0)
    assert info["n_clusters"] == 3
    assert adjusted_rand_score(y, labels) == 1.0


def test_constant_features_give_one_segment():
    X = np.ones((100, 8)) + 1e-3 * np.random.RandomState(0).randn(100, 8)
    seg = AdaptiveSpectralSegmenter(random_state=0).fit(X)
    assert seg.n_clusters_ == 1
    assert np.all(seg.labels_ == 0)
    assert seg.silhouette_scores_ == {}
    # Exactly identical features too (affinity all ones).
    assert AdaptiveSpectralSegmenter().fit(np.ones((50, 3))).n_clusters_ == 1


def test_one_segment_rule_can_be_disabled():
    X = np.ones((100, 8)) + 1e-3 * np.random.RandomState(0).randn(100, 8)
    seg = AdaptiveSpectralSegmenter(single_segment_threshold=None, random_state=0).fit(X)
    assert seg.n_clusters_ >= 2


def test_deterministic_under_random_state():
    X, _ = make_planted_partition(5, n_samples=300, noise=1.2, random_state=7)
    runs = [AdaptiveSpectralSegmenter(random_state=42).fit(X) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].labels_, runs[1].labels_)
    assert runs[0].silhouette_scores_ == runs[1].silhouette_scores_


def test_fitted_diagnostics():
    X, _ = make_planted_partition(4, n_samples=240, random_state=5)
    seg = AdaptiveSpectralSegmenter(k_max=10, random_state=0).fit(X)
    assert seg.eigengap_k_ == 4
    assert seg.eigenvalues_.shape == (11,)
    assert np.all(np.diff(seg.eigenvalues_) <= 1e-12)  # descending
    assert set(seg.silhouette_scores_) == set(range(2, 7))  # [floor(2), ceil(6)]
    best = max(seg.silhouette_scores_, key=seg.silhouette_scores_.get)
    assert best == seg.n_clusters_ == 4
    assert sorted(np.unique(seg.labels_)) == [0, 1, 2, 3]


def test_silhouette_matches_sklearn_exactly():
    rng = np.random.RandomState(0)
    X = rng.randn(120, 6)
    D = 1.0 - cosine_affinity(X, clip_negative=False)
    np.fill_diagonal(D, 0.0)
    labelings = [rng.randint(0, k, 120) for k in (2, 3, 7)]
    labelings.append(np.r_[0, np.ones(119, int)])  # a singleton cluster scores 0
    ours = silhouette_scores_for_labels(D, labelings)
    for lab, s in zip(labelings, ours):
        assert s == pytest.approx(silhouette_score(D, lab, metric="precomputed"), abs=1e-12)
        assert s == pytest.approx(silhouette_score(X, lab, metric="cosine"), abs=1e-10)


def test_feature_silhouette_matches_sklearn_without_distance_matrix():
    rng = np.random.RandomState(1)
    X = rng.randn(150, 9)
    X[7] = 0.0  # an all-zero feature vector is at distance 1 from everything
    labelings = [rng.randint(0, k, 150) for k in (2, 4, 9)]
    labelings.append(np.r_[0, np.ones(149, int)])
    for lab, s in zip(labelings, silhouette_scores_cosine(X, labelings)):
        assert s == pytest.approx(silhouette_score(X, lab, metric="cosine"), abs=1e-10)


def test_eigengap_rules_on_hand_made_spectra():
    lam = [1.0, 0.98, 0.97, 0.2, 0.1, 0.05]
    assert eigengap_k(lam, rule="largest") == 3
    assert eigengap_k(lam, rule="relative") == 3
    # A dominant first gap: k_min moves the search past it.
    lam2 = [1.0, 0.5, 0.45, 0.05, 0.04]
    assert eigengap_k(lam2, rule="largest") == 1
    assert eigengap_k(lam2, rule="largest", k_min=2) == 3
    # Ties go to the smallest index.
    assert eigengap_k([3.0, 2.0, 1.0, 0.0], rule="largest") == 1
    # Elbow (the paper): gaps d = [5, 1, 0.5, 0.25, 0.2]; the line from (1, 5) to
    # (5, 0.2) is farthest from (2, 1), so i* = 2 and K0 = i* + 1 = 3.
    lam3 = [6.95, 1.95, 0.95, 0.45, 0.2, 0.0]
    assert eigengap_k(lam3, rule="elbow") == 3
    with pytest.raises(ValueError, match="unknown eigengap rule"):
        eigengap_k(lam, rule="nope")


def test_k_search_range():
    assert _k_range(4, beta=0.5, k_min=2, k_max=15) == [2, 3, 4, 5, 6]
    assert _k_range(1, beta=0.5, k_min=2, k_max=15) == [2]
    assert _k_range(12, beta=0.5, k_min=2, k_max=15) == list(range(6, 16))
    assert _k_range(20, beta=0.1, k_min=2, k_max=15) == [15]
    assert _k_range(5, beta=0.0, k_min=2, k_max=15) == [5]


def test_leading_eigenpairs_dense_and_iterative_agree():
    rng = np.random.RandomState(0)
    B = rng.rand(300, 300)
    M = B + B.T
    full_vals, full_vecs = linalg.eigh(M)
    vals, vecs = leading_eigenpairs(M, 5)
    np.testing.assert_allclose(vals, full_vals[::-1][:5], rtol=1e-10)
    svals, svecs = leading_eigenpairs(sparse.csr_matrix(M), 5, random_state=0)
    np.testing.assert_allclose(svals, vals, rtol=1e-8)
    np.testing.assert_allclose(np.abs(svecs.T @ vecs), np.eye(5), atol=1e-6)


def test_paper_settings_run_and_are_the_documented_ones():
    assert PAPER_SETTINGS == {
        "spectrum": "affinity", "eigengap_rule": "elbow", "single_segment_threshold": None
    }
    X, _ = make_planted_partition(3, n_samples=300, random_state=0)
    seg = AdaptiveSpectralSegmenter(random_state=0, **PAPER_SETTINGS).fit(X)
    assert seg.n_clusters_ == 3


def test_records_are_segmented_per_image():
    X1, _ = make_planted_partition(3, n_samples=48, random_state=0)
    X2, _ = make_planted_partition(2, n_samples=30, random_state=1)
    img = np.zeros((84, 112, 3), np.uint8)
    recs = [
        PatchGrid(image=img, grid_shape=(6, 8), features=X1.reshape(6, 8, -1), source="one"),
        PatchGrid(image=img[:70, :84], grid_shape=(5, 6), features=X2.reshape(5, 6, -1),
                  source="two").replace(affinity=cosine_affinity(X2)),
    ]
    seg = AdaptiveSpectralSegmenter(random_state=0)
    out = seg.fit_transform(recs)
    assert [r.labels.shape for r in out] == [(6, 8), (5, 6)]
    assert seg.n_clusters_ == [3, 2]
    assert [r.info["n_clusters"] for r in out] == [3, 2]
    assert isinstance(seg.labels_, list) and seg.labels_[1].shape == (5, 6)
    assert out[0].info["silhouette"] == pytest.approx(seg.silhouette_scores_[0][3])
    assert recs[0].labels is None
    again = seg.transform(recs)
    np.testing.assert_array_equal(again[0].labels, out[0].labels)


def test_bad_input_errors():
    X, _ = make_planted_partition(3, n_samples=60, random_state=0)
    with pytest.raises(ValueError, match="k_min=5 is larger than k_max=3"):
        AdaptiveSpectralSegmenter(k_min=5, k_max=3).fit(X)
    with pytest.raises(ValueError, match="square"):
        AdaptiveSpectralSegmenter(affinity="precomputed").fit(X)
    with pytest.raises(ValueError, match="NaN|infinity"):
        AdaptiveSpectralSegmenter().fit(np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match="Negative values"):
        AdaptiveSpectralSegmenter(affinity="precomputed", spectrum="normalized").fit(
            -np.ones((4, 4))
        )
    with pytest.raises(ValueError):
        AdaptiveSpectralSegmenter(beta=-1).fit(X)
    with pytest.raises(ValueError):
        AdaptiveSpectralSegmenter(eigengap_rule="max").fit(X)
    rec = PatchGrid(image=np.zeros((14, 14, 3), np.uint8), grid_shape=(1, 1), source="e.png")
    with pytest.raises(ValueError, match="e.png.*neither features nor an affinity"):
        AdaptiveSpectralSegmenter().fit([rec])


def test_k_larger_than_samples_is_capped():
    X, _ = make_planted_partition(2, n_samples=6, noise=0.1, random_state=0)
    seg = AdaptiveSpectralSegmenter(k_min=2, k_max=15, random_state=0).fit(X)
    assert 1 <= seg.n_clusters_ <= 5


def test_params_roundtrip():
    seg = AdaptiveSpectralSegmenter(k_min=3, k_max=9, beta=0.25, random_state=1)
    assert clone(seg).get_params() == seg.get_params()
    assert seg.set_params(k_max=12).k_max == 12


@pytest.mark.parametrize("spectrum", ["affinity", "normalized"])
def test_transform_places_new_samples_in_the_fitted_embedding(spectrum):
    X, y = make_planted_partition(3, n_samples=600, noise=0.6, random_state=0)
    perm = np.random.RandomState(0).permutation(600)
    X, y = X[perm], y[perm]
    seg = AdaptiveSpectralSegmenter(spectrum=spectrum, random_state=0)
    emb_train = seg.fit_transform(X[:400])
    assert seg.n_clusters_ == 3 and emb_train.shape == (400, 3)
    # On the fitted samples the extension gives back the clustered embedding.
    np.testing.assert_allclose(seg.transform(X[:400]), emb_train, atol=1e-6)
    # New samples land next to the centroid of their own planted group.
    centroids = np.array([emb_train[seg.labels_ == c].mean(0) for c in range(3)])
    emb_test = seg.transform(X[400:])
    nearest = np.argmin(((emb_test[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    assert adjusted_rand_score(y[400:], nearest) == 1.0
    # Precomputed: the (n_new, n_fit) affinity to the fitted samples.
    segp = AdaptiveSpectralSegmenter(affinity="precomputed", spectrum=spectrum, random_state=0)
    segp.fit(cosine_affinity(X[:400]))
    np.testing.assert_allclose(
        segp.transform(cosine_affinity(X[400:], X[:400])), emb_test, atol=1e-6
    )


def test_arpack_on_large_dense_affinity_matches_lapack():
    X, _ = make_planted_partition(5, n_samples=700, n_features=32, random_state=2)
    A = cosine_affinity(X.astype(np.float32))
    vals, vecs = leading_eigenpairs(A, 8, random_state=0)  # ARPACK above 512 rows
    dvals, dvecs = leading_eigenpairs(A, 8, solver="dense")
    np.testing.assert_allclose(vals, dvals, rtol=1e-5)
    np.testing.assert_allclose(np.abs(vecs[:, :5].T @ dvecs[:, :5]), np.eye(5), atol=1e-3)
