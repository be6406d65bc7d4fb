"""Synthetic data with a known answer: planted partitions and flat-shape images.

Used by the tests and benchmarks, and handy for trying the estimators out.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions, validate_params

__all__ = ["make_planted_partition", "make_shapes_image"]


@validate_params(
    {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "n_samples": [Interval(Integral, 1, None, closed="left")],
        "n_features": [Interval(Integral, 1, None, closed="left")],
        "noise": [Interval(Real, 0, None, closed="left")],
        "imbalance": [Interval(Real, 1, None, closed="left")],
        "shared": [Interval(Real, 0, None, closed="left")],
        "shape": [StrOptions({"spherical", "elongated"})],
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def make_planted_partition(
    n_clusters,
    *,
    n_samples=600,
    n_features=64,
    noise=0.5,
    imbalance=1.0,
    shared=0.3,
    shape="spherical",
    random_state=None,
):
    """Feature vectors in ``n_clusters`` planted groups, as patches of an image.

    Each group has a random unit centre; a component ``shared`` along one
    common direction gives every pair of groups a positive cosine similarity,
    as real patch features have. Samples are centre + isotropic Gaussian noise
    of total norm about ``noise``; with ``shape="elongated"`` each group is
    also spread uniformly along a random direction of its own, over
    ``[-1, 1]`` times that direction (groups as long as the distance between
    centres, not round).

    Parameters
    ----------
    n_clusters : int
        Number of groups.
    n_samples : int, default=600
        Total number of samples.
    n_features : int, default=64
        Dimension.
    noise : float, default=0.5
        Noise norm relative to the unit centres.
    imbalance : float, default=1.0
        Ratio of the largest to the smallest group size (sizes in geometric
        progression); 1.0 gives equal groups.
    shared : float, default=0.3
        Weight of the direction common to all centres.
    shape : {"spherical", "elongated"}, default="spherical"
        Round groups, or groups stretched along a random direction each.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples,)
        The planted group of each sample, ``0 .. n_clusters-1``.

    Examples
    --------
    >>> X, y = make_planted_partition(3, n_samples=90, random_state=0)
    >>> X.shape, np.bincount(y).tolist()
    ((90, 64), [30, 30, 30])
    """
    rng = check_random_state(random_state)
    ratios = np.geomspace(1.0, float(imbalance), n_clusters) if n_clusters > 1 else np.ones(1)
    sizes = np.floor(ratios / ratios.sum() * n_samples).astype(int)
    sizes[0] += n_samples - sizes.sum()
    if sizes.min() < 1:
        need = int(np.ceil(ratios.sum() / ratios.min()))
        raise ValueError(
            f"n_samples={n_samples} is too few for {n_clusters} groups with "
            f"imbalance={imbalance}: the smallest group would be empty; give n_samples >= "
            f"{need}.")
    common = rng.standard_normal(n_features)
    common /= np.linalg.norm(common)
    centres = rng.standard_normal((n_clusters, n_features))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    centres = centres + shared * common
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.arange(n_clusters), sizes)
    X = centres[y] + noise * rng.standard_normal((n_samples, n_features)) / np.sqrt(n_features)
    if shape == "elongated":
        axes = rng.standard_normal((n_clusters, n_features))
        axes /= np.linalg.norm(axes, axis=1, keepdims=True)
        X += rng.uniform(-1.0, 1.0, n_samples)[:, None] * axes[y]
    return X, y


_PALETTE = np.array(
    [[200, 40, 40], [40, 80, 200], [50, 170, 60], [230, 200, 40], [150, 60, 170],
     [30, 170, 180], [240, 130, 30], [120, 120, 120]],
    dtype=np.uint8,
)


@validate_params(
    {
        "height": [Interval(Integral, 1, None, closed="left")],
        "width": [Interval(Integral, 1, None, closed="left")],
        "n_shapes": [Interval(Integral, 0, len(_PALETTE), closed="both")],
        "background": ["array-like"],
        "noise": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def make_shapes_image(
    height=224, width=224, *, n_shapes=3, background=(128, 128, 128), noise=0.0,
    random_state=None,
):
    """An image of flat-coloured shapes on a flat background, with its truth.

    Shapes (a disc, a rectangle, a triangle, then more discs) are drawn at
    deterministic positions that do not follow the 14-pixel patch grid.

    Parameters
    ----------
    height, width : int, default=224
        Image size.
    n_shapes : int, default=3
        Number of shapes, at most 8.
    background : tuple of 3 int, default=(128, 128, 128)
        Background RGB colour.
    noise : float, default=0.0
        Standard deviation of Gaussian pixel noise (in 0..255 units).
    random_state : int, RandomState instance or None, default=None
        Seeds the noise.

    Returns
    -------
    image : ndarray of shape (height, width, 3), dtype uint8
    truth : ndarray of shape (height, width), dtype int64
        0 for the background, ``i`` for the ``i``-th shape.

    Examples
    --------
    >>> image, truth = make_shapes_image(n_shapes=2)
    >>> image.shape, sorted(np.unique(truth).tolist())
    ((224, 224, 3), [0, 1, 2])
    """
    bg = np.asarray(background)
    if bg.shape != (3,) or not np.issubdtype(bg.dtype, np.number) or not (
            np.all(bg >= 0) and np.all(bg <= 255)):
        raise ValueError(f"background must be 3 values in 0..255 (an RGB colour); got "
                         f"{background!r}.")
    yy, xx = np.mgrid[0:height, 0:width]
    fy, fx = yy / height, xx / width
    masks = [
        (fy - 0.30) ** 2 + (fx - 0.28) ** 2 < 0.19 ** 2,  # disc
        (fy > 0.58) & (fy < 0.91) & (fx > 0.13) & (fx < 0.47),  # rectangle
        (fy > 0.55) & (fy < 0.93) & (fx > 0.55) & (fx < 0.95)
        & (fx - 0.55 > (0.93 - fy) * 0.5) & (0.95 - fx > (0.93 - fy) * 0.5),  # triangle
    ]
    rng = check_random_state(random_state)
    centres = [(0.2, 0.72), (0.45, 0.55), (0.12, 0.9), (0.8, 0.5), (0.45, 0.1)]
    for cy, cx in centres:
        masks.append((fy - cy) ** 2 + (fx - cx) ** 2 < 0.08 ** 2)
    truth = np.zeros((height, width), dtype=np.int64)
    image = np.empty((height, width, 3), dtype=np.float64)
    image[:] = background
    for i in range(n_shapes):
        truth[masks[i]] = i + 1
        image[masks[i]] = _PALETTE[i]
    if noise > 0:
        image += rng.normal(0.0, noise, image.shape)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), truth
