"""The CLASP pipeline: embed, affinity, segment, refine; one image at a time.

- :func:`make_clasp_pipeline` assembles the four steps into a
  :class:`~sklearn.pipeline.Pipeline`;
- :func:`clasp_one` runs a pipeline on one image and returns its mask and its
  record (with every stage's diagnostics and timings): the one per-image
  runner that collections, :mod:`~sklearn_clasp.explain`, the scorers and the
  command line use;
- :func:`pipeline_settings`, :func:`settings_hash` and
  :func:`pipeline_from_settings` turn a pipeline into plain settings and back.
  A setting has one name everywhere: its parameter path
  (``segment__k_max``), which is also its key in TOML config files and in the
  JSON records of :func:`~sklearn_clasp.collection.segment_collection`, and,
  with ``--`` and hyphens (``--segment-k-max``), its command-line option.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
import re
import time
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.utils import get_tags
from sklearn.utils._param_validation import (
    HasMethods,
    Interval,
    InvalidParameterError,
    StrOptions,
    validate_parameter_constraints,
    validate_params,
)
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from .io import check_cache_location
from .affinity import CosineAffinity
from .embedding import HandcraftedPatchEmbedder
from .records import PatchGrid
from .refine import CRFRefiner
from .spectral import PAPER_SETTINGS, AdaptiveSpectralSegmenter

__all__ = [
    "ALIASES",
    "STEP_NAMES",
    "ClaspPipeline",
    "check_pipeline_settings",
    "clasp_one",
    "setting_problem",
    "embedder_class",
    "fitted_embedder",
    "make_clasp_pipeline",
    "pipeline_from_settings",
    "pipeline_settings",
    "settings_hash",
]

logger = logging.getLogger(__name__)

#: Names of the steps of a CLASP pipeline, in order.
STEP_NAMES = ("embed", "affinity", "segment", "refine")

#: The embedders by name (the value of the ``embed`` setting).
EMBEDDER_NAMES = ("dinov2", "handcrafted")

#: Short names of common settings, accepted by :func:`make_clasp_pipeline`, the
#: command line (``--k-max``) and config files alike: alias -> parameter path.
#: ``random_state`` sets every step's ``random_state``; ``paper`` applies
#: :data:`~sklearn_clasp.spectral.PAPER_SETTINGS` to the ``segment`` step.
ALIASES = {
    "embedder": "embed",
    "k_min": "segment__k_min",
    "k_max": "segment__k_max",
    "beta": "segment__beta",
    "refine": "refine__method",
}

#: Parameters that change how fast, not what, a pipeline computes: left out of the
#: settings (and so of the settings hash), so a re-run with another number of
#: threads or batch size still resumes.
RUNTIME_PARAMS = frozenset(
    {"memory", "verbose", "transform_input", "n_jobs", "n_threads", "batch_size", "download"}
)


def _learns_nothing(step):
    """True for a step that needs no fit on image records (our later steps)."""
    return step is None or step == "passthrough" or getattr(step, "_training_free", False)


def _final_has(attr):
    return lambda self: hasattr(self._final_estimator, attr)


class ClaspPipeline(Pipeline):
    """A :class:`~sklearn.pipeline.Pipeline` of training-free image steps.

    What :func:`make_clasp_pipeline` returns. It is a ``Pipeline`` in every
    respect (steps, ``get_params``/``set_params`` with ``<step>__<param>``
    names, slicing, ``clone``), except that **fit learns nothing and so
    processes nothing**: CLASP segments each image on its own, so

    - :meth:`fit` fits the first step (the embedder; DINOv2 loads its weights
      there, the handcrafted embedder only checks its parameters) and checks
      the parameters of every later step; no image is read or embedded;
    - :meth:`predict` (and :meth:`transform`) segments the images given, one
      pass over them; :meth:`fit_predict` is ``fit`` then ``predict``;
    - a search (:class:`~sklearn.model_selection.GridSearchCV` with any
      ``cv``) therefore segments each image once per candidate, in the fold
      that scores it.

    A pipeline whose embedder needs no fit (``"handcrafted"``: its
    ``requires_fit`` tag is ``False``) can ``predict`` without ``fit``, and
    :func:`~sklearn.utils.validation.check_is_fitted` passes on it; one whose
    embedder loads a model (``"dinov2"``) is not fitted until ``fit`` and
    raises :class:`~sklearn.exceptions.NotFittedError` saying so.

    Per-image results (K, eigenvalues, silhouettes, timings) are in each
    image's record: :func:`clasp_one` returns the mask and the record, and
    ``pipeline[:-1].transform(images)`` the records. The estimators keep no
    per-image attributes (see :doc:`/sklearn_semantics`).

    If a step after the first is not one of the training-free CLASP steps
    (it may learn from the images), :meth:`fit` falls back to
    ``Pipeline.fit``, which runs every step on the images.

    Parameters
    ----------
    steps : list of (str, estimator) tuples
        As for :class:`~sklearn.pipeline.Pipeline`.
    memory : str, joblib.Memory or None, default=None
        ``Pipeline``'s cache of fitted steps, used only by the
        ``Pipeline.fit`` fallback (training-free steps have nothing to cache
        in ``fit``). Cache features with the embedder's own ``memory``
        (:func:`make_clasp_pipeline` sets it).
    verbose : bool, default=False
        As for :class:`~sklearn.pipeline.Pipeline`.
    transform_input : list of str, default=None
        As for :class:`~sklearn.pipeline.Pipeline`.

    Examples
    --------
    >>> from sklearn.utils.validation import check_is_fitted
    >>> from sklearn_clasp import make_clasp_pipeline
    >>> from sklearn_clasp.datasets import make_shapes_image
    >>> image, truth = make_shapes_image(112, 140, n_shapes=2)
    >>> pipe = make_clasp_pipeline("handcrafted", short_side=None, random_state=0)
    >>> check_is_fitted(pipe)        # training-free: nothing to fit
    >>> mask, = pipe.predict([image])
    >>> mask.shape
    (112, 140)
    """

    def _training_free_steps(self):
        try:
            later = [step for _, step in self.steps[1:]]
        except (TypeError, ValueError):
            return False
        return all(_learns_nothing(step) for step in later)

    def _first_step(self):
        return self.steps[0][1]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        try:
            first = self._first_step()
            tags.input_tags.two_d_array = get_tags(first).input_tags.two_d_array
            tags.input_tags.three_d_array = get_tags(first).input_tags.three_d_array
            if self._training_free_steps():
                tags.requires_fit = get_tags(first).requires_fit
        except (ValueError, AttributeError, TypeError, IndexError):
            pass
        return tags

    def __sklearn_is_fitted__(self):
        if not self._training_free_steps():
            return super().__sklearn_is_fitted__()
        try:
            check_is_fitted(self._first_step())
        except NotFittedError:
            return False
        return True

    def _check_fitted(self, method):
        if not self.__sklearn_is_fitted__():
            first = self.steps[0]
            raise NotFittedError(
                f"ClaspPipeline.{method}: the first step {first[0]!r} "
                f"({type(first[1]).__name__}) needs fit before it can embed images "
                f"(the DINOv2 embedder loads its weights there). Call pipeline.fit() "
                f"first: it learns nothing from images and reads none, so any X "
                f"(or none) will do."
            )

    def fit(self, X=None, y=None, **params):
        """Fit the embedder and check every step; no image is processed.

        Parameters
        ----------
        X : list of images or None, default=None
            Passed to the first step's ``fit`` (the CLASP embedders ignore
            it); not read.
        y : None
            Ignored.
        **params : dict
            Fit parameters; given any, the pipeline is fitted as a plain
            ``Pipeline`` (every step run on ``X``).

        Returns
        -------
        self : ClaspPipeline
        """
        self._validate_steps()
        if params or not self._training_free_steps():
            if X is None:
                raise ValueError(
                    "ClaspPipeline.fit: a step after the embedder learns from the "
                    "images, so fit needs them: pass X."
                )
            logger.info("ClaspPipeline: fitting every step on the images (a step "
                        "learns from them, or fit parameters were given)")
            return super().fit(X, y, **params)
        if self.memory is not None:
            warnings.warn(
                "ClaspPipeline(memory=...) caches fitted steps, and these steps learn "
                "nothing in fit, so it has no effect; cache the features with the "
                "embedder's memory (make_clasp_pipeline(..., memory=...) sets it).",
                UserWarning, stacklevel=2,
            )
        (_, first), *later = self.steps
        if first is not None and first != "passthrough":
            first.fit(X)
        for _, step in later:
            if step is None or step == "passthrough":
                continue
            if hasattr(step, "_validate_params"):
                step._validate_params()
            if hasattr(step, "_check_settings"):
                step._check_settings()
        return self

    def predict(self, X, **params):
        """Segment the images: one full-resolution mask each.

        Parameters
        ----------
        X : list of images
            Arrays or file paths.
        **params : dict
            Passed to ``Pipeline.predict``.

        Returns
        -------
        masks : list of ndarray of shape (H, W)
        """
        self._check_fitted("predict")
        return super().predict(X, **params)

    def fit_predict(self, X, y=None, **params):
        """``fit`` (which processes nothing), then :meth:`predict`: one pass.

        Parameters
        ----------
        X : list of images
            Arrays or file paths.
        y : None
            Ignored.
        **params : dict
            Fit parameters (see :meth:`fit`).

        Returns
        -------
        masks : list of ndarray of shape (H, W)
        """
        if params or not self._training_free_steps():
            return super().fit_predict(X, y, **params)
        return self.fit(X, y).predict(X)

    @available_if(_final_has("transform"))
    def transform(self, X, **params):
        """Run every step's ``transform``: records (or masks) for the images.

        Parameters
        ----------
        X : list of images
        **params : dict
            Passed to ``Pipeline.transform``.

        Returns
        -------
        Xt : list
            What the last step returns.
        """
        self._check_fitted("transform")
        return super().transform(X, **params)

    @available_if(_final_has("transform"))
    def fit_transform(self, X, y=None, **params):
        """``fit`` (which processes nothing), then :meth:`transform`: one pass.

        Parameters
        ----------
        X : list of images
        y : None
            Ignored.
        **params : dict
            Fit parameters (see :meth:`fit`).

        Returns
        -------
        Xt : list
        """
        if params or not self._training_free_steps():
            return super().fit_transform(X, y, **params)
        return self.fit(X, y).transform(X)

    def score(self, X, y=None, **params):
        """Mean per-image Hungarian-matched mIoU of :meth:`predict` against ``y``.

        The default score of a search without ``scoring=``
        (:func:`~sklearn_clasp.metrics.make_segmentation_scorer` ``("miou")``).

        Parameters
        ----------
        X : list of images
        y : list of ndarray of shape (H, W)
            One ground-truth mask per image (negative values are ignored).
        **params : dict
            Ignored.

        Returns
        -------
        score : float
        """
        from .metrics import make_segmentation_scorer

        return make_segmentation_scorer("miou")(self, X, y)


def embedder_class(name):
    """The embedder class for a name of the ``embed`` setting.

    ``"dinov2"`` is imported on first use (it imports torch).

    Parameters
    ----------
    name : {"dinov2", "handcrafted"}

    Returns
    -------
    cls : type
    """
    if name == "dinov2":
        from .embedding import DinoPatchEmbedder

        return DinoPatchEmbedder
    if name == "handcrafted":
        return HandcraftedPatchEmbedder
    raise ValueError(f"unknown embedder {name!r}; use one of {', '.join(EMBEDDER_NAMES)}.")


def _embedder_name(embed):
    """The ``embed`` setting of an embedder instance: its name, or ``<ClassName>``."""
    if type(embed) is HandcraftedPatchEmbedder:
        return "handcrafted"
    if type(embed).__module__ == "sklearn_clasp.embedding._dinov2":  # torch not imported
        return "dinov2"
    return f"<{type(embed).__qualname__}>"


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
    cls = embedder_class(embedder)
    params = dict(embedder_params)
    if "random_state" in cls().get_params():
        params = {"random_state": random_state, **params}
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
        "k_min": [Interval(Integral, 1, None, closed="left"), None],
        "k_max": [Interval(Integral, 1, None, closed="left"), None],
        "beta": [Interval(Real, 0, None, closed="left"), None],
        "refine": [StrOptions({"crf", "nearest", "bilinear"}), None],
        "paper": ["boolean"],
        "random_state": ["random_state"],
        "device": [None, str],
        "memory": [None, str, HasMethods(["cache"])],
    },
    prefer_skip_nested_validation=True,
)
def make_clasp_pipeline(
    embedder="dinov2",
    *,
    k_min=None,
    k_max=None,
    beta=None,
    refine=None,
    paper=False,
    random_state=None,
    device=None,
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

    ``pipeline.predict(images)`` (or ``fit_predict``) returns one integer
    mask of shape ``(H, W)`` per image. CLASP is training-free: each image is
    segmented on its own, and the returned :class:`ClaspPipeline` learns
    nothing in ``fit`` (the DINOv2 embedder loads its weights there; no image
    is processed). Every setting is reachable through
    ``get_params``/``set_params`` as ``<step>__<parameter>`` (for example
    ``segment__k_max``), so the pipeline works with
    :class:`~sklearn.model_selection.GridSearchCV` and the scorers of
    :mod:`sklearn_clasp.metrics`; each image's diagnostics are in its
    record (:func:`clasp_one`).

    Parameters
    ----------
    embedder : {"dinov2", "handcrafted"} or estimator, default="dinov2"
        The patch embedder, by name or as an instance (which is cloned). The
        DINOv2 code is imported only when ``"dinov2"`` is chosen; its weights
        are loaded (or downloaded, see ``DinoPatchEmbedder``) in ``fit``, not
        here.
    k_min, k_max, beta : int, int, float, default=None
        The segmenter's ``k_min``, ``k_max`` and ``beta`` (the search range of
        the number of segments, see
        :class:`~sklearn_clasp.spectral.AdaptiveSpectralSegmenter`); ``None``
        keeps the segmenter's default.
    refine : {"crf", "nearest", "bilinear"}, default=None
        The refiner's ``method``: DenseCRF (the paper's pixel-based variant),
        blocky patch upsampling (the patch-based variant) or smooth bilinear
        upsampling; ``None`` keeps the refiner's default.
    paper : bool, default=False
        Use the CLASP paper's K selection (``PAPER_SETTINGS``: eigenvalues of
        the affinity itself, elbow rule, no one-segment test) instead of the
        package defaults.
    random_state : int, RandomState instance or None, default=None
        Seeds the segmenter (k-means, eigensolver) and, for ``"dinov2"``,
        ``weights="random"``.
    device : {None, "auto", "cpu", "cuda"} or "cuda:<index>", default=None
        Where every stage runs (see :doc:`/device`): sets ``device`` on the
        named embedder (the DINOv2 one; the weights-free embedder has none),
        on the affinity and on the segmenter, and the refiner's
        ``backend="torch"`` with that ``device``. ``None`` keeps each step's
        default (NumPy, SciPy and pydensecrf; DINOv2 on the CPU).
    memory : str, joblib.Memory or None, default=None
        The embedder's feature cache (its ``memory`` parameter,
        ``embed__memory``): each image's patch features are stored once, keyed
        by the image and the settings that change them, so a search over the
        later steps (``segment__k_max``, ``refine__n_iter``, ...) embeds each
        image once and adds nothing to the cache per candidate. The entries
        are pickles, loaded on a cache hit: use a directory only you can
        write to (a warning says so when another user owns it or others can
        write to it).
    **embedder_params : dict
        Parameters of the named embedder, e.g. ``short_side=None``,
        ``weights="path/to/file.pth"``, ``device="cuda"``.

    Returns
    -------
    pipeline : ClaspPipeline
        A :class:`~sklearn.pipeline.Pipeline` with steps ``embed``,
        ``affinity``, ``segment``, ``refine``.

    See Also
    --------
    clasp_one : Run the pipeline on one image, keeping the diagnostics.
    pipeline_from_settings : The same from plain settings (config files, records).

    Examples
    --------
    >>> from sklearn_clasp import make_clasp_pipeline
    >>> from sklearn_clasp.datasets import make_shapes_image
    >>> from sklearn_clasp.metrics import segmentation_scores
    >>> image, truth = make_shapes_image(112, 140, n_shapes=2)
    >>> pipe = make_clasp_pipeline("handcrafted", short_side=None, random_state=0)
    >>> [name for name, _ in pipe.steps]
    ['embed', 'affinity', 'segment', 'refine']
    >>> mask, = pipe.predict([image])       # training-free: no fit needed
    >>> mask.shape, len(set(mask.ravel().tolist()))
    ((112, 140), 3)
    >>> segmentation_scores(truth, mask)["miou"] > 0.9
    True
    """
    if device is not None and isinstance(embedder, str) \
            and "device" in embedder_class(embedder)().get_params():
        embedder_params = {"device": device, **embedder_params}
    embed = _make_embedder(embedder, random_state, embedder_params)
    given = dict(k_min=k_min, k_max=k_max, beta=beta)
    segment_params = {k: v for k, v in given.items() if v is not None}
    segment_params["random_state"] = random_state
    if paper:
        segment_params.update(PAPER_SETTINGS)
    refine_params = {} if refine is None else {"method": refine}
    if device is not None:
        segment_params["device"] = device
        refine_params.update(backend="torch", device=device)
    steps = [
        ("embed", embed),
        ("affinity", CosineAffinity(device=device)),
        ("segment", AdaptiveSpectralSegmenter(**segment_params)),
        ("refine", CRFRefiner(**refine_params)),
    ]
    if memory is not None:
        if "memory" not in embed.get_params():
            raise TypeError(
                f"make_clasp_pipeline: memory caches the embedder's features, but "
                f"{type(embed).__name__} has no memory parameter; drop memory=."
            )
        check_cache_location(memory, what="feature cache", stacklevel=4)
        embed.set_params(memory=memory)
    return ClaspPipeline(steps)




