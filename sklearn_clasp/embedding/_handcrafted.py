"""A weights-free patch embedder: colour, texture and position per patch.

This is a baseline, not DINO. It needs no model weights, so the whole CLASP
pipeline can run (and be tested end to end) without downloading anything, and
it serves air-gapped users. Its features describe what a patch looks like
(colour, local texture, where it is), not what it is: it separates regions of
different colour or texture, but it cannot group the differently coloured parts
of one object the way DINOv2 features do.
"""

from __future__ import annotations

import functools
import logging
from numbers import Integral, Real

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import HasMethods, Interval, InvalidParameterError
from sklearn.utils.validation import check_memory

from ..device import n_jobs_constraints
from ..image import resize_image
from ..io import check_cache_location
from ._grid import MAX_PATCHES, prepare_images
from ..records import PatchGrid, RecordOutputMixin, check_untabled_output

__all__ = ["HandcraftedPatchEmbedder", "handcrafted_patch_features"]

logger = logging.getLogger(__name__)

# --- colour ---------------------------------------------------------------

# sRGB (D65) -> XYZ, divided row-wise by the D65 white point so that white
# maps to (1, 1, 1).
_RGB_TO_XYZ_D65 = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
) / np.array([[0.95047], [1.0], [1.08883]])

#: Weight of CIELAB lightness in the colour distance (a*, b* have weight 1).
#: Halving it makes the colour features less sensitive to shading.
LIGHTNESS_WEIGHT = 0.5

#: Constant first component of the texture group: the contrast (in CIELAB
#: units) at which texture starts to dominate the group. Flat patches (texture
#: statistics near zero) all point in this direction, so they are similar to
#: each other and the group never collapses to a zero vector.
TEXTURE_BIAS = 10.0

_PROTOTYPE_SPACING = 1.4  # lattice step, in units of the prototype width
_PROTOTYPE_REACH = 1.0  # keep lattice points this close to the gamut (same units)


