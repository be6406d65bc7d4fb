"""Embed: turn images into one feature vector per patch.

Every embedder takes a list of images (arrays or file paths) and returns a list
of :class:`~sklearn_clasp.records.PatchGrid` records with ``image``,
``grid_shape`` and ``features`` set.

The DINOv2 names are imported on first use, so that ``import sklearn_clasp``
does not import torch.
"""

from ._handcrafted import HandcraftedPatchEmbedder, handcrafted_patch_features

__all__ = [
    "DinoPatchEmbedder",
    "HandcraftedPatchEmbedder",
    "handcrafted_patch_features",
    "load_dinov2",
]

_LAZY = {"DinoPatchEmbedder", "load_dinov2"}


def __getattr__(name):
    if name in _LAZY:
        from . import _dinov2

        return getattr(_dinov2, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _LAZY)
