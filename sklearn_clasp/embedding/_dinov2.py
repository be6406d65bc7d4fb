"""DINOv2 patch embedder: images to one DINOv2 feature vector per 14 x 14 patch.

Functional core (plain arrays and tensors):

- :func:`load_dinov2` builds an official backbone and loads its weights;
- :func:`prepare_dino_input` resizes one image to the model input size;
- :func:`dino_patch_features` runs a model over images, batched by size.

:class:`DinoPatchEmbedder` is the scikit-learn step on top: it loads the model
in ``fit`` and turns images into :class:`~sklearn_clasp.records.PatchGrid`
records in ``transform``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from contextlib import contextmanager
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, InvalidParameterError, StrOptions
from sklearn.utils.validation import check_is_fitted, check_memory

from ..device import n_jobs_constraints, resolve_device
from ..io import check_cache_location
from ..image import resize_image
from ._grid import MAX_PATCHES, patch_grid_shape, prepare_images
from ..records import PatchGrid, RecordOutputMixin, check_untabled_output
from ._vit import MODEL_CONFIGS, build_dinov2
from .weights import load_checkpoint, load_state_dict_strict, resolve_weights

__all__ = [
    "DinoPatchEmbedder",
    "load_dinov2",
    "prepare_dino_input",
    "dino_patch_features",
    "images_per_forward",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

logger = logging.getLogger(__name__)

#: ImageNet normalisation used by DINOv2 (RGB, on images scaled to [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
#: ImageNet standard deviations used by DINOv2 (RGB, on images scaled to [0, 1]).
IMAGENET_STD = (0.229, 0.224, 0.225)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _load_dinov2(model, weights, *, weights_sha256, download, allow_unverified, random_state,
                 stacklevel=3):
    """Build and load; returns ``(module, weights_path or None, sha256 or None)``."""
    if isinstance(weights, str) and weights == "random":
        if weights_sha256 is not None:
            raise InvalidParameterError("weights_sha256 has no meaning with weights='random'; "
                                        "drop it")
        warnings.warn(
            f"{model} with random weights (weights='random'): the features are "
            f"meaningless; use this only for tests and smoke runs",
            UserWarning,
            stacklevel=stacklevel,
        )
        seed = int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
        net = build_dinov2(model).init_random(torch.Generator().manual_seed(seed))
        return net.eval().requires_grad_(False), None, None
    path, sha256 = resolve_weights(
        model, weights, weights_sha256=weights_sha256, download=download,
        allow_unverified=allow_unverified,
    )
    # the open file is checked against the digest just resolved, its declared
    # sizes, names and shapes against the model, then it is parsed with
    # weights_only=True: a file swapped in meanwhile is refused unread
    state_dict = load_checkpoint(path, sha256=sha256, model=model)
    net = build_dinov2(model)  # after the checks: a refused file costs no model
    load_state_dict_strict(net, state_dict, name=model, source=f"weights file {path}")
    logger.info("loaded %s from %s", model, path)
    return net.eval().requires_grad_(False), str(path), sha256


def load_dinov2(model="dinov2_vits14_reg", weights=None, *, weights_sha256=None,
                download=True, allow_unverified=False, random_state=None):
    """Build an official DINOv2 backbone and load its weights (on CPU, eval mode).

    Parameters
    ----------
    model : str, default="dinov2_vits14_reg"
        Torch hub entry name: ``dinov2_vit{s,b,l,g}14`` with or without the
        ``_reg`` suffix (4 register tokens).
    weights : None, path-like or "random", default=None
        ``None``: the official checkpoint, from ``$SKLEARN_CLASP_WEIGHTS`` or
        the torch hub cache, else downloaded (SHA-256 verified). A path: that
        file (``.pth`` state dict or ``.safetensors``), read without running
        pickled code and loaded with ``strict=True``. ``"random"``: random
        weights (warns).
    weights_sha256 : str, default=None
        Expected SHA-256 of the file (checked when given).
    download : bool, default=True
        Allow downloading a missing official file.
    allow_unverified : bool, default=False
        Accept a download that no SHA-256 is known for.
    random_state : int, RandomState instance or None, default=None
        Seeds the random weights of ``weights="random"``.

    Returns
    -------
    model : DinoVisionTransformer
        In eval mode, gradients off.

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     net = load_dinov2("dinov2_vits14", weights="random", random_state=0)
    >>> net.embed_dim, net.num_register_tokens
    (384, 0)
    """
    net, _, _ = _load_dinov2(model, weights, weights_sha256=weights_sha256,
                             download=download, allow_unverified=allow_unverified,
                             random_state=random_state)
    return net


def prepare_dino_input(image, *, short_side=448, patch_size=14, max_patches=None):
    """Resize an RGB ``uint8`` image to the model input size.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), dtype uint8
    short_side : int or None, default=448
        Target shorter side; ``None`` keeps the size (rounded to multiples of
        ``patch_size``, the paper's policy). See
        :func:`~sklearn_clasp.embedding.patch_grid_shape`.
    patch_size : int, default=14
    max_patches : int or None, default=None
        Patch budget: the grid is shrunk (aspect ratio kept) to at most this
        many patches; ``None`` sets no limit.

    Returns
    -------
    resized : ndarray of shape (h * patch_size, w * patch_size, 3), dtype uint8
    grid_shape : tuple of (int, int)
        ``(h, w)``.

    Examples
    --------
    >>> import numpy as np
    >>> x, grid = prepare_dino_input(np.zeros((60, 75, 3), np.uint8), short_side=None)
    >>> x.shape, grid
    ((56, 70, 3), (4, 5))
    """
    h, w = patch_grid_shape(image.shape[0], image.shape[1], short_side=short_side,
                            patch_size=patch_size, max_patches=max_patches)
    return resize_image(image, (h * patch_size, w * patch_size)), (h, w)


#: Activation memory one forward of the backbone may take on its device, about:
#: the images run at once are limited to it whatever ``batch_size`` is.
MAX_BATCH_BYTES = 2 * 2**30
#: Most images one batch may be asked to hold (a forward holds fewer when
#: ``MAX_BATCH_BYTES`` says so).
MAX_BATCH_SIZE = 4096

_AUTOCAST = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def _to_tensor(batch, device, dtype):
    """Stack ``uint8`` images and apply the ImageNet normalisation on ``device``.

    For a CUDA device the bytes go through pinned memory, without blocking.
    """
    x = torch.from_numpy(np.stack(batch))
    if device.type == "cuda":
        x = x.pin_memory()
    x = x.to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).contiguous().to(torch.float32).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).to(dtype)


def images_per_forward(model, input_shape, *, max_bytes=MAX_BATCH_BYTES, itemsize=4):
    """How many images of ``input_shape`` one forward may take within ``max_bytes``.

    A block's activations take about ``(4 mlp_ratio + 5) D`` values per token
    (the MLP's hidden layer, the attention's queries, keys and values, the
    residual stream), ``D`` the width; at least one image.

    Parameters
    ----------
    model : DinoVisionTransformer
    input_shape : tuple of int
        ``(H, W, 3)`` of the model input.
    max_bytes : int, default=MAX_BATCH_BYTES
    itemsize : int, default=4
        Bytes per value (2 under bfloat16 or float16).

    Returns
    -------
    n_images : int

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     net = load_dinov2("dinov2_vits14_reg", weights="random", random_state=0)
    >>> images_per_forward(net, (448, 448, 3)), images_per_forward(net, (448, 448, 3), itemsize=2)
    (64, 129)
    """
    p = model.patch_size
    tokens = (input_shape[0] // p) * (input_shape[1] // p) + 1 + model.num_register_tokens
    per_token = (4 * model.config.mlp_ratio + 5) * model.embed_dim * itemsize
    return max(1, int(max_bytes // (tokens * per_token)))


def dino_patch_features(model, inputs, *, facet="tokens", layer=-1, batch_size=8,
                        autocast=None, max_batch_bytes=MAX_BATCH_BYTES):
    """Patch features of images already at the model input size.

    Images of equal size are stacked into batches of up to ``batch_size``
    (on CUDA through pinned memory) and run under :func:`torch.inference_mode`
    on the model's device and dtype; a batch whose activations would take more
    than ``max_batch_bytes`` runs in parts (:func:`images_per_forward`), so the
    device memory stays bounded whatever ``batch_size`` is.

    Parameters
    ----------
    model : DinoVisionTransformer
    inputs : list of ndarray of shape (H_i, W_i, 3), dtype uint8
        ``H_i`` and ``W_i`` multiples of the patch size (see
        :func:`prepare_dino_input`).
    facet : {"tokens", "keys"}, default="tokens"
    layer : int, default=-1
        See :meth:`DinoVisionTransformer.patch_features`.
    batch_size : int, default=8
    autocast : {None, "bfloat16", "float16"}, default=None
        Run the forward under :func:`torch.autocast` with this dtype (the
        weights stay as they are; ``"float16"`` needs CUDA).
    max_batch_bytes : int, default=MAX_BATCH_BYTES (2 GiB)
        Bound of one forward's activation memory.

    Returns
    -------
    features : list of ndarray of shape (H_i / 14, W_i / 14, D), dtype float32
    """
    p = next(model.parameters())
    device, dtype = p.device, p.dtype
    itemsize = 2 if autocast is not None else p.element_size()
    groups = {}
    for i, x in enumerate(inputs):
        groups.setdefault(x.shape, []).append(i)
    out = [None] * len(inputs)
    context = (torch.autocast(device.type, dtype=_AUTOCAST[autocast]) if autocast
               else torch.autocast(device.type, enabled=False))
    with torch.inference_mode(), context:
        for shape, idx in groups.items():
            step = min(batch_size, images_per_forward(model, shape, max_bytes=max_batch_bytes,
                                                      itemsize=itemsize))
            for start in range(0, len(idx), step):
                chunk = idx[start : start + step]
                x = _to_tensor([inputs[i] for i in chunk], device, dtype)
                feats = model.patch_features(x, layer=layer, facet=facet)
                feats = feats.to(torch.float32).cpu().numpy()
                for j, i in enumerate(chunk):
                    out[i] = feats[j]
    return out


def _cached_patch_features(image, key, compute):
    """What :class:`joblib.Memory` stores: ``compute()`` keyed by ``(image, key)``."""
    return compute()


@contextmanager
def _torch_threads(n_threads):
    if n_threads is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n_threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _resolve_device(device):
    return resolve_device(device)


def _state_digest(net):
    h = hashlib.sha256()
    for name, t in net.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class DinoPatchEmbedder(RecordOutputMixin, TransformerMixin, BaseEstimator):
    """Embed images with DINOv2: one feature vector per 14 x 14 patch.

    The first step of a CLASP pipeline. Each image is resized (aspect ratio
    kept, sides multiples of 14), normalised with the ImageNet mean and std and
    run through an official DINOv2 backbone; the patch tokens form an
    ``(h, w, D)`` grid returned in a :class:`~sklearn_clasp.records.PatchGrid`
    together with the full-resolution image.

    Parameters
    ----------
    model : str, default="dinov2_vits14_reg"
        Backbone, by torch hub name: ``"dinov2_vits14_reg"`` (the paper's
        ViT-S/14 with registers), ``"dinov2_vits14"``, ``"dinov2_vitb14"``,
        ``"dinov2_vitb14_reg"``, ``"dinov2_vitl14"``, ``"dinov2_vitl14_reg"``,
        ``"dinov2_vitg14"``, ``"dinov2_vitg14_reg"``.
    weights : None, path-like or "random", default=None
        ``None``: the official checkpoint, looked for in the directory
        ``$SKLEARN_CLASP_WEIGHTS`` and the torch hub cache
        (``torch.hub.get_dir()/checkpoints``), else downloaded from the
        official URL; official files are always SHA-256 verified. A path: a
        local checkpoint in the official layout, a ``.pth`` state dict (read
        with ``torch.load(weights_only=True)``, which refuses pickled code) or
        a ``.safetensors`` file (needs the ``safetensors`` package), loaded
        with ``strict=True``; its SHA-256 is logged. ``"random"``: random
        weights, for tests and smoke runs (warns).
    weights_sha256 : str, default=None
        Expected SHA-256 of the weight file; checked when given.
    download : bool, default=True
        Allow downloading the official file when it is not on disk. With
        ``False`` nothing touches the network.
    short_side : int or None, default=448
        The image is scaled so that its shorter side is this many pixels, then
        each side is rounded to a multiple of 14. ``None`` keeps the image
        size and only rounds it (the CLASP paper's policy).
    max_patches : int or None, default=10_000
        Patch budget: a grid with more patches is shrunk, aspect ratio kept,
        to at most this many (see
        :func:`~sklearn_clasp.embedding.patch_grid_shape`), so huge images and
        extreme aspect ratios are downscaled for the backbone instead of
        exhausting memory; ``info["patch_budget_applied"]`` says when. The
        default leaves every grid up to 1400 x 1400 pixels (100 x 100
        patches) alone, the paper's sizes included. ``None`` sets no limit.
    facet : {"tokens", "keys"}, default="tokens"
        ``"tokens"``: output tokens of block ``layer`` after the final layer
        norm (with ``layer=-1`` the official ``x_norm_patchtokens``).
        ``"keys"``: the attention keys of block ``layer`` (with ``layer=-1``
        the last block's keys, as Deep Spectral Methods uses).
    layer : int, default=-1
        Which block to read: ``0 .. depth - 1``, or negative from the end.
    batch_size : int, default=8
        Images of equal input size are run together in batches this large
        (at most 4,096; a forward holds fewer when their activations would
        pass 2 GiB).
    device : {"cpu", "cuda", "auto"} or str, default="cpu"
        Where to run; ``"cuda:N"`` picks a GPU; ``"auto"`` is CUDA when
        available.
    dtype : {"float32", "bfloat16", "float16"}, default="float32"
        Compute precision; ``"float16"`` needs CUDA. Output is float32.
    autocast : {None, "bfloat16", "float16"}, default=None
        Run the backbone under :func:`torch.autocast` with this dtype (the
        weights stay in ``dtype``): faster on GPUs, the features change a
        little (measured in ``docs/device.md``). ``"float16"`` needs CUDA;
        ``"bfloat16"`` also works on CPU.
    n_threads : int, default=None
        CPU threads PyTorch may use during ``transform`` (restored after),
        at most :data:`~sklearn_clasp.device.MAX_N_JOBS`; ``None`` leaves
        PyTorch's setting alone.
    memory : str, joblib.Memory or None, default=None
        Cache features on disk keyed by the resized image bytes and every
        setting that affects them (model weights, facet, layer, dtype), so
        repeated runs (e.g. a grid search over later steps) skip the backbone.
        ``None`` caches nothing and writes nothing. The cache entries are
        pickles, loaded on a cache hit: whoever can write to the directory can
        run code in this process, so give a directory that only you can
        write to (a directory owned by another user or writable by others is
        used with a warning).
    random_state : int, RandomState instance or None, default=None
        Seeds ``weights="random"``; unused otherwise.

    Attributes
    ----------
    model_ : DinoVisionTransformer
        The loaded backbone (eval mode, on ``device_`` in ``dtype_``).
    device_ : torch.device
        Resolved device.
    dtype_ : torch.dtype
        Compute dtype.
    weights_path_ : str or None
        The weight file loaded (``None`` for random weights).
    weights_sha256_ : str or None
        Its SHA-256.
    embed_dim_ : int
        Feature dimension ``D`` (384 for ViT-S).
    n_blocks_ : int
        Number of transformer blocks.
    layer_ : int
        ``layer`` as a non-negative block index.

    See Also
    --------
    load_dinov2 : The backbone on its own.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> from sklearn_clasp.embedding import DinoPatchEmbedder
    >>> image = np.zeros((60, 75, 3), np.uint8)
    >>> emb = DinoPatchEmbedder(weights="random", short_side=None, random_state=0)
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     rec, = emb.fit_transform([image])
    >>> rec.grid_shape, rec.features.shape, rec.features.dtype
    ((4, 5), (4, 5, 384), dtype('float32'))
    >>> rec.image.shape, rec.info["input_size"]
    ((60, 75, 3), (56, 70))
    """

    _parameter_constraints: dict = {
        "model": [StrOptions(set(MODEL_CONFIGS))],
        "weights": [None, str, os.PathLike],
        "weights_sha256": [None, str],
        "download": ["boolean"],
        "short_side": [Interval(Integral, 1, None, closed="left"), None],
        "max_patches": [Interval(Integral, 1, None, closed="left"), None],
        "facet": [StrOptions({"tokens", "keys"})],
        "layer": [Integral],
        "batch_size": [Interval(Integral, 1, MAX_BATCH_SIZE, closed="both")],
        "device": [str, torch.device],
        "dtype": [StrOptions(set(_DTYPES))],
        "autocast": [StrOptions(set(_AUTOCAST)), None],
        "n_threads": n_jobs_constraints(negative=False),
        "memory": [None, str, HasMethods(["cache"])],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        model="dinov2_vits14_reg",
        *,
        weights=None,
        weights_sha256=None,
        download=True,
        short_side=448,
        max_patches=MAX_PATCHES,
        facet="tokens",
        layer=-1,
        batch_size=8,
        device="cpu",
        dtype="float32",
        autocast=None,
        n_threads=None,
        memory=None,
        random_state=None,
    ):
        self.model = model
        self.weights = weights
        self.weights_sha256 = weights_sha256
        self.download = download
        self.short_side = short_side
        self.max_patches = max_patches
        self.facet = facet
        self.layer = layer
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.autocast = autocast
        self.n_threads = n_threads
        self.memory = memory
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = []
        return tags

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X=None, y=None):
        """Load the backbone (``X`` and ``y`` are ignored).

        Parameters
        ----------
        X : ignored
            Accepted so that the embedder fits in a Pipeline.
        y : ignored

        Returns
        -------
        self : DinoPatchEmbedder
        """
        device = _resolve_device(self.device)
        dtype = _DTYPES[self.dtype]
        if dtype == torch.float16 and device.type != "cuda":
            raise InvalidParameterError(
                f"dtype='float16' needs a CUDA device (device={self.device!r} resolved to "
                f"{device}); use dtype='float32' or 'bfloat16' on CPU"
            )
        if self.autocast == "float16" and device.type != "cuda":
            raise InvalidParameterError(
                f"autocast='float16' needs a CUDA device (device={self.device!r} resolved "
                f"to {device}); use autocast='bfloat16' or None on CPU"
            )
        depth = MODEL_CONFIGS[self.model].depth
        if not -depth <= self.layer < depth:
            raise InvalidParameterError(
                f"layer={self.layer} is out of range for {self.model}, which has {depth} "
                f"blocks; use 0..{depth - 1} or a negative index (-1 is the last block)"
            )
        net, path, sha256 = _load_dinov2(
            self.model, self.weights, weights_sha256=self.weights_sha256,
            download=self.download, allow_unverified=False, random_state=self.random_state,
            stacklevel=4,
        )
        self.model_ = net.to(device=device, dtype=dtype)
        self.device_ = device
        self.dtype_ = dtype
        self.weights_path_ = path
        self.weights_sha256_ = sha256
        self.embed_dim_ = net.embed_dim
        self.n_blocks_ = net.n_blocks
        self.layer_ = self.layer % depth
        # what transform reports and keys the cache with: the fitted model, not
        # parameters changed since
        self._fitted_name = self.model
        self._model_id = f"{self.model}:{sha256}" if sha256 else None
        return self

    def _model_identity(self):
        if self._model_id is None:  # random weights: digest them (only when caching)
            self._model_id = f"{self._fitted_name}:random:{_state_digest(self.model_)}"
        return self._model_id

    def _embed_inputs(self, inputs):
        kw = dict(facet=self.facet, layer=self.layer_, batch_size=self.batch_size,
                  autocast=self.autocast)
        if self.memory is None:
            return dino_patch_features(self.model_, inputs, **kw), [False] * len(inputs)
        memory = check_memory(self.memory)
        check_cache_location(memory, what="feature cache", stacklevel=4)
        cached = memory.cache(_cached_patch_features, ignore=["compute"])
        key = (self._model_identity(), self.facet, self.layer_, str(self.dtype_))
        if self.autocast is not None:  # (keys of earlier caches stay valid)
            key += (f"autocast:{self.autocast}",)
        hit = [cached.check_call_in_cache(x, key, None) for x in inputs]
        misses = [i for i, h in enumerate(hit) if not h]
        computed = dino_patch_features(self.model_, [inputs[i] for i in misses], **kw)
        fresh = dict(zip(misses, computed))
        out = []
        for i, x in enumerate(inputs):
            if i in fresh:
                compute = lambda f=fresh[i]: f  # noqa: E731
            else:  # a hit; computes only if the entry vanished since the check
                compute = lambda x=x: dino_patch_features(self.model_, [x], **kw)[0]  # noqa: E731
            out.append(cached(x, key, compute))
        if misses:
            logger.debug("feature cache: %d hit(s), %d miss(es)", len(inputs) - len(misses),
                         len(misses))
        return out, hit

    def transform(self, X):
        """Embed images into patch-feature grids.

        Parameters
        ----------
        X : list of images
            Arrays ``(H, W, 3)`` (RGB), ``(H, W)`` (grayscale) or ``(H, W, 4)``
            (RGBA, alpha dropped), ``uint8`` or float in ``[0, 1]``, or image
            file paths. A 4-D array is taken as a batch.

        Returns
        -------
        records : list of PatchGrid
            One per image, with ``image`` (the full-resolution RGB ``uint8``
            input), ``grid_shape`` ``(h, w)``, ``features`` ``(h, w, D)``
            float32, ``source`` (the path, or ``"image[i]"``) and ``info``
            (``embedder``, ``model``, ``input_size``, ``patch_size``,
            ``facet``, ``layer``, ``dtype``, ``cached``,
            ``patch_budget_applied``).
        """
        check_is_fitted(self, "model_")
        check_untabled_output(self, "PatchGrid records")
        p = self.model_.patch_size
        prepared = prepare_images(X, step=type(self).__name__, short_side=self.short_side,
                                  patch_size=p, max_patches=self.max_patches)
        sources, images, grids, budget = zip(*prepared)
        inputs = [resize_image(image, (g[0] * p, g[1] * p)) for image, g in zip(images, grids)]
        with _torch_threads(self.n_threads):
            features, cached = self._embed_inputs(inputs)
        return [
            PatchGrid(
                image=image,
                grid_shape=grid,
                features=feat,
                source=source,
                info={
                    "embedder": "dinov2",
                    "model": self._fitted_name,
                    "input_size": (grid[0] * p, grid[1] * p),
                    "patch_size": p,
                    "facet": self.facet,
                    "layer": self.layer_,
                    "dtype": str(self.dtype_).removeprefix("torch."),
                    "autocast": self.autocast,
                    "cached": bool(hit),
                    "patch_budget_applied": applied,
                },
            )
            for image, grid, feat, source, hit, applied in zip(
                images, grids, features, sources, cached, budget
            )
        ]
