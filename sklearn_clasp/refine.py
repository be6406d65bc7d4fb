"""Refinement: coarse patch labels to full-resolution pixel masks.

The last stage of CLASP. The segmenter labels one ``14 x 14`` patch at a time,
so its mask is blocky; this module maps it onto the pixels of the source image
and, by default, snaps the segment boundaries onto the image's edges with a
fully connected conditional random field (DenseCRF, Krähenbühl & Koltun 2011).

Functional core (pure functions on plain arrays):

- :func:`upsample_labels` -- patch labels to pixel labels by scaling alone
  (``"nearest"``) or by interpolating one-hot maps (``"bilinear"``);
- :func:`upsample_proba` -- patch probabilities to pixel probabilities
  (bilinear);
- :func:`dense_crf` -- DenseCRF refinement of pixel labels (or pixel
  probabilities) against the image, with ``pydensecrf`` (the reference) or
  a PyTorch implementation of the same inference (CPU or CUDA);
- :func:`refine_labels` -- the three CLASP variants in one call;
- :func:`bounded_shape` and :func:`resample_nearest` -- the size and the
  label resampling of refinement at a bounded resolution (helpers shared
  with other modules).

:class:`CRFRefiner` wraps them as the pipeline's last step. The backends, the
soft unaries and their measurements are described in ``docs/refine.md``.
"""

from __future__ import annotations

import logging
import math
from numbers import Integral, Real

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions, validate_params

from .device import check_device, n_jobs_constraints, resolve_device, torch_threads
from .image import (
    as_rgb_uint8,
    bounded_shape,
    check_label_map,
    check_size_limit,
    compact_labels,
    resample_nearest,
    resize_image,
)
from .records import PatchGrid, RecordOutputMixin, check_records, check_untabled_output

__all__ = ["MAX_CRF_ITERATIONS", "upsample_labels", "dense_crf", "refine_labels", "CRFRefiner"]

logger = logging.getLogger(__name__)

_METHODS = ("crf", "nearest", "bilinear")
_BACKENDS = ("pydensecrf", "torch")
_UNARIES = ("hard", "soft", "auto")

#: Floor of the probabilities of a soft unary: the unary energy of a label
#: with probability ``p`` is ``-log(max(p, SOFT_UNARY_EPS))``, at most 11.5.
SOFT_UNARY_EPS = 1e-5

#: Most mean-field iterations: the energy settles within a few tens (the paper
#: runs 10 to 20); the cap bounds the work a settings file can ask for.
MAX_CRF_ITERATIONS = 1000

_CRF_CONSTRAINTS = {
    "n_iter": [Interval(Integral, 0, MAX_CRF_ITERATIONS, closed="both")],
    "gt_prob": [Interval(Real, 0, 1, closed="neither")],
    "gaussian_sxy": [Interval(Real, 0, None, closed="neither")],
    "gaussian_compat": [Interval(Real, 0, None, closed="left")],
    "bilateral_sxy": [Interval(Real, 0, None, closed="neither")],
    "bilateral_srgb": [Interval(Real, 0, None, closed="neither")],
    "bilateral_compat": [Interval(Real, 0, None, closed="left")],
    "backend": [StrOptions(set(_BACKENDS))],
    "device": [str],
}

_CRF_PARAM_NAMES = frozenset(_CRF_CONSTRAINTS) | {"n_labels", "temperature"}

#: The defaults of the refinement settings, stated once for :func:`dense_crf`,
#: :func:`refine_labels` and :class:`CRFRefiner` (the CRF's are the paper's).
DEFAULTS = {
    "method": "crf",
    "n_iter": 20,
    "gt_prob": 0.8,
    "gaussian_sxy": 4,
    "gaussian_compat": 4,
    "bilateral_sxy": 80,
    "bilateral_srgb": 13,
    "bilateral_compat": 10,
    "unary": "hard",
    "backend": "pydensecrf",
    "device": "auto",
}


# --------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------


def _check_label_map(labels, *, name="labels"):
    """Labels as 2-D int64 (whole-number floats accepted), or a clear error."""
    return check_label_map(labels, name=name, allow_float=True)


def _check_image_first(image, labels, call):
    """Refuse the old ``(labels, image)`` order: a label map first, an RGB image second."""
    if np.ndim(labels) == 3 and np.shape(labels)[-1] in (3, 4) and np.ndim(image) == 2:
        raise TypeError(
            f"{call}: got a 2-D array first and an {np.shape(labels)} array second; "
            f"the image comes first and the labels second, (image, labels) "
            f"(the order was (labels, image) before version 0.2)."
        )


def _check_shape(shape):
    try:
        height, width = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"shape must be a pair of ints (height, width); got {shape!r}."
        ) from None
    if height < 1 or width < 1:
        raise ValueError(f"shape must be positive; got {(height, width)}.")
    return height, width


def _check_proba(proba, *, name="proba"):
    """Probabilities as ``(h, w, K)`` float32 rows summing to 1, or a clear error."""
    arr = np.asarray(proba)
    if arr.ndim != 3 or arr.shape[2] < 1 or arr.dtype.kind not in "fiu":
        raise ValueError(
            f"{name} must be a numeric array of shape (h, w, K), one probability "
            f"per segment and patch (or pixel); got an array of shape {arr.shape} "
            f"and dtype {arr.dtype}."
        )
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)) or (arr < 0).any():
        raise ValueError(f"{name} must be finite and non-negative.")
    sums = arr.sum(axis=2, dtype=np.float64)
    if not np.allclose(sums, 1.0, atol=1e-3):
        worst = float(sums.flat[np.argmax(np.abs(sums - 1.0))])
        raise ValueError(
            f"each {name}[i, j] must sum to 1 over its {arr.shape[2]} segments; "
            f"one sums to {worst:.4g}. Normalise the probabilities first."
        )
    return arr


