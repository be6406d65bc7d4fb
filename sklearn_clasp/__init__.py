"""sklearn-clasp: training-free image segmentation as scikit-learn components.

CLASP (Clustering via Adaptive Spectral Processing) embeds an image into
per-patch features, builds a cosine affinity between patches, clusters it with
an adaptive spectral method that picks the number of segments itself, and
refines the patch labels into a pixel-accurate mask with a DenseCRF.
"""

from .affinity import CosineAffinity, cosine_affinity
from .collection import segment_collection
from .embedding import HandcraftedPatchEmbedder
from .io import find_images, load_image
from .pipeline import clasp_one, make_clasp_pipeline
from .records import PatchGrid
from .refine import CRFRefiner, dense_crf, refine_labels, upsample_labels
from .spectral import PAPER_SETTINGS, AdaptiveSpectralSegmenter, adaptive_spectral_clustering

__version__ = "0.1.0"

__all__ = [
    "AdaptiveSpectralSegmenter",
    "CRFRefiner",
    "CosineAffinity",
    "DinoPatchEmbedder",
    "HandcraftedPatchEmbedder",
    "PAPER_SETTINGS",
    "PatchGrid",
    "adaptive_spectral_clustering",
    "clasp_one",
    "cosine_affinity",
    "dense_crf",
    "find_images",
    "load_image",
    "make_clasp_pipeline",
    "refine_labels",
    "segment_collection",
    "upsample_labels",
    "__version__",
]


def __getattr__(name):
    # DINOv2 (and so torch) is imported on first use only.
    if name == "DinoPatchEmbedder":
        from .embedding import DinoPatchEmbedder

        return DinoPatchEmbedder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
