"""The ``clasp`` command line (also ``python -m sklearn_clasp``).

Subcommands:

``clasp segment INPUT... --out DIR``
    Segment image files, directories (recursive) and glob patterns with
    :func:`sklearn_clasp.batch.segment_collection`: per image a mask PNG, an
    overlay PNG and a JSON record; a summary at the end.
``clasp evaluate --labels DIR (--masks DIR | --images DIR)``
    Hungarian-matched mIoU and pixel accuracy against PNG label maps or BSDS
    ``.mat`` files; a per-image CSV and a summary table.
``clasp weights``
    Where the DINOv2 weights are looked for; download and verify them.
``clasp explain IMAGE``
    A figure of why CLASP chose K for one image
    (:func:`sklearn_clasp.explain.explain_figure`).

Every CLASP parameter is an option, and can come from a TOML file
(``--config FILE``; command-line options override it). Exit status: 0 success,
1 some images failed, 2 usage error (bad option, unreadable config file, no
images, an output directory that cannot be written), 3 the embedder could not
be loaded (e.g. DINOv2 weights missing offline), 130 interrupted (Ctrl-C,
SIGINT), 143 terminated (SIGTERM); an interrupted run keeps only complete
outputs, and running it again finishes the rest. Library code logs; only this
module prints.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

__all__ = [
    "main",
    "build_parser",
    "load_config",
    "build_pipeline",
    "read_label_file",
    "find_label_files",
    "find_mask_files",
    "score_prediction",
    "EXIT_OK",
    "EXIT_SOME_FAILED",
    "EXIT_USAGE",
    "EXIT_EMBEDDER",
]

logger = logging.getLogger("sklearn_clasp.cli")

#: Exit statuses (an interruption by signal N exits with 128 + N: 130 for SIGINT,
#: 143 for SIGTERM).
EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_EMBEDDER = 0, 1, 2, 3

PROG = "clasp"

#: The official DINOv2 backbones (``sklearn_clasp.embedding._weights.OFFICIAL_WEIGHTS``;
#: repeated here so that ``clasp --help`` does not import torch).
DINOV2_MODELS = (
    "dinov2_vits14_reg", "dinov2_vits14", "dinov2_vitb14", "dinov2_vitb14_reg",
    "dinov2_vitl14", "dinov2_vitl14_reg", "dinov2_vitg14", "dinov2_vitg14_reg",
)
DEFAULT_MODEL = "dinov2_vits14_reg"

# Options of one embedder only (config key -> embedder).
_DINOV2_ONLY = ("model", "weights", "weights_sha256", "no_download", "device", "dtype",
                "facet", "layer", "batch_size")
_HANDCRAFTED_ONLY = ("color_weight", "texture_weight", "position_weight", "color_sigma")
# option key -> CRFRefiner parameter
_CRF_PARAMS = {
    "crf_iterations": "n_iter",
    "crf_gt_prob": "gt_prob",
    "crf_gaussian_sxy": "gaussian_sxy",
    "crf_gaussian_compat": "gaussian_compat",
    "crf_bilateral_sxy": "bilateral_sxy",
    "crf_bilateral_srgb": "bilateral_srgb",
    "crf_bilateral_compat": "bilateral_compat",
}
# option key -> AdaptiveSpectralSegmenter parameter (beyond make_clasp_pipeline's own)
_SEGMENT_PARAMS = ("spectrum", "eigengap_rule", "single_segment_threshold", "n_init")

#: Values used when an option is given neither on the command line nor in the file.
DEFAULTS = {
    "embedder": "dinov2",
    "k_min": 2,
    "k_max": 15,
    "beta": 0.5,
    "paper": False,
    "no_crf": False,
    "seed": 0,
    "n_jobs": 1,
    "max_attempts": 3,
    "overwrite": False,
    "no_overlay": False,
    "progress": False,
    "no_download": False,
    "keep_negative": False,
}

_NONE = "none"  # what "none" parses to, kept apart from "not given" (None)


class UsageError(Exception):
    """A problem with the command line, the config file or the inputs (exit 2)."""


class EmbedderError(Exception):
    """The embedder could not be loaded (exit 3)."""


# --------------------------------------------------------------------------
# argument types
# --------------------------------------------------------------------------


def _int(text, *, low=None, what="an integer"):
    try:
        value = int(str(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if low is not None and value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def _positive_int(text):
    return _int(text, low=1, what="a positive integer")


def _non_negative_int(text):
    return _int(text, low=0, what="a non-negative integer")


def _any_int(text):
    return _int(text)


def _n_jobs(text):
    value = _int(text, what="a non-zero integer (-1: all cores)")
    if value == 0:
        raise argparse.ArgumentTypeError("expected a non-zero integer (-1: all cores), got 0")
    return value


def _float(text, *, low=None, high=None, open_low=False, open_high=False, what="a number"):
    try:
        value = float(str(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    bad = not math.isfinite(value)
    if low is not None:
        bad |= value <= low if open_low else value < low
    if high is not None:
        bad |= value >= high if open_high else value > high
    if bad:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def _non_negative_float(text):
    return _float(text, low=0.0, what="a non-negative number")


def _positive_float(text):
    return _float(text, low=0.0, open_low=True, what="a positive number")


def _probability(text):
    return _float(text, low=0.0, high=1.0, open_low=True, open_high=True,
                  what="a number strictly between 0 and 1")


def _short_side(text):
    if str(text).lower() in ("none", "0"):
        return _NONE
    return _int(text, low=1, what="a positive integer or 'none'")


def _max_pixels(text):
    if str(text).lower() == "none":
        return _NONE
    return _int(str(text).replace("_", ""), low=1, what="a positive integer or 'none'")


def _threshold(text):
    if str(text).lower() == "none":
        return _NONE
    return _float(text, low=0.0, high=1.0, what="a number in [0, 1] or 'none'")


# --------------------------------------------------------------------------
# the parser
# --------------------------------------------------------------------------


class _Formatter(argparse.HelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=34)


def _add_verbosity(parser):
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true",
                       help="debug logging on stderr")
    group.add_argument("-q", "--quiet", action="store_true",
                       help="errors only: no progress bar, no summary on stdout")


def _add_pipeline_options(parser):
    """The CLASP parameters, shared by segment, evaluate and explain.

    Every default is None ("not given") so that a config file can fill it.
    """
    parser.add_argument("--config", type=Path, metavar="FILE.toml",
                        help="read options from a TOML file (keys are the long options "
                             "with underscores, e.g. k_max = 10, optionally under "
                             "[segment]); command-line options override it")
    emb = parser.add_argument_group("embedder")
    emb.add_argument("--embedder", choices=("dinov2", "handcrafted"),
                     help="patch features: DINOv2 (default) or the weights-free "
                          "handcrafted baseline (colour, texture, position)")
    emb.add_argument("--short-side", type=_short_side, metavar="N",
                     help="scale the shorter image side to N pixels before embedding "
                          "(default 448; 'none' keeps the image size)")
    emb.add_argument("--model", choices=DINOV2_MODELS, metavar="NAME",
                     help=f"DINOv2 backbone (default {DEFAULT_MODEL}, the paper's "
                          f"ViT-S/14 with registers); one of {', '.join(DINOV2_MODELS)}")
    emb.add_argument("--weights", metavar="PATH",
                     help="DINOv2 checkpoint file, or 'random' (smoke tests). Default: "
                          "the official file from $SKLEARN_CLASP_WEIGHTS or the torch "
                          "hub cache, else downloaded (see 'clasp weights')")
    emb.add_argument("--weights-sha256", metavar="HEX",
                     help="expected SHA-256 of the weights file (checked when given)")
    emb.add_argument("--no-download", action="store_true", default=None,
                     help="never download DINOv2 weights (fail if they are missing)")
    emb.add_argument("--device", metavar="DEV",
                     help="DINOv2 device: cpu (default), cuda, cuda:N or auto")
    emb.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                     help="DINOv2 compute precision (default float32; float16 needs CUDA)")
    emb.add_argument("--facet", choices=("tokens", "keys"),
                     help="DINOv2 features: output tokens (default) or attention keys")
    emb.add_argument("--layer", type=_any_int, metavar="I",
                     help="DINOv2 block to read (default -1, the last)")
    emb.add_argument("--batch-size", type=_positive_int, metavar="N",
                     help="DINOv2 images per forward pass (default 8)")
    emb.add_argument("--color-weight", type=_non_negative_float, metavar="W",
                     help="handcrafted: weight of the colour features (default 1.0)")
    emb.add_argument("--texture-weight", type=_non_negative_float, metavar="W",
                     help="handcrafted: weight of the texture features (default 0.5)")
    emb.add_argument("--position-weight", type=_non_negative_float, metavar="W",
                     help="handcrafted: weight of the position features (default 0.1)")
    emb.add_argument("--color-sigma", type=_positive_float, metavar="S",
                     help="handcrafted: colour kernel width in CIELAB units (default 15)")

    aff = parser.add_argument_group("affinity")
    aff.add_argument("--n-neighbors", type=_positive_int, metavar="N",
                     help="keep each patch's N strongest affinities (default: all, dense)")
    aff.add_argument("--keep-negative", action="store_true", default=None,
                     help="keep negative cosine similarities (default: set them to 0)")

    seg = parser.add_argument_group("number of segments (adaptive spectral clustering)")
    seg.add_argument("--k-min", type=_positive_int, metavar="K",
                     help="smallest K searched (default 2)")
    seg.add_argument("--k-max", type=_positive_int, metavar="K",
                     help="largest K (default 15)")
    seg.add_argument("--beta", type=_non_negative_float, metavar="B",
                     help="search K in [K0 (1 - B), K0 (1 + B)] around the eigengap "
                          "estimate K0 (default 0.5)")
    seg.add_argument("--spectrum", choices=("affinity", "normalized"),
                     help="eigenvalues of the affinity itself (default, the paper's) or "
                          "of the normalised affinity")
    seg.add_argument("--eigengap-rule", choices=("relative", "largest", "elbow"),
                     help="how K0 is read from the eigengaps (default relative; the "
                          "paper's is elbow)")
    seg.add_argument("--single-segment-threshold", type=_threshold, metavar="T",
                     help="one segment when the normalised affinity's second eigenvalue "
                          "is below T (default 0.05; 'none' disables the test)")
    seg.add_argument("--n-init", type=_positive_int, metavar="N",
                     help="k-means restarts per K (default 3)")
    seg.add_argument("--paper", action="store_true", default=None,
                     help="the CLASP paper's K selection (spectrum affinity, elbow rule, "
                          "no one-segment test); explicit options above override it")
    seg.add_argument("--seed", type=_any_int, metavar="N",
                     help="random seed (default 0)")

    ref = parser.add_argument_group("refinement")
    ref.add_argument("--refine", choices=("crf", "nearest", "bilinear"),
                     help="patch labels to pixels: DenseCRF (default), nearest "
                          "(blocky) or bilinear upsampling")
    ref.add_argument("--no-crf", action="store_true", default=None,
                     help="same as --refine nearest")
    ref.add_argument("--crf-iterations", type=_non_negative_int, metavar="N",
                     help="CRF mean-field iterations (default 20)")
    ref.add_argument("--crf-gt-prob", type=_probability, metavar="P",
                     help="CRF confidence in the patch labels (default 0.8)")
    ref.add_argument("--crf-gaussian-sxy", type=_positive_float, metavar="S",
                     help="CRF smoothness kernel width in pixels (default 4)")
    ref.add_argument("--crf-gaussian-compat", type=_non_negative_float, metavar="W",
                     help="CRF smoothness kernel weight (default 4)")
    ref.add_argument("--crf-bilateral-sxy", type=_positive_float, metavar="S",
                     help="CRF appearance kernel width in pixels (default 80)")
    ref.add_argument("--crf-bilateral-srgb", type=_positive_float, metavar="S",
                     help="CRF appearance kernel colour width in RGB units (default 13)")
    ref.add_argument("--crf-bilateral-compat", type=_non_negative_float, metavar="W",
                     help="CRF appearance kernel weight (default 10)")


def _add_run_options(parser, *, out_help):
    run = parser.add_argument_group("running")
    run.add_argument("--out", type=Path, metavar="DIR", help=out_help)
    run.add_argument("--n-jobs", type=_n_jobs, metavar="N",
                     help="images processed in parallel on this machine (default 1; "
                          "-1: all cores)")
    run.add_argument("--scheduler", metavar="ADDRESS",
                     help="run on a Dask cluster, e.g. tcp://host:8786 (needs "
                          "sklearn-clasp[dask])")
    run.add_argument("--tls-ca-file", type=Path, metavar="FILE",
                     help="with --scheduler tls://...: the CA certificate (PEM) that signed "
                          "the cluster's certificates; TLS is then required")
    run.add_argument("--tls-cert", type=Path, metavar="FILE",
                     help="with --tls-ca-file: this client's certificate (PEM)")
    run.add_argument("--tls-key", type=Path, metavar="FILE",
                     help="with --tls-ca-file: this client's private key (PEM), unless it is "
                          "in --tls-cert")
    run.add_argument("--overwrite", action="store_true", default=None,
                     help="segment again even where outputs with the same settings exist")
    run.add_argument("--no-overlay", action="store_true", default=None,
                     help="do not write the <name>_overlay.png files")
    run.add_argument("--max-attempts", type=_positive_int, metavar="N",
                     help="tries per image on a cluster whose workers die (default 3)")
    run.add_argument("--max-image-pixels", type=_max_pixels, metavar="N",
                     help="refuse images of more than N pixels (width x height, read from "
                          "the file header before decoding: a decompression-bomb guard; "
                          "default 178956970, about 16000 x 11000; 'none': no limit; above "
                          "Pillow's own limit, Pillow's is lifted for this command too)")
    run.add_argument("--progress", action="store_true", default=None,
                     help="show a progress bar (default: only when stderr is a terminal)")


def build_parser():
    """The argument parser of ``clasp`` (and ``python -m sklearn_clasp``)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Training-free image segmentation with CLASP: DINOv2 patch features, "
                    "adaptive spectral clustering that picks the number of segments, "
                    "DenseCRF refinement.",
        epilog="Exit status: 0 success, 1 some images failed, 2 usage error, 3 the "
               "embedder could not be loaded, 130/143 interrupted (SIGINT/SIGTERM; the "
               "outputs written are complete). 'clasp COMMAND --help' for each command.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    seg = commands.add_parser(
        "segment", formatter_class=_Formatter,
        help="segment images: masks, overlays, JSON records and a summary",
        description="Segment image files, directories (recursive) and glob patterns. For "
                    "each image write <name>_mask.png (integer mask, full size), "
                    "<name>_overlay.png and <name>.json (K, eigengap K0, silhouette per K, "
                    "eigenvalues, timings, settings, input checksum) into --out, then "
                    "print a summary. A re-run skips images already done with the same "
                    "settings. With no INPUT, segment the bundled sample images.",
        epilog="Exit status: 0 all done or skipped, 1 some images failed, 2 usage error, "
               "3 the embedder could not be loaded, 130/143 interrupted (SIGINT/SIGTERM): "
               "the outputs written are complete and a re-run finishes the rest.",
    )
    seg.add_argument("inputs", nargs="*", metavar="INPUT",
                     help="image files, directories or glob patterns (quote them)")
    _add_pipeline_options(seg)
    _add_run_options(seg, out_help="output directory (created if missing); required")
    _add_verbosity(seg)
    seg.set_defaults(func=run_segment)

    ev = commands.add_parser(
        "evaluate", formatter_class=_Formatter,
        help="score masks against label maps (Hungarian mIoU, pixel accuracy)",
        description="Pair predicted masks with ground-truth labels by file stem and score "
                    "each image with a Hungarian matching of segments to classes. Masks: "
                    "<stem>_mask.png or <stem>.png in --masks, or made first from --images "
                    "with the segment options. Labels: PNG label maps, or BSDS .mat files "
                    "(each human segmentation scored; mean and best reported).",
        epilog="Exit status: 0 every label scored, 1 some labels without a prediction or "
               "some images failed, 2 usage error, 3 the embedder could not be loaded.",
    )
    ev.add_argument("--labels", type=Path, required=True, metavar="DIR",
                    help="ground truth: <stem>.png label maps or <stem>.mat BSDS files "
                         "(searched recursively)")
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--masks", type=Path, metavar="DIR",
                        help="predicted masks (<stem>_mask.png or <stem>.png)")
    source.add_argument("--images", type=Path, metavar="DIR",
                        help="images to segment first (into --out, or a temporary "
                             "directory)")
    ev.add_argument("--ignore-index", type=_any_int, nargs="+", action="extend",
                    metavar="N", help="label values not scored, e.g. 255 (negative values "
                                      "are never scored)")
    ev.add_argument("--protocol", choices=("per_image", "dataset"), default="per_image",
                    help="per_image (default): match each image on its own and average; "
                         "dataset: one matching over the summed confusion matrix "
                         "(cluster ids must mean the same in every image)")
    ev.add_argument("--csv", type=Path, metavar="FILE",
                    help="write per-image scores (name, miou, pixel_accuracy, n_clusters, "
                         "n_classes, ...) to this CSV file")
    _add_pipeline_options(ev)
    _add_run_options(ev, out_help="with --images: where the masks are written "
                                  "(default: a temporary directory)")
    _add_verbosity(ev)
    ev.set_defaults(func=run_evaluate)

    wt = commands.add_parser(
        "weights", formatter_class=_Formatter,
        help="where the DINOv2 weights are looked for; download and verify them",
        description="List the official DINOv2 checkpoints (file, URL, SHA-256), where they "
                    "are looked for and whether they are present. --verify checks the "
                    "SHA-256 of the present files; --download fetches the chosen model.",
        epilog="Exit status: 0 fine, 1 a checksum mismatch, 3 the download failed.",
    )
    wt.add_argument("--model", choices=DINOV2_MODELS, metavar="NAME",
                    help="only this model (with --download: default "
                         f"{DEFAULT_MODEL}); one of {', '.join(DINOV2_MODELS)}")
    wt.add_argument("--download", action="store_true",
                    help="download the model's official file if missing, and verify it")
    wt.add_argument("--verify", action="store_true",
                    help="check the SHA-256 of every present file")
    _add_verbosity(wt)
    wt.set_defaults(func=run_weights)

    ex = commands.add_parser(
        "explain", formatter_class=_Formatter,
        help="a figure of why K was chosen for one image",
        description="Segment one image and draw the image, the eigenvalue spectrum with "
                    "its gaps and K0, the silhouette over the searched K with the chosen K, "
                    "the patch labels and the refined mask, titled with the reason.",
        epilog="Exit status: 0 written, 1 the image could not be segmented, 2 usage error, "
               "3 the embedder could not be loaded.",
    )
    ex.add_argument("image", type=Path, metavar="IMAGE", help="the image file")
    ex.add_argument("--out", type=Path, metavar="FIG.png",
                    help="figure file (default: <image stem>_explain.png here)")
    ex.add_argument("--dpi", type=_positive_int, default=100, help="resolution (default 100)")
    _add_pipeline_options(ex)
    _add_verbosity(ex)
    ex.set_defaults(func=run_explain)
    return parser


