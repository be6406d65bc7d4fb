"""
How CLASP chooses the number of segments
========================================

CLASP picks K for each image in two moves: the eigengaps of the patch
affinity's leading eigenvalues give a first estimate ``K0``, then every K near
``K0`` is tried (k-means on the leading eigenvectors) and the partition with
the best silhouette wins. This example draws both moves, first on feature
vectors with a known number of groups, then on a photograph with
:func:`~sklearn_clasp.explain.explain_figure` (what ``clasp explain`` draws).
"""

# %%
# Features with a known answer
# ----------------------------
#
# :func:`~sklearn_clasp.datasets.make_planted_partition` draws feature vectors
# in planted groups, like the patch features of an image with that many
# regions (here 5 groups of unequal size).
import numpy as np

from sklearn_clasp import cosine_affinity
from sklearn_clasp.datasets import make_planted_partition
from sklearn_clasp.spectral import eigengap_scores, leading_eigenpairs

# sphinx_gallery_thumbnail_number = 3

X, y = make_planted_partition(5, n_samples=400, noise=1.0, imbalance=3.0,
                              random_state=0)
A = cosine_affinity(X)  # (400, 400), negative similarities set to 0
eigenvalues, _ = leading_eigenpairs(A, 16, random_state=0)
print("leading eigenvalues:", np.round(eigenvalues[:8], 1))

# %%
# The spectrum and the eigengap rules
# -----------------------------------
#
# An affinity with K well-separated groups has K large eigenvalues and then a
# drop. Each eigengap rule scores the gaps ``d_i = l_i - l_(i+1)`` in its own
# way and takes the best one: the relative gap ``d_i / l_i`` (the default),
# the plain gap (the classic heuristic), or the gap's distance to the chord
# through the first and the last gap (the CLASP paper's elbow, which gives
# ``K0 = i + 1``). The first gap (one segment against several) is excluded
# from the ``relative`` and ``largest`` rules by ``k_min=2``: one segment is
# decided by a separate test.
import matplotlib.pyplot as plt

rules = ("relative", "largest", "elbow")
fig, axes = plt.subplots(1, 4, figsize=(13, 3.2), layout="constrained")
index = np.arange(1, eigenvalues.size + 1)
axes[0].plot(index, eigenvalues, "o-", color="tab:blue")
axes[0].axvline(5, color="gray", linestyle=":")
axes[0].set_title("leading eigenvalues of the affinity")
axes[0].set_xlabel("i")
for ax, rule in zip(axes[1:], rules):
    gap_index, scores, eligible, best, k0 = eigengap_scores(
        eigenvalues, rule=rule, k_min=2, k_max=15)
    colors = np.where(eligible, "tab:orange", "lightgray").astype(object)
    colors[best - 1] = "tab:red"
    ax.bar(gap_index, scores, color=list(colors))
    ax.set_title(f"{rule!r} rule: K0 = {k0}")
    ax.set_xlabel("gap i (between l_i and l_i+1)")
    print(f"{rule:9s} K0 = {k0}")
plt.show()

# %%
# The silhouette search
# ---------------------
#
# With ``beta=0.5`` every K in ``[K0 (1 - beta), K0 (1 + beta)]`` is tried.
# :func:`~sklearn_clasp.spectral.adaptive_spectral_clustering` returns the
# labels and its diagnostics, among them the silhouette of every candidate
# (cosine distance of the features, computed exactly in ``O(n d K)``).
from sklearn.metrics import adjusted_rand_score

from sklearn_clasp.spectral import adaptive_spectral_clustering

labels, info = adaptive_spectral_clustering(A, features=X, random_state=0)
ks = sorted(info["silhouette_scores"])
scores = [info["silhouette_scores"][k] for k in ks]
print(f"K0 = {info['eigengap_k']}, chosen K = {info['n_clusters']}, "
      f"adjusted Rand index against the planted groups: "
      f"{adjusted_rand_score(y, labels):.3f}")

fig, ax = plt.subplots(figsize=(5, 3.2), layout="constrained")
ax.plot(ks, scores, "o-", color="tab:green")
ax.plot([info["n_clusters"]], [info["silhouette"]], "*", color="tab:red",
        markersize=16, label=f"chosen K = {info['n_clusters']}")
ax.set_xticks(ks)
ax.set_xlabel("K")
ax.set_ylabel("mean silhouette (cosine)")
ax.set_title(f"silhouette over the K searched around K0 = {info['eigengap_k']}")
ax.legend()
plt.show()

# %%
# On a photograph: ``explain_figure``
# -----------------------------------
#
# :func:`~sklearn_clasp.explain.explain_figure` segments one image with a
# pipeline and draws the same two panels from its diagnostics, next to the
# image, the patch labels and the refined mask. The title says which K was
# chosen and why. It returns a :class:`matplotlib.figure.Figure`; save it with
# ``fig.savefig("explain.png")``. From the command line:
# ``clasp explain IMAGE --embedder handcrafted``.
from sklearn_clasp import make_clasp_pipeline
from sklearn_clasp.data import sample_image_paths
from sklearn_clasp.explain import explain_figure

astronaut = sample_image_paths()[0]
pipe = make_clasp_pipeline("handcrafted", random_state=0)
explanation = explain_figure(astronaut, pipe, figsize=(12, 7.5), dpi=80)
print(explanation.get_suptitle())
