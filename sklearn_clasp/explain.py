"""Why did CLASP pick this K? A one-page figure of the K selection.

:func:`explain_figure` segments one image and draws five panels:

1. the image;
2. the leading eigenvalues of the spectrum, with the eigengap score the rule
   maximises (the relative gap, the gap, or the elbow's distance to its chord)
   drawn as bars, the winning gap highlighted and ``K0`` marked;
3. the silhouette of every ``K`` searched around ``K0``, the chosen ``K``
   marked;
4. the patch labels on the patch grid;
5. the refined full-resolution mask over the image;

titled with the chosen ``K`` and the reason (:func:`explain_reason`).

The functional core works on plain data: :func:`~sklearn_clasp.spectral.eigengap_scores` (the
quantity each eigengap rule maximises) and :func:`explain_reason` (the title)
take the segmenter's diagnostics (``record.info``), :func:`plot_explanation`
takes a segmented record and its mask. matplotlib is imported only when a
figure is drawn (with the Agg canvas: no window, no global pyplot state).
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from sklearn.utils._param_validation import StrOptions, validate_params

from .records import PatchGrid
from .spectral import eigengap_scores

__all__ = ["MAX_DPI", "check_figure_output", "eigengap_scores", "explain_reason",
           "one_segment_reason", "plot_explanation", "explain_figure"]

logger = logging.getLogger(__name__)

_RULE_NAMES = {
    "relative": "largest relative eigengap",
    "largest": "largest eigengap",
    "elbow": "eigengap elbow",
    "entropy": "spectral entropy",
}
# k_selection -> what its scores are, and how the chosen K is described
_SELECTION_NAMES = {
    "silhouette": "best silhouette",
    "stability": "most stable k-means restarts",
    "gap": "gap statistic",
    "rotation": "best eigenvector rotation quality",
}


def one_segment_reason(info):
    """Why the segmenter kept one segment, from its ``info["single_segment_test"]``.

    Parameters
    ----------
    info : dict
        The segmenter's diagnostics.

    Returns
    -------
    reason : str

    Examples
    --------
    >>> one_segment_reason({"single_segment_test": {"test": "entropy",
    ...                                             "effective_number": 1.04}})
    'the effective number of leading eigenvalues exp(H) = 1.04 rounds to 1'
    """
    test = info.get("single_segment_test") or {}
    kind = test.get("test")
    if kind == "entropy":
        return (f"the effective number of leading eigenvalues exp(H) = "
                f"{_fmt(test.get('effective_number'), 2)} rounds to 1")
    if kind == "cheeger":
        threshold = test.get("threshold")
        return (f"the second eigenvalue of the normalised affinity "
                f"{_fmt(test.get('second_eigenvalue'))} is below the threshold "
                f"{'n/a' if threshold is None else f'{threshold:g}'}: no cut separates the "
                f"patches")
    if kind == "gap":
        return (f"the gap statistic prefers one cluster (Gap(1) = {_fmt(test.get('gap_1'))} "
                f">= Gap(2) - s = {_fmt(test.get('gap_2'))} - {_fmt(test.get('s_2'))})")
    return "every patch has the same affinity to every other"


def _effective_range(n_eigenvalues, k_min, k_max):
    """The K range the segmenter really used (it clips to the computed spectrum)."""
    m = max(int(n_eigenvalues) - 1, 0)  # number of gaps
    k_max_eff = int(min(k_max, m)) if m else 1
    k_min_eff = int(min(k_min, k_max_eff))
    return k_min_eff, k_max_eff


def _fmt(value, digits=3):
    if value is None:
        return "n/a"
    value = float(value)
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _scores(raw):
    """``{K: score}`` (keys possibly strings, values possibly None) as sorted lists."""
    items = sorted((int(k), float("nan") if v is None else float(v))
                   for k, v in (raw or {}).items())
    return [k for k, _ in items], [s for _, s in items]


@validate_params(
    {
        "info": [dict],
        "eigengap_rule": [StrOptions(set(_RULE_NAMES)), None],
    },
    prefer_skip_nested_validation=True,
)
def explain_reason(info, *, eigengap_rule=None):
    """One line saying which K was chosen and why.

    Parameters
    ----------
    info : dict
        The segmenter's diagnostics (``record.info`` after the ``segment``
        step): ``n_clusters``, ``eigengap_k``, ``k_selection``, ``k_scores``,
        ``silhouette_scores``, ``single_segment`` and ``single_segment_test``.
    eigengap_rule : {"relative", "largest", "elbow", "entropy"}, default=None
        The rule the segmenter used (its ``eigengap_rule``). ``None``: the
        one recorded in ``info["eigengap_rule"]``, else ``"relative"``.

    Returns
    -------
    reason : str

    Examples
    --------
    >>> info = {"n_clusters": 4, "eigengap_k": 3, "single_segment": False,
    ...         "silhouette_scores": {2: 0.30, 3: 0.41, 4: 0.52, 5: 0.47}}
    >>> print(explain_reason(info).replace("; ", ";\\n"))
    K = 4: largest relative eigengap gives K0 = 3;
    best silhouette 0.520 at K = 4 (searched K = 2..5)
    >>> one = {"n_clusters": 1, "eigengap_k": 2, "single_segment": True,
    ...        "single_segment_test": {"test": "entropy", "effective_number": 1.04}}
    >>> print(explain_reason(one))
    K = 1 (one segment): the effective number of leading eigenvalues exp(H) = 1.04 rounds to 1
    """
    k = int(info.get("n_clusters", 0))
    if info.get("single_segment"):
        return f"K = {k} (one segment): {one_segment_reason(info)}"
    eigengap_rule = eigengap_rule or info.get("eigengap_rule", "relative")
    head = f"K = {k}: {_RULE_NAMES[eigengap_rule]} gives K0 = {info.get('eigengap_k')}"
    selection = info.get("k_selection", "silhouette")
    if selection == "eigengap":
        return f"{head}; K = K0 (no search)"
    raw = info.get("k_scores") if selection != "silhouette" else None
    ks, scores = _scores(raw if raw else info.get("silhouette_scores"))
    if not ks:
        return f"{head}; no search (too few patches)"
    searched = f"K = {ks[0]}..{ks[-1]}" if len(ks) > 1 else f"K = {ks[0]}"
    if not any(math.isfinite(v) for v in scores):
        return f"{head}; no K in {searched} gave a valid score, kept K = {k}"
    name = _SELECTION_NAMES.get(selection, selection)
    at_k = scores[ks.index(k)] if k in ks else float("nan")
    return f"{head}; {name} {_fmt(at_k)} at K = {k} (searched {searched})"


def _check_record(record, mask):
    if not isinstance(record, PatchGrid):
        raise TypeError(
            f"record: expected a segmented PatchGrid (the record returned by "
            f"sklearn_clasp.pipeline.clasp_one); got {type(record).__name__}."
        )
    if record.labels is None or "eigenvalues" not in record.info:
        raise ValueError(
            f"record {record.name!r} has no patch labels or no segmenter diagnostics; "
            f"pass the record after the 'segment' step (clasp_one returns it)."
        )
    mask = np.asarray(mask)
    if mask.shape != record.image.shape[:2]:
        raise ValueError(
            f"mask has shape {mask.shape} but the record's image is "
            f"{record.image.shape[:2]}; pass the refined full-resolution mask."
        )
    return mask


#: Largest ``dpi`` of the figures: the default 13 x 8 inch figure is then about
#: 100 megapixels (400 MB to draw).
MAX_DPI = 1000


def check_figure_output(dpi, path=None):
    """Check a figure's ``dpi`` (and the format of the file ``path``) before drawing it.

    Parameters
    ----------
    dpi : int
        Resolution, 1 to :data:`MAX_DPI`.
    path : path-like, default=None
        Where the figure will be saved; its suffix must name a format
        matplotlib writes (``.png``, ``.pdf``, ``.svg``, ...).

    Raises
    ------
    ValueError
        Naming ``dpi`` or the file, with what is allowed.

    Examples
    --------
    >>> check_figure_output(100, "why.png")
    >>> check_figure_output(0)
    Traceback (most recent call last):
    ...
    ValueError: dpi=0: must be an int in the range [1, 1000].
    """
    from numbers import Integral

    if isinstance(dpi, bool) or not isinstance(dpi, Integral) or not 1 <= dpi <= MAX_DPI:
        raise ValueError(f"dpi={dpi!r}: must be an int in the range [1, {MAX_DPI}].")
    if path is not None:
        from matplotlib.figure import Figure

        formats = Figure().canvas.get_supported_filetypes()
        suffix = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
        if suffix not in formats:
            what = (f"'.{suffix}' is not a figure format matplotlib writes" if suffix else
                    "the name has no suffix to tell the figure format")
            raise ValueError(f"{os.fspath(path)}: {what}; end the name with one of "
                             f"{', '.join('.' + f for f in sorted(formats))}.")


def plot_explanation(
    record,
    mask,
    *,
    eigengap_rule=None,
    beta=None,
    spectrum=None,
    refine="crf",
    figsize=(13.0, 8.0),
    dpi=100,
):
    """Draw the K-selection figure of one segmented record.

    Parameters
    ----------
    record : PatchGrid
        The record after the ``segment`` step (with ``labels`` and the
        diagnostics in ``info``), as :func:`~sklearn_clasp.pipeline.clasp_one`
        returns it.
    mask : array-like of shape (H, W)
        The refined mask of the same image.
    eigengap_rule : {"relative", "largest", "elbow", "entropy"}, default=None
        The segmenter's rule (for the bars and the title). ``None``: the one
        the record was segmented with (``info["eigengap_rule"]``), else
        ``"relative"``.
    beta : float, default=None
        The segmenter's search width (for the shaded search range). ``None``:
        ``info["beta"]``, else 0.5.
    spectrum : {"affinity", "normalized"}, default=None
        Which matrix the eigenvalues are of (the segmenter's ``spectrum``),
        for the panel's title. ``None``: ``info["spectrum"]``, else
        ``"affinity"``.
    refine : str, default="crf"
        The refinement method, for the last panel's title.
    figsize : tuple of float, default=(13.0, 8.0)
        Figure size in inches.
    dpi : int, default=100
        Resolution.

    Returns
    -------
    figure : matplotlib.figure.Figure
        Five axes: image, spectrum, silhouette, patch labels, mask overlay
        (in ``figure.axes`` in that order, then the spectrum's twin axis).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .visualize import color_labels, overlay

    check_figure_output(dpi)
    mask = _check_record(record, mask)
    info = record.info
    if eigengap_rule is None:
        eigengap_rule = info.get("eigengap_rule", "relative")
    if beta is None:
        beta = info.get("beta", 0.5)
    if spectrum is None:
        spectrum = info.get("spectrum", "affinity")
    H, W = record.image.shape[:2]
    h, w = record.grid_shape
    k = int(info.get("n_clusters", int(record.labels.max()) + 1))
    k0 = info.get("eigengap_k")
    reason = explain_reason(dict(info), eigengap_rule=eigengap_rule)

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 6, height_ratios=(1.15, 1.0))
    ax_img = fig.add_subplot(grid[0, 0:2])
    ax_spec = fig.add_subplot(grid[1, 0:3])
    ax_sil = fig.add_subplot(grid[1, 3:6])
    ax_lab = fig.add_subplot(grid[0, 2:4])
    ax_mask = fig.add_subplot(grid[0, 4:6])

    # 1. the image
    name = record.source if record.source is not None else "image"
    short = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    ax_img.imshow(record.image, interpolation="nearest")
    ax_img.set_title(f"{short} ({H} x {W} px)", fontsize=10)

    # 4. patch labels on the grid (same extent as the image)
    ax_lab.imshow(color_labels(record.labels), interpolation="nearest", extent=(0, W, H, 0))
    ax_lab.set_title(f"patch labels ({h} x {w} patches, K = {k})", fontsize=10)

    # 5. refined mask over the image
    n_seg = int(np.unique(mask).size)
    ax_mask.imshow(overlay(record.image, mask.astype(np.int64)), interpolation="nearest")
    ax_mask.set_title(f"refined mask ({refine}, {n_seg} segment{'s' * (n_seg != 1)})",
                      fontsize=10)
    for ax in (ax_img, ax_lab, ax_mask):
        ax.set_xticks([])
        ax.set_yticks([])

    # 2. spectrum and eigengap scores
    from matplotlib.patches import Patch

    lam = np.asarray(info.get("eigenvalues", []), dtype=np.float64).ravel()
    k_min, k_max = info.get("k_bounds") or (1, max(lam.size - 1, 1))  # the bounds used
    kmin_eff, kmax_eff = _effective_range(lam.size, k_min, k_max)
    xs = np.arange(1, lam.size + 1)
    ax_gap = ax_spec.twinx()
    # the eigenvalue curve above the bars of the twin axis
    ax_spec.set_zorder(ax_gap.get_zorder() + 1)
    ax_spec.patch.set_visible(False)
    handles = ax_spec.plot(xs, lam, "o-", color="tab:blue", markersize=4,
                           label="eigenvalue l_i")
    if lam.size and lam.min() > 0 and lam.max() / lam.min() > 20:
        ax_spec.set_yscale("log")
    ax_spec.set_xlabel("index i")
    ax_spec.set_ylabel("eigenvalue", color="tab:blue")
    if lam.size >= 2:
        idx, scores, eligible, best, k0_plot = eigengap_scores(
            lam, rule=eigengap_rule, k_min=kmin_eff, k_max=kmax_eff)
        colors = np.where(eligible, "tab:orange", "lightgray").astype(object)
        colors[best - 1] = "tab:red"
        score_name = {"relative": "relative gap (l_i - l_i+1) / l_i",
                      "largest": "gap l_i - l_i+1",
                      "elbow": "gap's distance to the elbow chord",
                      "entropy": "share p_i of the spectrum"}[eigengap_rule]
        # gap i sits between eigenvalues i and i + 1
        ax_gap.bar(idx + 0.5, scores, width=0.6, color=list(colors), alpha=0.6)
        ax_gap.set_ylabel(score_name, color="tab:orange")
        # scale to the eligible gaps (an ineligible first gap may dwarf them)
        top = float(np.max(scores[eligible])) if eligible.any() else 0.0
        ax_gap.set_ylim(0, top * 1.15 if top > 0 else 1.0)
        handles.append(Patch(color="tab:orange", alpha=0.6, label=score_name))
        handles.append(Patch(color="tab:red", alpha=0.6, label=f"winning gap (i = {best})"))
        if not eligible.all():
            handles.append(Patch(color="lightgray", alpha=0.6, label="i < k_min: not eligible"))
        if k0 is None:
            k0 = k0_plot
    if k0 is not None:
        ax_spec.axvline(float(k0), color="tab:red", linestyle="--", linewidth=1.2)
        ax_spec.annotate(f"K0 = {k0}", xy=(float(k0), 1.0),
                         xycoords=("data", "axes fraction"), xytext=(4, -14),
                         textcoords="offset points", color="tab:red", fontsize=10)
    of = {"affinity": "the affinity", "normalized": "the normalised affinity"}.get(
        spectrum, spectrum)
    ax_spec.set_title(f"leading eigenvalues of {of} and the {_RULE_NAMES[eigengap_rule]}",
                      fontsize=10)
    if lam.size:
        ax_spec.set_xticks(xs if lam.size <= 20 else xs[::2])
    ax_spec.legend(handles=handles, loc="upper right", fontsize=8)

    # 3. silhouette over the searched K
    ks, sil = _scores(info.get("silhouette_scores"))
    if ks:
        sil_arr = np.asarray(sil)
        ok = np.isfinite(sil_arr)
        ax_sil.plot(np.asarray(ks)[ok], sil_arr[ok], "o-", color="tab:green",
                    label="silhouette (cosine)")
        if not ok.all():
            ax_sil.plot(np.asarray(ks)[~ok], np.zeros((~ok).sum()), "x", color="gray",
                        label="no valid partition")
        if k in ks and math.isfinite(sil[ks.index(k)]):
            ax_sil.plot([k], [sil[ks.index(k)]], "*", color="tab:red", markersize=16,
                        label=f"chosen K = {k}")
        ax_sil.axvspan(ks[0] - 0.4, ks[-1] + 0.4, color="tab:green", alpha=0.07)
        ax_sil.set_xticks(ks)
        beta_txt = f"K0 (1 \u00b1 {beta:g}) within [{kmin_eff}, {kmax_eff}]"
        ax_sil.set_title(f"silhouette over the searched K = {ks[0]}..{ks[-1]} ({beta_txt})",
                         fontsize=10)
        ax_sil.legend(loc="best", fontsize=8)
    else:
        if info.get("single_segment"):
            text = f"one segment: {one_segment_reason(info)};\nno K was searched"
        else:
            text = "no silhouette search (too few patches)"
        ax_sil.text(0.5, 0.5, text, ha="center", va="center", transform=ax_sil.transAxes,
                    fontsize=10)
        ax_sil.set_title("silhouette over K", fontsize=10)
    ax_sil.set_xlabel("K")
    ax_sil.set_ylabel("silhouette")

    fig.suptitle(reason, fontsize=12)
    return fig


def explain_figure(image, pipeline=None, *, figsize=(13.0, 8.0), dpi=100):
    """Segment one image and draw why its K was chosen.

    Parameters
    ----------
    image : str, path-like or array-like
        One image (a file path or an RGB array).
    pipeline : Pipeline, default=None
        A CLASP pipeline (:func:`~sklearn_clasp.pipeline.make_clasp_pipeline`)
        with a ``segment`` step. ``None`` builds the default
        ``make_clasp_pipeline("dinov2")``. An embedder that needs fitting and
        is not fitted is fitted on a clone; the pipeline passed in is never
        modified (pass a fitted one to avoid reloading DINOv2 each call).
    figsize : tuple of float, default=(13.0, 8.0)
        Figure size in inches.
    dpi : int, default=100
        Resolution.

    Returns
    -------
    figure : matplotlib.figure.Figure
        The image, the eigenvalue spectrum with its gaps and ``K0``, the
        silhouette curve with the chosen ``K``, the patch labels and the
        refined mask over the image; the title says which ``K`` and why.
        Save it with ``figure.savefig("explain.png")``.

    Examples
    --------
    >>> from sklearn_clasp import make_clasp_pipeline
    >>> from sklearn_clasp.datasets import make_shapes_image
    >>> image, _ = make_shapes_image(112, 140, n_shapes=2, random_state=0)
    >>> pipe = make_clasp_pipeline("handcrafted", short_side=None, random_state=0)
    >>> fig = explain_figure(image, pipe)
    >>> len(fig.axes)
    6
    >>> fig._suptitle.get_text().startswith("K = ")
    True
    """
    from .pipeline import clasp_one, fitted_embedder, make_clasp_pipeline

    if pipeline is None:
        pipeline = make_clasp_pipeline()
    if not isinstance(pipeline, Pipeline) or "segment" not in pipeline.named_steps:
        raise TypeError(
            f"explain_figure: pipeline must be a CLASP Pipeline with a 'segment' step "
            f"(see make_clasp_pipeline); got {type(pipeline).__name__}."
        )
    (record,) = fitted_embedder(pipeline).transform([image])
    mask, record = clasp_one(clone(pipeline), record)  # the pipeline passed in is kept
    refine = pipeline.steps[-1][1].get_params().get("method", "refined")
    return plot_explanation(record, mask, refine=refine, figsize=figsize, dpi=dpi)