# --------------------------------------------------------------------------
# config files and option resolution
# --------------------------------------------------------------------------


def _config_actions(parser):
    """Option key -> argparse action, for the keys a config file may set."""
    actions = {}
    for action in parser._actions:
        if action.dest in ("help", "config", "verbose", "quiet", "func", "version"):
            continue
        if action.option_strings or action.dest == "inputs":
            actions[action.dest] = action
    return actions


def _convert_config_value(key, value, action, source):
    where = f"config file {source}: {key}"
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise UsageError(f"{where} must be true or false, got {value!r}")
        return value
    if action.dest == "inputs":
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise UsageError(f"{where} must be a string or a list of strings, got {value!r}")
        return values
    if isinstance(value, (dict, list, bool)):
        raise UsageError(f"{where} must be a single value, got {value!r}")
    try:
        converted = action.type(str(value)) if action.type is not None else str(value)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"{where}: {exc}") from None
    if action.choices is not None and converted not in action.choices:
        raise UsageError(
            f"{where} = {value!r} is not one of {', '.join(map(str, action.choices))}"
        )
    return converted


def load_config(path, parser):
    """Read a TOML config file into a dict of options.

    Keys are the long options of the subcommand ``parser`` with underscores
    (``k_max = 10``, ``no_crf = true``, ``inputs = ["photos/"]``), at the top
    level or under a ``[segment]`` table. Values are checked as on the command
    line; relative paths (``out``, ``inputs``, ``weights``) are taken relative
    to the config file's directory.

    Parameters
    ----------
    path : path-like
        The TOML file.
    parser : argparse.ArgumentParser
        The ``segment`` subcommand's parser (its options are the valid keys).

    Returns
    -------
    options : dict

    Raises
    ------
    UsageError
        If the file cannot be read or parsed, has an unknown key (the message
        lists the valid ones) or a bad value.
    """
    import tomllib

    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise UsageError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    if "segment" in data:
        table = data.pop("segment")
        if not isinstance(table, dict):
            raise UsageError(f"config file {path}: 'segment' must be a table ([segment])")
        clash = sorted(set(table) & set(data))
        if clash:
            raise UsageError(f"config file {path}: {clash} set both at the top level and "
                             f"under [segment]; keep one")
        data.update(table)
    actions = _config_actions(parser)
    options = {}
    for key, value in data.items():
        if key not in actions:
            raise UsageError(
                f"config file {path}: unknown key {key!r}; valid keys: "
                f"{', '.join(sorted(actions))}"
            )
        options[key] = _convert_config_value(key, value, actions[key], path)
    base = path.resolve().parent
    if "out" in options:
        options["out"] = base / Path(options["out"]).expanduser()
    if "inputs" in options:
        options["inputs"] = [str(base / Path(p).expanduser()) for p in options["inputs"]]
    if options.get("weights") not in (None, "random"):
        options["weights"] = str(base / Path(options["weights"]).expanduser())
    for key in _TLS_OPTIONS:
        if key in options:
            options[key] = base / options[key].expanduser()
    return options


