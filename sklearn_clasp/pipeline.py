"""The CLASP pipeline: embed, affinity, segment, refine.

:func:`make_clasp_pipeline` assembles the four steps into a
:class:`~sklearn.pipeline.Pipeline`; :func:`segment_image` runs a pipeline on a
single image and returns both the segmented record (with the segmenter's
diagnostics) and the full-resolution mask, for streaming over many images.
"""

from __future__ import annotations

import logging
from numbers import Integral, Real

from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions, validate_params
from sklearn.utils.validation import check_is_fitted

from ._cache import check_cache_location
from .affinity import CosineAffinity
from .embedding._handcrafted import HandcraftedPatchEmbedder
from .refine import CRFRefiner
from .spectral import PAPER_SETTINGS, AdaptiveSpectralSegmenter

__all__ = ["make_clasp_pipeline", "segment_image", "STEP_NAMES"]

logger = logging.getLogger(__name__)

#: Names of the steps of a CLASP pipeline, in order.
STEP_NAMES = ("embed", "affinity", "segment", "refine")


def _make_embedder(embedder, random_state, embedder_params):
    """The ``embed`` step: a new embedder for a name, a clone for an instance."""
    if not isinstance(embedder, str):
        if embedder_params:
            raise TypeError(
                f"make_clasp_pipeline: embedder parameters "
                f"{sorted(embedder_params)} only apply when the embedder is given by "
                f"name ('dinov2' or 'handcrafted'); set them on the "
                f"{type(embedder).__name__} instance instead."
            )
        return clone(embedder)
    if embedder == "dinov2":
        # Imported here so that the weights-free path never loads the backbone code.
        from .embedding._dinov2 import DinoPatchEmbedder

        cls = DinoPatchEmbedder
        params = {"random_state": random_state, **embedder_params}
    else:
        cls = HandcraftedPatchEmbedder
        params = dict(embedder_params)
    valid = cls().get_params(deep=False)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise TypeError(
            f"make_clasp_pipeline: {unknown} are not parameters of {cls.__name__} "
            f"(embedder={embedder!r}); its parameters are {sorted(valid)}."
        )
    return cls(**params)


@validate_params(
    {
        "embedder": [StrOptions({"dinov2", "handcrafted"}), HasMethods(["fit", "transform"])],
        "k_min": [Interval(Integral, 1, None, closed="left")],
        "k_max": [Interval(Integral, 1, None, closed="left")],
        "beta": [Interval(Real, 0, None, closed="left")],
        "refine": [StrOptions({"crf", "nearest", "bilinear"})],
        "paper": ["boolean"],
        "random_state": ["random_state"],
        "memory": [None, str, HasMethods(["cache"])],
    },
    prefer_skip_nested_validation=True,
)
def make_clasp_pipeline(
    embedder="dinov2",
    *,
    k_min=2,
    k_max=15,
    beta=0.5,
    refine="crf",
    paper=False,
    random_state=None,
    memory=None,
    **embedder_params,
):
    """Build the CLASP segmentation pipeline.

    The pipeline has four named steps:

    ``embed``
        A patch embedder: :class:`~sklearn_clasp.embedding.DinoPatchEmbedder`
        (``"dinov2"``, the paper's DINOv2 ViT-S/14 with registers),
        :class:`~sklearn_clasp.embedding.HandcraftedPatchEmbedder`
        (``"handcrafted"``, weights-free colour and texture features) or an
        embedder you pass.
    ``affinity``
        :class:`~sklearn_clasp.affinity.CosineAffinity`, the dense cosine
        affinity between the patches of each image.
    ``segment``
        :class:`~sklearn_clasp.spectral.AdaptiveSpectralSegmenter`, which picks
        the number of segments of each image itself.
    ``refine``
        :class:`~sklearn_clasp.refine.CRFRefiner`, which turns patch labels
        into full-resolution masks.

    ``pipeline.fit_predict(images)`` returns one integer mask of shape
    ``(H, W)`` per image. CLASP is training-free and transductive: each image
    is segmented on its own, so ``predict`` segments new images afresh. Every
    setting is reachable through ``get_params``/``set_params`` as
    ``<step>__<parameter>`` (for example ``segment__k_max``), so the pipeline
    works with :class:`~sklearn.model_selection.GridSearchCV` and the scorers
    of :mod:`sklearn_clasp.metrics`.

    Parameters
    ----------
    embedder : {"dinov2", "handcrafted"} or estimator, default="dinov2"
        The patch embedder, by name or as an instance (which is cloned). The
        DINOv2 code is imported only when ``"dinov2"`` is chosen; its weights
        are loaded (or downloaded, see ``DinoPatchEmbedder``) in ``fit``, not
        here.
    k_min : int, default=2
        Smallest number of segments the silhouette search tries (a uniform
        image still gets one segment; see ``AdaptiveSpectralSegmenter``).
    k_max : int, default=15
        Largest number of segments.
    beta : float, default=0.5
        Relative half-width of the search around the eigengap estimate.
    refine : {"crf", "nearest", "bilinear"}, default="crf"
        ``"crf"``: DenseCRF (the paper's pixel-based variant); ``"nearest"``:
        blocky patch upsampling (the patch-based variant); ``"bilinear"``:
        smooth upsampling without a CRF.
    paper : bool, default=False
        Use the CLASP paper's K selection (``PAPER_SETTINGS``: eigenvalues of
        the affinity itself, elbow rule, no one-segment test) instead of the
        package defaults.
    random_state : int, RandomState instance or None, default=None
        Seeds the segmenter (k-means, eigensolver) and, for ``"dinov2"``,
        ``weights="random"``.
    memory : str, joblib.Memory or None, default=None
        Passed to :class:`~sklearn.pipeline.Pipeline`: caches the fitted
        ``embed``, ``affinity`` and ``segment`` steps and their outputs, which
        speeds up a grid search over later steps. (The DINOv2 embedder also
        has its own feature cache, its ``memory`` parameter; pass a configured
        instance to use it.) The cache's entries are pickles, loaded on a cache
        hit: use a directory only you can write to (a warning says so when
        another user owns it or others can write to it).
    **embedder_params : dict
        Parameters of the named embedder, e.g. ``short_side=None``,
        ``weights="path/to/file.pth"``, ``device="cuda"``.

    Returns
    -------
    pipeline : sklearn.pipeline.Pipeline
        Steps ``embed``, ``affinity``, ``segment``, ``refine``.

    See Also
    --------
    segment_image : Run the pipeline on one image, keeping the diagnostics.

    Examples
    --------
    >>> from sklearn_clasp import make_clasp_pipeline
    >>> from sklearn_clasp.datasets import make_shapes_image
    >>> from sklearn_clasp.metrics import segmentation_scores
    >>> image, truth = make_shapes_image(112, 140, n_shapes=2)
    >>> pipe = make_clasp_pipeline("handcrafted", short_side=None, random_state=0)
    >>> [name for name, _ in pipe.steps]
    ['embed', 'affinity', 'segment', 'refine']
    >>> mask, = pipe.fit_predict([image])
    >>> mask.shape, len(set(mask.ravel().tolist()))
    ((112, 140), 3)
    >>> segmentation_scores(mask, truth)["miou"] > 0.9
    True
    """
    if k_min > k_max:
        raise ValueError(
            f"make_clasp_pipeline: k_min={k_min} is larger than k_max={k_max}; "
            f"choose k_min <= k_max."
        )
    embed = _make_embedder(embedder, random_state, embedder_params)
    segment_params = dict(k_min=k_min, k_max=k_max, beta=beta, random_state=random_state)
    if paper:
        segment_params.update(PAPER_SETTINGS)
    steps = [
        ("embed", embed),
        ("affinity", CosineAffinity()),
        ("segment", AdaptiveSpectralSegmenter(**segment_params)),
        ("refine", CRFRefiner(method=refine)),
    ]
    if memory is not None:
        check_cache_location(memory, what="pipeline cache", stacklevel=4)
    return Pipeline(steps, memory=memory)