def _check_proba_matches(proba, labels, *, name="proba"):
    """Check that ``labels`` (``0 .. K-1``) index the ``K`` columns of ``proba``."""
    if proba.shape[:2] != labels.shape:
        raise ValueError(
            f"{name} of shape {proba.shape} does not match the labels of shape "
            f"{labels.shape}: it needs one row of K probabilities per patch."
        )
    n_segments = proba.shape[2]
    if labels.size and (labels.min() < 0 or labels.max() >= n_segments):
        raise ValueError(
            f"with soft unaries the labels must be segment indices 0 .. "
            f"{n_segments - 1} (the columns of {name}); got values from "
            f"{labels.min()} to {labels.max()}."
        )


def _torch_device(device):
    """The torch device for ``device`` in ``{"auto", "cpu", "cuda", "cuda:<n>"}``."""
    return resolve_device(device)


# --------------------------------------------------------------------------
# functional core
# --------------------------------------------------------------------------


def _bilinear_axis(n_out, n_in):
    """Source indices and weights for 1-D linear interpolation, centres aligned.

    Output sample ``t`` (centre ``t + 0.5``) lies at continuous input position
    ``(t + 0.5) * n_in / n_out - 0.5`` (input sample ``s`` has its centre at
    ``s``), clamped to ``[0, n_in - 1]``.
    """
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0.0, n_in - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    return lo, hi, frac


def _downscale(rgb, size):
    """Area-average ``rgb`` down to ``size = (h, w)`` in bounded memory.

    An integer box reduction (chunked, no full-size temporary) first brings
    the image to between one and four times the target area; Pillow's box
    filter then resizes that to exactly ``size``.
    """
    height, width = rgb.shape[:2]
    f = max(1, int(min(height / size[0], width / size[1])))
    small = _box_downsample(rgb, f, f) if f > 1 else rgb
    return resize_image(small, size, resample="area")