def _flag(key):
    return "--" + key.replace("_", "-")


def _subparser(parser, name):
    return parser._subparsers._group_actions[0].choices[name]


def _resolve_options(args, parser):
    """Merge defaults < config file < command line; remember where each came from.

    ``parser`` is the root parser; config keys are those of ``clasp segment``
    for every subcommand, so that one file serves them all.
    """
    config = {}
    if getattr(args, "config", None) is not None:
        config = load_config(args.config, _subparser(parser, "segment"))
    options, origin = dict(DEFAULTS), {}
    for key, value in config.items():
        options[key] = value
        origin[key] = f"{_flag(key)} (from {args.config})"
    for key, value in vars(args).items():
        if key in ("func", "config", "command"):
            continue
        if value is None or (key == "inputs" and value == []):
            continue
        options[key] = value
        origin[key] = _flag(key)
    options["_origin"] = origin
    return options


# --------------------------------------------------------------------------
# the pipeline from the options
# --------------------------------------------------------------------------


def build_pipeline(options):
    """A CLASP pipeline from resolved options (config keys -> values).

    Parameters
    ----------
    options : dict
        Option keys as in a config file (``embedder``, ``k_max``,
        ``crf_iterations``...); missing keys take the library defaults.

    Returns
    -------
    pipeline : sklearn.pipeline.Pipeline

    Raises
    ------
    UsageError
        For an option that does not apply to the chosen embedder, conflicting
        options, or a value the estimators refuse.
    """
    from sklearn.utils._param_validation import InvalidParameterError

    from .pipeline import make_clasp_pipeline

    o = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    origin = options.get("_origin", {})
    embedder = o["embedder"]

    def given(key):
        value = options.get(key)
        return value is not None and value is not False

    wrong = _HANDCRAFTED_ONLY if embedder == "dinov2" else _DINOV2_ONLY
    for key in wrong:
        if given(key):
            other = "handcrafted" if embedder == "dinov2" else "dinov2"
            raise UsageError(
                f"{origin.get(key, _flag(key))} only applies to --embedder {other} "
                f"(the embedder is {embedder})"
            )
    if o["k_min"] > o["k_max"]:
        raise UsageError(f"--k-min {o['k_min']} is larger than --k-max {o['k_max']}; "
                         f"choose k_min <= k_max")
    refine = o.get("refine")
    if o["no_crf"]:
        if refine not in (None, "nearest"):
            raise UsageError(f"--no-crf conflicts with --refine {refine}; give one of them")
        refine = "nearest"
    refine = refine or "crf"
    if refine != "crf":
        ignored = [origin.get(k, _flag(k)) for k in _CRF_PARAMS if given(k)]
        if ignored:
            logger.warning("%s ignored: the CRF is not used (--refine %s)",
                           ", ".join(ignored), refine)

    embedder_params = {}
    if "short_side" in options and options["short_side"] is not None:
        embedder_params["short_side"] = (None if options["short_side"] == _NONE
                                         else options["short_side"])
    if embedder == "dinov2":
        for key in ("model", "weights", "weights_sha256", "device", "dtype", "facet",
                    "layer", "batch_size"):
            if options.get(key) is not None:
                embedder_params[key] = options[key]
        if o["no_download"]:
            embedder_params["download"] = False
    else:
        for key in _HANDCRAFTED_ONLY:
            if options.get(key) is not None:
                embedder_params[key] = options[key]

    step_params = {}
    for key in _SEGMENT_PARAMS:
        if options.get(key) is not None:
            value = options[key]
            step_params[f"segment__{key}"] = None if value == _NONE else value
    if options.get("n_neighbors") is not None:
        step_params["affinity__n_neighbors"] = options["n_neighbors"]
    if o["keep_negative"]:
        step_params["affinity__clip_negative"] = False
    for key, param in _CRF_PARAMS.items():
        if options.get(key) is not None:
            step_params[f"refine__{param}"] = options[key]
    try:
        pipe = make_clasp_pipeline(
            embedder, k_min=o["k_min"], k_max=o["k_max"], beta=o["beta"], refine=refine,
            paper=bool(o["paper"]), random_state=o["seed"], **embedder_params,
        )
        pipe.set_params(**step_params)
        for _, step in pipe.steps:
            step._validate_params()
    except (InvalidParameterError, ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    return pipe


def _load_embedder(pipeline, embedder_name):
    """Fit (load) the embedder now, so that a missing model is one clear error."""
    try:
        pipeline.steps[0][1].fit(None)
    except Exception as exc:  # missing weights, bad checkpoint, no CUDA, ...
        logger.debug("loading the embedder failed", exc_info=True)
        hint = ""
        if isinstance(exc, FileNotFoundError):  # the weights file is missing
            hint = ("\nOn the command line: --weights PATH for a file anywhere; "
                    "'clasp weights' shows where the file is looked for and "
                    "'clasp weights --download' fetches it (online); --embedder "
                    "handcrafted needs no weights.")
        raise EmbedderError(
            f"could not load the {embedder_name} embedder: {exc}{hint}"
        ) from exc


# --------------------------------------------------------------------------
# clasp segment
# --------------------------------------------------------------------------


def _show_progress(options):
    if options.get("progress"):
        return True
    if options.get("quiet"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _find_inputs(inputs):
    from .batch import find_images

    try:
        found = find_images(inputs)
    except FileNotFoundError as exc:
        raise UsageError(f"no images found: {exc}") from None
    if not found:
        raise UsageError(f"no images found in {', '.join(map(str, inputs))}")
    return found


def _make_out_dir(out):
    """Create ``--out`` and check it can be written, before any work (else exit 2)."""
    from .batch import _prepare_out_dir

    try:
        _prepare_out_dir(out, who="--out")
    except OSError as exc:
        raise UsageError(exc.strerror or str(exc)) from None


def _max_image_pixels(options):
    value = options.get("max_image_pixels")
    if value is None:
        from .image import DEFAULT_MAX_IMAGE_PIXELS

        return DEFAULT_MAX_IMAGE_PIXELS
    return None if value == _NONE else value


@contextlib.contextmanager
def _pillow_limit(max_pixels):
    """Raise Pillow's process-wide decompression-bomb limit to ``max_pixels`` meanwhile.

    Pillow refuses images above ``2 * PIL.Image.MAX_IMAGE_PIXELS`` on its own; when
    ``--max-image-pixels`` allows more, this command (the program, not the library)
    lifts Pillow's limit to match, and puts it back at the end.
    """
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    if old is None or (max_pixels is not None and max_pixels <= 2 * old):
        yield
        return
    Image.MAX_IMAGE_PIXELS = None if max_pixels is None else (max_pixels + 1) // 2
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


_TLS_OPTIONS = ("tls_ca_file", "tls_cert", "tls_key")


def _dask_security(options):
    """A ``distributed.security.Security`` from the TLS options, or ``None``."""
    given = {k: options.get(k) for k in _TLS_OPTIONS if options.get(k) is not None}
    if not given:
        return None
    if options.get("scheduler") is None:
        raise UsageError("--tls-ca-file/--tls-cert/--tls-key apply to a Dask cluster: add "
                         "--scheduler tls://HOST:PORT")
    if "tls_ca_file" not in given or "tls_cert" not in given:
        raise UsageError("TLS needs --tls-ca-file and --tls-cert (and --tls-key unless the "
                         "key is in the certificate file)")
    for key, path in given.items():
        if not Path(path).is_file():
            raise UsageError(f"{_flag(key)} {path}: no such file")
    try:
        from distributed.security import Security
    except ImportError:
        raise UsageError("--tls-ca-file needs the Dask extra: pip install "
                         "'sklearn-clasp[dask]'") from None
    key = given.get("tls_key")
    return Security(tls_ca_file=str(given["tls_ca_file"]), tls_client_cert=str(given["tls_cert"]),
                    tls_client_key=None if key is None else str(key), require_encryption=True)


def _segment(inputs, out, options, pipeline):
    """Run segment_collection with the run options; returns the report."""
    from .batch import segment_collection

    security = _dask_security(options)
    if options.get("scheduler") is None:
        _load_embedder(pipeline, options["embedder"])
    max_pixels = _max_image_pixels(options)
    with _pillow_limit(max_pixels):
        try:
            return segment_collection(
                inputs, out, pipeline=pipeline, n_jobs=options["n_jobs"],
                scheduler=options.get("scheduler"), security=security,
                overwrite=bool(options["overwrite"]),
                progress=_show_progress(options), max_attempts=options["max_attempts"],
                write_overlay=not options["no_overlay"], max_image_pixels=max_pixels,
            )
        except ConnectionError as exc:  # --scheduler unreachable or TLS refused
            raise UsageError(str(exc)) from None


def run_segment(args, parser):
    """``clasp segment``; returns the exit status."""
    options = _resolve_options(args, parser)
    if options.get("out") is None:
        raise UsageError("the output directory is required: --out DIR (or out = \"DIR\" "
                         "in the config file)")
    pipeline = build_pipeline(options)
    inputs = options.get("inputs") or []
    if not inputs:
        from .data import sample_image_paths

        inputs = [str(p) for p in sample_image_paths()]
        logger.info("no INPUT given: segmenting the bundled sample images")
    images = _find_inputs(inputs)
    out = Path(options["out"])
    _make_out_dir(out)
    report = _segment(images, out, options, pipeline)
    if options.get("quiet"):
        for failure in report.failures:
            _echo(f"error: {_failure_line(failure)}", sys.stderr)
    else:
        _echo(report.summary())
    return EXIT_SOME_FAILED if report.n_failed else EXIT_OK


def _echo(text, file=None):
    """Print ``text``; characters the stream cannot encode (undecodable file names) are
    escaped instead of failing."""
    file = sys.stdout if file is None else file
    try:
        print(text, file=file)
    except UnicodeEncodeError:
        encoding = getattr(file, "encoding", None) or "utf-8"
        print(text.encode(encoding, "backslashreplace").decode(encoding), file=file)


def _failure_line(failure):
    name = failure.get("name") or failure.get("source")
    return f"{name} ({failure.get('source')}): {failure.get('error')}"


# --------------------------------------------------------------------------
# clasp evaluate
# --------------------------------------------------------------------------

_LABEL_SUFFIXES = (".png", ".mat")


def find_label_files(labels_dir):
    """Ground-truth files under a directory, by stem.

    Parameters
    ----------
    labels_dir : path-like
        Searched recursively for ``*.png`` and ``*.mat`` files.

    Returns
    -------
    labels : dict of str -> Path
        Sorted by stem. A stem found twice keeps the first path (sorted) and
        logs a warning.
    """
    found = {}
    for path in sorted(Path(labels_dir).rglob("*")):
        if path.is_file() and path.suffix.lower() in _LABEL_SUFFIXES:
            if path.stem in found:
                logger.warning("label stem %r found twice (%s, %s); using the first",
                               path.stem, found[path.stem], path)
                continue
            found[path.stem] = path
    return dict(sorted(found.items()))


def find_mask_files(masks_dir):
    """Predicted masks in a directory, by the stem of their image.

    ``<stem>_mask.png`` (as ``clasp segment`` writes) is preferred over
    ``<stem>.png``; ``*_overlay.png`` files are skipped. Not recursive.

    Parameters
    ----------
    masks_dir : path-like

    Returns
    -------
    masks : dict of str -> Path
    """
    plain, suffixed = {}, {}
    for path in sorted(Path(masks_dir).glob("*.png")):
        if not path.is_file() or path.stem.endswith("_overlay"):
            continue
        if path.stem.endswith("_mask"):
            suffixed[path.stem[: -len("_mask")]] = path
        else:
            plain[path.stem] = path
    return dict(sorted({**plain, **suffixed}.items()))


def _read_png_labels(path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: not a readable PNG label map ({exc})") from None
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if arr.ndim == 3:
        # colour-coded labels: one id per distinct colour (alpha ignored)
        rgb = arr[..., :3].astype(np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        _, ids = np.unique(code, return_inverse=True)
        return ids.reshape(code.shape).astype(np.int64)
    return arr.astype(np.int64)


def _read_mat_labels(path):
    from scipy.io import loadmat

    try:
        data = loadmat(path)
    except Exception as exc:  # scipy raises several kinds for bad files
        raise ValueError(f"{path}: not a readable .mat file ({exc})") from None
    if "groundTruth" not in data:
        keys = sorted(k for k in data if not k.startswith("__"))
        raise ValueError(f"{path}: no 'groundTruth' variable (BSDS layout); it has {keys}")
    gt = data["groundTruth"]
    segmentations = []
    try:
        for i in range(gt.shape[1]):
            segmentations.append(np.asarray(gt[0, i]["Segmentation"][0, 0], dtype=np.int64))
    except (IndexError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: groundTruth is not in the BSDS layout "
                         f"(groundTruth[0, i]['Segmentation'][0, 0]): {exc}") from None
    if not segmentations:
        raise ValueError(f"{path}: groundTruth holds no segmentation")
    return segmentations


def read_label_file(path):
    """Read one ground-truth file into a list of label maps.

    Parameters
    ----------
    path : path-like
        A PNG label map (palette, grayscale or 16-bit: the pixel values are the
        labels; an RGB map gets one label per distinct colour) or a BSDS
        ``.mat`` file (``groundTruth[0, i]["Segmentation"][0, 0]``, one map per
        human annotator).

    Returns
    -------
    label_maps : list of ndarray of shape (H, W), dtype int64
        One per annotator (a single one for a PNG).

    Raises
    ------
    ValueError
        If the file cannot be read or has an unknown layout.
    """
    path = Path(path)
    if path.suffix.lower() == ".mat":
        return _read_mat_labels(path)
    return [_read_png_labels(path)]


def score_prediction(mask, truths, *, ignore_index=None):
    """Score one predicted mask against one or more ground truths.

    Parameters
    ----------
    mask : array-like of shape (H, W), int
        The predicted segments.
    truths : list of array-like of shape (H, W), int
        The ground truths (several for BSDS: one per annotator).
    ignore_index : int, sequence of int or None, default=None
        Label values not scored.

    Returns
    -------
    scores : dict
        ``miou`` and ``pixel_accuracy`` (Hungarian-matched, mean over the
        ground truths), ``miou_best`` and ``pixel_accuracy_best`` (best ground
        truth, each on its own), the region measures ``covering`` and ``voi``
        (segmentation covering and variation of information in bits, see
        :func:`sklearn_clasp.metrics.segmentation_covering`; mean over the
        ground truths) with ``covering_best`` (highest) and ``voi_best``
        (lowest), ``n_clusters`` (distinct segments in the mask), ``n_classes``
        (mean number of classes over the ground truths) and ``n_annotators``.

    Examples
    --------
    >>> import numpy as np
    >>> mask = np.array([[0, 0, 1, 1]])
    >>> s = score_prediction(mask, [np.array([[5, 5, 6, 6]]), np.array([[5, 5, 5, 6]])])
    >>> round(s["miou"], 4), s["miou_best"], s["pixel_accuracy"], s["n_annotators"]
    (0.7917, 1.0, 0.875, 2)
    >>> round(s["covering"], 4), s["covering_best"], round(s["voi"], 4), s["voi_best"]
    (0.8125, 1.0, 0.5944, 0.0)
    """
    from .metrics import segmentation_covering, segmentation_scores, variation_of_information

    mask = np.asarray(mask)
    per = []
    for i, truth in enumerate(truths):
        truth = np.asarray(truth)
        if truth.shape != mask.shape:
            raise ValueError(
                f"the mask is {mask.shape[0]} x {mask.shape[1]} but the ground truth"
                f"{f' #{i + 1}' if len(truths) > 1 else ''} is {truth.shape[0]} x "
                f"{truth.shape[1]} (H x W); segment the image the labels belong to"
            )
        scores = segmentation_scores(mask, truth, ignore_index=ignore_index)
        scores["covering"] = segmentation_covering(mask, truth, ignore_index=ignore_index)
        scores["voi"] = variation_of_information(mask, truth, ignore_index=ignore_index)
        per.append(scores)
    miou = [s["miou"] for s in per]
    covering = [s["covering"] for s in per]
    voi = [s["voi"] for s in per]
    acc = [s["pixel_accuracy"] for s in per]
    return {
        "miou": float(np.mean(miou)),
        "pixel_accuracy": float(np.mean(acc)),
        "miou_best": float(np.max(miou)),
        "pixel_accuracy_best": float(np.max(acc)),
        "covering": float(np.mean(covering)),
        "covering_best": float(np.max(covering)),
        "voi": float(np.mean(voi)),
        "voi_best": float(np.min(voi)),
        "n_clusters": int(np.unique(mask).size),
        "n_classes": float(np.mean([s["n_classes"] for s in per])),
        "n_annotators": len(per),
    }


def _read_mask(path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: not a readable mask PNG ({exc})") from None
    if arr.ndim != 2:
        raise ValueError(f"{path}: a mask must be a single-channel integer PNG, got "
                         f"shape {arr.shape}")
    return arr.astype(np.int64)


def _fmt_classes(value):
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


_CSV_COLUMNS = ("name", "miou", "pixel_accuracy", "n_clusters", "n_classes", "miou_best",
                "pixel_accuracy_best", "covering", "covering_best", "voi", "voi_best",
                "n_annotators", "mask", "labels")
_CSV_FLOATS = ("miou", "pixel_accuracy", "miou_best", "pixel_accuracy_best", "covering",
               "covering_best", "voi", "voi_best")


def _evaluate_pairs(pairs, *, ignore_index, protocol):
    """Score (name, mask path, label path) triples; returns (rows, failures, dataset)."""
    from .metrics import SegmentationScoreAccumulator

    rows, failures = [], []
    accumulator = None
    if protocol == "dataset":
        top = -1
        ignore = set(ignore_index or ())
        for _, _, label_path in pairs:
            try:
                for truth in read_label_file(label_path):
                    values = np.unique(truth)
                    values = [v for v in values.tolist() if v >= 0 and v not in ignore]
                    top = max([top, *values])
            except ValueError:
                continue  # reported below
        if top < 0:
            raise UsageError("no label to score: every ground-truth pixel is ignored")
        accumulator = SegmentationScoreAccumulator("dataset", n_classes=top + 1,
                                                   ignore_index=ignore_index)
    for name, mask_path, label_path in pairs:
        try:
            mask = _read_mask(mask_path)
            truths = read_label_file(label_path)
            scores = score_prediction(mask, truths, ignore_index=ignore_index)
            if accumulator is not None:
                for truth in truths:
                    accumulator.update(mask, truth)
        except ValueError as exc:
            failures.append({"name": name, "source": str(label_path), "error": str(exc)})
            logger.debug("scoring %s failed", name, exc_info=True)
            continue
        rows.append({"name": name, **scores, "mask": str(mask_path),
                     "labels": str(label_path)})
    dataset = accumulator.result() if accumulator is not None and rows else None
    return rows, failures, dataset


def _write_csv(path, rows):
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=_CSV_COLUMNS)
            writer.writeheader()
            for row in rows:
                out = dict(row)
                for key in _CSV_FLOATS:
                    out[key] = f"{row[key]:.6f}"
                out["n_classes"] = _fmt_classes(row["n_classes"])
                writer.writerow({k: out[k] for k in _CSV_COLUMNS})
    except OSError as exc:
        raise UsageError(f"cannot write the CSV file {path}: {exc.strerror or exc}") from None


def _evaluation_table(rows, failures, missing, protocol, dataset, *, per_image=True):
    lines = []
    if per_image and rows:
        width = max(4, *(len(r["name"]) for r in rows))
        lines.append(f"{'name':<{width}}  {'mIoU':>6}  {'pix.acc':>7}  {'K':>3}  "
                     f"{'classes':>7}")
        for r in rows:
            lines.append(f"{r['name']:<{width}}  {r['miou']:6.3f}  {r['pixel_accuracy']:7.3f}"
                         f"  {r['n_clusters']:3d}  {_fmt_classes(r['n_classes']):>7}")
        lines.append("")
    n_total = len(rows) + len(failures) + len(missing)
    lines.append(f"images scored:    {len(rows)} of {n_total} label file(s)")
    if rows:
        miou = np.mean([r["miou"] for r in rows])
        acc = np.mean([r["pixel_accuracy"] for r in rows])
        multi = any(r["n_annotators"] > 1 for r in rows)
        lines.append(f"protocol:         {protocol}")
        if protocol == "dataset" and dataset is not None:
            lines.append(f"mIoU:             {dataset['miou']:.3f} (one matching over the "
                         f"summed confusion matrix)")
            lines.append(f"pixel accuracy:   {dataset['pixel_accuracy']:.3f}")
            lines.append(f"per-image mIoU:   {miou:.3f} (mean over images)")
        else:
            lines.append(f"mIoU:             {miou:.3f} (mean over images)")
            lines.append(f"pixel accuracy:   {acc:.3f}")
        if multi:
            best = np.mean([r["miou_best"] for r in rows])
            best_acc = np.mean([r["pixel_accuracy_best"] for r in rows])
            lines.append(f"best annotator:   mIoU {best:.3f}, pixel accuracy {best_acc:.3f} "
                         f"(mean over images of the best-matching human segmentation)")
        covering = np.mean([r["covering"] for r in rows])
        voi = np.mean([r["voi"] for r in rows])
        lines.append(f"covering:         {covering:.3f} (segmentation covering; higher is "
                     f"better)")
        lines.append(f"VoI:              {voi:.3f} bits (variation of information; lower is "
                     f"better)")
        lines.append(f"segments / image: {np.mean([r['n_clusters'] for r in rows]):.2f} "
                     f"(classes / image: {np.mean([r['n_classes'] for r in rows]):.2f})")
    if missing:
        shown = ", ".join(missing[:10]) + (f", ... ({len(missing)} in all)"
                                           if len(missing) > 10 else "")
        lines.append(f"no prediction:    {len(missing)} ({shown})")
    if failures:
        lines.append(f"failed:           {len(failures)}")
        for f in failures:
            lines.append(f"  {f['name']}: {f['error']}")
    return "\n".join(lines)


def run_evaluate(args, parser):
    """``clasp evaluate``; returns the exit status."""
    options = _resolve_options(args, parser)
    labels_dir = args.labels
    if not labels_dir.is_dir():
        raise UsageError(f"--labels {labels_dir}: no such directory")
    labels = find_label_files(labels_dir)
    if not labels:
        raise UsageError(f"--labels {labels_dir}: no .png or .mat label files in it")
    failures = []
    with contextlib.ExitStack() as stack:
        if args.images is not None:
            if not args.images.is_dir():
                raise UsageError(f"--images {args.images}: no such directory")
            pipeline = build_pipeline(options)
            images = _find_inputs([str(args.images)])
            out = options.get("out")
            if out is None:
                out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="clasp-")))
            out = Path(out)
            _make_out_dir(out)
            report = _segment(images, out, options, pipeline)
            masks = {}
            for result in report.results:
                if result["status"] == "failed":
                    failures.append({"name": Path(result["source"]).stem,
                                     "source": result["source"],
                                     "error": f"segmentation failed: {result['error']}"})
                    continue
                masks[Path(result["source"]).stem] = out / f"{result['name']}_mask.png"
            if not options.get("quiet"):
                _echo(report.summary())
                print()
        else:
            if not args.masks.is_dir():
                raise UsageError(f"--masks {args.masks}: no such directory")
            masks = find_mask_files(args.masks)
        failed_names = {f["name"] for f in failures}
        pairs = [(stem, masks[stem], path) for stem, path in labels.items() if stem in masks]
        missing = [stem for stem in labels if stem not in masks and stem not in failed_names]
        if not pairs and not failures:
            where = args.masks if args.images is None else "the segmented images"
            raise UsageError(
                f"no prediction matches a label file: labels {_few(labels)} in "
                f"{labels_dir}, masks {_few(masks)} in {where} (masks are paired by "
                f"stem: <stem>_mask.png or <stem>.png for <stem>.png/.mat)"
            )
        rows, score_failures, dataset = _evaluate_pairs(
            pairs, ignore_index=args.ignore_index, protocol=args.protocol)
        failures += score_failures
    if args.csv is not None:
        _write_csv(args.csv, rows)
    table = _evaluation_table(rows, failures, missing, args.protocol, dataset,
                              per_image=not options.get("quiet"))
    if options.get("quiet"):
        for f in failures:
            print(f"error: {f['name']}: {f['error']}", file=sys.stderr)
    else:
        print(table)
    return EXIT_SOME_FAILED if (failures or missing) else EXIT_OK


def _few(mapping, n=5):
    keys = list(mapping)
    if not keys:
        return "(none)"
    return "[" + ", ".join(keys[:n]) + (", ..." if len(keys) > n else "") + "]"


# --------------------------------------------------------------------------
# clasp weights
# --------------------------------------------------------------------------


def _size(n):
    if n is None:
        return "size unknown"
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def run_weights(args, parser):
    """``clasp weights``; returns the exit status."""
    from .embedding import _weights as W

    env = os.environ.get(W.WEIGHTS_ENV_VAR)
    hub = W.hub_checkpoint_dir()
    lines = ["DINOv2 weights are looked for, in this order, in:"]
    if env:
        state = "exists" if Path(env).expanduser().is_dir() else "does not exist yet"
        lines.append(f"  1. ${W.WEIGHTS_ENV_VAR} = {env} ({state})")
    else:
        lines.append(f"  1. ${W.WEIGHTS_ENV_VAR} (not set)")
    lines.append(f"  2. the torch hub cache: {hub}")
    lines.append(f"and are otherwise downloaded into {Path(env).expanduser() if env else hub}")
    lines.append("(or give any file with --weights PATH).")
    status = EXIT_OK
    models = [args.model] if args.model else list(W.OFFICIAL_WEIGHTS)
    for model in models:
        info = W.OFFICIAL_WEIGHTS[model]
        path = W.find_official_weights(model)
        note = " (default, the CLASP paper's)" if model == DEFAULT_MODEL else ""
        lines.append(f"\n{model}{note}")
        lines.append(f"  file:     {info.filename} ({_size(info.size)})")
        lines.append(f"  url:      {info.url}")
        lines.append(f"  sha256:   {info.sha256}")
        lines.append(f"  present:  {path if path is not None else 'no'}")
        if args.verify and path is not None:
            digest = W.file_sha256(path)
            if info.sha256 is None:
                lines.append(f"  verified: no known SHA-256 (file has {digest})")
            elif digest == info.sha256:
                lines.append("  verified: ok")
            else:
                lines.append(f"  verified: MISMATCH, the file has {digest}; delete it and "
                             f"download it again")
                status = EXIT_SOME_FAILED
    if not args.quiet:
        print("\n".join(lines))
    if args.download:
        model = args.model or DEFAULT_MODEL
        try:
            path, digest = W.resolve_weights(model, None, download=True)
        except (W.WeightsUnavailableError, W.ChecksumMismatchError, OSError) as exc:
            raise EmbedderError(f"could not get the {model} weights: {exc}") from exc
        if not args.quiet:
            print(f"\n{model}: {path} (SHA-256 {digest}, verified)")
    return status


# --------------------------------------------------------------------------
# clasp explain
# --------------------------------------------------------------------------


def run_explain(args, parser):
    """``clasp explain``; returns the exit status."""
    from .explain import explain_figure

    options = _resolve_options(args, parser)
    image = args.image
    if not image.is_file():
        raise UsageError(f"{image}: no such image file")
    out = args.out if args.out is not None else Path(f"{image.stem}_explain.png")
    pipeline = build_pipeline(options)
    _load_embedder(pipeline, options["embedder"])
    try:
        figure = explain_figure(image, pipeline, dpi=args.dpi)
    except (ValueError, OSError) as exc:  # a damaged, unreadable or too large image
        _echo(f"error: {image}: {exc}", sys.stderr)
        return EXIT_SOME_FAILED
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out)
    except OSError as exc:
        raise UsageError(f"cannot write the figure {out}: {exc.strerror or exc}") from None
    if not options.get("quiet"):
        title = figure._suptitle  # Figure.get_suptitle() needs matplotlib >= 3.8
        print(title.get_text() if title is not None else "")
        print(f"figure: {out}")
    return EXIT_OK


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


