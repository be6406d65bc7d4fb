"""Adaptive spectral clustering: CLASP's choice of K and its segmentation.

The functional core is :func:`adaptive_spectral_clustering` (one affinity
matrix) and :func:`cluster_features` (features, in bounded memory); the
estimator :class:`AdaptiveSpectralSegmenter` calls them for plain matrices and
for the per-image records of the CLASP pipeline.

For one affinity ``A`` of ``n`` patches:

1. The ``max(k_max + 1, 16)`` leading eigenpairs of ``A`` (``spectrum="affinity"``, the
   paper's) or of ``D^-1/2 A D^-1/2`` (``spectrum="normalized"``).
2. A first estimate ``K0`` from the eigenvalues (``eigengap_rule``: the
   relative gap, the largest gap, the paper's elbow, or the entropy of the
   spectrum).
3. With ``k_min=1``, a test for one segment (``single_segment_test``: the gap
   statistic, or the second normalised eigenvalue against a threshold).
4. Candidate partitions: k-means on the row-normalised leading K
   eigenvectors, for the Ks ``k_selection`` considers, and the final K:
   the best feature silhouette around ``K0`` (the paper's), ``K0`` itself,
   the most stable k-means restarts, the gap statistic, or the self-tuning
   eigenvector rotation over ``[k_min, k_max]``.

Every rule is defined, cited and measured in the user guide,
``docs/spectral.md``. Module layout: ``_eigen`` (the spectrum), ``_rules``
(K0, the selections, the one-segment tests), ``_silhouette``,
``_background`` (per-segment statistics), ``_core`` (the functional core) and
``_estimator``.
"""

from ._background import segment_statistics
from ._core import (
    MAX_CLUSTERS,
    MAX_N_INIT,
    SpectralEmbedding,
    adaptive_spectral_clustering,
    check_k_bounds as check_k_bounds,
    cluster_features,
    spectral_extension,
)
from ._eigen import leading_eigenpairs
from ._estimator import PAPER_SETTINGS, AdaptiveSpectralSegmenter
from ._rules import eigengap_k, eigengap_scores
from ._silhouette import (
    silhouette_scores_cosine,
    silhouette_scores_euclidean,
    silhouette_scores_for_labels,
)

__all__ = [
    "adaptive_spectral_clustering",
    "cluster_features",
    "eigengap_k",
    "eigengap_scores",
    "leading_eigenpairs",
    "segment_statistics",
    "silhouette_scores_for_labels",
    "silhouette_scores_cosine",
    "silhouette_scores_euclidean",
    "spectral_extension",
    "AdaptiveSpectralSegmenter",
    "SpectralEmbedding",
    "MAX_CLUSTERS",
    "MAX_N_INIT",
    "PAPER_SETTINGS",
]
