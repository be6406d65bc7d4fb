"""sklearn-clasp: training-free image segmentation as scikit-learn components.

CLASP (Clustering via Adaptive Spectral Processing) embeds an image into
per-patch features, builds a cosine affinity between patches, clusters it with
an adaptive spectral method that picks the number of segments itself, and
refines the patch labels into a pixel-accurate mask with a DenseCRF.
"""

from .affinity import CosineAffinity, cosine_affinity
from .records import PatchGrid
from .refine import CRFRefiner, dense_crf, refine_labels, upsample_labels
from .spectral import PAPER_SETTINGS, AdaptiveSpectralSegmenter, adaptive_spectral_clustering

__version__ = "0.1.0"

__all__ = [
    "AdaptiveSpectralSegmenter",
    "CRFRefiner",
    "CosineAffinity",
    "PAPER_SETTINGS",
    "PatchGrid",
    "adaptive_spectral_clustering",
    "cosine_affinity",
    "dense_crf",
    "refine_labels",
    "upsample_labels",
    "__version__",
]
