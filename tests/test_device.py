"""The torch path (``device=...``) against the NumPy path, on the CPU.

The torch path must choose the same K and, up to rounding, the same
partition (adjusted Rand index at least 0.99) as the NumPy path, on planted
partitions and on real images; every stage takes the one ``device`` setting.
"""

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import linalg
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from sklearn_clasp import AdaptiveSpectralSegmenter, CosineAffinity, cosine_affinity
from sklearn_clasp.affinity import cosine_affinity_tensor, is_package_affinity
from sklearn_clasp.datasets import make_planted_partition, make_shapes_image
from sklearn_clasp.device import check_device, resolve_device, torch_threads
from sklearn_clasp.pipeline import (
    clasp_one,
    make_clasp_pipeline,
    pipeline_from_settings,
    pipeline_settings,
)
from sklearn_clasp.spectral import (
    adaptive_spectral_clustering,
    cluster_features,
    silhouette_scores_cosine,
    silhouette_scores_euclidean,
    silhouette_scores_for_labels,
)
from sklearn_clasp.spectral._eigen import check_affinity
from sklearn_clasp.spectral._torch import (
    kmeans_torch,
    leading_eigenpairs_torch,
    silhouette_scores_torch,
)

torch = pytest.importorskip("torch")
CPU = torch.device("cpu")


def _same(a, b):
    """Same K and ARI >= 0.99 of two (labels, info) results."""
    (la, ia), (lb, ib) = a, b
    assert ia["n_clusters"] == ib["n_clusters"]
    assert adjusted_rand_score(la, lb) >= 0.99
    return ia["n_clusters"]


# --------------------------------------------------------------------------
# the device setting
# --------------------------------------------------------------------------
def test_device_values_and_errors():
    for ok in (None, "auto", "cpu", "cuda", "cuda:3", torch.device("cpu")):
        assert check_device(ok) is ok
    for bad in ("gpu", "cuda:", "CPU", "mps", 0):
        with pytest.raises(ValueError, match="must be None, 'auto', 'cpu'"):
            check_device(bad)
    with pytest.raises(ValueError, match="segment__device='tpu'"):
        check_device("tpu", name="segment__device")
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="must be 'auto', 'cpu'"):
        resolve_device(None)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available.*device='cpu'"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="CUDA is not available"):
            AdaptiveSpectralSegmenter(device="cuda").fit(np.eye(5) + 0.1)
    with pytest.raises(ValueError, match="device='gpu' is not supported"):
        AdaptiveSpectralSegmenter(device="gpu").fit(np.eye(5) + 0.1)


# --------------------------------------------------------------------------
# the affinity
# --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cosine_affinity_on_the_device_matches_numpy(dtype):
    rng = np.random.RandomState(0)
    X = rng.randn(300, 20).astype(dtype)
    X[5] = 0  # an all-zero row: similar to itself only
    X[7] = 0
    Y = rng.randn(40, 20).astype(dtype)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    for clip in (True, False):
        ref = cosine_affinity(X, clip_negative=clip)
        got = cosine_affinity(X, clip_negative=clip, device="cpu")
        assert got.dtype == dtype and np.abs(got - ref).max() < tol
        assert np.array_equal(got, got.T) and np.all(np.diag(got) == 1)
        assert got[5, 7] == 1 and got[5, 6] == 0
        ref_xy = cosine_affinity(X, Y, clip_negative=clip)
        assert np.abs(cosine_affinity(X, Y, clip_negative=clip, device="cpu") - ref_xy).max() \
            < tol
    t = cosine_affinity_tensor(torch.from_numpy(X))
    assert isinstance(t, torch.Tensor) and np.abs(t.numpy() - cosine_affinity(X)).max() < tol
    # kNN affinities stay on NumPy whatever the device
    knn = cosine_affinity(X, n_neighbors=5, device="cpu")
    assert (knn != cosine_affinity(X, n_neighbors=5)).nnz == 0


