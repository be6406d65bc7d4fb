"""
Grid search over K with ground truth
====================================

A CLASP pipeline is a scikit-learn estimator, so
:class:`~sklearn.model_selection.GridSearchCV` tunes it like any other: ``X``
is a list of images, ``y`` the list of their ground-truth masks, and the
scorers of :mod:`sklearn_clasp.metrics` score the predicted masks after a
Hungarian matching of segments to classes (segment ids mean nothing by
themselves).

Here the grid compares a fixed number of segments ``K = 2 .. 7`` (``k_min =
k_max = K``) with CLASP's adaptive choice (``k_min=2, k_max=15``: K chosen per
image) on synthetic images that have between 2 and 7 regions.
"""

# %%
# Images with known segments
# --------------------------
#
# :func:`~sklearn_clasp.datasets.make_shapes_image` draws ``n_shapes``
# flat-coloured shapes on a grey background (with pixel noise) and returns the
# true segmentation with it.
from sklearn_clasp.datasets import make_shapes_image

data = [make_shapes_image(140, 140, n_shapes=n, noise=6, random_state=n)
        for n in range(1, 7)]
images = [image for image, _ in data]
truths = [truth for _, truth in data]
print("regions per image:", [len(set(t.ravel().tolist())) for t in truths])

# %%
# The search
# ----------
#
# A list of grids, one per fixed K, and one for the adaptive choice. The
# cross-validation folds only split the images into groups that are scored
# separately: CLASP is training-free, so fitting on the training images does
# not change how the held-out images are segmented.
from sklearn.model_selection import GridSearchCV, KFold

from sklearn_clasp import make_clasp_pipeline
from sklearn_clasp.metrics import miou_scorer, pixel_accuracy_scorer

# short_side=196: a 14 x 14 patch grid per image, to keep the example fast
pipe = make_clasp_pipeline("handcrafted", short_side=196, random_state=0)
fixed_k = list(range(2, 8))
grid = [{"segment__k_min": [k], "segment__k_max": [k]} for k in fixed_k]
grid.append({"segment__k_min": [2], "segment__k_max": [15]})  # adaptive

search = GridSearchCV(
    pipe, grid, cv=KFold(3),
    scoring={"miou": miou_scorer, "pixel_accuracy": pixel_accuracy_scorer},
    refit="miou",
)
search.fit(images, truths)
print("best:", search.best_params_, f"mIoU {search.best_score_:.3f}")

# %%
# The results, as for any scikit-learn search, are in ``cv_results_``:
import matplotlib.pyplot as plt

results = search.cv_results_
names = [f"K = {k}" for k in fixed_k] + ["adaptive"]
for name, miou, acc in zip(names, results["mean_test_miou"],
                           results["mean_test_pixel_accuracy"]):
    print(f"{name:9s} mIoU {miou:.3f}  pixel accuracy {acc:.3f}")

fig, ax = plt.subplots(figsize=(7, 3.2), layout="constrained")
colors = ["tab:gray"] * len(fixed_k) + ["tab:green"]
ax.bar(names, results["mean_test_miou"], yerr=results["std_test_miou"],
       color=colors, capsize=3)
ax.set_ylabel("mean per-image mIoU")
ax.set_ylim(0, 1.05)
ax.set_title("fixed K against CLASP's per-image K")
plt.show()

# %%
# No single K suits every image; the adaptive choice does better than the
# best fixed K. The refitted best pipeline segments new images afresh. Its K
# counts segments of patches: on these small images (14 x 14 patches) the
# patches that straddle two regions form small segments of their own, which
# the CRF hands back to the regions around them (see
# :ref:`sphx_glr_auto_examples_plot_crf_refinement.py`), so the masks have
# fewer segments than K.
best = search.best_estimator_
masks = best.predict(images)
print("K chosen per image:       ", best.named_steps["segment"].n_clusters_)
print("segments in the masks:    ", [len(set(m.ravel().tolist())) for m in masks])
print("regions in the truth:     ", [len(set(t.ravel().tolist())) for t in truths])

# %%
# Without ground truth
# --------------------
#
# :func:`~sklearn_clasp.metrics.silhouette_scorer` scores the mean silhouette
# of the chosen partitions (the refinement step is not run), so settings can
# be compared on images without labels:
from sklearn_clasp.metrics import silhouette_scorer

unsupervised = GridSearchCV(pipe, {"segment__beta": [0.0, 0.5, 1.0]},
                            scoring=silhouette_scorer, cv=KFold(3))
unsupervised.fit(images)
for beta, score in zip(unsupervised.cv_results_["param_segment__beta"],
                       unsupervised.cv_results_["mean_test_score"]):
    print(f"beta = {beta}: mean silhouette {score:.3f}")

# %%
# ``make_segmentation_scorer("miou", ignore_index=255)`` makes a scorer that
# leaves out "void" pixels; see :doc:`/metrics`.