@contextlib.contextmanager
def _logging_to_stderr(level):
    """Send the package's log records to stderr at ``level`` while the command runs."""
    log = logging.getLogger("sklearn_clasp")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(level)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)


def main(argv=None):
    """Run the ``clasp`` command line; return the exit status.

    Parameters
    ----------
    argv : list of str, default=None
        Arguments without the program name; ``None`` reads ``sys.argv[1:]``.

    Returns
    -------
    status : int
        0 success (all images done or skipped), 1 some images failed, 2 usage
        error (bad options, unreadable config, no images found, an output
        directory that cannot be written), 3 the embedder could not be loaded,
        128 + N interrupted by signal N (130: SIGINT, Ctrl-C; 143: SIGTERM,
        which is handled like SIGINT while the command runs).

    Examples
    --------
    >>> main(["--version"])  # doctest: +ELLIPSIS
    clasp ...
    0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on errors, 0 for --help / --version
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    quiet, verbose = bool(getattr(args, "quiet", False)), bool(getattr(args, "verbose", False))
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING
    start = time.perf_counter()
    with _logging_to_stderr(level), warnings.catch_warnings(), _interruptible() as stop:
        if quiet:
            warnings.simplefilter("ignore")
        try:
            status = args.func(args, parser)
        except UsageError as exc:
            _echo(f"{PROG} {args.command}: error: {exc}", sys.stderr)
            return EXIT_USAGE
        except EmbedderError as exc:
            _echo(f"{PROG} {args.command}: error: {exc}", sys.stderr)
            return EXIT_EMBEDDER
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            stop.ignore()  # a second signal must not cut the clean-up short
            _echo(f"{PROG} {args.command}: interrupted ({signal.Signals(signum).name}); the "
                  f"outputs written are complete: run the same command again to finish",
                  sys.stderr)
            return 128 + int(signum)
        finally:
            _stop_local_workers()
    logger.debug("%s finished in %.2f s with status %d", args.command,
                 time.perf_counter() - start, status)
    return status


class _Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP), raised like Ctrl-C so that a run stops the same clean way."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class _Signals:
    """While a command runs: SIGTERM and SIGHUP raise :class:`_Terminated` (main thread)."""

    _HANDLED = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP")
                     if hasattr(signal, name))

    def __init__(self):
        self._previous = {}

    def _raise(self, signum, frame):
        raise _Terminated(signum)

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in self._HANDLED:
            self._previous[signum] = signal.signal(signum, self._raise)

    def ignore(self):
        """Ignore further SIGINT/SIGTERM/SIGHUP until the command returns."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, *self._HANDLED):
            previous = signal.signal(signum, signal.SIG_IGN)
            self._previous.setdefault(signum, previous)

    def restore(self):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()


@contextlib.contextmanager
def _interruptible():
    """Install the SIGTERM/SIGHUP handlers of :class:`_Signals` for the command's duration."""
    handlers = _Signals()
    handlers.install()
    try:
        yield handlers
    finally:
        handlers.restore()


def _stop_local_workers():
    """End joblib's reusable worker processes (kept idle for reuse otherwise) at the end of
    a command, so that none outlives it."""
    module = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(module, "_executor", None) if module is not None else None
    if executor is None:
        return
    try:
        executor.shutdown(wait=True, kill_workers=True)
    except Exception as exc:  # never mask the command's own status
        logger.debug("stopping the worker processes failed: %s", exc)