def test_package_affinities_skip_the_input_passes():
    X = np.random.RandomState(1).randn(50, 4)
    A = cosine_affinity(X)
    assert is_package_affinity(A) and is_package_affinity(cosine_affinity(X, device="cpu"))
    assert not is_package_affinity(A.copy()) and not is_package_affinity(A[:])
    assert not is_package_affinity(cosine_affinity(X, X[:3]))  # not square: no claim
    assert check_affinity(A) is A
    # a user's matrix is still checked and symmetrised
    B = A.copy()
    B[0, 1] += 0.5
    C = check_affinity(B)
    assert C is not B and np.array_equal(C, C.T)
    B[2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_affinity(B)


# --------------------------------------------------------------------------
# the pieces: eigenpairs, k-means, silhouettes
# --------------------------------------------------------------------------
@pytest.mark.parametrize("n", [100, 700])
def test_leading_eigenpairs_match_lapack(n):
    X, _ = make_planted_partition(5, n_samples=n, random_state=2)
    A = cosine_affinity(X)
    ref_vals, ref_vecs = linalg.eigh(A, subset_by_index=[n - 16, n - 1])
    ref_vals, ref_vecs = ref_vals[::-1], ref_vecs[:, ::-1]
    with torch_threads(1):
        vals, vecs = leading_eigenpairs_torch(torch.from_numpy(A), 16)
    assert np.abs(vals.numpy() - ref_vals).max() < 1e-8 * ref_vals[0]
    # eigenvectors up to sign, where the eigenvalue is well separated
    gaps = -np.diff(ref_vals)
    for j in np.flatnonzero(np.minimum(np.r_[np.inf, gaps[:-1]], gaps) > 1e-3 * ref_vals[0]):
        assert abs(abs(vecs[:, j].numpy() @ ref_vecs[:, j]) - 1) < 1e-6
    # float32, and a start vector: the same eigenvalues to float32 accuracy
    with torch_threads(1):
        vals32, _ = leading_eigenpairs_torch(torch.from_numpy(A.astype(np.float32)), 16,
                                             start=np.ones(n))
    assert np.abs(vals32.numpy() - ref_vals).max() < 1e-5 * ref_vals[0]


def test_leading_eigenpairs_fall_back_to_eigh_when_krylov_does_not_converge(monkeypatch):
    from sklearn_clasp.spectral import _torch

    A = cosine_affinity(make_planted_partition(4, n_samples=400, random_state=3)[0])
    monkeypatch.setattr(_torch, "_krylov_tol", lambda n, dtype: -1.0)  # never small enough
    with torch_threads(1):
        vals, _ = leading_eigenpairs_torch(torch.from_numpy(A), 8)
    ref = linalg.eigh(A, eigvals_only=True, subset_by_index=[392, 399])[::-1]
    assert np.abs(vals.numpy() - ref).max() < 1e-8 * ref[0]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [2, 5, 9])
def test_kmeans_torch_is_scikit_learns_kmeans(seed, k):
    rng = np.random.RandomState(seed)
    centres = rng.randn(k, 6) * 3
    E = np.vstack([c + rng.randn(60, 6) for c in centres]).astype(np.float32)
    ref = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(E)
    labels, centers, inertia = kmeans_torch(torch.from_numpy(E), k, n_init=3, seed=seed)
    assert adjusted_rand_score(ref.labels_, labels) == 1.0
    assert abs(inertia - ref.inertia_) < 1e-3 * ref.inertia_
    order = [int(np.argmin(((ref.cluster_centers_ - c) ** 2).sum(1))) for c in centers]
    assert np.abs(ref.cluster_centers_[order] - centers).max() < 1e-4


def test_kmeans_torch_with_duplicate_points_and_empty_clusters():
    E = np.repeat(np.eye(3), [20, 20, 1], axis=0)
    labels, centers, _ = kmeans_torch(torch.from_numpy(E), 3, n_init=2, seed=0)
    assert len(set(labels.tolist())) == 3
    labels, _, inertia = kmeans_torch(torch.from_numpy(np.ones((10, 2))), 3, n_init=1, seed=0)
    assert inertia == 0