# --------------------------------------------------------------------------
# one image
# --------------------------------------------------------------------------


def _check_pipeline(pipeline, who):
    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) < 2:
        raise TypeError(
            f"{who} expects a CLASP Pipeline (an embedder, the steps that segment, and a "
            f"refiner that returns one mask per image; see make_clasp_pipeline); got "
            f"{type(pipeline).__name__}."
        )


def setting_problem(name, constraints, value):
    """What a setting's value must be, if ``value`` is not allowed; else ``None``.

    The constraints are the estimator's ``_parameter_constraints`` entry; a
    ``device`` setting is also checked against the devices there are
    (:func:`~sklearn_clasp.device.check_device`), which the constraint types
    cannot express.

    Parameters
    ----------
    name : str
        The setting's name (``"refine__n_iter"``).
    constraints : list
        Its constraints.
    value : object
        The value.

    Returns
    -------
    need : str or None
        For example ``"an int in the range [0, 1000]"``.

    Examples
    --------
    >>> from sklearn_clasp.refine import CRFRefiner
    >>> setting_problem("refine__n_iter", CRFRefiner._parameter_constraints["n_iter"], -1)
    'an int in the range [0, 1000]'
    """
    try:
        validate_parameter_constraints({name: list(constraints)}, {name: value},
                                       caller_name=name)
    except InvalidParameterError as exc:
        found = re.search(r"must be (.*)\. Got", str(exc))
        return found.group(1) if found else str(exc)
    if name == "device" or name.endswith("__device"):
        from .device import check_device

        try:
            check_device(value, allow_none=None in constraints)
        except ValueError as exc:
            return re.search(r"must be (.*)\.$", str(exc)).group(1)
    return None