@functools.lru_cache(maxsize=1)
def _srgb_linear_lut():
    """Lookup table ``uint8 -> linear-light float32`` (the sRGB transfer curve)."""
    c = np.arange(256, dtype=np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return lin.astype(np.float32)


def rgb_to_lab(image):
    """Convert an RGB ``uint8`` image (sRGB, D65) to CIELAB.

    Parameters
    ----------
    image : ndarray of shape (..., 3), dtype uint8
        sRGB values.

    Returns
    -------
    lab : ndarray of shape (..., 3), dtype float32
        ``L*`` in ``[0, 100]``, ``a*`` and ``b*`` roughly in ``[-110, 100]``.

    Examples
    --------
    >>> import numpy as np
    >>> rgb_to_lab(np.array([255, 0, 0], np.uint8)).round(1)  # pure red
    array([53.2, 80.1, 67.2], dtype=float32)
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.shape[-1] != 3:
        raise ValueError(
            f"rgb_to_lab expects uint8 RGB values of shape (..., 3); got dtype "
            f"{image.dtype} and shape {image.shape}. Use sklearn_clasp.image."
            f"as_rgb_uint8 first."
        )
    xyz = _srgb_linear_lut()[image] @ _RGB_TO_XYZ_D65.T.astype(np.float32)
    # CIELAB's f(t): cube root above (6/29)**3, a linear segment below
    small = xyz <= np.float32((6.0 / 29.0) ** 3)
    linear_part = xyz[small] * np.float32(841.0 / 108.0) + np.float32(4.0 / 29.0)
    f = np.cbrt(xyz, out=xyz)
    f[small] = linear_part
    lab = np.empty_like(f)
    np.multiply(f[..., 1], np.float32(116.0), out=lab[..., 0])
    lab[..., 0] -= np.float32(16.0)
    np.subtract(f[..., 0], f[..., 1], out=lab[..., 1])
    lab[..., 1] *= np.float32(500.0)
    np.subtract(f[..., 1], f[..., 2], out=lab[..., 2])
    lab[..., 2] *= np.float32(200.0)
    return lab


@functools.lru_cache(maxsize=8)
def _color_prototypes(color_sigma):
    """Lab colour prototypes for the colour kernel of width ``color_sigma``.

    Points of a cubic lattice in the weighted Lab space ``(w L*, a*, b*)``
    (``w = LIGHTNESS_WEIGHT``) that lie close to the sRGB gamut. With Gaussian
    bumps of width ``s = color_sigma / sqrt(2)`` on them, the cosine similarity
    of two embedded colours approximates ``exp(-d**2 / (2 * color_sigma**2))``
    (``d`` the weighted Lab distance) to within 0.1, typically 0.01.
    """
    from scipy.spatial import cKDTree

    s = color_sigma / np.sqrt(2.0)
    step = _PROTOTYPE_SPACING * s
    levels = np.linspace(0, 255, 33).round().astype(np.uint8)
    gamut = rgb_to_lab(
        np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    ).astype(np.float64)
    gamut[:, 0] *= LIGHTNESS_WEIGHT
    lo = np.floor((gamut.min(0) - step) / step) * step
    hi = gamut.max(0) + step
    axes = [np.arange(a, b + 1e-9, step) for a, b in zip(lo, hi)]
    lattice = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    dist, _ = cKDTree(gamut).query(lattice)
    protos = lattice[dist <= _PROTOTYPE_REACH * s]
    return protos.astype(np.float32), float(s)


def _color_embedding(mean_lab, color_sigma):
    """Unit-norm Gaussian-kernel embedding of mean colours, shape (n, n_prototypes)."""
    protos, s = _color_prototypes(float(color_sigma))
    x = mean_lab * np.array([LIGHTNESS_WEIGHT, 1.0, 1.0], np.float32)
    # squared distances to the prototypes, turned in place into Gaussian bumps
    emb = x @ (np.float32(-2.0) * protos.T)
    emb += (x * x).sum(1)[:, None]
    emb += (protos * protos).sum(1)[None, :]
    np.maximum(emb, 0.0, out=emb)
    emb *= np.float32(-0.5 / (s * s))
    np.exp(emb, out=emb)
    emb /= np.sqrt(np.einsum("ij,ij->i", emb, emb))[:, None]
    return emb


# --- the features -------------------------------------------------------


def _pixel_maps(image):
    """Per-pixel statistics to average over patches, shape ``(H, W, 10)``.

    Channels: ``L*, a*, b*``, their squares, ``gx**2, gy**2, gx*gy`` and
    ``|g|`` for the central-difference gradient ``(gx, gy)`` of ``L*``.
    """
    lab = rgb_to_lab(image)
    maps = np.empty(image.shape[:2] + (10,), np.float32)
    maps[..., 0:3] = lab
    np.multiply(lab, lab, out=maps[..., 3:6])
    light = lab[..., 0]
    gx = np.empty_like(light)
    gy = np.empty_like(light)
    if light.shape[1] > 1:
        np.subtract(light[:, 2:], light[:, :-2], out=gx[:, 1:-1])
        gx[:, 1:-1] *= np.float32(0.5)
        gx[:, 0] = light[:, 1] - light[:, 0]
        gx[:, -1] = light[:, -1] - light[:, -2]
    else:
        gx[:] = 0.0
    if light.shape[0] > 1:
        np.subtract(light[2:], light[:-2], out=gy[1:-1])
        gy[1:-1] *= np.float32(0.5)
        gy[0] = light[1] - light[0]
        gy[-1] = light[-1] - light[-2]
    else:
        gy[:] = 0.0
    np.multiply(gx, gx, out=maps[..., 6])
    np.multiply(gy, gy, out=maps[..., 7])
    np.multiply(gx, gy, out=maps[..., 8])
    np.add(maps[..., 6], maps[..., 7], out=maps[..., 9])
    np.sqrt(maps[..., 9], out=maps[..., 9])
    return maps


def _patch_means(maps, grid_shape, patch_size):
    """Average ``(h*p, w*p, c)`` per-pixel maps over each patch -> ``(h*w, c)``."""
    h, w = grid_shape
    p = patch_size
    c = maps.shape[2]
    pooled = maps.reshape(h, p, w, p, c).mean(axis=(1, 3), dtype=np.float32)
    return pooled.reshape(h * w, c)


def _unit_rows(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def handcrafted_patch_features(
    image,
    grid_shape,
    *,
    patch_size=14,
    color_weight=1.0,
    texture_weight=0.5,
    position_weight=0.1,
    color_sigma=15.0,
):
    """Colour, texture and position features for each patch of an image.

    A weights-free stand-in for DINOv2 patch features (a baseline, not DINO):
    it describes how a patch looks, not what it shows. The image is resized to
    ``(h * patch_size, w * patch_size)`` pixels and cut into an ``(h, w)`` grid
    of ``patch_size`` x ``patch_size`` patches. Each patch gets three groups of
    features, each scaled to unit length and then multiplied by its weight:

    colour (``color_weight``)
        The patch's mean colour in CIELAB (lightness weighted by
        ``LIGHTNESS_WEIGHT = 0.5``) embedded with Gaussian bumps on a lattice
        of colour prototypes, so that the cosine similarity of two patches'
        colour groups is about ``exp(-d**2 / (2 * color_sigma**2))``, ``d``
        their colour distance. Equal colours give 1; colours 2.5
        ``color_sigma`` apart give about 0.05. Every colour (black, grey,
        white included) has a non-zero embedding.
    texture (``texture_weight``, 9 values)
        ``[TEXTURE_BIAS, std L*, std a*, std b*, mean gradient magnitude,
        RMS gradient along 0, 45, 90 and 135 degrees]``, in CIELAB units
        (gradients of ``L*`` per pixel of the resized image). The constant
        ``TEXTURE_BIAS = 10`` makes all flat patches point the same way and
        keeps the group non-zero.
    position (``position_weight``, 4 values)
        ``[cos a, sin a, cos b, sin b] / sqrt(2)`` with ``a, b`` the patch
        centre row and column mapped to ``[0, pi/2]`` (divided by the longer
        grid side, so distances are isotropic). Opposite corners of a square
        grid have similarity 0, neighbours nearly 1.

    Because the groups have lengths equal to their weights, the cosine
    similarity of two feature vectors is the average of the groups' cosine
    similarities weighted by ``weight**2``. The defaults give colour 79 %,
    texture 20 % and position 0.8 %: patches of different flat colours have
    similarity about 0.2, patches of one flat colour at least 0.99, and
    position only breaks ties.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), dtype uint8
        RGB image. Resized (bicubic) to the grid's pixel size if needed.
    grid_shape : tuple of (int, int)
        Patch rows and columns ``(h, w)``.
    patch_size : int, default=14
        Patch side in pixels of the resized image.
    color_weight, texture_weight, position_weight : float, default=1.0, 0.5, 0.1
        Weights of the three feature groups (non-negative, not all zero).
    color_sigma : float, default=15.0
        Width of the colour kernel, in (lightness-weighted) CIELAB units.
        Smaller values separate similar colours more but need more colour
        prototypes (the colour group has about 310 values at 15, 170 at 20).

    Returns
    -------
    features : ndarray of shape (h, w, n_features), dtype float32
        ``n_features = n_color_prototypes + 9 + 4``; finite, never all zero.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((28, 56, 3), np.uint8)
    >>> img[:, 28:] = (255, 0, 0)            # left half black, right half red
    >>> f = handcrafted_patch_features(img, (2, 4))
    >>> f.shape[:2], f.dtype
    ((2, 4), dtype('float32'))
    >>> v = f.reshape(8, -1) / np.linalg.norm(f.reshape(8, -1), axis=1)[:, None]
    >>> bool(v[0] @ v[4] > 0.99), bool(v[0] @ v[3] < 0.5)
    (True, True)
    """
    h, w = (int(v) for v in grid_shape)
    p = int(patch_size)
    if h < 1 or w < 1 or p < 1:
        raise ValueError(
            f"grid_shape and patch_size must be positive; got grid_shape="
            f"{tuple(grid_shape)} and patch_size={patch_size}."
        )
    weights = np.array([color_weight, texture_weight, position_weight], np.float64)
    finite = np.all(np.isfinite(weights))
    if not finite or np.any(weights < 0) or not np.any(weights > 0):
        raise ValueError(
            f"color_weight, texture_weight and position_weight must be finite, "
            f"non-negative and not all zero; got {tuple(weights)}."
        )
    if not color_sigma > 0:
        raise ValueError(f"color_sigma must be positive; got {color_sigma}.")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be an RGB uint8 array of shape (H, W, 3); got dtype "
            f"{image.dtype} and shape {image.shape}. Use sklearn_clasp.image."
            f"load_image first."
        )
    image = resize_image(image, (h * p, w * p))

    stats = _patch_means(_pixel_maps(image), (h, w), p)
    mean_lab = np.ascontiguousarray(stats[:, 0:3])
    std_lab = np.sqrt(np.maximum(stats[:, 3:6] - mean_lab * mean_lab, 0.0))
    jxx, jyy, jxy, gmag = stats[:, 6], stats[:, 7], stats[:, 8], stats[:, 9]
    half = 0.5 * (jxx + jyy)
    # gradient energy along 0, 45, 90 and 135 degrees, from the structure tensor
    energy = np.stack([jxx, half + jxy, jyy, half - jxy], axis=1)
    texture = np.concatenate(
        [
            np.full((h * w, 1), TEXTURE_BIAS, np.float32),
            std_lab,
            gmag[:, None],
            np.sqrt(np.maximum(energy, 0.0)),
        ],
        axis=1,
    )

    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    scale = 0.5 * np.pi / max(h, w)
    a = ((rows.ravel() + 0.5) * scale).astype(np.float32)
    b = ((cols.ravel() + 0.5) * scale).astype(np.float32)
    position = np.stack([np.cos(a), np.sin(a), np.cos(b), np.sin(b)], 1) / np.sqrt(
        np.float32(2.0)
    )

    features = np.concatenate(
        [
            np.float32(color_weight) * _color_embedding(mean_lab, color_sigma),
            np.float32(texture_weight) * _unit_rows(texture),
            np.float32(position_weight) * position,
        ],
        axis=1,
    ).astype(np.float32, copy=False)
    return features.reshape(h, w, -1)


# --- the estimator ------------------------------------------------------


class HandcraftedPatchEmbedder(RecordOutputMixin, TransformerMixin, BaseEstimator):
    """Weights-free patch embedder: colour, texture and position per patch.

    A baseline, **not DINO**: it needs no model weights, so the CLASP pipeline
    runs (and can be tested end to end) without downloads, and it serves
    air-gapped users. Its features describe how each patch looks -- mean colour
    in CIELAB, local texture statistics, position -- not what it shows; it
    separates regions of different colour or texture but cannot group the
    differently coloured parts of one object as DINOv2 features can. See
    :func:`handcrafted_patch_features` for the features and how they are
    scaled for cosine similarity.

    It has the same output contract and resize policy as the DINOv2 embedder:
    the image is scaled so that its shorter side is ``short_side`` pixels and
    each side is rounded to a multiple of ``patch_size``
    (:func:`~sklearn_clasp.embedding.patch_grid_shape`).

    The embedder is stateless (training-free): :meth:`fit` only validates the
    parameters, :meth:`transform` can be called without it, and
    :func:`~sklearn.utils.validation.check_is_fitted` passes on a new one
    (its ``requires_fit`` tag is ``False``). Its input is a list of images,
    not a 2-D array (its ``two_d_array`` tag is ``False``).

    Parameters
    ----------
    patch_size : int, default=14
        Patch side in pixels of the resized image.
    short_side : int or None, default=448
        Length the shorter image side is scaled to; ``None`` keeps the image
        size (rounded to multiples of ``patch_size``).
    max_patches : int or None, default=10_000
        Patch budget: a grid with more patches is shrunk, aspect ratio kept,
        to at most this many (see
        :func:`~sklearn_clasp.embedding.patch_grid_shape`), so huge images and
        extreme aspect ratios are downscaled instead of exhausting memory;
        ``info["patch_budget_applied"]`` says when. ``None`` sets no limit.
    color_weight : float, default=1.0
        Weight of the colour group.
    texture_weight : float, default=0.5
        Weight of the texture group.
    position_weight : float, default=0.1
        Weight of the position group; keep it small, it only breaks ties (at
        0.1, uniform images have all pairwise patch similarities above 0.99).
    color_sigma : float, default=15.0
        Width of the colour kernel in (lightness-weighted) CIELAB units.
    n_jobs : int, default=None
        Number of images embedded in parallel (threads); ``None`` means 1,
        ``-1`` all processors. At most :data:`~sklearn_clasp.device.MAX_N_JOBS`.
    memory : str, joblib.Memory or None, default=None
        Cache the features on disk, keyed by the image's pixels and every
        setting that changes them (the grid and the feature parameters, not
        ``n_jobs``), so a search over later steps embeds each image once.
        One entry per image and setting: the ``(h, w, d)`` float32 features
        (about 1.8 MB for a 480 x 360 image at the default size). ``None``
        caches nothing. The entries are pickles, loaded on a cache hit: use
        a directory only you can write to (a warning says so otherwise).

    Attributes
    ----------
    This estimator is stateless and sets no fitted attributes.

    See Also
    --------
    handcrafted_patch_features : The feature function this estimator wraps.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_clasp.embedding import HandcraftedPatchEmbedder
    >>> img = np.zeros((60, 90, 3), np.uint8)
    >>> rec, = HandcraftedPatchEmbedder(short_side=None).fit_transform([img])
    >>> rec.grid_shape, rec.features.shape[:2], rec.image.shape
    ((4, 6), (4, 6), (60, 90, 3))
    >>> rec.info["embedder"], rec.info["input_size"]
    ('handcrafted', (56, 84))
    """

    _parameter_constraints: dict = {
        "patch_size": [Interval(Integral, 1, None, closed="left")],
        "short_side": [Interval(Integral, 1, None, closed="left"), None],
        "max_patches": [Interval(Integral, 1, None, closed="left"), None],
        "color_weight": [Interval(Real, 0, None, closed="left")],
        "texture_weight": [Interval(Real, 0, None, closed="left")],
        "position_weight": [Interval(Real, 0, None, closed="left")],
        "color_sigma": [Interval(Real, 0, None, closed="neither")],
        "n_jobs": n_jobs_constraints(),
        "memory": [None, str, HasMethods(["cache"])],
    }

    def __init__(
        self,
        patch_size=14,
        short_side=448,
        max_patches=MAX_PATCHES,
        color_weight=1.0,
        texture_weight=0.5,
        position_weight=0.1,
        color_sigma=15.0,
        n_jobs=None,
        memory=None,
    ):
        self.patch_size = patch_size
        self.short_side = short_side
        self.max_patches = max_patches
        self.color_weight = color_weight
        self.texture_weight = texture_weight
        self.position_weight = position_weight
        self.color_sigma = color_sigma
        self.n_jobs = n_jobs
        self.memory = memory

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.non_deterministic = False
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = []
        return tags

    def _check_weights(self):
        if not (self.color_weight > 0 or self.texture_weight > 0
                or self.position_weight > 0):
            raise InvalidParameterError(
                "HandcraftedPatchEmbedder: color_weight, texture_weight and "
                "position_weight are all 0; set at least one to a positive value."
            )

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Validate the parameters; nothing is learned.

        Parameters
        ----------
        X : list of images
            Ignored (accepted for pipeline compatibility).
        y : None
            Ignored.

        Returns
        -------
        self : HandcraftedPatchEmbedder
        """
        self._check_weights()
        return self

    def transform(self, X):
        """Embed each image into a grid of patch features.

        Parameters
        ----------
        X : list of images
            Each an array ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or
            ``(H, W, 4)`` (uint8, or float in ``[0, 1]``) or a file path. A 4-D
            array is taken as a batch.

        Returns
        -------
        records : list of PatchGrid
            One per image, with ``image`` (the full-resolution RGB uint8
            image), ``grid_shape``, ``features`` of shape ``(h, w, d)``
            float32, ``source`` (the path, or ``"image[i]"``) and ``info``
            ``{"embedder": "handcrafted", "input_size": (h * patch_size,
            w * patch_size), "patch_budget_applied": bool, "cached": bool}``
            (``cached``: the features came from ``memory``).
        """
        self._validate_params()
        self._check_weights()
        check_untabled_output(self, "PatchGrid records")
        prepared = prepare_images(X, step=type(self).__name__, short_side=self.short_side,
                                  patch_size=self.patch_size, max_patches=self.max_patches)
        features = self._cached_features()
        if self.n_jobs in (None, 1) or len(prepared) == 1:
            return [self._embed_one(features, *item) for item in prepared]
        return list(
            Parallel(n_jobs=self.n_jobs, prefer="threads")(
                delayed(self._embed_one)(features, *item) for item in prepared
            )
        )

    def _cached_features(self):
        """``handcrafted_patch_features``, through ``memory`` when it is set."""
        if self.memory is None:
            return None
        memory = check_memory(self.memory)
        check_cache_location(memory, what="feature cache", stacklevel=5)
        return memory.cache(handcrafted_patch_features)

    def _embed_one(self, cached, source, rgb, grid, budget_applied):
        kw = dict(patch_size=self.patch_size, color_weight=self.color_weight,
                  texture_weight=self.texture_weight, position_weight=self.position_weight,
                  color_sigma=self.color_sigma)
        hit = False
        if cached is None:
            features = handcrafted_patch_features(rgb, grid, **kw)
        else:
            hit = bool(cached.check_call_in_cache(rgb, grid, **kw))
            features = cached(rgb, grid, **kw)
        logger.debug(
            "embedded %s: grid %s, %d features", source, grid, features.shape[-1]
        )
        return PatchGrid(
            image=rgb,
            grid_shape=grid,
            features=features,
            source=source,
            info={
                "embedder": "handcrafted",
                "input_size": (grid[0] * self.patch_size, grid[1] * self.patch_size),
                "patch_budget_applied": budget_applied,
                "cached": hit,
            },
        )
