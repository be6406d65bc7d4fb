"""sklearn-clasp: training-free image segmentation as scikit-learn components.

CLASP (Clustering via Adaptive Spectral Processing) embeds an image into
per-patch features, builds a cosine affinity between patches, clusters it with
an adaptive spectral method that picks the number of segments itself, and
refines the patch labels into a pixel-accurate mask with a DenseCRF.
"""

from .records import PatchGrid

__version__ = "0.1.0"

__all__ = ["PatchGrid", "__version__"]