def check_pipeline_settings(pipeline, who, *, devices=False):
    """Check every step's settings at once, before any work; the error names the setting.

    What each step's ``fit`` would refuse for one image, refused once for a
    whole collection.

    Parameters
    ----------
    pipeline : Pipeline
        A CLASP pipeline.
    who : str
        The caller, as the message starts.
    devices : bool, default=False
        Also check that each device a step will use is there (a CUDA device
        that PyTorch does not see is refused). For work done in this process;
        a Dask worker checks its own.

    Raises
    ------
    InvalidParameterError
        A ``ValueError`` naming the first setting whose value is not allowed.
    """
    for step_name, step in pipeline.steps:
        constraints = getattr(step, "_parameter_constraints", {})
        params = step.get_params(deep=False)
        for param, value in params.items():
            if param not in constraints:
                continue
            name = f"{step_name}__{param}"
            need = setting_problem(name, constraints[param], value)
            if need is not None:
                raise InvalidParameterError(
                    f"{who}: {name}={value!r}: must be {need}. Change it with "
                    f"pipeline.set_params({name}=...).")
            # a step with a backend uses its device with the torch backend only
            if devices and param == "device" and value is not None and params.get(
                    "backend", "torch") == "torch":
                from .device import resolve_device

                try:
                    resolve_device(value, name=name)
                except ValueError as exc:
                    raise InvalidParameterError(f"{who}: {exc}") from None


