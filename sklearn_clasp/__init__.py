"""sklearn-clasp: training-free image segmentation as scikit-learn components.

CLASP (Clustering via Adaptive Spectral Processing) embeds an image into
per-patch features, builds a cosine affinity between patches, clusters it with
an adaptive spectral method that picks the number of segments itself, and
refines the patch labels into a pixel-accurate mask with a DenseCRF.

The names below are imported from their modules on first use, so that
``import sklearn_clasp`` (and ``clasp --version``) imports neither
scikit-learn nor torch.
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> the module that defines it
_HOMES = {
    "AdaptiveSpectralSegmenter": "spectral",
    "CRFRefiner": "refine",
    "CosineAffinity": "affinity",
    "DinoPatchEmbedder": "embedding",
    "HandcraftedPatchEmbedder": "embedding",
    "PAPER_SETTINGS": "spectral",
    "PatchGrid": "records",
    "adaptive_spectral_clustering": "spectral",
    "clasp_one": "pipeline",
    "cosine_affinity": "affinity",
    "dense_crf": "refine",
    "find_images": "io",
    "load_image": "io",
    "make_clasp_pipeline": "pipeline",
    "refine_labels": "refine",
    "segment_collection": "collection",
    "upsample_labels": "refine",
}

__all__ = [*sorted(_HOMES), "__version__"]


def __getattr__(name):
    if name in _HOMES:
        return getattr(import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_HOMES))
