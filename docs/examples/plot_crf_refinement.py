"""
Before and after the DenseCRF
=============================

The segmenter labels 14 x 14 pixel patches, so its segment boundaries follow
the patch grid. The last step, :class:`~sklearn_clasp.CRFRefiner`, maps the
patch labels onto the pixels and, with ``method="crf"`` (the default), runs a
fully connected CRF that moves each boundary onto the colour edge next to it.
This example compares the plain nearest-neighbour upsampling
(``method="nearest"``, the paper's patch-based variant) with the CRF, on a
synthetic image with known segments and on a photograph.
"""

# %%
# One segmentation, two refinements
# ---------------------------------
#
# Running every step but the last (``pipe[:-1]``) gives the segmented
# :class:`~sklearn_clasp.records.PatchGrid` records. Both refiners then start
# from the same patch labels.
from sklearn_clasp import CRFRefiner, make_clasp_pipeline
from sklearn_clasp.datasets import make_shapes_image
from sklearn_clasp.metrics import segmentation_scores

image, truth = make_shapes_image(168, 224, n_shapes=3, noise=6, random_state=0)
pipe = make_clasp_pipeline("handcrafted", random_state=0)
records = pipe[:-1].fit_transform([image])
print("patch grid:", records[0].grid_shape, " K =", records[0].info["n_clusters"])

nearest, = CRFRefiner(method="nearest").fit_transform(records)
crf, = CRFRefiner(method="crf").fit_transform(records)

for name, mask in (("nearest", nearest), ("crf", crf)):
    scores = segmentation_scores(truth, mask)
    print(f"{name:8s} {scores['n_clusters']} segments  mIoU {scores['miou']:.3f}  "
          f"pixel accuracy {scores['pixel_accuracy']:.3f}")

# %%
# The image has 4 regions, but the segmenter finds a few more segments: patches
# that straddle two regions have features of both and group together. The
# nearest upsampling keeps them, as staircase bands along the patch grid; the
# CRF gives their pixels back to the regions on either side (its mask holds
# fewer labels than K) and follows the shapes' outlines.
import matplotlib.pyplot as plt

from sklearn_clasp.visualize import draw_boundaries

fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), layout="constrained")
for ax, (title, mask) in zip(axes, (("ground truth", truth),
                                    ("patch labels, nearest upsampling", nearest),
                                    ("after the DenseCRF", crf))):
    ax.imshow(draw_boundaries(image, mask, color=(255, 0, 0)))
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
plt.show()

# %%
# On a photograph
# ---------------
#
# The same comparison on a bundled photograph. The functional core does the
# same as the estimator: :func:`~sklearn_clasp.refine.refine_labels` takes the
# patch labels and the image.
import numpy as np

from sklearn_clasp.data import sample_image_paths
from sklearn_clasp.pipeline import clasp_one
from sklearn_clasp.refine import refine_labels
from sklearn_clasp.visualize import overlay

photo_pipe = make_clasp_pipeline("handcrafted", random_state=0)
photo_pipe[0].fit(None)
photo_crf, record = clasp_one(photo_pipe, sample_image_paths()[1])
photo_nearest = refine_labels(record.image, record.labels, method="nearest")
changed = np.mean(photo_crf != photo_nearest)
print(f"K = {record.info['n_clusters']}; the CRF relabelled {changed:.1%} of the pixels")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
axes[0].imshow(overlay(record.image, photo_nearest))
axes[0].set_title("nearest upsampling of the patch labels", fontsize=10)
axes[1].imshow(overlay(record.image, photo_crf))
axes[1].set_title("DenseCRF", fontsize=10)
for ax in axes:
    ax.set_axis_off()
plt.show()

# %%
# The CRF's parameters (``n_iter``, ``gt_prob``, the kernel widths and
# weights) are parameters of :class:`~sklearn_clasp.CRFRefiner` and of the
# pipeline (``refine__n_iter``, ...); see :doc:`/refine`.