def _box_downsample(rgb, fy, fx):
    """Mean of each ``fy x fx`` block of a uint8 image (the remainder cropped).

    Works on row chunks of about 16 MB of input, so apart from the output it
    needs no memory proportional to the image.
    """
    rows, cols = rgb.shape[0] // fy, rgb.shape[1] // fx
    out = np.empty((rows, cols, 3), dtype=np.uint8)
    chunk = max(1, (16 * 2**20) // max(1, fy * cols * fx * 3))
    area = fy * fx
    for r0 in range(0, rows, chunk):
        r1 = min(r0 + chunk, rows)
        block = rgb[r0 * fy:r1 * fy, :cols * fx].reshape(r1 - r0, fy, cols, fx, 3)
        sums = block.sum(axis=(1, 3), dtype=np.uint32)
        out[r0:r1] = (sums + area // 2) // area
    return out


@validate_params(
    {
        "labels": ["array-like"],
        "shape": ["array-like"],
        "method": [StrOptions({"nearest", "bilinear"})],
    },
    prefer_skip_nested_validation=True,
)
def upsample_labels(labels, shape, *, method="nearest"):
    """Upsample patch labels ``(h, w)`` to pixel labels ``(H, W)``.

    The patch grid spans the whole image: patch ``(i, j)`` covers rows
    ``i * H / h`` to ``(i + 1) * H / h`` and columns ``j * W / w`` to
    ``(j + 1) * W / w``. With ``method="nearest"`` pixel ``(y, x)`` gets the
    label of patch ``(floor(y * h / H), floor(x * w / W))``, computed in
    integer arithmetic, so sizes need not divide.

    With ``method="bilinear"`` the one-hot map of each label is interpolated
    bilinearly (pixel centres aligned with patch centres, values beyond the
    outer patch centres clamped to the edge) and each pixel takes the label
    with the largest interpolated weight (ties go to the smaller label). This
    gives smoother, diagonal boundaries instead of staircase blocks.

    Label values are kept as they are; they need not be ``0 .. K-1``.

    Parameters
    ----------
    labels : array-like of shape (h, w), int
        Patch labels.
    shape : tuple of (int, int)
        Output size ``(H, W)``, at least the grid size on each side.
    method : {"nearest", "bilinear"}, default="nearest"
        How to upsample.

    Returns
    -------
    pixel_labels : ndarray of shape (H, W), dtype int64
        The upsampled labels.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_clasp.refine import upsample_labels
    >>> upsample_labels(np.array([[0, 7]]), (2, 5))
    array([[0, 0, 0, 7, 7],
           [0, 0, 0, 7, 7]])
    """
    labels = _check_label_map(labels)
    height, width = _check_shape(shape)
    h, w = labels.shape
    if height < h or width < w:
        raise ValueError(
            f"cannot upsample a {h}x{w} patch grid to {height}x{width} pixels: the "
            f"output must be at least as large as the grid. Check that the labels "
            f"belong to this image (labels are (rows, cols), images (H, W, 3))."
        )
    if method == "nearest":
        return resample_nearest(labels, (height, width))

    values = np.unique(labels)
    if values.size == 1:
        return np.full((height, width), values[0], dtype=np.int64)
    r_lo, r_hi, r_frac = _bilinear_axis(height, h)
    c_lo, c_hi, c_frac = _bilinear_axis(width, w)
    r_frac = r_frac.astype(np.float32)[:, None]
    c_frac = c_frac.astype(np.float32)[None, :]
    best = np.full((height, width), -1.0, dtype=np.float32)
    out = np.empty((height, width), dtype=np.int64)
    for value in values:
        onehot = (labels == value).astype(np.float32)
        by_row = onehot[r_lo] * (1.0 - r_frac) + onehot[r_hi] * r_frac  # (H, w)
        weight = by_row[:, c_lo] * (1.0 - c_frac) + by_row[:, c_hi] * c_frac
        better = weight > best
        best[better] = weight[better]
        out[better] = value
    return out


def upsample_proba(proba, shape):
    """Upsample patch probabilities ``(h, w, K)`` to pixel probabilities ``(H, W, K)``.

    Bilinear interpolation of each segment's probability map, with the
    geometry of ``upsample_labels(..., method="bilinear")``: pixel centres
    aligned with patch centres, values beyond the outer patch centres clamped
    to the edge. Each pixel's probabilities are a convex combination of four
    patches', so they still sum to 1. ``shape`` may also be smaller than the
    grid (the same interpolation, at the output samples' positions).

    Parameters
    ----------
    proba : array-like of shape (h, w, K)
        Probabilities of the ``K`` segments for each patch, summing to 1 over
        ``K``.
    shape : tuple of (int, int)
        Output size ``(H, W)``.

    Returns
    -------
    pixel_proba : ndarray of shape (H, W, K), dtype float32
        The interpolated probabilities.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_clasp.refine import upsample_proba
    >>> proba = np.array([[[1.0, 0.0], [0.0, 1.0]]])       # 1 x 2 patches, K = 2
    >>> upsample_proba(proba, (1, 4))[0, :, 0].tolist()
    [1.0, 0.75, 0.25, 0.0]
    """
    proba = _check_proba(proba)
    height, width = _check_shape(shape)
    h, w = proba.shape[:2]
    r_lo, r_hi, r_frac = _bilinear_axis(height, h)
    c_lo, c_hi, c_frac = _bilinear_axis(width, w)
    r_frac = r_frac.astype(np.float32)[:, None, None]
    c_frac = c_frac.astype(np.float32)[None, :, None]
    by_row = proba[r_lo] * (1.0 - r_frac) + proba[r_hi] * r_frac  # (H, w, K)
    return by_row[:, c_lo] * (1.0 - c_frac) + by_row[:, c_hi] * c_frac


def _hard_unary(index, n_labels, gt_prob):
    """Unary energies ``(n_labels, N)`` trusting label ``index[i]`` with ``gt_prob``.

    The same numbers as ``pydensecrf.utils.unary_from_labels(index, n_labels,
    gt_prob, zero_unsure=False)``.
    """
    unary = np.full((n_labels, index.size),
                    -np.log((1.0 - gt_prob) / (n_labels - 1)), dtype=np.float32)
    unary[index, np.arange(index.size)] = -np.log(gt_prob)
    return unary


def _soft_unary(proba, n_labels, temperature=1.0):
    """Unary energies ``(n_labels, N)``, ``-log(max(q, SOFT_UNARY_EPS))``, from ``(N, K)``.

    ``q = p ** (1 / temperature)``, renormalised (``q = p`` at temperature 1).
    """
    floor = np.float32(SOFT_UNARY_EPS)
    unary = np.full((n_labels, proba.shape[0]), -np.log(floor), dtype=np.float32)
    if temperature == 1:
        unary[: proba.shape[1]] = -np.log(np.maximum(proba.T, floor))
        return unary
    # log q = log(p) / t - logsumexp(log(p) / t), zeros as float32's smallest normal
    log_q = np.log(np.maximum(proba.T, np.finfo(np.float32).tiny)) / np.float32(temperature)
    top = log_q.max(axis=0, keepdims=True)
    log_q -= top + np.log(np.exp(log_q - top).sum(axis=0, keepdims=True))
    unary[: proba.shape[1]] = -np.maximum(log_q, np.log(floor))
    return unary


def _mean_field_pydensecrf(rgb, unary, n_iter, kernels, n_out):
    """Most probable of the first ``n_out`` labels at each pixel, with pydensecrf.

    The iterations run one at a time (``startInference`` /
    ``stepInference``, the same arithmetic as ``inference(n_iter)``), so
    Python handles signals such as Ctrl-C between them.
    """
    import pydensecrf.densecrf as dcrf

    height, width = rgb.shape[:2]
    crf = dcrf.DenseCRF2D(width, height, unary.shape[0])
    crf.setUnaryEnergy(unary)
    (g_sxy, g_compat), (b_sxy, b_srgb, b_compat) = kernels
    crf.addPairwiseGaussian(sxy=g_sxy, compat=g_compat)
    crf.addPairwiseBilateral(sxy=b_sxy, srgb=b_srgb, rgbim=rgb, compat=b_compat)
    q, tmp1, tmp2 = crf.startInference()
    for _ in range(n_iter):
        crf.stepInference(q, tmp1, tmp2)
    return np.argmax(np.asarray(q)[:n_out], axis=0)


def _mean_field_torch(rgb, unary, n_iter, kernels, n_out, device):
    """Most probable of the first ``n_out`` labels at each pixel, in PyTorch.

    The same mean-field inference as densecrf's: each kernel is a
    permutohedral lattice over the pixels' features (position divided by
    ``sxy``; position and colour divided by ``sxy`` and ``srgb``) with
    densecrf's symmetric normalisation ``D K D``, ``D = (K 1)^(-1/2)``, and
    Potts compatibility; every iteration computes
    ``Q = softmax(-U + sum_k w_k D_k K_k D_k Q)``.
    """
    import torch

    from .permutohedral import build_lattice, lattice_filter, scale_lattice

    dev = _torch_device(device)
    height, width = rgb.shape[:2]
    n = height * width
    (g_sxy, g_compat), (b_sxy, b_srgb, b_compat) = kernels
    # one CPU thread, as pydensecrf: on a busy machine two of torch's threads
    # waiting on each other made a CamVid CRF 10 to 25 times slower; images run
    # in parallel in processes instead (CRFRefiner(n_jobs=...), the collections)
    with torch.no_grad(), torch_threads(1 if dev.type == "cpu" else None):
        ys = torch.arange(height, dtype=torch.float32, device=dev)
        xs = torch.arange(width, dtype=torch.float32, device=dev)
        yy = ys[:, None].expand(height, width).reshape(-1)
        xx = xs[None, :].expand(height, width).reshape(-1)
        colour = torch.from_numpy(rgb.reshape(-1, 3)).to(dev).to(torch.float32)
        f32 = np.float32
        features = []
        if g_compat:
            features.append((torch.stack([xx / f32(g_sxy), yy / f32(g_sxy)], 1), g_compat))
        if b_compat:
            features.append((torch.cat([torch.stack([xx / f32(b_sxy), yy / f32(b_sxy)], 1),
                                        colour / f32(b_srgb)], 1), b_compat))
        del yy, xx, colour
        lattices = []
        for feats, compat in features:
            # densecrf handles points in blocks of four, the last one padded
            # with points at the origin that add lattice vertices
            lattice = build_lattice(feats, n_pad=(-n) % 4)
            ones = torch.ones((n, 1), dtype=torch.float32, device=dev)
            norm = (1.0 / torch.sqrt(lattice_filter(lattice, ones)[:, 0].double() + 1e-20)
                    ).to(torch.float32)
            lattices.append(scale_lattice(lattice, norm, norm * f32(compat)))
        del features
        neg_unary = torch.empty((n, unary.shape[0]), dtype=torch.float32, device=dev)
        torch.neg(torch.from_numpy(unary).to(dev).T, out=neg_unary)
        q = _softmax_rows(neg_unary.clone())
        for _ in range(n_iter):
            energy = neg_unary.clone()
            for lattice in lattices:
                lattice_filter(lattice, q, add_to=energy)
            q = _softmax_rows(energy)
        return q[:, :n_out].argmax(dim=1).cpu().numpy()


def _softmax_rows(x):
    """In-place softmax of each row of a 2-D tensor (densecrf's expAndNormalize)."""
    x -= x.amax(dim=1, keepdim=True)
    x.exp_()
    x /= x.sum(dim=1, keepdim=True)
    return x


@validate_params(
    {
        "image": ["array-like"],
        "labels": ["array-like", None],
        **_CRF_CONSTRAINTS,
        "n_labels": [Interval(Integral, 1, None, closed="left"), None],
        "proba": ["array-like", None],
        "temperature": [Interval(Real, 0, None, closed="neither")],
    },
    prefer_skip_nested_validation=True,
)
def dense_crf(
    image,
    labels=None,
    *,
    n_iter=DEFAULTS["n_iter"],
    gt_prob=DEFAULTS["gt_prob"],
    gaussian_sxy=DEFAULTS["gaussian_sxy"],
    gaussian_compat=DEFAULTS["gaussian_compat"],
    bilateral_sxy=DEFAULTS["bilateral_sxy"],
    bilateral_srgb=DEFAULTS["bilateral_srgb"],
    bilateral_compat=DEFAULTS["bilateral_compat"],
    n_labels=None,
    proba=None,
    temperature=1.0,
    backend=DEFAULTS["backend"],
    device=DEFAULTS["device"],
):
    """Refine pixel labels against the image with a fully connected CRF.

    The unary term comes from the pixel labels (hard) or from pixel
    probabilities (soft, ``proba``). Hard: each pixel's label is trusted with
    probability ``gt_prob``, the rest spread evenly over the other labels.
    Soft: the energy of segment ``k`` at a pixel is ``-log(max(p_k,
    SOFT_UNARY_EPS))``, ``SOFT_UNARY_EPS = 1e-5``. A Gaussian kernel on pixel
    position smooths the labels and a bilateral kernel on position and colour
    pulls boundaries onto colour edges. Mean field inference runs ``n_iter``
    steps and each pixel takes its most probable label. The defaults are
    those of the CLASP paper.

    Two backends compute the same inference: ``"pydensecrf"`` (the reference
    C++ code of Krähenbühl & Koltun) and ``"torch"`` (the same lattice,
    normalisation and updates in PyTorch, on CPU or CUDA), which give the
    same masks up to floating-point rounding (measurements in
    ``docs/refine.md``). Both return to Python between iterations, so Ctrl-C
    interrupts them.

    Hard labels are mapped to ``0 .. n-1`` for the CRF and back, so any
    integer values work and are kept. A map with a single label is returned
    unchanged (as int64).

    Parameters
    ----------
    image : array-like of shape (H, W, 3), uint8
        The RGB image (grayscale, RGBA and float images in ``[0, 1]`` are
        converted as :func:`~sklearn_clasp.image.as_rgb_uint8` does).
    labels : array-like of shape (H, W), int, default=None
        Pixel labels at the image's resolution, e.g. from
        :func:`upsample_labels`. Give either ``labels`` or ``proba``.
    n_iter : int, default=20
        Number of mean field iterations, at most :data:`MAX_CRF_ITERATIONS`.
    gt_prob : float, default=0.8
        Confidence in the input labels, in ``(1 / n_labels, 1)`` (a value at or
        below ``1 / n_labels`` would trust every other label more, and is
        refused); hard unaries only.
    gaussian_sxy : float, default=4
        Spatial standard deviation, in pixels, of the smoothness kernel.
    gaussian_compat : float, default=4
        Weight of the smoothness kernel.
    bilateral_sxy : float, default=80
        Spatial standard deviation, in pixels, of the appearance kernel.
    bilateral_srgb : float, default=13
        Colour standard deviation, in RGB units, of the appearance kernel.
    bilateral_compat : float, default=10
        Weight of the appearance kernel.
    n_labels : int, default=None
        Number of CRF labels; ``None`` uses the number of distinct values in
        ``labels`` (or of columns of ``proba``). A larger number spreads the
        ``1 - gt_prob`` doubt over more labels, which makes the input labels
        relatively more certain; the extra labels are never output.
    proba : array-like of shape (H, W, K), default=None
        Soft unaries: the probability of each of ``K`` segments at each
        pixel, summing to 1 (e.g. from :func:`upsample_proba`). The output
        then holds segment indices ``0 .. K-1``.
    temperature : float, default=1.0
        Soft unaries only: the probabilities are rescaled as
        ``p ** (1 / temperature)`` and renormalised before the energies are
        taken (for a softmax ``p``, its temperature multiplied by
        ``temperature``): above 1 the CRF trusts them less.
    backend : {"pydensecrf", "torch"}, default="pydensecrf"
        Which implementation runs the inference.
    device : {"auto", "cpu", "cuda"} or "cuda:<index>", default="auto"
        Where the ``"torch"`` backend runs; ``"auto"`` picks CUDA when
        available. ``"pydensecrf"`` does not use it, but a value that is no
        device (``"gpu"``) is refused with either backend.

    Returns
    -------
    refined : ndarray of shape (H, W), dtype int64
        Refined labels, a subset of the input label values (or of the
        segment indices ``0 .. K-1`` with ``proba``).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_clasp.refine import dense_crf
    >>> image = np.zeros((20, 20, 3), np.uint8)
    >>> image[:, 10:] = 255
    >>> labels = np.zeros((20, 20), np.int64)
    >>> labels[:, 7:] = 5
    >>> refined = dense_crf(image, labels)
    >>> np.unique(refined).tolist()
    [0, 5]
    >>> bool((refined[:, :10] == 0).all() and (refined[:, 10:] == 5).all())
    True
    >>> bool((dense_crf(image, labels, backend="torch", device="cpu") == refined).all())
    True
    """
    rgb = np.ascontiguousarray(as_rgb_uint8(image, name="image"), dtype=np.uint8)
    if not rgb.flags.writeable:  # pydensecrf takes a writable buffer (never writes)
        rgb = rgb.copy()
    height, width = rgb.shape[:2]
    if (labels is None) == (proba is None):
        raise ValueError(
            "dense_crf needs either labels (hard unaries) or proba (soft "
            "unaries), not " + ("both." if labels is not None else "neither.")
        )
    check_device(device, name="dense_crf: device", allow_none=False)
    if backend == "torch":
        _torch_device(device)  # a bad device fails before any work
    if proba is None:
        labels = _check_label_map(labels)
        if labels.shape != (height, width):
            raise ValueError(
                f"labels of shape {labels.shape} do not match the image of shape "
                f"{rgb.shape}: dense_crf needs one label per pixel. Upsample patch "
                f"labels first (upsample_labels or refine_labels)."
            )
        values, inverse = compact_labels(labels)
        if values.size == 1:
            return labels.copy()
    else:
        proba = _check_proba(proba)
        if proba.shape[:2] != (height, width):
            raise ValueError(
                f"proba of shape {proba.shape} does not match the image of shape "
                f"{rgb.shape}: dense_crf needs probabilities per pixel. Upsample "
                f"patch probabilities first (upsample_proba or refine_labels)."
            )
        values = np.arange(proba.shape[2], dtype=np.int64)
        if values.size == 1:
            return np.zeros((height, width), dtype=np.int64)
    n_values = values.size
    what = "distinct label values in labels" if proba is None else "segments in proba"
    if n_labels is None:
        n_labels = n_values
    elif n_labels < n_values:
        raise ValueError(
            f"n_labels={n_labels} is smaller than the {n_values} {what}; pass "
            f"n_labels >= {n_values} or None."
        )
    if proba is None:
        if gt_prob <= 1.0 / n_labels:
            raise ValueError(
                f"gt_prob={gt_prob} is at or below 1/{n_labels} = {1.0 / n_labels:.3g} for "
                f"these {n_labels} labels: the CRF would trust every other label at least as "
                f"much as the given one and move pixels off their labels. Use gt_prob above "
                f"{1.0 / n_labels:.3g} (the default is 0.8)."
            )
        unary = _hard_unary(inverse.reshape(-1), n_labels, gt_prob)
    else:
        unary = _soft_unary(proba.reshape(-1, n_values), n_labels, float(temperature))
    kernels = ((float(gaussian_sxy), float(gaussian_compat)),
               (float(bilateral_sxy), float(bilateral_srgb), float(bilateral_compat)))
    if backend == "torch":
        best = _mean_field_torch(rgb, unary, int(n_iter), kernels, n_values, device)
    else:
        best = _mean_field_pydensecrf(rgb, unary, int(n_iter), kernels, n_values)
    return values[best.reshape(height, width)].astype(np.int64, copy=False)


#: Default ``max_pixels`` of :func:`refine_labels` and :class:`CRFRefiner`:
#: refinement runs on at most 1.5 megapixels (a 1500 x 1000 image, or
#: 1224 x 1224), whatever the image size.
MAX_REFINE_PIXELS = 1_500_000


def refine_labels(image, labels, *, method=DEFAULTS["method"], max_pixels=MAX_REFINE_PIXELS,
                  unary=DEFAULTS["unary"], proba=None, **crf_params):
    """Turn patch labels into pixel labels at the image's full resolution.

    The three refinement variants of CLASP:

    - ``"crf"`` (the paper's pixel-based variant): nearest upsampling, then
      :func:`dense_crf` against the image;
    - ``"nearest"`` (the paper's patch-based variant): nearest upsampling only;
    - ``"bilinear"``: bilinear upsampling of the one-hot label maps.

    With ``unary="soft"`` the CRF starts from the segmenter's soft segment
    membership ``proba`` instead of the hard labels: the probabilities are
    upsampled bilinearly (:func:`upsample_proba`) and the unary energy of
    segment ``k`` is ``-log(max(p_k, SOFT_UNARY_EPS))``, so the CRF may move
    a boundary where the patches are unsure and hardly where they are sure.

    With ``max_pixels``, an image with more pixels is refined at a bounded
    resolution: it is area-averaged down to at most ``max_pixels`` pixels
    (aspect ratio kept, downscale factor ``s``), the ``"crf"`` or
    ``"bilinear"`` refinement runs there, and its labels are upsampled
    (nearest) to the full size. The CRF's spatial widths ``gaussian_sxy``
    and ``bilateral_sxy`` stay in full-resolution pixels (they are divided by
    ``s``), so the result approximates the full-resolution CRF. Working
    memory is then bounded by ``max_pixels`` (about ``160 + 25 K`` bytes per
    refined pixel for the CRF with ``K`` labels, see :class:`CRFRefiner`)
    plus the ``(H, W)`` int64 output.

    An image smaller than the patch grid on a side (a tiny image upscaled for
    the backbone) takes, on that side, the label of the patch under each
    pixel's centre.

    Parameters
    ----------
    image : array-like of shape (H, W, 3), uint8
        The RGB image.
    labels : array-like of shape (h, w), int
        Patch labels; the grid spans the whole image.
    method : {"crf", "nearest", "bilinear"}, default="crf"
        Refinement variant.
    max_pixels : int or None, default=1_500_000
        Refine at most this many pixels (see above); ``None``: always at full
        resolution. Ignored by ``"nearest"``, which needs no working memory.
    unary : {"hard", "soft", "auto"}, default="hard"
        The CRF's unary term: from ``labels`` (trusted with ``gt_prob``) or
        from ``proba``; ``"auto"``: soft when ``proba`` is given, else hard.
        Used with ``method="crf"`` only.
    proba : array-like of shape (h, w, K), default=None
        Soft segment membership of each patch (summing to 1 over ``K``);
        ``labels`` must then be segment indices ``0 .. K-1``, and so is the
        output. Needed for ``unary="soft"``, used by ``"auto"``, ignored
        otherwise.
    **crf_params : dict
        Keyword arguments of :func:`dense_crf` (``n_iter``, ``gt_prob``,
        ``gaussian_sxy``, ``gaussian_compat``, ``bilateral_sxy``,
        ``bilateral_srgb``, ``bilateral_compat``, ``n_labels``,
        ``temperature``, ``backend``, ``device``); used with ``method="crf"``
        and ignored otherwise.

    Returns
    -------
    pixel_labels : ndarray of shape (H, W), dtype int64
        Pixel labels, with the values of ``labels``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_clasp.refine import refine_labels
    >>> image = np.zeros((28, 28, 3), np.uint8)
    >>> refine_labels(image, np.array([[1, 2], [1, 2]]), method="nearest").shape
    (28, 28)
    >>> big = np.zeros((3000, 2000, 3), np.uint8)
    >>> refine_labels(big, np.array([[1, 2]]), max_pixels=10_000).shape
    (3000, 2000)
    >>> proba = np.array([[[0.9, 0.1], [0.4, 0.6]]])    # 1 x 2 patches, 2 segments
    >>> refine_labels(image, np.array([[0, 1]]), unary="soft", proba=proba).shape
    (28, 28)
    """
    unknown = set(crf_params) - _CRF_PARAM_NAMES
    if unknown:
        raise TypeError(
            f"refine_labels got unknown keyword arguments {sorted(unknown)}; the "
            f"CRF parameters are {sorted(_CRF_PARAM_NAMES)}."
        )
    if method not in _METHODS:
        raise ValueError(
            f"method must be one of {list(_METHODS)}; got {method!r}."
        )
    if unary not in _UNARIES:
        raise ValueError(f"unary must be one of {list(_UNARIES)}; got {unary!r}.")
    check_size_limit(max_pixels, "max_pixels")
    _check_image_first(image, labels, "refine_labels(image, labels)")
    rgb = as_rgb_uint8(image, name="image")
    labels = _check_label_map(labels)
    soft = method == "crf" and (unary == "soft" or (unary == "auto" and proba is not None))
    if soft:
        if proba is None:
            raise ValueError(
                "unary='soft' needs proba, the (h, w, K) segment probabilities of "
                "the patches; pass proba=..., or use unary='hard'."
            )
        proba = _check_proba(proba)
        _check_proba_matches(proba, labels)
    shape = rgb.shape[:2]
    if method == "nearest":
        return resample_nearest(labels, shape)
    height, width = shape
    if max_pixels is not None and height * width > max_pixels:
        size = bounded_shape(height, width, max_pixels)
        logger.info(
            "refining a %d x %d image at %d x %d pixels (max_pixels=%d)", height,
            width, size[0], size[1], max_pixels,
        )
        rgb = _downscale(rgb, size)
        if method == "crf":
            scale = math.sqrt(height * width / (size[0] * size[1]))
            crf_params = dict(crf_params)
            for width_param in ("gaussian_sxy", "bilateral_sxy"):
                crf_params[width_param] = crf_params.get(
                    width_param, DEFAULTS[width_param]) / scale
    work_shape = rgb.shape[:2]
    if method == "bilinear":
        if work_shape[0] >= labels.shape[0] and work_shape[1] >= labels.shape[1]:
            refined = upsample_labels(labels, work_shape, method="bilinear")
        else:
            refined = resample_nearest(labels, work_shape)
    elif soft:
        refined = dense_crf(rgb, proba=upsample_proba(proba, work_shape), **crf_params)
    else:
        refined = dense_crf(rgb, resample_nearest(labels, work_shape), **crf_params)
    if refined.shape != shape:
        refined = resample_nearest(refined, shape)
    return refined


# --------------------------------------------------------------------------
# estimator
# --------------------------------------------------------------------------


def _refine_one(image, labels, proba, name, method, unary, crf_params, max_pixels):
    """Refine one image; errors are re-raised naming the image."""
    try:
        return refine_labels(image, labels, method=method, max_pixels=max_pixels,
                             unary=unary, proba=proba, **crf_params)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"CRFRefiner: image {name!r}: {exc}") from exc


class CRFRefiner(RecordOutputMixin, TransformerMixin, BaseEstimator):
    """Refine patch labels into full-resolution masks (the pipeline's last step).

    For each image, maps the segmenter's patch labels onto the image's pixels
    and, with ``method="crf"``, snaps segment boundaries to colour edges with a
    DenseCRF (see :func:`refine_labels` and :func:`dense_crf`), computed by
    pydensecrf or by PyTorch on CPU or GPU. The step is stateless: ``fit``
    only checks the parameters, and ``transform`` works without it.

    Parameters
    ----------
    method : {"crf", "nearest", "bilinear"}, default="crf"
        ``"crf"``: nearest upsampling then DenseCRF (the CLASP paper's
        pixel-based variant); ``"nearest"``: upsampling only (patch-based
        variant); ``"bilinear"``: bilinear upsampling of one-hot label maps.
    n_iter : int, default=20
        Mean field iterations of the CRF, at most :data:`MAX_CRF_ITERATIONS`.
    gt_prob : float, default=0.8
        Confidence of the CRF in the patch labels, in ``(1 / K, 1)`` for an
        image of ``K`` segments (see :func:`dense_crf`).
    gaussian_sxy : float, default=4
        Spatial standard deviation (pixels) of the CRF smoothness kernel.
    gaussian_compat : float, default=4
        Weight of the smoothness kernel.
    bilateral_sxy : float, default=80
        Spatial standard deviation (pixels) of the CRF appearance kernel.
    bilateral_srgb : float, default=13
        Colour standard deviation (RGB units) of the appearance kernel.
    bilateral_compat : float, default=10
        Weight of the appearance kernel.
    n_jobs : int, default=None
        Number of images refined in parallel (joblib processes; pydensecrf
        holds the GIL, so threads would not help). ``None`` means 1 unless in
        a :func:`joblib.parallel_backend` context; ``-1`` uses all processors.
        At most :data:`~sklearn_clasp.device.MAX_N_JOBS`. Keep 1 with the ``"torch"`` backend on a GPU.
    max_pixels : int or None, default=1_500_000
        Memory bound: images with more pixels are refined on an
        area-averaged copy of at most this many pixels and the labels are
        upsampled (nearest) to the full size (see :func:`refine_labels`; the
        CRF's spatial widths stay in full-resolution pixels). The CRF needs
        about ``160 + 25 K`` bytes per refined pixel with ``K`` labels on
        photographs (at most ``240 + 36 K`` on pixel noise): at the default,
        under 0.8 GB for ``K = 15`` (1.2 GB on noise), whatever the image
        size; the output mask adds 8 bytes per full-resolution pixel.
        ``None`` refines at full resolution (about 1 GB per megapixel at
        ``K = 15``).
    unary : {"hard", "soft", "auto"}, default="hard"
        The CRF's unary term: the patch labels, trusted with ``gt_prob``, or
        the records' soft segment membership ``proba`` (see
        :func:`refine_labels`); ``"auto"``: soft where the input has
        ``proba``, hard otherwise.
    backend : {"pydensecrf", "torch"}, default="pydensecrf"
        CRF implementation: the reference C++ code, or the same inference in
        PyTorch (see :func:`dense_crf` and ``docs/refine.md``).
    device : {"auto", "cpu", "cuda"} or "cuda:<index>", default="auto"
        Where the ``"torch"`` backend runs; ``"auto"`` picks CUDA when
        available. ``"pydensecrf"`` does not use it, but a value that is no
        device (``"gpu"``) is refused with either backend.

    See Also
    --------
    refine_labels : The function applied to each image.
    dense_crf : The CRF step on pixel labels.

    Notes
    -----
    ``X`` is either a list of :class:`~sklearn_clasp.records.PatchGrid`
    records with ``labels`` set (the output of the segmenter; ``proba`` too
    for ``unary="soft"``), or, for use on its own, a list of ``(image,
    labels)`` pairs with ``image`` of shape ``(H, W, 3)`` and ``labels`` of
    shape ``(h, w)``, or of ``(image, labels, proba)`` triples with ``proba``
    of shape ``(h, w, K)``: the image first, as in :func:`dense_crf` and
    :func:`refine_labels`. The inputs are never modified. Errors about one image name it (its record's ``source``, or its
    position ``X[i]``). Being stateless, the estimator has no fitted
    attributes.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_clasp.refine import CRFRefiner
    >>> image = np.zeros((28, 42, 3), np.uint8)
    >>> image[:, 21:] = 200
    >>> labels = np.array([[0, 0, 1], [0, 0, 1]])
    >>> masks = CRFRefiner().fit_predict([(image, labels)])
    >>> masks[0].shape
    (28, 42)
    >>> CRFRefiner(method="nearest").transform([(image, labels)])[0][0, 27:29]
    array([0, 1])
    """

    _parameter_constraints: dict = {
        "method": [StrOptions(set(_METHODS))],
        **_CRF_CONSTRAINTS,
        "n_jobs": n_jobs_constraints(),
        "max_pixels": [Interval(Integral, 1, None, closed="left"), None],
        "unary": [StrOptions(set(_UNARIES))],
    }

    def __init__(
        self,
        method=DEFAULTS["method"],
        n_iter=DEFAULTS["n_iter"],
        gt_prob=DEFAULTS["gt_prob"],
        gaussian_sxy=DEFAULTS["gaussian_sxy"],
        gaussian_compat=DEFAULTS["gaussian_compat"],
        bilateral_sxy=DEFAULTS["bilateral_sxy"],
        bilateral_srgb=DEFAULTS["bilateral_srgb"],
        bilateral_compat=DEFAULTS["bilateral_compat"],
        n_jobs=None,
        max_pixels=MAX_REFINE_PIXELS,
        unary=DEFAULTS["unary"],
        backend=DEFAULTS["backend"],
        device=DEFAULTS["device"],
    ):
        self.method = method
        self.n_iter = n_iter
        self.gt_prob = gt_prob
        self.gaussian_sxy = gaussian_sxy
        self.gaussian_compat = gaussian_compat
        self.bilateral_sxy = bilateral_sxy
        self.bilateral_srgb = bilateral_srgb
        self.bilateral_compat = bilateral_compat
        self.n_jobs = n_jobs
        self.max_pixels = max_pixels
        self.unary = unary
        self.backend = backend
        self.device = device

    _returns = "one mask per image"
    # Needs no fit (ClaspPipeline.fit only checks its settings).
    _training_free = True

    def _check_settings(self):
        """What ``fit`` checks beyond the parameter constraints."""
        self._check_device()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.non_deterministic = False
        tags.transformer_tags.preserves_dtype = []
        return tags

    # -- input ------------------------------------------------------------

    def _items(self, X):
        """Return ``[(image, labels, proba, name), ...]`` from records or tuples.

        ``proba`` is ``None`` unless ``unary="soft"``, which needs it, or
        ``"auto"``, which uses it where the input has it.
        """
        step = "CRFRefiner"
        soft = self.method == "crf" and self.unary == "soft"
        keep = self.method == "crf" and self.unary in ("soft", "auto")
        if isinstance(X, PatchGrid):
            raise TypeError(f"{step} expects a list of records; got one record. "
                            f"Pass [record].")
        if isinstance(X, np.ndarray):
            raise TypeError(
                f"{step} expects a list of PatchGrid records or of (image, labels) "
                f"pairs; got an array of shape {X.shape}. Pass [(image, labels)]."
            )
        if not isinstance(X, (list, tuple)) or len(X) == 0:
            raise TypeError(
                f"{step} expects a non-empty list of PatchGrid records (the output "
                f"of a segmenter) or of (image, labels) pairs; got "
                f"{type(X).__name__}" + (" (empty)" if isinstance(X, (list, tuple))
                                         else "") + "."
            )
        if any(isinstance(x, PatchGrid) for x in X):
            records = check_records(X, need=("labels",), step=step)
            items = []
            for i, rec in enumerate(records):
                name = rec.source if rec.source is not None else f"X[{i}]"
                labels = np.asarray(rec.labels)
                if labels.shape != tuple(int(s) for s in rec.grid_shape):
                    raise ValueError(
                        f"{step}: record {name!r} has labels of shape "
                        f"{labels.shape} but a patch grid of shape "
                        f"{tuple(rec.grid_shape)}; labels must be one per patch."
                    )
                if soft and rec.proba is None:
                    raise ValueError(
                        f"{step}(unary='soft'): record {name!r} has no proba (the "
                        f"soft segment membership of its patches); use a "
                        f"segmenter that sets it, or unary='hard'."
                    )
                items.append((rec.image, labels, rec.proba if keep else None, name))
            return items
        if len(X) in (2, 3) and all(isinstance(x, np.ndarray) for x in X):
            what, form = (("pair", "(image, labels)") if len(X) == 2
                          else ("triple", "(image, labels, proba)"))
            raise TypeError(
                f"{step} expects a list of {form} tuples; got one {what} of "
                f"arrays. Pass [{form}]."
            )
        items = []
        for i, pair in enumerate(X):
            if not isinstance(pair, (tuple, list)) or len(pair) not in (2, 3):
                raise TypeError(
                    f"{step}: X[{i}] is a {type(pair).__name__}"
                    + (f" of length {len(pair)}" if isinstance(pair, (tuple, list))
                       else "")
                    + "; expected a PatchGrid record, an (image, labels) pair or an "
                    "(image, labels, proba) triple."
                )
            if soft and len(pair) == 2:
                raise ValueError(
                    f"{step}(unary='soft'): X[{i}] is an (image, labels) pair; soft "
                    f"unaries need (image, labels, proba) triples, or use "
                    f"unary='hard'."
                )
            _check_image_first(pair[0], pair[1], f"{step}: X[{i}]")
            proba = pair[2] if keep and len(pair) == 3 else None
            items.append((pair[0], pair[1], proba, f"X[{i}]"))
        return items

    # -- API ----------------------------------------------------------------

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Check the parameters and the input; nothing is learned.

        Parameters
        ----------
        X : list of PatchGrid or list of (image, labels[, proba]) tuples
            Records with ``labels`` set, or pairs of RGB images ``(H, W, 3)``
            and patch labels ``(h, w)``, optionally with patch probabilities
            ``(h, w, K)`` (see Notes).
        y : None
            Ignored.

        Returns
        -------
        self : CRFRefiner
            The estimator.
        """
        self._check_device()
        self._items(X)
        return self

    def _check_device(self):
        """A bad ``device`` fails here, before any image is refined (whatever the backend)."""
        check_device(self.device, name="CRFRefiner: device", allow_none=False)
        if self.method == "crf" and self.backend == "torch":
            try:
                _torch_device(self.device)
            except ValueError as exc:
                raise ValueError(f"CRFRefiner: {exc}") from None

    def transform(self, X):
        """Refine each image's patch labels into a full-resolution mask.

        Parameters
        ----------
        X : list of PatchGrid or list of (image, labels[, proba]) tuples
            Records with ``labels`` set, or pairs of RGB images ``(H, W, 3)``
            and patch labels ``(h, w)``, optionally with patch probabilities
            ``(h, w, K)`` (see Notes).

        Returns
        -------
        masks : list of ndarray of shape (H, W), dtype int64
            One mask per input, at its image's full resolution, with the
            values of its patch labels.
        """
        check_untabled_output(self, self._returns)
        return self._refine(X)

    def _refine(self, X):
        self._validate_params()
        self._check_device()
        items = self._items(X)
        params = self.get_params()
        crf_params = (
            {k: params[k] for k in _CRF_CONSTRAINTS} if self.method == "crf" else {}
        )
        logger.debug("CRFRefiner: refining %d image(s) with method=%r, unary=%r, "
                     "backend=%r", len(items), self.method, self.unary, self.backend)
        return Parallel(n_jobs=self.n_jobs)(
            delayed(_refine_one)(image, labels, proba, name, self.method, self.unary,
                                 crf_params, self.max_pixels)
            for image, labels, proba, name in items
        )

    def predict(self, X):
        """Same as :meth:`transform`: one full-resolution mask per image.

        Parameters
        ----------
        X : list of PatchGrid or list of (image, labels[, proba]) tuples
            The input, as for :meth:`transform`.

        Returns
        -------
        masks : list of ndarray of shape (H, W), dtype int64
            One mask per input.
        """
        return self._refine(X)

    def fit_predict(self, X, y=None):
        """Check the parameters, then return :meth:`predict` of ``X``.

        Parameters
        ----------
        X : list of PatchGrid or list of (image, labels[, proba]) tuples
            The input, as for :meth:`transform`.
        y : None
            Ignored.

        Returns
        -------
        masks : list of ndarray of shape (H, W), dtype int64
            One mask per input.
        """
        return self.fit(X, y).predict(X)

    def fit_transform(self, X, y=None, **fit_params):
        """Same as :meth:`fit_predict`.

        Parameters
        ----------
        X : list of PatchGrid or list of (image, labels[, proba]) tuples
            The input, as for :meth:`transform`.
        y : None
            Ignored.
        **fit_params : dict
            Ignored.

        Returns
        -------
        masks : list of ndarray of shape (H, W), dtype int64
            One mask per input.
        """
        return self.fit(X, y).transform(X)