def test_silhouettes_match_numpy():
    X, y = make_planted_partition(4, n_samples=240, noise=1.2, random_state=5)
    labelings = [y, np.arange(240) % 3, (np.arange(240) // 7) % 5]
    Xt = torch.from_numpy(X)
    np.testing.assert_allclose(silhouette_scores_torch(labelings, features=Xt),
                               silhouette_scores_cosine(X, labelings), atol=1e-12)
    np.testing.assert_allclose(
        silhouette_scores_torch(labelings, features=Xt, metric="euclidean", block_bytes=4096),
        silhouette_scores_euclidean(X, labelings), atol=1e-10)
    A = cosine_affinity(X)
    D = np.maximum(1.0 - A, 0.0)
    np.fill_diagonal(D, 0.0)
    np.testing.assert_allclose(silhouette_scores_torch(labelings, affinity=torch.from_numpy(A)),
                               silhouette_scores_for_labels(D, labelings), atol=1e-12)


# --------------------------------------------------------------------------
# the whole clustering: the torch path chooses what the NumPy path chooses
# --------------------------------------------------------------------------
@pytest.mark.parametrize("k", [2, 3, 5, 8])
@pytest.mark.parametrize("noise", [0.8, 1.6])
def test_planted_partitions_same_k_and_partition(k, noise):
    X, y = make_planted_partition(k, n_samples=600, noise=noise,
                                  random_state=100 * k + int(10 * noise))
    ref = cluster_features(X, random_state=0)
    got = cluster_features(X, random_state=0, device="cpu")
    assert _same(ref, got) == k
    assert got[1]["device"] == "cpu"


@pytest.mark.parametrize("options", [
    {"spectrum": "normalized"},
    {"eigengap_rule": "largest"},
    {"eigengap_rule": "elbow", "single_segment_threshold": None},
    {"eigengap_rule": "entropy", "k_selection": "eigengap"},
    {"single_segment_test": "cheeger"},
    {"single_segment_test": "gap"},
    {"k_selection": "stability"},
    {"k_selection": "gap"},
    {"k_selection": "rotation", "spectrum": "normalized"},
    {"k_min": 3, "k_max": 6},
])
def test_every_option_on_the_device(options):
    X, _ = make_planted_partition(4, n_samples=700, noise=1.2, imbalance=3.0, random_state=9)
    A = cosine_affinity(X)
    ref = adaptive_spectral_clustering(A, features=X, random_state=1, **options)
    got = adaptive_spectral_clustering(A, features=X, random_state=1, device="cpu", **options)
    _same(ref, got)
    assert got[1]["k_selection"] == ref[1]["k_selection"]
    np.testing.assert_allclose(got[1]["eigenvalues"], ref[1]["eigenvalues"],
                               rtol=0, atol=1e-5 * ref[1]["eigenvalues"][0])


def test_affinity_only_small_inputs_and_one_segment():
    X, _ = make_planted_partition(3, n_samples=90, random_state=4)
    A = cosine_affinity(X)
    _same(adaptive_spectral_clustering(A, random_state=0),
          adaptive_spectral_clustering(A, random_state=0, device="cpu"))
    flat = np.ones((60, 5)) + 1e-4 * np.random.RandomState(0).randn(60, 5)
    labels, info = cluster_features(flat, random_state=0, device="cpu")
    assert info["n_clusters"] == 1 and info["single_segment"] and not labels.any()
    for n in (1, 2):
        _same(adaptive_spectral_clustering(np.eye(n), random_state=0),
              adaptive_spectral_clustering(np.eye(n), random_state=0, device="cpu"))


def test_landmarks_and_local_scaling_on_the_device():
    X, y = make_planted_partition(3, n_samples=1500, random_state=6)
    ref = cluster_features(X, max_dense_samples=600, random_state=0, return_embedding=True)
    got = cluster_features(X, max_dense_samples=600, random_state=0, device="cpu",
                           return_embedding=True)
    _same(ref[:2], got[:2])
    assert got[1]["n_landmarks"] == 600
    np.testing.assert_array_equal(got[2].landmarks, ref[2].landmarks)
    assert np.abs(got[2].proba - ref[2].proba).max() < 1e-3
    rng = np.random.RandomState(0)
    blobs = np.vstack([rng.randn(80, 2) + c for c in ([0, 0], [8, 0], [0, 8])])
    for kw in ({}, {"max_dense_samples": 150}):
        _same(cluster_features(blobs, affinity="local_scaling", random_state=0, **kw),
              cluster_features(blobs, affinity="local_scaling", random_state=0, device="cpu",
                               **kw))


def test_segmenter_estimator_takes_the_device():
    X, y = make_planted_partition(4, n_samples=400, random_state=7)
    ref = AdaptiveSpectralSegmenter(random_state=0).fit(X)
    got = AdaptiveSpectralSegmenter(random_state=0, device="cpu").fit(X)
    assert got.n_clusters_ == ref.n_clusters_ == 4
    assert adjusted_rand_score(ref.labels_, got.labels_) == 1.0
    assert np.abs(got.transform(X[:10]) - ref.transform(X[:10])).max() < 1e-4
    seg = AdaptiveSpectralSegmenter(affinity="precomputed", random_state=0, device="cpu")
    assert adjusted_rand_score(seg.fit_predict(cosine_affinity(X)), y) == 1.0


# --------------------------------------------------------------------------
# the pipeline: one setting for every stage
# --------------------------------------------------------------------------
def test_one_device_setting_reaches_every_step():
    pipe = make_clasp_pipeline("handcrafted", device="cpu", random_state=0)
    params = pipe.get_params()
    assert params["affinity__device"] == params["segment__device"] == "cpu"
    assert params["refine__backend"] == "torch" and params["refine__device"] == "cpu"
    assert "embed__device" not in params  # the weights-free embedder is NumPy only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dino = make_clasp_pipeline("dinov2", weights="random", device="cpu")
    assert dino.get_params()["embed__device"] == "cpu"
    default = make_clasp_pipeline("handcrafted").get_params()
    assert default["segment__device"] is None and default["affinity__device"] is None
    assert default["refine__backend"] == "pydensecrf"
    rebuilt = pipeline_from_settings({"embed": "handcrafted", "device": "cpu", "random_state": 0})
    assert pipeline_settings(rebuilt) == pipeline_settings(pipe)


def test_pipeline_on_the_device_matches_the_numpy_pipeline():
    image, truth = make_shapes_image(168, 224, n_shapes=3, noise=4, random_state=0)
    ref_mask, ref = clasp_one(make_clasp_pipeline("handcrafted", short_side=None,
                                                  random_state=0), image)
    mask, rec = clasp_one(make_clasp_pipeline("handcrafted", short_side=None, random_state=0,
                                              device="cpu"), image)
    assert rec.info["n_clusters"] == ref.info["n_clusters"]
    assert adjusted_rand_score(ref.labels.ravel(), rec.labels.ravel()) >= 0.99
    assert (mask == ref_mask).mean() >= 0.99
    assert rec.info["device"] == "cpu"


def test_affinity_step_on_the_device():
    image, _ = make_shapes_image(112, 140, n_shapes=2, random_state=1)
    pipe = make_clasp_pipeline("handcrafted", short_side=None)
    (rec,) = pipe[0].fit_transform([image])
    ref = CosineAffinity().fit_transform([rec])[0].affinity
    got = CosineAffinity(device="cpu").fit_transform([rec])[0].affinity
    assert isinstance(got, np.ndarray) and np.abs(got - ref).max() < 1e-6


# --------------------------------------------------------------------------
# real images
# --------------------------------------------------------------------------
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("kind", ["camvid", "bsds500"])
def test_real_images_same_k_and_partition(kind):
    """Every 10th val image: the segmenter's records, NumPy against torch on the CPU."""
    sys.path.insert(0, str(BENCHMARKS))
    import _data

    if not (_data.SHARED / kind).is_dir():
        pytest.skip(f"../shared/data/{kind} is absent")
    data = _data.camvid() if kind == "camvid" else _data.bsds500()
    items = data.items[::10]
    assert len(items) >= 10
    pipe = make_clasp_pipeline("handcrafted", random_state=0)
    records = pipe[:2].fit_transform([str(path) for _, path, _ in items])
    ref = AdaptiveSpectralSegmenter(random_state=0).fit_transform(records)
    got = AdaptiveSpectralSegmenter(random_state=0, device="cpu").fit_transform(records)
    for a, b in zip(ref, got):
        assert a.info["n_clusters"] == b.info["n_clusters"], a.source
        assert adjusted_rand_score(a.labels.ravel(), b.labels.ravel()) >= 0.99, a.source


# --------------------------------------------------------------------------
# the DINOv2 embedder: bounded batches, pinned copies, autocast
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_dino():
    from sklearn_clasp.embedding import DinoPatchEmbedder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DinoPatchEmbedder("dinov2_vits14", weights="random", short_side=None,
                                 random_state=0).fit()


def _images(n, shape=(56, 70, 3)):
    rng = np.random.RandomState(3)
    return [rng.randint(0, 256, shape, dtype=np.uint8) for _ in range(n)]


@pytest.mark.slow
def test_batches_are_bounded_whatever_batch_size(small_dino, monkeypatch):
    from sklearn_clasp.embedding._dinov2 import dino_patch_features, images_per_forward

    model = small_dino.model_
    images = _images(7)
    ref = dino_patch_features(model, images, batch_size=1)
    seen = []
    forward = model.patch_features

    def counting(x, **kw):
        seen.append(x.shape[0])
        return forward(x, **kw)

    monkeypatch.setattr(model, "patch_features", counting)
    per = images_per_forward(model, images[0].shape, max_bytes=2 * 2**20)
    assert 1 <= per < 7
    got = dino_patch_features(model, images, batch_size=10_000, max_batch_bytes=2 * 2**20)
    assert max(seen) == per and sum(seen) == 7
    for a, b in zip(ref, got):
        assert np.abs(a - b).max() < 1e-4 * max(1.0, np.abs(a).max())


def test_bfloat16_autocast_on_cpu(small_dino):
    from sklearn.base import clone

    image = _images(1)[0]
    ref = small_dino.transform([image])[0]
    emb = clone(small_dino).set_params(autocast="bfloat16")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = emb.fit().transform([image])[0]
    assert out.features.dtype == np.float32 and out.info["autocast"] == "bfloat16"
    a = ref.features.reshape(-1, ref.features.shape[-1])
    b = out.features.reshape(-1, a.shape[1])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.98 and np.abs(a - b).max() > 0  # changed, a little
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="autocast='float16' needs a CUDA device"):
            clone(small_dino).set_params(autocast="float16").fit()


def test_autocast_features_are_cached_apart(small_dino, tmp_path):
    from sklearn.base import clone

    image = _images(1)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = clone(small_dino).set_params(memory=str(tmp_path)).fit()
        auto = clone(small_dino).set_params(memory=str(tmp_path), autocast="bfloat16").fit()
    first = plain.transform([image])[0]
    second = auto.transform([image])[0]
    assert not second.info["cached"]  # not the float32 entry
    assert not np.array_equal(first.features, second.features)
    assert auto.transform([image])[0].info["cached"]


def test_a_step_setting_overrides_the_pipeline_device():
    pipe = pipeline_from_settings({"embed": "handcrafted", "device": "cpu",
                                   "segment__device": None, "refine__backend": "pydensecrf"})
    params = pipe.get_params()
    assert params["affinity__device"] == "cpu" and params["segment__device"] is None
    assert params["refine__backend"] == "pydensecrf"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dino = pipeline_from_settings({"embed": "dinov2", "embed__weights": "random",
                                       "embed__device": "cpu", "device": "auto"})
    assert dino.get_params()["embed__device"] == "cpu"
    assert dino.get_params()["segment__device"] == "auto"