def segment_image(pipeline, image):
    """Segment one image with a CLASP pipeline; keep the segmenter's record.

    For processing images one at a time (a stream, a directory): the
    ``embed`` step is used as it is (fit it once beforehand, which loads the
    DINOv2 weights), and the later steps are fitted on this image alone, as
    ``fit_predict`` would. Unlike ``fit_predict``, the segmented
    :class:`~sklearn_clasp.records.PatchGrid` record is returned with the mask,
    so its diagnostics (``info["n_clusters"]``, ``info["eigengap_k"]``,
    ``info["silhouette_scores"]``, ``info["eigenvalues"]``...) are kept.

    Parameters
    ----------
    pipeline : Pipeline
        A CLASP pipeline (``make_clasp_pipeline``): an embedder, steps that
        turn records into segmented records, and a last step that returns one
        mask per record. Its first step must be fitted if it needs fitting.
    image : str, path-like or array-like
        One image (a file path, or an array such as the embedders accept).

    Returns
    -------
    record : PatchGrid
        The record after the ``segment`` step (``image``, ``grid_shape``,
        ``features``, ``affinity``, ``labels``, ``info``, ``source``).
    mask : ndarray of shape (H, W), dtype int64
        The refined full-resolution mask.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        If the embedder needs fitting and was not fitted.
    ValueError
        If ``image`` is a file that is not a readable image: damaged, empty,
        not an image, or over the pixel limit
        (:class:`~sklearn_clasp.image.ImageTooLargeError`); the message names
        the file and the fix (see :func:`~sklearn_clasp.image.load_image`).
    OSError
        If ``image`` is a file that cannot be opened: missing
        (:class:`FileNotFoundError`), unreadable (:class:`PermissionError`),
        a symbolic link loop.

    Examples
    --------
    >>> from sklearn_clasp import make_clasp_pipeline
    >>> from sklearn_clasp.datasets import make_shapes_image
    >>> pipe = make_clasp_pipeline("handcrafted", short_side=None, random_state=0)
    >>> image, _ = make_shapes_image(112, 140, n_shapes=2)
    >>> record, mask = segment_image(pipe, image)
    >>> record.grid_shape, record.labels.shape, mask.shape
    ((8, 10), (8, 10), (112, 140))
    >>> bool(record.info["n_clusters"] == record.labels.max() + 1)
    True
    """
    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) < 3:
        raise TypeError(
            f"segment_image expects a CLASP Pipeline of at least three steps "
            f"(embedder, segmenter, refiner; see make_clasp_pipeline); got "
            f"{type(pipeline).__name__}."
        )
    embed = pipeline.steps[0][1]
    try:
        check_is_fitted(embed)
    except NotFittedError:
        raise NotFittedError(
            f"segment_image: the pipeline's first step ({type(embed).__name__}) is "
            f"not fitted; call pipeline[0].fit(None) once before segmenting images."
        ) from None
    records = embed.transform([image])
    records = pipeline[1:-1].fit_transform(records)
    masks = pipeline.steps[-1][1].fit_transform(records)
    record, mask = records[0], masks[0]
    logger.debug("segmented %s: %s segments", record.name, record.info.get("n_clusters"))
    return record, mask
