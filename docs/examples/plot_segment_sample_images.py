"""
Segment the sample images
=========================

The whole CLASP pipeline (embed, affinity, adaptive spectral clustering,
DenseCRF refinement) on the three photographs bundled with the package. The
weights-free :class:`~sklearn_clasp.embedding.HandcraftedPatchEmbedder`
(colour, texture and position per 14 x 14 patch) stands in for DINOv2 so that
the example runs offline; ``make_clasp_pipeline("dinov2")`` gives CLASP
proper, with the same code.
"""

# %%
# Build the pipeline and segment
# ------------------------------
#
# :func:`~sklearn_clasp.make_clasp_pipeline` returns a
# :class:`sklearn.pipeline.Pipeline` with the steps ``embed``, ``affinity``,
# ``segment`` and ``refine``. ``fit_predict`` takes a list of images (arrays
# or file paths) and returns one integer mask per image, at the image's size.
# Each image is segmented on its own, and the number of segments K is chosen
# per image; :func:`~sklearn_clasp.clasp_one` returns one image's mask with
# its record, where that choice and every other diagnostic are.
from sklearn_clasp import clasp_one, make_clasp_pipeline
from sklearn_clasp.data import sample_image_paths
from sklearn_clasp.io import load_image

paths = sample_image_paths()
images = [load_image(path) for path in paths]

pipe = make_clasp_pipeline("handcrafted", random_state=0)
masks = pipe.fit_predict(images)

for path, image, mask in zip(paths, images, masks):
    _, record = clasp_one(pipe, image)
    print(f"{path.name:14s} image {image.shape[:2]}  mask {mask.shape}  "
          f"K = {record.info['n_clusters']} "
          f"(eigengap estimate K0 = {record.info['eigengap_k']})")

# %%
# Look at the masks
# -----------------
#
# :func:`~sklearn_clasp.visualize.color_labels` colours a label map;
# :func:`~sklearn_clasp.visualize.overlay` blends the colours over the image
# and draws the segment boundaries. Both return plain ``uint8`` RGB arrays, so
# any plotting library (or :func:`~sklearn_clasp.io.save_png`) can show
# them.
import matplotlib.pyplot as plt

from sklearn_clasp.visualize import color_labels, overlay

fig, axes = plt.subplots(len(images), 3, figsize=(9, 2.4 * len(images)),
                         layout="constrained")
for row, (path, image, mask) in zip(axes, zip(paths, images, masks)):
    row[0].imshow(image)
    row[0].set_title(path.name, fontsize=9)
    row[1].imshow(color_labels(mask))
    row[1].set_title(f"color_labels: {len(set(mask.ravel().tolist()))} segments", fontsize=9)
    row[2].imshow(overlay(image, mask))
    row[2].set_title("overlay", fontsize=9)
    for ax in row:
        ax.set_axis_off()
plt.show()

# %%
# The same pipeline with DINOv2
# -----------------------------
#
# With network access (or the checkpoint on disk), the real CLASP features
# come from DINOv2 ViT-S/14 with registers. The weights (88 MB) are looked
# up in ``$SKLEARN_CLASP_WEIGHTS`` and the torch hub cache, and downloaded and
# checksum-verified only if missing::
#
#     pipe = make_clasp_pipeline("dinov2", random_state=0)
#     masks = pipe.fit_predict(images)
#
# See :doc:`/embedding` for the models, the weights and offline use.
