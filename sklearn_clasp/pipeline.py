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
import json
import logging
import math
import os
import time
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions, validate_params
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
    "clasp_one",
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
    >>> mask, = pipe.fit_predict([image])
    >>> mask.shape, len(set(mask.ravel().tolist()))
    ((112, 140), 3)
    >>> segmentation_scores(mask, truth)["miou"] > 0.9
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
        check_cache_location(memory, what="pipeline cache", stacklevel=4)
    return Pipeline(steps, memory=memory)




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
    if "device" in embed_params:  # the embedder's own, set after the pipeline's
        params["embed__device"] = embed_params.pop("device")
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
