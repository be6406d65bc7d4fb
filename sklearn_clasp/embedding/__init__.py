"""Embed: turn images into one feature vector per patch.

Every embedder takes a list of images (arrays or file paths) and returns a list
of :class:`~sklearn_clasp.records.PatchGrid` records with ``image``,
``grid_shape`` and ``features`` set.
"""

from ._handcrafted import HandcraftedPatchEmbedder, handcrafted_patch_features

__all__ = ["HandcraftedPatchEmbedder", "handcrafted_patch_features"]
