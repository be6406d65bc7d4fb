import numpy as np
import pytest
from scipy import linalg, sparse
from sklearn.base import clone
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_clasp import (
    PAPER_SETTINGS,
    AdaptiveSpectralSegmenter,
    PatchGrid,
    adaptive_spectral_clustering,
    cosine_affinity,
)
from sklearn_clasp.datasets import make_planted_partition
from sklearn_clasp.spectral import (
    eigengap_k,
    leading_eigenpairs,
    silhouette_scores_cosine,
    silhouette_scores_for_labels,
)
from sklearn_clasp.spectral._rules import k_window


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
    assert k_window(4, beta=0.5, k_min=2, k_max=15) == [2, 3, 4, 5, 6]
    assert k_window(1, beta=0.5, k_min=2, k_max=15) == [2]
    assert k_window(12, beta=0.5, k_min=2, k_max=15) == list(range(6, 16))
    assert k_window(20, beta=0.1, k_min=2, k_max=15) == [15]
    assert k_window(5, beta=0.0, k_min=2, k_max=15) == [5]


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
        "spectrum": "affinity", "eigengap_rule": "elbow", "k_selection": "silhouette",
        "single_segment_threshold": None,
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


# --------------------------------------------------------------------------
# Validation of arrays and parameters
# --------------------------------------------------------------------------
def test_functional_core_validates_its_inputs():
    X, _ = make_planted_partition(3, n_samples=60, random_state=0)
    A = cosine_affinity(X)
    with pytest.raises(ValueError, match="square"):
        adaptive_spectral_clustering(np.ones(5))
    with pytest.raises(ValueError, match="square"):
        adaptive_spectral_clustering(np.ones((4, 5)))
    with pytest.raises(ValueError, match="empty"):
        adaptive_spectral_clustering(np.zeros((0, 0)))
    bad = A.copy()
    bad[3, 7] = bad[7, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        adaptive_spectral_clustering(bad)
    bad[3, 7] = bad[7, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        adaptive_spectral_clustering(sparse.csr_matrix(bad))
    with pytest.raises(ValueError, match="one row per affinity row"):
        adaptive_spectral_clustering(A, features=X[:-1])
    Xnan = X.copy()
    Xnan[0, 0] = np.nan
    with pytest.raises(ValueError, match="features .*NaN"):
        adaptive_spectral_clustering(A, features=Xnan)
    with pytest.raises(ValueError, match="k_min=5 is larger than k_max=3"):
        adaptive_spectral_clustering(A, k_min=5, k_max=3)
    for name, value in [("beta", -0.1), ("k_min", 0), ("k_max", 0), ("n_init", 0),
                        ("single_segment_threshold", 1.5), ("spectrum", "laplacian"),
                        ("eigengap_rule", "max")]:
        with pytest.raises(InvalidParameterError, match=name):
            adaptive_spectral_clustering(A, **{name: value})


def test_zero_beta_tries_the_eigengap_estimate_alone():
    X, _ = make_planted_partition(4, n_samples=200, noise=0.5, random_state=1)
    _, info = adaptive_spectral_clustering(cosine_affinity(X), features=X, beta=0.0,
                                           random_state=0)
    assert list(info["silhouette_scores"]) == [info["eigengap_k"]] == [4]
    with pytest.raises(InvalidParameterError, match="beta"):
        AdaptiveSpectralSegmenter(beta=-0.5).fit(X)


def test_estimator_errors_name_the_record_and_the_fix():
    img = np.zeros((28, 42, 3), np.uint8)
    feats = np.random.RandomState(0).rand(2, 3, 4).astype(np.float32)
    nan_feats = feats.copy()
    nan_feats[1, 2, 0] = np.inf
    rec = PatchGrid(image=img, grid_shape=(2, 3), features=nan_feats, source="a.png")
    # The features are checked even when an affinity is given (the silhouette uses them).
    rec = rec.replace(affinity=cosine_affinity(feats.reshape(6, 4)))
    with pytest.raises(ValueError, match="a.png.*NaN or infinite"):
        AdaptiveSpectralSegmenter().fit([rec])
    wrong = PatchGrid(image=img, grid_shape=(2, 3), features=feats.reshape(3, 2, 4),
                      source="b.png")
    with pytest.raises(ValueError, match=r"b.png.*shape \(3, 2, 4\).*grid is \(2, 3\)"):
        AdaptiveSpectralSegmenter().fit([wrong])
    small = PatchGrid(image=img, grid_shape=(2, 3), features=feats, source="c.png",
                      affinity=np.eye(4))
    with pytest.raises(ValueError, match="c.png.*4 x 4 affinity for 6 patches"):
        AdaptiveSpectralSegmenter().fit([small])
    with pytest.raises(ValueError, match="0 sample"):
        AdaptiveSpectralSegmenter().fit(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="infinity"):
        AdaptiveSpectralSegmenter().fit(np.full((6, 2), np.inf))
    with pytest.raises(InvalidParameterError, match="max_dense_samples"):
        AdaptiveSpectralSegmenter(max_dense_samples=0).fit(np.eye(4))


def test_k_above_the_number_of_samples():
    X, _ = make_planted_partition(3, n_samples=9, noise=0.1, random_state=0)
    # k_max above n - 1 is clipped, and info says which bounds were used.
    _, info = adaptive_spectral_clustering(cosine_affinity(X), k_max=50, random_state=0)
    assert info["k_bounds"] == (1, 8)
    assert max(info["silhouette_scores"]) <= 8 and info["eigenvalues"].shape == (9,)
    # k_min above n - 1 cannot be honoured: a plain matrix is an error ...
    with pytest.raises(ValueError, match="k_min=9 needs at least 10 samples.*has 9"):
        adaptive_spectral_clustering(cosine_affinity(X), k_min=9, k_max=12)
    with pytest.raises(ValueError, match="lower k_min to at most 8"):
        AdaptiveSpectralSegmenter(k_min=9, k_max=12).fit(X)
    # ... while an image (whose grid size the embedder chose) gets K = n - 1.
    rec = PatchGrid(image=np.zeros((42, 42, 3), np.uint8), grid_shape=(3, 3),
                    features=X.reshape(3, 3, -1), source="tiny.png")
    out, = AdaptiveSpectralSegmenter(k_min=9, k_max=12, single_segment_threshold=None,
                                     random_state=0).fit_transform([rec])
    assert out.info["k_bounds"] == (8, 8) and out.info["n_clusters"] == 8
    # With fewer than 3 samples there is nothing to choose.
    labels, info = adaptive_spectral_clustering(np.eye(2), k_min=5, k_max=9)
    assert labels.tolist() == [0, 1] and info["k_bounds"] == (2, 2)


# --------------------------------------------------------------------------
# Memory: no n x n copies, sparse affinities, landmarks
# --------------------------------------------------------------------------
def test_one_segment_test_without_the_normalised_matrix():
    from sklearn_clasp.spectral._eigen import _normalize, _second_normalized_eigenvalue

    X, _ = make_planted_partition(3, n_samples=300, random_state=0)
    for clip in (True, False):  # with and without negative affinities
        A = cosine_affinity(X.astype(np.float32), clip_negative=clip)
        exact = linalg.eigh(_normalize(np.maximum(A, 0).astype(np.float64)),
                            eigvals_only=True)[-2]
        assert _second_normalized_eigenvalue(A, 0) == pytest.approx(exact, abs=1e-5)


def test_asymmetric_affinity_is_symmetrised():
    X, _ = make_planted_partition(4, n_samples=700, random_state=2)
    A = cosine_affinity(X)
    noise = np.triu(np.random.RandomState(0).rand(700, 700) * 0.01, 1)
    a, info_a = adaptive_spectral_clustering(A + noise, random_state=0)
    b, info_b = adaptive_spectral_clustering(A + 0.5 * (noise + noise.T), random_state=0)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(info_a["eigenvalues"], info_b["eigenvalues"])


def test_sparse_affinity_silhouette_is_exact_without_dense_distances(monkeypatch):
    from sklearn_clasp.spectral import _core
    from sklearn_clasp.spectral._silhouette import (
        _distance_matrix,
        _silhouette_scores_sparse_affinity,
    )

    X, _ = make_planted_partition(3, n_samples=240, noise=0.6, random_state=3)
    A = cosine_affinity(X, n_neighbors=12)
    A = A.tolil()
    A[0, 1] = A[1, 0] = 1.4  # entries above 1 count as distance 0
    A = A.tocsr()
    rng = np.random.RandomState(0)
    labelings = [rng.randint(0, k, 240) for k in (2, 3, 5)]
    expected = silhouette_scores_for_labels(_distance_matrix(A), labelings)
    np.testing.assert_allclose(_silhouette_scores_sparse_affinity(A, labelings), expected,
                               atol=1e-12)

    def no_dense(*args):
        raise AssertionError("a sparse affinity must not be densified")

    monkeypatch.setattr(_core, "_distance_matrix", no_dense)
    labels, info = adaptive_spectral_clustering(cosine_affinity(X, n_neighbors=12),
                                                random_state=0)
    assert info["sparse_affinity"] and info["n_clusters"] == 3


def test_many_samples_are_clustered_through_landmarks(monkeypatch):
    from sklearn_clasp.spectral import _core as spectral

    X, y = make_planted_partition(5, n_samples=20_000, n_features=16, noise=0.5,
                                  random_state=4)
    X = X.astype(np.float32)
    shapes = []
    real = spectral.cosine_affinity

    def spy(X, Y=None, **kw):
        shapes.append((len(X), len(X) if Y is None else len(Y)))
        return real(X, Y, **kw)

    monkeypatch.setattr(spectral, "cosine_affinity", spy)
    seg = AdaptiveSpectralSegmenter(max_dense_samples=1000, random_state=0)
    emb = seg.fit_transform(X)
    # No affinity wider than the landmarks, and no block taller than ~64 MB.
    assert max(c for _, c in shapes) == 1000
    assert all(r * c * 4 <= 64 * 2**20 for r, c in shapes)
    assert seg.landmark_indices_.shape == (1000,)
    assert seg.X_fit_.shape == (1000, 16) and seg.eigenvectors_.shape == (1000, 5)
    assert seg.n_clusters_ == 5 and adjusted_rand_score(y, seg.labels_) == 1.0
    assert sorted(np.unique(seg.labels_)) == [0, 1, 2, 3, 4]
    assert emb.shape == (20_000, 5) and emb.dtype == np.float32
    np.testing.assert_allclose(seg.transform(X[:500]), emb[:500], atol=1e-5)
    # Landmarks keep the labels they were clustered with.
    own = AdaptiveSpectralSegmenter(random_state=0).fit(X[seg.landmark_indices_])
    assert adjusted_rand_score(own.labels_, seg.labels_[seg.landmark_indices_]) == 1.0
    # Repeatable, and the default bound is the documented 10,000.
    again = AdaptiveSpectralSegmenter(max_dense_samples=1000, random_state=0).fit(X)
    np.testing.assert_array_equal(again.labels_, seg.labels_)
    assert AdaptiveSpectralSegmenter().max_dense_samples == 10_000
    small = AdaptiveSpectralSegmenter(random_state=0).fit(X[:3000])
    assert small.landmark_indices_ is None


def test_records_without_affinity_use_landmarks_past_the_bound():
    from sklearn_clasp import CosineAffinity

    X, y = make_planted_partition(3, n_samples=1200, noise=0.5, random_state=5)
    rec = PatchGrid(image=np.zeros((30 * 14, 40 * 14, 3), np.uint8), grid_shape=(30, 40),
                    features=X.reshape(30, 40, -1).astype(np.float32), source="big.png")
    deferred, = CosineAffinity(max_dense_samples=1000).fit_transform([rec])
    assert deferred.affinity is None and deferred.info["affinity"] == "deferred"
    out, = AdaptiveSpectralSegmenter(max_dense_samples=500, random_state=0).fit_transform(
        [deferred])
    assert out.info["n_landmarks"] == 500 and out.info["affinity"] == "deferred"
    assert out.labels.shape == (30, 40) and out.info["n_clusters"] == 3
    assert adjusted_rand_score(y, out.labels.ravel()) == 1.0
    dense, = AdaptiveSpectralSegmenter(random_state=0).fit_transform([deferred])
    assert dense.info["n_landmarks"] is None and dense.info["n_clusters"] == 3


def test_landmark_timings_are_durations_within_the_call():
    import time

    X, _ = make_planted_partition(3, n_samples=1200, noise=0.5, random_state=5)
    rec = PatchGrid(image=np.zeros((30 * 14, 40 * 14, 3), np.uint8), grid_shape=(30, 40),
                    features=X.reshape(30, 40, -1).astype(np.float32))
    start = time.perf_counter()
    out, = AdaptiveSpectralSegmenter(max_dense_samples=500, random_state=0).fit_transform(
        [rec])
    elapsed = time.perf_counter() - start
    timings = out.info["timings"]
    assert {"affinity", "eigen", "k_search", "extension"} <= set(timings)
    assert all(0 <= t <= elapsed for t in timings.values()), timings


def test_info_reports_stage_timings():
    X, _ = make_planted_partition(3, n_samples=200, random_state=0)
    _, info = adaptive_spectral_clustering(cosine_affinity(X), features=X, random_state=0)
    assert set(info["timings"]) == {"eigen", "one_segment_test", "k_search"}
    assert all(t >= 0 for t in info["timings"].values())
