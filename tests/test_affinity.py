import numpy as np
import pytest
from scipy import sparse
from sklearn.base import clone

from sklearn_clasp import CosineAffinity, PatchGrid, cosine_affinity
from sklearn_clasp.affinity import local_scales, local_scaling_affinity, unit_rows


def test_cosine_values_and_clipping():
    X = np.array([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    A = cosine_affinity(X, clip_negative=False)
    expected = np.array(
        [[1, np.sqrt(0.5), -1], [np.sqrt(0.5), 1, -np.sqrt(0.5)], [-1, -np.sqrt(0.5), 1]]
    )
    np.testing.assert_allclose(A, expected, atol=1e-12)
    np.testing.assert_allclose(cosine_affinity(X), np.maximum(expected, 0), atol=1e-12)


def test_zero_rows_are_one_point_apart_from_the_rest():
    X = np.array([[1.0, 0.0], [0.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    expected = [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]]
    np.testing.assert_allclose(cosine_affinity(X), expected)
    np.testing.assert_allclose(cosine_affinity(X, n_neighbors=4).toarray(), expected)
    # zero rows on one side only, and on both
    np.testing.assert_allclose(cosine_affinity(X, X[[0, 2]]), [[1, 1], [0, 0], [1, 1], [0, 0]])
    np.testing.assert_allclose(cosine_affinity(X[[0, 2]], X), [[1, 0, 1, 0], [1, 0, 1, 0]])
    np.testing.assert_allclose(cosine_affinity(X[[1]], X), [[0, 1, 0, 1]])


@pytest.mark.parametrize("scale", [1e300, 1e-300, 1e-160, 1e160])
def test_row_sizes_do_not_matter(scale):
    rng = np.random.RandomState(0)
    X = rng.randn(20, 5)
    np.testing.assert_allclose(cosine_affinity(X * scale), cosine_affinity(X), atol=1e-12)
    np.testing.assert_allclose(unit_rows(X * scale), unit_rows(X), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(unit_rows(X * scale), axis=1), 1.0)


def test_local_scaling_affinity_follows_the_definition():
    rng = np.random.RandomState(0)
    X = rng.randn(30, 3)
    s = local_scales(X, n_neighbors=7)
    D = ((X[:, None] - X[None]) ** 2).sum(-1)
    expected_s = np.sqrt(np.sort(D, axis=1)[:, 7])  # the 7th neighbour, itself excluded
    np.testing.assert_allclose(s, expected_s)
    A = local_scaling_affinity(X)
    np.testing.assert_allclose(A, np.exp(-D / np.outer(s, s)), atol=1e-12)
    assert A.dtype == np.float64 and np.all(np.diag(A) == 1.0)
    # a second set: its own scales among the first set's samples
    np.testing.assert_allclose(local_scales(X, X), s)
    np.testing.assert_allclose(local_scaling_affinity(X, X, scales_Y=s), A, atol=1e-12)
    Z = rng.randn(4, 3)
    Dz = ((Z[:, None] - X[None]) ** 2).sum(-1)
    sz = np.sqrt(np.sort(Dz, axis=1)[:, 6])
    np.testing.assert_allclose(local_scaling_affinity(Z, X), np.exp(-Dz / np.outer(sz, s)),
                               atol=1e-12)
    # equal samples: all ones; duplicates borrow the smallest positive scale
    assert np.all(local_scaling_affinity(np.ones((5, 2))) == 1.0)
    dup = np.r_[np.zeros((8, 2)), [[1.0, 0.0], [2.0, 0.0]]]
    assert np.isfinite(local_scaling_affinity(dup)).all()
    with pytest.raises(ValueError, match="local_scaling_affinity: X contains NaN"):
        local_scaling_affinity(np.array([[np.nan, 0.0], [1.0, 1.0]]))


def test_float32_is_preserved():
    X = np.random.RandomState(0).rand(5, 3).astype(np.float32)
    assert cosine_affinity(X).dtype == np.float32


def test_knn_sparsification_is_symmetric_and_keeps_strongest():
    rng = np.random.RandomState(0)
    X = rng.randn(30, 5)
    dense = cosine_affinity(X)
    knn = cosine_affinity(X, n_neighbors=4)
    assert sparse.issparse(knn)
    knn = knn.toarray()
    np.testing.assert_allclose(knn, knn.T)
    for i in range(30):
        top = np.argsort(-dense[i])[:4]
        # Each row keeps at least its own 4 strongest (non-zero) similarities ...
        kept = top[dense[i, top] > 0]
        np.testing.assert_allclose(knn[i, kept], dense[i, kept])
    # ... and every kept edge was chosen by one of its two ends.
    rows, cols = np.nonzero(knn)
    for i, j in zip(rows, cols):
        assert j in np.argsort(-dense[i])[:4] or i in np.argsort(-dense[j])[:4]


def test_transformer_on_matrix_is_a_kernel_to_the_fitted_samples():
    rng = np.random.RandomState(1)
    X, Z = rng.randn(10, 4), rng.randn(3, 4)
    ca = CosineAffinity().fit(X)
    np.testing.assert_allclose(ca.transform(Z), cosine_affinity(Z, X))
    np.testing.assert_allclose(CosineAffinity().fit_transform(X), cosine_affinity(X))
    with pytest.raises(ValueError, match="features"):
        ca.transform(rng.randn(3, 5))


def test_transformer_on_records_sets_each_images_affinity():
    rng = np.random.RandomState(2)
    recs = [
        PatchGrid(image=np.zeros((28, 42, 3), np.uint8), grid_shape=(2, 3),
                  features=rng.rand(2, 3, 8).astype(np.float32), source="a"),
        PatchGrid(image=np.zeros((14, 14, 3), np.uint8), grid_shape=(1, 1),
                  features=rng.rand(1, 1, 8).astype(np.float32), source="b"),
    ]
    out = CosineAffinity(n_neighbors=2).fit_transform(recs)
    assert [r.affinity.shape for r in out] == [(6, 6), (1, 1)]
    np.testing.assert_allclose(
        out[0].affinity.toarray(),
        cosine_affinity(recs[0].feature_matrix, n_neighbors=2).toarray(),
    )
    assert recs[0].affinity is None  # inputs untouched
    assert out[0].image is recs[0].image and out[0].source == "a"


def test_records_errors_name_the_image():
    rec = PatchGrid(image=np.zeros((14, 14, 3), np.uint8), grid_shape=(1, 1), source="x.png")
    with pytest.raises(ValueError, match="x.png.*no features"):
        CosineAffinity().fit_transform([rec])
    bad = rec.replace(features=np.full((1, 1, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="x.png.*NaN"):
        CosineAffinity().fit_transform([bad])


def test_params_roundtrip():
    ca = CosineAffinity(clip_negative=False, n_neighbors=5)
    assert clone(ca).get_params() == ca.get_params()
    assert ca.set_params(n_neighbors=3).n_neighbors == 3
    with pytest.raises(ValueError):
        CosineAffinity(n_neighbors=0).fit(np.ones((3, 2)))


def _top_k_reference(dense, k):
    """Each row's k largest entries of a dense matrix, as a dense matrix."""
    out = np.zeros_like(dense)
    for i, row in enumerate(dense):
        top = np.argsort(-row, kind="stable")[:k]
        out[i, top] = row[top]
    return out


@pytest.mark.parametrize("block_bytes", [64 * 2**20, 4 * 40 * 3])  # one block; 3 rows
def test_knn_is_computed_in_blocks_and_equals_the_dense_top_k(monkeypatch, block_bytes):
    from sklearn_clasp import affinity

    monkeypatch.setattr(affinity, "_BLOCK_BYTES", block_bytes)
    rng = np.random.RandomState(3)
    X, Z = rng.randn(40, 6), rng.randn(11, 6)
    dense = cosine_affinity(X)
    expected = _top_k_reference(dense, 5)
    np.testing.assert_allclose(cosine_affinity(X, n_neighbors=5).toarray(),
                               np.maximum(expected, expected.T))
    rect = cosine_affinity(Z, X, n_neighbors=5, clip_negative=False)
    np.testing.assert_allclose(
        rect.toarray(), _top_k_reference(cosine_affinity(Z, X, clip_negative=False), 5)
    )
    assert rect.shape == (11, 40) and rect.dtype == np.float64


def test_knn_never_builds_the_dense_matrix(monkeypatch):
    from sklearn_clasp import affinity

    monkeypatch.setattr(affinity, "_BLOCK_BYTES", 4 * 3000 * 50)  # 50 rows per block
    seen = []
    real = affinity.unit_rows

    class Spy(np.ndarray):
        def __matmul__(self, other):
            out = np.asarray(self) @ np.asarray(other)
            seen.append(out.shape)
            return out

    monkeypatch.setattr(affinity, "unit_rows", lambda X: real(X).view(Spy))
    X = np.random.RandomState(0).rand(3000, 8).astype(np.float32)
    S = cosine_affinity(X, n_neighbors=10)
    assert S.nnz <= 2 * 3000 * 10 and S.dtype == np.float32
    assert seen and max(r for r, _ in seen) == 50


def test_cosine_affinity_input_errors():
    with pytest.raises(ValueError, match="X contains NaN or infinite"):
        cosine_affinity(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="Y contains NaN or infinite"):
        cosine_affinity(np.eye(2), np.array([[np.inf, 0.0]]))
    with pytest.raises(ValueError, match=r"2-D .*got shape \(4,\)"):
        cosine_affinity(np.ones(4))
    with pytest.raises(ValueError, match=r"2-D .*got shape \(2, 2, 3\)"):
        cosine_affinity(np.ones((2, 2, 3)))
    with pytest.raises(ValueError, match="X is empty"):
        cosine_affinity(np.ones((0, 3)))
    with pytest.raises(ValueError, match="X has 3 features but Y has 2"):
        cosine_affinity(np.ones((2, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="n_neighbors must be a positive int"):
        cosine_affinity(np.ones((2, 3)), n_neighbors=0)
    with pytest.raises(TypeError, match="numbers"):
        cosine_affinity(np.array([["a", "b"]]))
    # integers and booleans are fine (as float64)
    assert cosine_affinity(np.array([[1, 0], [1, 1]])).dtype == np.float64


def test_records_get_the_affinity_kind_and_large_images_are_deferred(caplog):
    rng = np.random.RandomState(4)
    recs = [
        PatchGrid(image=np.zeros((140, 140, 3), np.uint8), grid_shape=(10, 10),
                  features=rng.rand(10, 10, 5).astype(np.float32), source="big"),
        PatchGrid(image=np.zeros((56, 56, 3), np.uint8), grid_shape=(4, 4),
                  features=rng.rand(4, 4, 5).astype(np.float32), source="small"),
    ]
    default = CosineAffinity().fit_transform(recs)
    assert [r.info["affinity"] for r in default] == ["dense", "dense"]
    with caplog.at_level("INFO", logger="sklearn_clasp.affinity"):
        bounded = CosineAffinity(max_dense_samples=50).fit_transform(recs)
    assert bounded[0].affinity is None and bounded[0].info["affinity"] == "deferred"
    assert "big has 100 patches, more than max_dense_samples=50" in caplog.text
    np.testing.assert_allclose(bounded[1].affinity, default[1].affinity)
    knn = CosineAffinity(max_dense_samples=50, n_neighbors=3).fit_transform(recs)
    assert [r.info["affinity"] for r in knn] == ["knn", "knn"]
    assert sparse.issparse(knn[0].affinity) and knn[0].affinity.shape == (100, 100)
    # a plain matrix is never deferred: the caller asked for it
    assert CosineAffinity(max_dense_samples=5).fit_transform(rng.rand(8, 3)).shape == (8, 8)
    wrong = recs[1].replace(features=rng.rand(2, 8, 5).astype(np.float32))
    with pytest.raises(ValueError, match=r"small.*shape \(2, 8, 5\).*grid is \(4, 4\)"):
        CosineAffinity().fit_transform([wrong])
    with pytest.raises(ValueError):
        CosineAffinity(max_dense_samples=0).fit(np.ones((3, 2)))
