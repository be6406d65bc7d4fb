import numpy as np
import pytest
from scipy import sparse
from sklearn.base import clone

from sklearn_clasp import CosineAffinity, PatchGrid, cosine_affinity


def test_cosine_values_and_clipping():
    X = np.array([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    A = cosine_affinity(X, clip_negative=False)
    expected = np.array(
        [[1, np.sqrt(0.5), -1], [np.sqrt(0.5), 1, -np.sqrt(0.5)], [-1, -np.sqrt(0.5), 1]]
    )
    np.testing.assert_allclose(A, expected, atol=1e-12)
    np.testing.assert_allclose(cosine_affinity(X), np.maximum(expected, 0), atol=1e-12)


def test_zero_rows_are_isolated_but_self_similar():
    X = np.array([[1.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    A = cosine_affinity(X)
    np.testing.assert_allclose(A, [[1, 0, 1], [0, 1, 0], [1, 0, 1]])


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
