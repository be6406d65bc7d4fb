"""
Using the components on their own
=================================

Each CLASP step is an ordinary scikit-learn estimator that also works outside
the image pipeline, on plain arrays:

- :class:`~sklearn_clasp.CosineAffinity` is a kernel transformer;
- :class:`~sklearn_clasp.AdaptiveSpectralSegmenter` is a clusterer that
  chooses its number of clusters (it passes scikit-learn's estimator checks),
  predicts new samples and searches like scikit-learn's clusterers;
- :class:`~sklearn_clasp.CRFRefiner` refines any coarse label map against an
  image.

Each has a functional core as well: :func:`~sklearn_clasp.cosine_affinity`,
:func:`~sklearn_clasp.adaptive_spectral_clustering`,
:func:`~sklearn_clasp.refine_labels`.
"""

# %%
# A feature matrix with planted groups
# ------------------------------------
import numpy as np

from sklearn_clasp.datasets import make_planted_partition

X, y = make_planted_partition(4, n_samples=300, noise=0.8, random_state=0)
print("features:", X.shape, " groups:", np.bincount(y))

# %%
# The segmenter as a clusterer
# ----------------------------
#
# ``fit`` picks K (``n_clusters_``) and labels the samples (``labels_``); the
# diagnostics (``eigengap_k_``, ``eigenvalues_``, ``silhouette_scores_``) tell
# how.
from sklearn.metrics import adjusted_rand_score

from sklearn_clasp import AdaptiveSpectralSegmenter

seg = AdaptiveSpectralSegmenter(random_state=0).fit(X)
print(f"K = {seg.n_clusters_} (K0 = {seg.eigengap_k_}), "
      f"ARI = {adjusted_rand_score(y, seg.labels_):.3f}")
print("silhouette per K:", {k: round(s, 3) for k, s in seg.silhouette_scores_.items()})

# %%
# Searching its K range
# ---------------------
#
# ``predict`` labels new samples (the nearest k-means centre in the spectral
# embedding) and ``score`` is the adjusted Rand index against ``y``, so
# :class:`~sklearn.model_selection.GridSearchCV` works as with scikit-learn's
# clusterers: with ``scoring="adjusted_rand_score"`` or without ``scoring``.
from sklearn.model_selection import GridSearchCV

search = GridSearchCV(AdaptiveSpectralSegmenter(random_state=0), {"k_max": [2, 3, 4, 8]},
                      scoring="adjusted_rand_score")
search.fit(X, y)
for k, score in zip(search.cv_results_["param_k_max"],
                    search.cv_results_["mean_test_score"]):
    print(f"k_max = {k}: held-out ARI {score:.3f}")
print("best:", search.best_params_)

# %%
# An affinity step in front, in a Pipeline
# ----------------------------------------
#
# With ``affinity="precomputed"`` the segmenter takes a square affinity, for
# example a sparse k-nearest-neighbour graph from
# :class:`~sklearn_clasp.CosineAffinity`. The two chain in a
# :class:`~sklearn.pipeline.Pipeline`, and every parameter can be searched.
from sklearn.pipeline import make_pipeline

from sklearn_clasp import CosineAffinity

knn = make_pipeline(
    CosineAffinity(n_neighbors=15),
    AdaptiveSpectralSegmenter(affinity="precomputed", random_state=0),
)
labels = knn.fit_predict(X)
A = knn[0].transform(X)
print(f"sparse affinity: {type(A).__name__}, {A.nnz} stored entries; "
      f"K = {knn[-1].n_clusters_}, ARI = {adjusted_rand_score(y, labels):.3f}")

# %%
# ``transform`` gives the row-normalised spectral embedding that k-means
# clustered, and places new samples in it (Nystroem extension). Below, the
# dense affinity with the samples ordered by cluster, and the first two
# embedding coordinates of the fitted samples and of new ones.
from sklearn_clasp import cosine_affinity

X_new, y_new = make_planted_partition(4, n_samples=100, noise=0.8, random_state=0)
embedding = seg.transform(X)
embedding_new = seg.transform(X_new[:40])
print(f"new samples: ARI {adjusted_rand_score(y_new, seg.predict(X_new)):.3f}; "
      f"embedding columns {seg.get_feature_names_out()[:2].tolist()} ...")

import matplotlib.pyplot as plt

order = np.argsort(seg.labels_, kind="stable")
fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
axes[0].imshow(cosine_affinity(X)[np.ix_(order, order)], cmap="magma")
axes[0].set_title("cosine affinity, samples ordered by cluster")
axes[1].scatter(embedding[:, 0], embedding[:, 1], c=seg.labels_, cmap="tab10",
                s=12, vmin=0, vmax=9, label="fitted samples")
axes[1].scatter(embedding_new[:, 0], embedding_new[:, 1], marker="x",
                color="black", s=30, label="new samples (transform)")
axes[1].set_title("spectral embedding (first two coordinates)")
axes[1].legend(loc="best", fontsize=8)
plt.show()

# %%
# The refiner on any label map
# ----------------------------
#
# :class:`~sklearn_clasp.CRFRefiner` takes ``(image, labels)`` pairs: an RGB
# image ``(H, W, 3)`` and coarse labels of shape ``(h, w)``. Here a 4 x 4 grid
# of labels gets a 112 x 112 image with a disc in it; the CRF moves the blocky
# boundary onto the disc's edge.
from sklearn_clasp import CRFRefiner
from sklearn_clasp.visualize import draw_boundaries

yy, xx = np.mgrid[0:112, 0:112]
disc = (yy - 50) ** 2 + (xx - 60) ** 2 < 33 ** 2
image = np.where(disc[..., None], [200, 60, 40], [40, 90, 160]).astype(np.uint8)
coarse = np.array([[0, 0, 0, 0],
                   [0, 1, 1, 0],
                   [0, 1, 1, 0],
                   [0, 0, 0, 0]])

blocky, = CRFRefiner(method="nearest").fit_transform([(image, coarse)])
refined, = CRFRefiner().fit_transform([(image, coarse)])
for name, mask in (("nearest", blocky), ("crf", refined)):
    print(f"{name:8s} pixels labelled as the disc: {np.mean((mask == 1) == disc):.1%} right")

fig, axes = plt.subplots(1, 2, figsize=(6, 3), layout="constrained")
for ax, (title, mask) in zip(axes, (("coarse labels", blocky), ("CRFRefiner", refined))):
    ax.imshow(draw_boundaries(image, mask))
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
plt.show()