def fitted_embedder(pipeline):
    """The pipeline's first step, fitted: as it is if fitted, else a fitted clone.

    Fitting an embedder loads its model (the DINOv2 weights); the pipeline
    passed in is not modified. Fit ``pipeline[0]`` once beforehand to reuse a
    loaded backbone.

    Parameters
    ----------
    pipeline : Pipeline
        A CLASP pipeline.

    Returns
    -------
    embedder : estimator
    """
    _check_pipeline(pipeline, "fitted_embedder")
    embed = pipeline.steps[0][1]
    try:
        check_is_fitted(embed)
        return embed
    except NotFittedError:
        logger.info("fitting the %s embedder", type(embed).__name__)
        return clone(embed).fit(None)


def clasp_one(pipeline, image, *, source=None):
    """Segment one image with a CLASP pipeline: its mask and its record.

    The one per-image runner. The first step embeds the image (fit it
    beforehand if it needs fitting: that loads the DINOv2 weights), unless
    ``image`` is a record that already has features; every later step is
    fitted on this image alone, as ``fit_predict`` would fit it, so the
    result depends on nothing but the image and the parameters. The record
    after the last step that returns records is kept, so the segmenter's
    diagnostics travel with the mask.

    Parameters
    ----------
    pipeline : Pipeline
        A CLASP pipeline (:func:`make_clasp_pipeline`): an embedder, steps
        that turn records into records, and a last step that returns one mask
        per record (:class:`~sklearn_clasp.refine.CRFRefiner`).
    image : str, path-like, array-like or PatchGrid
        One image: a file path, an array, or a record with ``features`` (an
        image embedded beforehand, e.g. in a batch).
    source : str, default=None
        Name of the image in the record and in messages (default: the path,
        or the record's own source).

    Returns
    -------
    mask : ndarray of shape (H, W), dtype int64
        The refined full-resolution mask.
    record : PatchGrid
        The record after the segmenter (``image``, ``grid_shape``,
        ``features``, ``affinity``, ``labels``, ``proba``, ``info``,
        ``source``); ``info["stage_timings"]`` holds the seconds each step
        took on it, by step name.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        If the embedder needs fitting and was not fitted.
    ValueError, OSError
        If ``image`` is a file that cannot be read as an image; the message
        names it and the fix (see :func:`~sklearn_clasp.io.load_image`).

    Examples
    --------
    >>> from sklearn_clasp import make_clasp_pipeline
    >>> from sklearn_clasp.datasets import make_shapes_image
    >>> pipe = make_clasp_pipeline("handcrafted", short_side=None, random_state=0)
    >>> image, _ = make_shapes_image(112, 140, n_shapes=2)
    >>> mask, record = clasp_one(pipe, image)
    >>> mask.shape, record.grid_shape, record.labels.shape
    ((112, 140), (8, 10), (8, 10))
    >>> int(record.info["n_clusters"]) == int(record.labels.max()) + 1
    True
    >>> sorted(record.info["stage_timings"])
    ['affinity', 'embed', 'refine', 'segment']
    """
    _check_pipeline(pipeline, "clasp_one")
    (first, embed), *steps = [(n, s) for n, s in pipeline.steps
                              if s is not None and s != "passthrough"]
    timings = {}
    if isinstance(image, PatchGrid) and image.features is not None:
        record = image
    else:
        try:
            check_is_fitted(embed)
        except NotFittedError:
            raise NotFittedError(
                f"clasp_one: the pipeline's first step ({type(embed).__name__}) is not "
                f"fitted; call pipeline[0].fit(None) once before segmenting images."
            ) from None
        start = time.perf_counter()
        (record,) = embed.transform([image])
        timings[first] = time.perf_counter() - start
    if source is not None:
        record = record.replace(source=str(source))
    records = [record]
    for i, (name, step) in enumerate(steps):
        start = time.perf_counter()
        out = step.fit_transform(records)
        timings[name] = time.perf_counter() - start
        if i < len(steps) - 1:
            records = out
    if not steps or isinstance(out[0], PatchGrid):
        raise TypeError(
            f"clasp_one: the pipeline's last step ({pipeline.steps[-1][0]!r}) returned "
            f"records, not masks; end the pipeline with a refiner (CRFRefiner)."
        )
    mask = np.asarray(out[0])
    record = records[0].replace(info={"stage_timings": timings})
    logger.debug("segmented %s: %s segments", record.name, record.info.get("n_clusters"))
    return mask, record


