"""
Composing the pipeline
======================

:func:`~sklearn_clasp.make_clasp_pipeline` returns a
:class:`~sklearn_clasp.pipeline.ClaspPipeline`, a scikit-learn
:class:`~sklearn.pipeline.Pipeline` of four named steps. Everything a
``Pipeline`` offers works on it: parameters by ``<step>__<parameter>``,
replacing a step, slicing, ``clone``, ``set_output``. What ``fit``,
``predict`` and ``transform`` mean for it is on :doc:`/sklearn_semantics`.
"""

# %%
# Steps and parameters
# --------------------
from sklearn.base import clone
from sklearn.utils.validation import check_is_fitted

from sklearn_clasp import make_clasp_pipeline
from sklearn_clasp.data import sample_image_paths
from sklearn_clasp.io import load_image

images = [load_image(p) for p in sample_image_paths()]
pipe = make_clasp_pipeline("handcrafted", short_side=224, random_state=0)
print([name for name, _ in pipe.steps])
print({k: v for k, v in pipe.get_params().items()
       if k in ("embed__short_side", "segment__k_max", "refine__method")})

# %%
# Training-free: ``fit`` reads no image. The handcrafted embedder needs no
# fit at all, so neither does this pipeline: ``check_is_fitted`` passes and
# ``predict`` works at once (a DINOv2 pipeline needs ``fit()`` first, which
# loads the weights).
check_is_fitted(pipe)
masks = pipe.predict(images)
print("masks:", [m.shape for m in masks])

# %%
# Replacing a step
# ----------------
#
# Any step can be swapped for another estimator with ``set_params``: here a
# sparse k-nearest-neighbour affinity instead of the dense one, and blocky
# patch upsampling instead of the DenseCRF.
from sklearn_clasp import CosineAffinity

knn = clone(pipe).set_params(affinity=CosineAffinity(n_neighbors=10),
                             refine__method="nearest")
knn_masks = knn.predict(images)

# %%
# Slicing: the records between the steps
# ---------------------------------------
#
# ``pipe[:-1]`` is the pipeline up to the segmenter: its ``transform`` returns
# one :class:`~sklearn_clasp.records.PatchGrid` record per image, with the
# patch labels and every diagnostic in ``info``. The estimators keep no
# per-image attributes, so this (or :func:`~sklearn_clasp.clasp_one`, one
# image's mask and record) is where each image's K is.
for name, model in (("dense + CRF", pipe), ("kNN + nearest", knn)):
    records = model[:-1].transform(images)
    print(f"{name:14s} K per image: {[r.info['n_clusters'] for r in records]}  "
          f"affinity: {records[0].info['affinity']}")

# %%
# Output containers
# -----------------
#
# The steps return records and masks, not tables. Under a global
# ``set_config(transform_output="pandas")`` they raise instead of ignoring
# it; ``set_output(transform="default")`` runs the pipeline anyway.
from sklearn import config_context

with config_context(transform_output="pandas"):
    try:
        clone(pipe).predict(images[:1])
    except ValueError as exc:
        print("ValueError:", str(exc)[:90], "...")
    pipe.set_output(transform="default")
    print("with set_output('default'):", pipe.predict(images[:1])[0].shape)

# %%
# The two compositions side by side.
import matplotlib.pyplot as plt

from sklearn_clasp.visualize import overlay

fig, axes = plt.subplots(2, len(images), figsize=(3 * len(images), 5), layout="constrained")
for col, (image, a, b) in enumerate(zip(images, masks, knn_masks)):
    axes[0, col].imshow(overlay(image, a))
    axes[1, col].imshow(overlay(image, b))
axes[0, 0].set_ylabel("dense affinity + CRF")
axes[1, 0].set_ylabel("kNN affinity + nearest")
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
plt.show()
