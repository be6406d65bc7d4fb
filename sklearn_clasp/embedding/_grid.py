"""Patch-grid geometry shared by the embedders: image size to patch grid, patch budget.

Every embedder scales an image so that its shorter side is ``short_side``
pixels, rounds each side to a multiple of the patch size, and shrinks grids
above a patch budget. :func:`patch_grid_shape` is that rule;
:func:`prepare_images` applies it to a list of images the way every
embedder's ``transform`` starts.
"""

from __future__ import annotations

import logging
import math
import os

from ..image import check_image_list, check_size_limit
from ..io import load_image

__all__ = ["MAX_PATCHES", "patch_grid_shape", "prepare_images"]

logger = logging.getLogger(__name__)

#: Default patch budget of the embedders: at most this many patches per image
#: (100 x 100, a 1400 x 1400 pixel input), so that the dense float32 affinity
#: stays within 400 MB (``sklearn_clasp.affinity.MAX_DENSE_SAMPLES``).
MAX_PATCHES = 10_000


def patch_grid_shape(height, width, *, short_side=448, patch_size=14, max_patches=None):
    """Size of the patch grid for an image.

    The image is scaled so that its shorter side is ``short_side`` pixels
    (aspect ratio kept), then each side is rounded to the nearest multiple of
    ``patch_size`` (at least one patch). ``short_side=None`` keeps the image's
    own size and only rounds it, as the CLASP paper does.

    With a patch budget ``max_patches``, a grid that would have more patches
    is shrunk, aspect ratio kept: both sides of the scaled image are
    multiplied by ``sqrt(max_patches / (rows * cols))`` (fractional patch
    counts) and rounded down, each side at least one patch, so that
    ``rows * cols <= max_patches`` always. This bounds the cost of the
    backbone and of the affinity (``rows * cols`` squared) for huge images and
    extreme aspect ratios.

    Parameters
    ----------
    height, width : int
        Image size in pixels.
    short_side : int or None, default=448
        Target length of the shorter side.
    patch_size : int, default=14
        Patch side in pixels.
    max_patches : int or None, default=None
        Largest number of patches, at least 1; ``None`` sets no limit.

    Returns
    -------
    grid_shape : tuple of (int, int)
        Patch rows and columns; the backbone input is
        ``(rows * patch_size, cols * patch_size)`` pixels.

    Examples
    --------
    >>> patch_grid_shape(360, 480)
    (32, 43)
    >>> patch_grid_shape(360, 480, short_side=None)
    (26, 34)
    >>> patch_grid_shape(9000, 12000, short_side=None, max_patches=10_000)
    (86, 115)
    >>> patch_grid_shape(10000, 20, max_patches=10_000)
    (2236, 4)
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive; got {height}x{width}")
    check_size_limit(max_patches, "max_patches")
    scale = 1.0 if short_side is None else float(short_side) / min(height, width)
    rows = max(1, int(math.floor(height * scale / patch_size + 0.5)))
    cols = max(1, int(math.floor(width * scale / patch_size + 0.5)))
    if max_patches is None or rows * cols <= max_patches:
        return rows, cols
    h_p, w_p = height * scale / patch_size, width * scale / patch_size
    shrink = math.sqrt(max_patches / (h_p * w_p))
    rows = max(1, int(math.floor(h_p * shrink)))
    cols = max(1, int(math.floor(w_p * shrink)))
    # A side clamped to one patch leaves the whole budget to the other side.
    rows, cols = min(rows, max_patches), min(cols, max_patches)
    while rows * cols > max_patches:  # a clamped side, or rounding
        if rows >= cols:
            rows -= 1
        else:
            cols -= 1
    return rows, cols


def prepare_images(X, *, step, short_side, patch_size, max_patches):
    """Load a list of images and size each one's patch grid.

    Parameters
    ----------
    X : list of images
        Arrays or file paths (see :func:`~sklearn_clasp.io.load_image`); a 4-D
        array is a batch.
    step : str
        The calling embedder, named in error messages.
    short_side, patch_size, max_patches
        As for :func:`patch_grid_shape`.

    Returns
    -------
    prepared : list of tuple
        ``(source, rgb, grid_shape, budget_applied)`` per image: ``source`` is
        the path or ``"image[i]"``, ``rgb`` the full-resolution RGB ``uint8``
        image, ``budget_applied`` whether the patch budget shrank the grid
        (logged at INFO level when it did).
    """
    out = []
    for i, item in enumerate(check_image_list(X, step=step)):
        source = os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"image[{i}]"
        rgb = load_image(item, name=source)
        height, width = rgb.shape[:2]
        grid = patch_grid_shape(height, width, short_side=short_side, patch_size=patch_size,
                                max_patches=max_patches)
        full = grid if max_patches is None else patch_grid_shape(
            height, width, short_side=short_side, patch_size=patch_size)
        applied = tuple(full) != tuple(grid)
        if applied:
            logger.info("%s: %d x %d image downscaled for the patch budget: %d x %d patches "
                        "instead of %d x %d", source, height, width, *grid, *full)
        out.append((source, rgb, grid, applied))
    return out