# --------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------

_SKIP = object()
_DEFAULT_STEPS = {"affinity": CosineAffinity, "segment": AdaptiveSpectralSegmenter,
                  "refine": CRFRefiner}


def _simple(value):
    """A JSON-able copy of a simple parameter value; ``_SKIP`` when not simple."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        items = [_simple(v) for v in value]
        return _SKIP if any(v is _SKIP for v in items) else items
    return _SKIP


def pipeline_settings(pipeline):
    """The settings of a pipeline that decide its results, as plain values.

    ``pipeline.get_params(deep=True)`` restricted to simple values (``None``,
    booleans, numbers, strings, paths, lists of these), with the embedder
    given by name (``"embed": "dinov2"``) and any other step that is not the
    usual one by its class (``"refine": "<MyRefiner>"``), leaving out the parameters that
    only change speed or caching (``memory``, ``verbose``, ``n_jobs``,
    ``n_threads``, ``batch_size``, ``download``). What the records of
    :func:`~sklearn_clasp.collection.segment_collection` store as
    ``settings``, and what :func:`pipeline_from_settings` takes back.

    Parameters
    ----------
    pipeline : Pipeline
        A CLASP pipeline.

    Returns
    -------
    settings : dict
        Sorted by key.

    Examples
    --------
    >>> from sklearn_clasp import make_clasp_pipeline
    >>> settings = pipeline_settings(make_clasp_pipeline("handcrafted", k_max=8))
    >>> settings["embed"], settings["segment__k_max"]
    ('handcrafted', 8)
    >>> pipeline_settings(pipeline_from_settings(settings)) == settings
    True
    """
    out = {}
    for key, value in pipeline.get_params(deep=True).items():
        if key == "steps" or key.rsplit("__", 1)[-1] in RUNTIME_PARAMS:
            continue
        if key == "embed":
            out[key] = _embedder_name(value)
            continue
        if key in _DEFAULT_STEPS:  # a step: named only when it is not the usual one
            if type(value) is not _DEFAULT_STEPS[key]:
                out[key] = f"<{type(value).__qualname__}>"
            continue
        simple = f"<{type(value).__qualname__}>" if isinstance(value, BaseEstimator) \
            else _simple(value)
        if simple is _SKIP:
            logger.debug("settings: %s=%r is not a simple value; left out", key, value)
            continue
        out[key] = simple
    return dict(sorted(out.items()))


def settings_hash(pipeline):
    """SHA-256 of a pipeline's settings, for matching outputs to settings.

    The hash of the canonical JSON (sorted keys, no spaces) of
    :func:`pipeline_settings`: equal for pipelines with equal settings,
    different when a setting that changes results changes.

    Parameters
    ----------
    pipeline : Pipeline
        A CLASP pipeline.

    Returns
    -------
    digest : str
        64 hexadecimal characters.

    Examples
    --------
    >>> from sklearn_clasp import make_clasp_pipeline
    >>> a = settings_hash(make_clasp_pipeline("handcrafted", k_max=8))
    >>> a == settings_hash(make_clasp_pipeline("handcrafted", k_max=8)), len(a)
    (True, 64)
    >>> a == settings_hash(make_clasp_pipeline("handcrafted", k_max=9))
    False
    """
    text = json.dumps(pipeline_settings(pipeline), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pipeline_from_settings(settings, *, memory=None):
    """Build a CLASP pipeline from plain settings, checking every value.

    The inverse of :func:`pipeline_settings`: keys are parameter paths
    (``"segment__k_max"``; ``"embed"`` names the embedder, ``"dinov2"`` by
    default) or the short names of :data:`ALIASES` (``"k_max"``), plus
    ``"random_state"`` (every step's), ``"device"`` (every step's, see
    :func:`make_clasp_pipeline`) and ``"paper"`` (the paper's K selection;
    settings given explicitly override them). Estimator placeholders
    (``"<ClassName>"``, written for steps of a custom pipeline) cannot be
    rebuilt and are refused.

    Parameters
    ----------
    settings : mapping
        Setting name -> value.
    memory : str, joblib.Memory or None, default=None
        The pipeline's cache (see :func:`make_clasp_pipeline`).

    Returns
    -------
    pipeline : Pipeline

    Raises
    ------
    ValueError
        For an unknown setting (the message lists the valid ones of its step),
        a setting of the other embedder, or a value its estimator refuses
        (:class:`sklearn.utils._param_validation.InvalidParameterError`, a
        ``ValueError``), e.g. ``k_min > k_max``.

    Examples
    --------
    >>> pipe = pipeline_from_settings({"embed": "handcrafted", "k_max": 8,
    ...                                "refine__n_iter": 5, "random_state": 0})
    >>> pipe.get_params()["segment__k_max"], pipe.get_params()["refine__n_iter"]
    (8, 5)
    """
    from .spectral import check_k_bounds  # the one k_min <= k_max check

    params = {ALIASES.get(k, k): v for k, v in dict(settings).items()}
    paper = bool(params.pop("paper", False))
    random_state = params.pop("random_state", None)
    device = params.pop("device", None)
    embedder = params.pop("embed", "dinov2")
    if not isinstance(embedder, str) or embedder not in EMBEDDER_NAMES:
        raise ValueError(f"embed={embedder!r}: a pipeline can only be rebuilt for the "
                         f"embedders {', '.join(EMBEDDER_NAMES)}.")
    embed_params = {k.split("__", 1)[1]: params.pop(k) for k in list(params)
                    if k.startswith("embed__")}
    valid_embed = embedder_class(embedder)().get_params()
    for key in embed_params:
        if key not in valid_embed:
            other = [n for n in EMBEDDER_NAMES if n != embedder
                     and key in embedder_class(n)().get_params()]
            hint = (f" it is a setting of embed={other[0]!r}" if other else
                    f" the settings of embed={embedder!r} are "
                    f"{', '.join('embed__' + k for k in sorted(valid_embed))}")
            raise ValueError(f"embed__{key} does not apply to embed={embedder!r}:{hint}.")
    # the embedder's own settings named like a pipeline-wide keyword of make_clasp_pipeline
    # (device, random_state, memory) are set after the pipeline is made
    for key in set(embed_params) & set(inspect.signature(make_clasp_pipeline).parameters):
        params[f"embed__{key}"] = embed_params.pop(key)
    pipe = make_clasp_pipeline(embedder, paper=paper, random_state=random_state,
                               device=device, memory=memory, **embed_params)
    valid = pipe.get_params()
    unknown = sorted(k for k in params if k not in valid or k.count("__") != 1)
    if unknown:
        step = unknown[0].split("__", 1)[0]
        names = sorted(k for k in valid if k.startswith(f"{step}__"))
        raise ValueError(
            f"unknown setting {unknown[0]!r}" + (f"; the settings of {step!r} are "
                                                 f"{', '.join(names)}" if names else
                                                 f"; the steps are {', '.join(STEP_NAMES)}")
        )
    for key, value in params.items():
        if isinstance(value, str) and value.startswith("<") and value.endswith(">"):
            raise ValueError(f"{key}={value}: an estimator placeholder cannot be rebuilt.")
    pipe.set_params(**params)
    for _, step in pipe.steps:
        step._validate_params()
    seg = pipe.named_steps["segment"]
    check_k_bounds(seg.k_min, seg.k_max)
    return pipe
