"""
The DINOv2 embedder (with random weights)
=========================================

CLASP's features come from DINOv2 ViT-S/14 with registers,
:class:`~sklearn_clasp.embedding.DinoPatchEmbedder`. Its official weights
(88 MB) cannot be part of an offline example, so this one builds the same
network with **random weights** (``weights="random"``).

.. warning::

   Random weights give meaningless features: the segments below say nothing
   about CLASP's quality. The example only shows the API: the records the
   embedder returns, their metadata, and the embedder inside the pipeline.
   With the official weights (``weights=None``, the default) the same code is
   CLASP proper.
"""

# %%
# Embedding images
# ----------------
#
# ``fit`` builds the backbone and loads its weights (here: draws them from
# ``random_state``, with a warning); ``transform`` turns each image into a
# :class:`~sklearn_clasp.records.PatchGrid` with one ``D``-dimensional feature
# vector per 14 x 14 patch. A small ``short_side`` keeps the example fast on a
# CPU (the default, 448, is the paper's resolution).
import warnings

from sklearn_clasp.data import sample_image_paths
from sklearn_clasp.embedding import DinoPatchEmbedder

embedder = DinoPatchEmbedder(weights="random", short_side=168, random_state=0)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    embedder.fit(None)
for w in caught:
    print(f"{w.category.__name__}: {w.message}")
print(f"backbone: {embedder.model}, {embedder.n_blocks_} blocks, "
      f"D = {embedder.embed_dim_}, device {embedder.device_}")

paths = sample_image_paths()
records = embedder.transform(paths)
for rec in records:
    print(f"{rec.name.rsplit('/', 1)[-1]:14s} image {rec.image.shape[:2]}  "
          f"grid {rec.grid_shape}  features {rec.features.shape} {rec.features.dtype}")
print("metadata:", {k: v for k, v in records[0].info.items()})

# %%
# Looking at the features
# -----------------------
#
# The first three principal components of the patch features of one image,
# shown as RGB. With the official weights such a picture shows the objects;
# with random weights it mostly reflects colour and position.
import matplotlib.pyplot as plt
import numpy as np
from sklearn.decomposition import PCA

rec = records[0]
pcs = PCA(3, random_state=0).fit_transform(rec.feature_matrix)
pcs = (pcs - pcs.min(axis=0)) / np.ptp(pcs, axis=0)
fig, axes = plt.subplots(1, 2, figsize=(7, 3.4), layout="constrained")
axes[0].imshow(rec.image)
axes[0].set_title("image", fontsize=10)
axes[1].imshow(pcs.reshape(*rec.grid_shape, 3), interpolation="nearest")
axes[1].set_title("3 principal components of the patch features\n(random weights)",
                  fontsize=10)
for ax in axes:
    ax.set_axis_off()
plt.show()

# %%
# In the pipeline
# ---------------
#
# ``make_clasp_pipeline("dinov2", ...)`` passes embedder parameters through;
# an already-fitted embedder can be reused so that the backbone is loaded
# once. :func:`~sklearn_clasp.pipeline.clasp_one` runs one image through
# the pipeline and returns its record with the segmenter's diagnostics.
from sklearn_clasp import make_clasp_pipeline
from sklearn_clasp.pipeline import clasp_one

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the random-weights warning, seen above
    pipe = make_clasp_pipeline("dinov2", weights="random", short_side=168,
                               random_state=0)
    pipe[0].fit(None)
mask, record = clasp_one(pipe, paths[0])
print(f"K = {record.info['n_clusters']} (meaningless with random weights), "
      f"mask {mask.shape}")

# %%
# With the official weights
# -------------------------
#
# ``DinoPatchEmbedder()`` (or ``make_clasp_pipeline()``) looks for the
# official checkpoint in ``$SKLEARN_CLASP_WEIGHTS`` and the torch hub cache,
# downloads it if it may (``download=True``), and verifies its SHA-256. A
# local file: ``weights="/path/to/dinov2_vits14_reg4_pretrain.pth"``. From
# the command line, ``clasp weights`` shows where the files are looked for and
# ``clasp weights --download`` fetches them. See :doc:`/embedding`.
