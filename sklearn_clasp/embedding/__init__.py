"""Embed: turn images into one feature vector per patch.

Every embedder takes a list of images (arrays or file paths) and returns a list
of :class:`~sklearn_clasp.records.PatchGrid` records with ``image``,
``grid_shape`` and ``features`` set.

The DINOv2 names are imported on first use, so that ``import sklearn_clasp``
does not import torch.
"""

from ._grid import MAX_PATCHES, patch_grid_shape
from ._handcrafted import HandcraftedPatchEmbedder, handcrafted_patch_features

__all__ = [
    "ChecksumMismatchError",
    "DinoPatchEmbedder",
    "HandcraftedPatchEmbedder",
    "MAX_BATCH_SIZE",
    "MAX_PATCHES",
    "patch_grid_shape",
    "UnsafeCheckpointError",
    "WeightsUnavailableError",
    "handcrafted_patch_features",
    "load_dinov2",
]

# name -> submodule that defines it (imported on first access: it imports torch)
_LAZY = {
    "DinoPatchEmbedder": "_dinov2",
    "MAX_BATCH_SIZE": "_dinov2",
    "load_dinov2": "_dinov2",
    "ChecksumMismatchError": "weights",
    "UnsafeCheckpointError": "weights",
    "WeightsUnavailableError": "weights",
}


def __getattr__(name):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
