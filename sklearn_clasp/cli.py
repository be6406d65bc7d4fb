"""The ``clasp`` command line (also ``python -m sklearn_clasp``).

Subcommands:

``clasp segment INPUT... --out DIR``
    Segment image files, directories (recursive) and glob patterns with
    :func:`sklearn_clasp.collection.segment_collection`: per image a mask PNG,
    an overlay PNG and a JSON record; a summary at the end.
``clasp evaluate --labels DIR (--masks DIR | --images DIR)``
    Hungarian-matched mIoU and pixel accuracy, covering and VoI against PNG
    label maps or BSDS ``.mat`` files; a per-image CSV and a summary table.
``clasp report DIR``
    An HTML page of a run's outputs (:func:`sklearn_clasp.report.write_report`).
``clasp weights``
    Where the DINOv2 weights are looked for; download and verify them.
``clasp explain IMAGE``
    A figure of why CLASP chose K for one image
    (:func:`sklearn_clasp.explain.explain_figure`).

The options are generated from the estimators: every parameter of a pipeline
step is an option named after its parameter path (``segment__k_max`` is
``--segment-k-max``), with the estimator's own default and the first sentence
of its docstring as help, and every parameter of ``segment_collection`` is a
run option (``n_jobs`` is ``--n-jobs``). A config file (``--config FILE``,
TOML, or the JSON record of an image) uses the same names as keys
(``segment__k_max = 10``, or ``k_max = 10`` under a ``[segment]`` table);
command-line options override it. The short names of
:data:`sklearn_clasp.pipeline.ALIASES` (``--k-max``, ``--embedder``...) are
aliases, the same on the command line and in config files.

Exit status: 0 success, 1 some images failed, 2 usage error (bad option or
value, a value beyond its bound, unreadable config file, no images, an
output directory that cannot be written, is in use by another run, holds
other settings or is not seen by the Dask workers, a bad or unreachable
scheduler address), 3 the embedder could not be loaded (e.g. DINOv2 weights
missing offline), 4 the run stopped early (a full output disk, the Dask
scheduler lost), 130 interrupted (Ctrl-C, SIGINT), 129 (SIGHUP), 143
terminated (SIGTERM); a stopped or interrupted run keeps only complete
outputs, and running it again finishes the rest. Library code logs; only
this module prints.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import inspect
import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "main",
    "build_parser",
    "load_config",
    "EXIT_OK",
    "EXIT_SOME_FAILED",
    "EXIT_USAGE",
    "EXIT_EMBEDDER",
    "EXIT_STOPPED",
]

logger = logging.getLogger("sklearn_clasp.cli")

#: Exit statuses (an interruption by signal N exits with 128 + N: 130 for SIGINT,
#: 143 for SIGTERM).
EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_EMBEDDER, EXIT_STOPPED = 0, 1, 2, 3, 4

PROG = "clasp"
COMMANDS = {
    "segment": "segment images: a mask, an overlay and a JSON record per image",
    "evaluate": "score masks against label maps (Hungarian mIoU, pixel accuracy, "
                "covering, VoI)",
    "report": "an HTML page of a run's outputs: thumbnails, K, failures",
    "weights": "where the DINOv2 weights are looked for; download and verify them",
    "explain": "a figure of why K was chosen for one image",
}

# segment_collection parameters that are not options of their own: the inputs and the
# output directory are (``INPUT...``, ``--out-dir``), a client and TLS settings cannot
# be typed (``--scheduler``, ``--tls-*`` make them).
_NOT_RUN_OPTIONS = ("inputs", "pipeline", "client", "security")
_TLS_FLAGS = ("tls_ca_file", "tls_cert", "tls_key")


class UsageError(Exception):
    """A problem with the command line, the config file or the inputs (exit 2)."""


class EmbedderError(Exception):
    """The embedder could not be loaded (exit 3)."""


class StoppedError(Exception):
    """The run stopped early: a full output disk, a lost Dask scheduler (exit 4)."""


# --------------------------------------------------------------------------
# settings, from the estimators
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One option: a pipeline setting or a run option."""

    name: str  # "segment__k_max", or "n_jobs"
    constraints: tuple
    default: object
    help: str
    group: str
    embedder: str | None = None  # set for settings of one embedder only

    @property
    def flag(self):
        return flag_of(self.name)


def flag_of(name):
    """The command-line option of a setting: ``segment__k_max`` -> ``--segment-k-max``."""
    return "--" + name.replace("__", "-").replace("_", "-")


def _first_sentence(text):
    text = " ".join(text.split())
    text = re.sub(r":\w+:`~?([\w.]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    text = text.replace("``", "")
    match = re.search(r"(?<!e\.g)(?<!i\.e)\.(?=\s+[A-Z(\"']|$)", text)
    return text[: match.start() + 1] if match else text


def parameter_help(obj):
    """``{parameter: first sentence}`` from the numpydoc Parameters section of ``obj``."""
    doc = inspect.getdoc(obj) or ""
    lines = doc.splitlines()
    out, name, body, inside = {}, None, [], False
    for i, line in enumerate(lines):
        header = i + 1 < len(lines) and set(lines[i + 1].strip()) == {"-"} and line.strip()
        if header:
            if inside:
                break
            inside = line.strip() == "Parameters"
            continue
        if not inside or set(line.strip()) == {"-"}:
            continue
        entry = re.match(r"^(\*{0,2}\w+(?:, \w+)*) : ", line)
        if entry:
            if name:
                for n in name.split(", "):
                    out[n] = _first_sentence(" ".join(body))
            name, body = entry.group(1), []
        elif name:
            body.append(line.strip())
    if name:
        for n in name.split(", "):
            out[n] = _first_sentence(" ".join(body))
    return out


def _defaults(cls):
    return {name: p.default for name, p in inspect.signature(cls).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _step_settings(step, cls, group, embedder=None, skip=()):
    help_ = parameter_help(cls)
    return [Setting(f"{step}__{name}", tuple(cls._parameter_constraints[name]), default,
                    help_.get(name, ""), group, embedder)
            for name, default in _defaults(cls).items()
            if name in cls._parameter_constraints and name not in skip]


def pipeline_setting_specs():
    """Every setting of a CLASP pipeline, from the estimators, in help order."""
    from .pipeline import embedder_class, make_clasp_pipeline

    dino, hand = embedder_class("dinov2"), embedder_class("handcrafted")
    shared = sorted(set(_defaults(dino)) & set(_defaults(hand)))
    specs = _step_settings("embed", hand, "embed: both embedders", skip=())
    specs = [s for s in specs if s.name.split("__")[1] in shared]
    specs += _step_settings("embed", dino, "embed: DINOv2 only (--embedder dinov2)",
                            "dinov2", skip=shared)
    specs += _step_settings("embed", hand, "embed: handcrafted only (--embedder handcrafted)",
                            "handcrafted", skip=shared)
    for name, step in make_clasp_pipeline("handcrafted").steps[1:]:
        specs += _step_settings(name, type(step), name)
    return specs


def run_setting_specs():
    """The options of :func:`~sklearn_clasp.collection.segment_collection`."""
    from .collection import segment_collection

    constraints = segment_collection._skl_parameter_constraints
    help_ = parameter_help(segment_collection)
    defaults = _defaults(segment_collection)
    return [Setting(name, tuple(constraints[name]), defaults.get(name), help_.get(name, ""),
                    "running")
            for name in inspect.signature(segment_collection).parameters
            if name not in _NOT_RUN_OPTIONS]


def _allows(constraints, kind):
    from numbers import Integral, Real

    from sklearn.utils._param_validation import Interval, StrOptions

    for c in constraints:
        if kind == "none" and c is None:
            return True
        if kind == "bool" and c == "boolean":
            return True
        if kind == "int" and (c in ("random_state", Integral) or (
                isinstance(c, Interval) and c.type is Integral)):
            return True
        if kind == "float" and (c is Real or (isinstance(c, Interval) and c.type is Real)):
            return True
        if kind == "str" and (c in (str, os.PathLike) or isinstance(c, StrOptions)):
            return True
    return False


def parse_value(text, setting, *, where=None):
    """Convert an option's text to a value its constraints allow, or a UsageError."""
    t = str(text).strip()
    low = t.lower()
    c = setting.constraints
    value = t
    if low == "none" and _allows(c, "none"):
        value = None
    elif _allows(c, "bool") and low in ("true", "false", "yes", "no", "on", "off", "1", "0"):
        value = low in ("true", "yes", "on", "1")
    else:
        for kind, convert in (("int", int), ("float", float)):
            if _allows(c, kind):
                try:
                    value = convert(t.replace("_", ""))
                    break
                except ValueError:
                    continue
    return check_value(value, setting, shown=text, where=where)


def check_value(value, setting, *, shown=None, where=None):
    """``value`` if the setting's constraints allow it, else a UsageError naming the option."""
    from .pipeline import setting_problem

    need = setting_problem(setting.name, setting.constraints, value)
    if need is not None:
        raise UsageError(f"{where or setting.flag} {shown if shown is not None else value!r}: "
                         f"must be {need}") from None
    return value


def _metavar(setting):
    from sklearn.utils._param_validation import StrOptions

    options = [c for c in setting.constraints if isinstance(c, StrOptions)]
    if options:
        return "{" + ",".join(sorted(options[0].options)) + "}"
    c = setting.constraints
    if _allows(c, "bool"):
        return "{true,false}"
    if _allows(c, "int"):
        return "N"
    if _allows(c, "float"):
        return "X"
    return "PATH" if os.PathLike in c or setting.name.endswith("_dir") else "TEXT"


def _describe_default(value):
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "none"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:_}"
    return str(value)


def _upper_bound(constraints):
    """The largest integer an option's constraints allow, if they bound it."""
    from numbers import Integral

    from sklearn.utils._param_validation import Interval

    rights = [c.right for c in constraints if isinstance(c, Interval) and c.type is Integral]
    if not rights or any(r is None for r in rights):
        return None
    return max(rights)


def _add_setting(group, setting, *, default_text=None):
    bool_like = _allows(setting.constraints, "bool")
    default = default_text if default_text is not None else _describe_default(setting.default)
    text = setting.help.rstrip(".")
    top = _upper_bound(setting.constraints)
    bound = f", at most {top}" if top is not None else ""
    group.add_argument(setting.flag, dest=setting.name, metavar=_metavar(setting),
                       default=None, nargs="?" if bool_like else None,
                       const="true" if bool_like else None,
                       help=f"{text} (default: {default}{bound})".replace("%", "%%"))


#: Aliases on the command line: option -> (setting, help). Also accepted in config files.
def _alias_help():
    from .pipeline import ALIASES

    out = {a: (target, f"alias of {flag_of(target)}") for a, target in ALIASES.items()}
    out["random_state"] = ("random_state", "seed of every step that has a random_state "
                                           "(the segmenter, DINOv2's weights='random')")
    out["paper"] = ("paper", "the CLASP paper's K selection (PAPER_SETTINGS); settings given "
                             "explicitly override it")
    out["device"] = ("device", "where every stage runs: none (NumPy, SciPy, pydensecrf; "
                               "DINOv2 on the CPU), cpu, cuda, cuda:N or auto (CUDA when "
                               "there is one); a stage's own --<stage>-device overrides it")
    out["out"] = ("out_dir", "alias of --out-dir")
    return out


class _Formatter(argparse.HelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=36)


def _add_verbosity(parser):
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true",
                       help="debug logging on stderr")
    group.add_argument("-q", "--quiet", action="store_true",
                       help="errors only: no progress bar, no summary on stdout")


def _add_pipeline_options(parser, *, run=True):
    """The aliases, every pipeline setting grouped by stage, then (``run``) the run options."""
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="read settings from a TOML file (keys: the settings' names, "
                             "e.g. segment__k_max = 10, or k_max = 10 under [segment]) or "
                             "from the JSON record of a segmented image; options given here "
                             "override it")
    pipeline_specs = pipeline_setting_specs()
    specs = {s.name: s for s in pipeline_specs}
    specs.update(_special_specs())
    if run:
        run_specs = run_setting_specs()
        specs.update({s.name: s for s in run_specs})
    common = parser.add_argument_group("common settings (aliases)")
    for alias, (target, text) in _alias_help().items():
        if alias == "out" and not run:
            continue
        if alias == "paper":
            common.add_argument("--paper", dest="paper", action="store_const", const=True,
                                default=None, help=text)
            continue
        target_spec = specs.get(target)
        common.add_argument(flag_of(alias), dest=f"alias:{alias}", default=None, help=text,
                            metavar=_metavar(target_spec) if target_spec else "N")
    groups = {}
    for setting in pipeline_specs:
        if setting.group not in groups:
            groups[setting.group] = parser.add_argument_group(setting.group)
        _add_setting(groups[setting.group], setting)
    if run:
        group = parser.add_argument_group("running")
        for setting in run_specs:
            _add_setting(group, setting, default_text=(
                "shown when stderr is a terminal" if setting.name == "progress" else None))
        group.add_argument("--tls-ca-file", type=Path, metavar="FILE", dest="tls_ca_file",
                           help="with --scheduler tls://...: the CA certificate (PEM) that "
                                "signed the cluster's certificates; TLS is then required")
        group.add_argument("--tls-cert", type=Path, metavar="FILE", dest="tls_cert",
                           help="with --tls-ca-file: this client's certificate (PEM)")
        group.add_argument("--tls-key", type=Path, metavar="FILE", dest="tls_key",
                           help="with --tls-ca-file: this client's private key (PEM), unless "
                                "it is in --tls-cert")


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other usage error of ``clasp``."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


@contextlib.contextmanager
def _subcommand(commands, name, func, *, pipeline=False, run=True, **kwargs):
    """Add the subcommand ``name`` running ``func``; yields its parser for its own arguments.

    After them come, with ``pipeline``, the pipeline options (and with ``run``
    the run options, see :func:`_add_pipeline_options`), then ``-v`` / ``-q``.
    """
    parser = commands.add_parser(name, formatter_class=_Formatter, help=COMMANDS[name],
                                 **kwargs)
    yield parser
    if pipeline:
        _add_pipeline_options(parser, run=run)
    _add_verbosity(parser)
    parser.set_defaults(func=func, command_parser=parser)  # for errors said by the command


def build_parser(command=None):
    """The ``clasp`` argument parser.

    Parameters
    ----------
    command : str, default=None
        Build the options of this subcommand only (the others get none, and
        ``""`` builds none), so that a command pays only for its own options;
        ``None`` builds all.

    Returns
    -------
    parser : argparse.ArgumentParser
    """
    from . import __version__

    parser = _Parser(
        prog=PROG, formatter_class=_Formatter,
        description="Training-free image segmentation with CLASP (DINOv2 patch features, "
                    "adaptive spectral clustering, DenseCRF).",
        epilog="Run 'clasp COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    build = {name: command in (None, name) for name in COMMANDS}

    with _subcommand(
        commands, "segment", run_segment, pipeline=build["segment"],
        description="Segment image files, directories (searched recursively) and glob "
                    "patterns; without INPUT, the bundled sample images. Writes "
                    "<name>_mask.png, <name>_overlay.png and <name>.json per image into "
                    "--out-dir and prints a summary. Runs resume: images whose outputs "
                    "match the input and the settings are skipped.",
        epilog="Exit status: 0 all images done or skipped, 1 some images failed, 2 usage "
               "error, 3 the embedder could not be loaded, 4 the run stopped early (a full "
               "disk, the Dask scheduler lost), 130/143 interrupted (SIGINT/SIGTERM): the "
               "outputs written are complete and a re-run finishes the rest.",
    ) as seg:
        seg.add_argument("inputs", nargs="*", metavar="INPUT",
                         help="image files, directories or glob patterns (quote them)")

    with _subcommand(
        commands, "evaluate", run_evaluate, pipeline=build["evaluate"],
        description="Pair predicted masks with ground-truth labels by file stem and score "
                    "each image with a Hungarian matching of segments to classes, and with "
                    "segmentation covering and variation of information. Masks: "
                    "<stem>_mask.png or <stem>.png in --masks, or made first from --images "
                    "with the segment options. Labels: PNG label maps, or BSDS .mat files "
                    "(each human segmentation scored; mean and best reported).",
        epilog="Exit status: 0 every label scored, 1 some labels without a prediction or "
               "some images failed, 2 usage error, 3 the embedder could not be loaded.",
    ) as ev:
        ev.add_argument("--labels", type=Path, required=True, metavar="DIR",
                        help="ground truth: <stem>.png label maps or <stem>.mat BSDS files "
                             "(searched recursively)")
        source = ev.add_mutually_exclusive_group(required=True)
        source.add_argument("--masks", type=Path, metavar="DIR",
                            help="predicted masks (<stem>_mask.png or <stem>.png)")
        source.add_argument("--images", type=Path, metavar="DIR",
                            help="images to segment first (into --out-dir, or a temporary "
                                 "directory)")
        ev.add_argument("--ignore-index", type=int, nargs="+", action="extend", metavar="N",
                        help="label values not scored, e.g. 255 (negative values are never "
                             "scored)")
        ev.add_argument("--protocol", choices=("per_image", "dataset"), default="per_image",
                        help="per_image (default): match each image on its own and average; "
                             "dataset: one matching over the summed confusion matrix "
                             "(cluster ids must mean the same in every image)")
        ev.add_argument("--csv", type=Path, metavar="FILE",
                        help="write per-image scores (name, miou, pixel_accuracy, n_clusters, "
                             "n_classes, ...) to this CSV file")

    with _subcommand(
        commands, "report", run_report,
        description="Write report.html into a run's output directory: a page of thumbnails "
                    "with each image's K, silhouette and timings, the K histogram and the "
                    "failures, sortable and filterable; it opens from the file system.",
        epilog="Exit status: 0 written, 2 usage error.",
    ) as rep:
        rep.add_argument("out_dir", type=Path, metavar="DIR", help="the output directory of a run")
        rep.add_argument("--html", type=Path, metavar="FILE",
                         help="where to write the page (default: DIR/report.html)")

    with _subcommand(
        commands, "weights", run_weights,
        description="List the official DINOv2 checkpoints (file, URL, SHA-256), where they "
                    "are looked for and whether they are present. --verify checks the "
                    "SHA-256 of the present files; --download fetches the chosen model.",
        epilog="Exit status: 0 fine, 1 a checksum mismatch, 3 the download failed.",
    ) as wt:
        wt.add_argument("--model", metavar="NAME",
                        help="only this model (with --download: default dinov2_vits14_reg)")
        wt.add_argument("--download", action="store_true",
                        help="download the model's official file if missing, and verify it")
        wt.add_argument("--verify", action="store_true",
                        help="check the SHA-256 of every present file")

    with _subcommand(
        commands, "explain", run_explain, pipeline=build["explain"], run=False,
        description="Segment one image and draw the image, the eigenvalue spectrum with "
                    "its gaps and K0, the silhouette over the searched K with the chosen K, "
                    "the patch labels and the refined mask, titled with the reason.",
        epilog="Exit status: 0 written, 1 the image could not be segmented, 2 usage error, "
               "3 the embedder could not be loaded.",
    ) as ex:
        ex.add_argument("image", type=Path, metavar="IMAGE", help="the image file")
        ex.add_argument("--out", type=Path, metavar="FIG.png",
                        help="figure file (default: <image stem>_explain.png here)")
        ex.add_argument("--dpi", type=int, default=100, help="resolution (default: 100)")
    return parser


# --------------------------------------------------------------------------
# config files and option resolution
# --------------------------------------------------------------------------

_PATH_KEYS = ("out_dir", "embed__weights", "embed__memory", *_TLS_FLAGS)


def _flatten(data, path):
    """TOML tables to parameter paths: ``[segment] k_max = 3`` -> ``segment__k_max``."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                if isinstance(v, dict):
                    raise UsageError(f"config file {path}: [{key}.{sub}] nests too deep; use "
                                     f"[{key}] with {sub}__... keys, or top-level keys")
                name = f"{key}__{sub}"
                if name in data or name in out:
                    raise UsageError(f"config file {path}: {name} is set twice")
                out[name] = v
        else:
            out[key] = value
    return out


def load_config(path, *, run=True):
    """Read a config file into ``{setting: value}``, every value checked.

    Parameters
    ----------
    path : path-like
        A TOML file whose keys are setting names (``segment__k_max = 10``;
        tables: ``[segment]`` then ``k_max = 10``), aliases (``k_max``), run
        options (``n_jobs``, ``out_dir``, ``inputs``); ``"none"`` is ``None``
        (TOML has no null) where a setting allows it. Or a JSON file: the
        record of a segmented image (its ``settings`` are used) or an object of
        settings. Relative paths (``out_dir``, ``inputs``, ``embed__weights``,
        ``embed__memory``, TLS files) are relative to the file's directory.
    run : bool, default=True
        Whether run options are valid keys.

    Returns
    -------
    settings : dict

    Raises
    ------
    UsageError
        If the file cannot be read or parsed, has an unknown key (the message
        lists the valid ones) or a bad value.
    """
    import tomllib

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict):
                raise UsageError(
                    f"config file {path}: holds a JSON {type(data).__name__}, not an object; "
                    f"give an object of settings or a record's JSON file")
            data = data.get("settings", data) if isinstance(data.get("settings"), dict) \
                else data
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # TOMLDecodeError, JSONDecodeError
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise UsageError(f"config file {path} is not valid {kind}: {exc}") from None
    data = _flatten(data, path)
    specs = {s.name: s for s in pipeline_setting_specs()}
    if run:
        specs.update({s.name: s for s in run_setting_specs()})
    aliases = _alias_help()
    options = {}
    for key, value in data.items():
        where = f"config file {path}: {key}"
        if key in aliases:
            key = aliases[key][0]
        if key in ("random_state", "paper"):
            options[key] = value
            continue
        if key in ("embed", "device"):
            if key == "device" and isinstance(value, str) and value.lower() == "none":
                value = None  # TOML has no null
            options[key] = check_value(value, _special_specs()[key], where=where)
            continue
        if key == "inputs" and run:
            values = [value] if isinstance(value, str) else value
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise UsageError(f"{where} must be a string or a list of strings")
            options[key] = values
            continue
        if key in _TLS_FLAGS and run:
            options[key] = Path(str(value))
            continue
        if key not in specs:
            valid = set(specs) | set(aliases) | set(_special_specs())
            if run:
                valid |= {"inputs", *_TLS_FLAGS}
            raise UsageError(f"{where}: unknown setting; valid: {', '.join(sorted(valid))}")
        if isinstance(value, str) and value.lower() == "none" and \
                _allows(specs[key].constraints, "none"):
            value = None  # TOML has no null
        options[key] = check_value(value, specs[key], where=where)
    base = path.resolve().parent
    for key in _PATH_KEYS:
        if isinstance(options.get(key), (str, Path)) and not str(options[key]).strip():
            raise UsageError(f"config file {path}: {key} is empty; give a path")
        if isinstance(options.get(key), (str, Path)) and options[key] != "random":
            options[key] = str(base / Path(options[key]).expanduser())
    if "inputs" in options:
        options["inputs"] = [str(base / Path(p).expanduser()) for p in options["inputs"]]
    return options


def _special_specs():
    """The settings that are not an estimator parameter: the embedder, the seed, the preset."""
    from sklearn.utils._param_validation import StrOptions

    from .pipeline import EMBEDDER_NAMES

    return {
        "embed": Setting("embed", (StrOptions(set(EMBEDDER_NAMES)),), "dinov2", "", ""),
        "random_state": Setting("random_state", ("random_state",), None, "", ""),
        "paper": Setting("paper", ("boolean",), False, "", ""),
        "device": Setting("device", (None, str), None, "", ""),
    }


def _resolve(args):
    """Settings from config file < command line, each checked; ``(pipeline, run)`` dicts."""
    options = load_config(args.config) if getattr(args, "config", None) else {}
    specs = {s.name: s for s in pipeline_setting_specs()}
    specs.update(_special_specs())
    run_specs = {s.name: s for s in run_setting_specs()}
    aliases = _alias_help()
    for key, value in vars(args).items():
        if value is None or value == [] or key in ("func", "command_parser", "config",
                                                   "command", "verbose", "quiet"):
            continue
        where = None
        if key.startswith("alias:"):
            alias = key.split(":", 1)[1]
            key, where = aliases[alias][0], flag_of(alias)
        spec = specs.get(key) or run_specs.get(key)
        if key == "paper":
            options[key] = True
        elif spec is not None:
            options[key] = parse_value(value, spec, where=where)
        else:  # inputs, TLS files, subcommand arguments
            options[key] = value
    pipeline_keys = set(specs)
    settings = {k: v for k, v in options.items() if k in pipeline_keys}
    others = {k: v for k, v in options.items() if k not in pipeline_keys}
    return settings, others


def _with_flags(text):
    """``text``, followed by the options of the settings it names."""
    names = re.findall(r"\b((?:embed|affinity|segment|refine)__\w+)", text)
    return f"{text} ({', '.join(dict.fromkeys(flag_of(n) for n in names))})" if names else text


def build_pipeline(settings):
    """The pipeline of resolved settings, or a UsageError saying which setting is wrong."""
    from .pipeline import pipeline_from_settings

    try:
        return pipeline_from_settings(settings)
    except (ValueError, TypeError) as exc:
        raise UsageError(_with_flags(str(exc))) from None


def _load_embedder(pipeline):
    """Fit (load) the embedder now, so that a missing model is one clear error (exit 3).

    Settings that cannot work here (a CUDA device PyTorch does not see, settings
    the embedder refuses together) are usage errors (exit 2)."""
    from sklearn.utils._param_validation import InvalidParameterError

    from .pipeline import check_pipeline_settings

    try:
        check_pipeline_settings(pipeline, "clasp", devices=True)
        pipeline.steps[0][1].fit(None)
    except InvalidParameterError as exc:
        raise UsageError(_with_flags(str(exc).removeprefix("clasp: "))) from None
    except Exception as exc:  # missing weights, bad checkpoint, ...
        logger.debug("loading the embedder failed", exc_info=True)
        hint = ""
        if isinstance(exc, FileNotFoundError):  # the weights file is missing
            hint = ("\nOn the command line: --embed-weights PATH for a file anywhere; "
                    "'clasp weights' shows where the file is looked for and "
                    "'clasp weights --download' fetches it (online); --embedder "
                    "handcrafted needs no weights.")
        raise EmbedderError(
            f"could not load the {type(pipeline.steps[0][1]).__name__}: {exc}{hint}"
        ) from exc


# --------------------------------------------------------------------------
# clasp segment
# --------------------------------------------------------------------------


def _show_progress(run, quiet):
    if run.get("progress") is not None:
        return run["progress"]
    if quiet:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _find_inputs(inputs, out_dir=None):
    """The images of the inputs, the output directory's tree left out (a UsageError if none)."""
    from .io import find_images

    try:
        found = find_images(inputs, exclude=out_dir)
    except FileNotFoundError as exc:
        raise UsageError(f"no images found: {exc}") from None
    if not found:
        raise UsageError(f"no images found in {', '.join(map(str, inputs))}")
    return found


def _dask_security(run):
    """A ``distributed.security.Security`` from the TLS options, or ``None``."""
    given = {k: run[k] for k in _TLS_FLAGS if run.get(k) is not None}
    if not given:
        return None
    if run.get("scheduler") is None:
        raise UsageError("--tls-ca-file/--tls-cert/--tls-key apply to a Dask cluster: add "
                         "--scheduler tls://HOST:PORT")
    if "tls_ca_file" not in given or "tls_cert" not in given:
        raise UsageError("TLS needs --tls-ca-file and --tls-cert (and --tls-key unless the "
                         "key is in the certificate file)")
    for key, path in given.items():
        if not Path(path).is_file():
            raise UsageError(f"{flag_of(key)} {path}: no such file")
    try:
        from distributed.security import Security
    except ImportError:
        raise UsageError("--tls-ca-file needs the Dask extra: pip install "
                         "'sklearn-clasp[dask]'") from None
    key = given.get("tls_key")
    return Security(tls_ca_file=str(given["tls_ca_file"]), tls_client_cert=str(given["tls_cert"]),
                    tls_client_key=None if key is None else str(key), require_encryption=True)


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


def _check_scheduler(address):
    """A usable ``--scheduler`` address, or a UsageError at once (no connect timeout)."""
    from .collection.engine import check_scheduler_address

    try:
        return check_scheduler_address(address)
    except (ImportError, ValueError, ConnectionError) as exc:
        raise UsageError(f"--{exc}") from None


def _segment(images, out_dir, run, pipeline, quiet):
    """Run segment_collection with the run options; returns the report."""
    from .collection import (
        OutputDirectoryInUseError,
        OutputNotSharedError,
        RunStoppedError,
        SettingsMismatchError,
        segment_collection,
    )
    from .collection.store import OutputStore

    security = _dask_security(run)
    if run.get("scheduler") is not None:
        run = {**run, "scheduler": _check_scheduler(run["scheduler"])}
        _hold_dask_logs()
    else:  # settings that cannot work here: exit 2, before anything is made
        _load_embedder(pipeline)
    try:  # before any work: the output directory must be writable (exit 2)
        OutputStore(Path(out_dir), run_id="check").prepare(who="--out-dir")
    except OSError as exc:
        raise UsageError(exc.strerror or str(exc)) from None
    kwargs = {k: run[k] for k in ("n_jobs", "scheduler", "overwrite", "max_attempts",
                                  "write_overlay", "chunk_size", "max_image_pixels")
              if k in run}
    from .io import DEFAULT_MAX_IMAGE_PIXELS

    with _pillow_limit(run.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS)):
        try:
            return segment_collection(images, out_dir, pipeline=pipeline, security=security,
                                      progress=_show_progress(run, quiet), **kwargs)
        except ConnectionError as exc:  # --scheduler unreachable or TLS refused
            raise UsageError(str(exc)) from None
        except (OutputDirectoryInUseError, OutputNotSharedError) as exc:
            raise UsageError(f"--out-dir: {exc.strerror or exc}") from None
        except SettingsMismatchError as exc:
            text = str(exc).replace("overwrite=True (clasp: --overwrite)", "--overwrite")
            raise UsageError(f"--out-dir: {text}") from None
        except RunStoppedError as exc:
            if not quiet:
                _echo(exc.report.summary())
            raise StoppedError(exc.reason) from None


def run_segment(args):
    """``clasp segment``; returns the exit status."""
    settings, run = _resolve(args)
    if run.get("out_dir") is None:
        raise UsageError("the output directory is required: --out-dir DIR (or --out DIR, or "
                         "out_dir = \"DIR\" in the config file)")
    if not str(run["out_dir"]).strip():
        raise UsageError("--out-dir '': the output directory is empty; give one ('.' for the "
                         "current directory)")
    out_dir = os.path.abspath(run["out_dir"])
    pipeline = build_pipeline(settings)
    inputs = run.get("inputs") or []
    if not inputs:
        from .data import sample_image_paths

        inputs = [str(p) for p in sample_image_paths()]
        logger.info("no INPUT given: segmenting the bundled sample images")
    report = _segment(_find_inputs(inputs, out_dir), out_dir, run, pipeline, args.quiet)
    if args.quiet:
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


def _fmt_classes(value):
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


_CSV_COLUMNS = ("name", "miou", "pixel_accuracy", "n_clusters", "n_classes", "miou_best",
                "pixel_accuracy_best", "covering", "covering_best", "voi", "voi_best",
                "n_annotators", "mask", "labels")
_CSV_FLOATS = ("miou", "pixel_accuracy", "miou_best", "pixel_accuracy_best", "covering",
               "covering_best", "voi", "voi_best")


def _evaluate_pairs(pairs, *, ignore_index, protocol):
    """Score (name, mask path, label path) triples; returns (rows, failures, dataset)."""
    from .io import read_label_file, read_mask
    from .metrics import SegmentationScoreAccumulator, score_prediction

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
            mask = read_mask(mask_path)
            truths = read_label_file(label_path)
            scores = score_prediction(truths, mask, ignore_index=ignore_index)
            if accumulator is not None:
                for truth in truths:
                    accumulator.add(truth, mask)
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


def _not_a_directory(path):
    """Why ``path``, which is not a directory, cannot be used as one."""
    return "exists but is not a directory" if os.path.lexists(path) else "no such directory"


def run_evaluate(args):
    """``clasp evaluate``; returns the exit status."""
    from .io import find_label_files, find_mask_files

    settings, run = _resolve(args)
    if args.masks is not None:  # nothing is segmented: a segmentation option does nothing
        names = ({s.name for s in pipeline_setting_specs()} | set(_special_specs())
                 | {s.name for s in run_setting_specs()})
        given = [k for k, v in vars(args).items() if v is not None and v is not False and (
            k in names or k.startswith("alias:"))]
        if given:
            key = given[0].split(":", 1)[1] if given[0].startswith("alias:") else given[0]
            raise UsageError(f"{flag_of(key)} has no effect with --masks, which scores masks "
                             f"already made; it applies with --images")
    labels_dir = args.labels
    if not labels_dir.is_dir():
        raise UsageError(f"--labels {labels_dir}: {_not_a_directory(labels_dir)}")
    labels = find_label_files(labels_dir)
    if not labels:
        raise UsageError(f"--labels {labels_dir}: no .png or .mat label files in it")
    failures = []
    with contextlib.ExitStack() as stack:
        if args.images is not None:
            if not args.images.is_dir():
                raise UsageError(f"--images {args.images}: {_not_a_directory(args.images)}")
            pipeline = build_pipeline(settings)
            out = run.get("out_dir")
            if out is None:
                out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="clasp-")))
            elif not str(out).strip():
                raise UsageError("--out-dir '': the output directory is empty; give one")
            out = Path(os.path.abspath(out))
            images = _find_inputs([str(args.images)], out)
            report = _segment(images, out, run, pipeline, args.quiet)
            masks = {}
            for result in report.results:
                if result["status"] == "failed":
                    failures.append({"name": Path(result["source"]).stem,
                                     "source": result["source"],
                                     "error": f"segmentation failed: {result['error']}"})
                    continue
                masks[Path(result["source"]).stem] = out / f"{result['name']}_mask.png"
            if not args.quiet:
                _echo(report.summary())
                print()
        else:
            if not args.masks.is_dir():
                raise UsageError(f"--masks {args.masks}: {_not_a_directory(args.masks)}")
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
                              per_image=not args.quiet)
    if args.quiet:
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
# clasp report
# --------------------------------------------------------------------------


def run_report(args):
    """``clasp report``; returns the exit status."""
    from .report import write_report

    if not args.out_dir.is_dir():
        raise UsageError(f"{args.out_dir}: {_not_a_directory(args.out_dir)} (the output "
                         f"directory of a run)")
    try:
        path = write_report(args.out_dir, path=args.html)
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if not args.quiet:
        print(f"report: {path}")
    return EXIT_OK

# --------------------------------------------------------------------------
# clasp weights
# --------------------------------------------------------------------------


def _size(n):
    if n is None:
        return "size unknown"
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def run_weights(args):
    """``clasp weights``; returns the exit status."""
    from .embedding import weights as W

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
    lines.append("(or give any file with --embed-weights PATH).")
    status = EXIT_OK
    if args.model is not None and args.model not in W.OFFICIAL_WEIGHTS:
        raise UsageError(f"--model {args.model!r}: must be one of "
                         f"{', '.join(W.OFFICIAL_WEIGHTS)}")
    models = [args.model] if args.model else list(W.OFFICIAL_WEIGHTS)
    for model in models:
        info = W.OFFICIAL_WEIGHTS[model]
        path = W.find_official_weights(model)
        note = " (default, the CLASP paper's)" if model == "dinov2_vits14_reg" else ""
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
        model = args.model or "dinov2_vits14_reg"
        try:
            # torch's progress bar on stderr (on a terminal), none with -q
            path, digest = W.resolve_weights(model, None, download=True,
                                             progress=False if args.quiet else None)
        except (W.WeightsUnavailableError, W.ChecksumMismatchError, OSError,
                ValueError) as exc:  # ValueError: no digest known to check a download
            raise EmbedderError(f"could not get the {model} weights: {exc}") from exc
        if not args.quiet:
            print(f"\n{model}: {path} (SHA-256 {digest}, verified)")
    return status

# --------------------------------------------------------------------------
# clasp explain
# --------------------------------------------------------------------------


def run_explain(args):
    """``clasp explain``; returns the exit status."""
    from .explain import check_figure_output, explain_figure

    settings, _ = _resolve(args)  # a shared config file: its run settings are ignored
    image = args.image
    if image.is_dir():
        raise UsageError(f"{image}: is a directory, not an image file; clasp explain explains "
                         f"one image (pass a file in it)")
    if not image.is_file():
        raise UsageError(f"{image}: no such image file")
    out = args.out if args.out is not None else Path(f"{image.stem}_explain.png")
    try:  # before the image is segmented
        check_figure_output(args.dpi, out)
    except ValueError as exc:
        text = str(exc)
        raise UsageError(f"--dpi {args.dpi}: {text.split(': ', 1)[1]}"
                         if text.startswith("dpi=") else f"--out {text}") from None
    pipeline = build_pipeline(settings)
    _load_embedder(pipeline)
    try:
        figure = explain_figure(image, pipeline, dpi=args.dpi)
    except (ValueError, OSError) as exc:  # a damaged, unreadable or too large image
        text = str(exc)
        _echo(f"error: {text if str(image) in text else f'{image}: {text}'}", sys.stderr)
        return EXIT_SOME_FAILED
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out)
    except OSError as exc:
        raise UsageError(f"cannot write the figure {out}: {exc.strerror or exc}") from None
    if not args.quiet:
        title = figure._suptitle  # Figure.get_suptitle() needs matplotlib >= 3.8
        print(title.get_text() if title is not None else "")
        print(f"figure: {out}")
    return EXIT_OK

# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


class _EscapingFormatter(logging.Formatter):
    """Log lines with characters stderr cannot encode (undecodable file names) escaped."""

    def format(self, record):
        encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
        return super().format(record).encode(encoding, "backslashreplace").decode(encoding)


def _only_critical(record):
    return record.levelno >= logging.CRITICAL


@contextlib.contextmanager
def _logging_to_stderr(level):
    """Send the package's log records to stderr at ``level`` while the command runs.

    Dask's own log handlers print tracebacks of what this command reports in
    one line (a lost scheduler, a refused connection): below ``-v`` they are
    held back meanwhile.
    """
    log = logging.getLogger("sklearn_clasp")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_EscapingFormatter("%(levelname)s %(name)s: %(message)s"))
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(level)
    try:
        with _dask_logs_held_back(level > logging.DEBUG):
            yield
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)


_HOLD_DASK_LOGS = []


@contextlib.contextmanager
def _dask_logs_held_back(enabled):
    """Meanwhile, :func:`_hold_dask_logs` filters Dask's log handlers (once imported)."""
    _HOLD_DASK_LOGS.append([] if enabled else None)
    try:
        yield
    finally:
        for h in _HOLD_DASK_LOGS.pop() or ():
            h.removeFilter(_only_critical)


def _hold_dask_logs():
    """Hold back Dask's log records but critical ones (call after importing Dask)."""
    held = _HOLD_DASK_LOGS[-1] if _HOLD_DASK_LOGS else None
    if held is None:
        return
    for name in ("distributed", "distributed.client", "distributed.worker", "tornado"):
        for h in logging.getLogger(name).handlers:
            if h not in held:
                h.addFilter(_only_critical)
                held.append(h)


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
        error (bad options or values beyond their bounds, unreadable config,
        no images found, an output directory that cannot be written, is in use
        or holds other settings, a bad or unreachable scheduler), 3 the
        embedder could not be loaded, 4 the run stopped early (a full disk,
        the Dask scheduler lost), 128 + N interrupted by signal N (130:
        SIGINT, Ctrl-C; 143: SIGTERM, which is handled like SIGINT while the
        command runs).

    Examples
    --------
    >>> main(["--version"])  # doctest: +ELLIPSIS
    clasp ...
    0
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    # only the command's own options are built ("": none, for --version and --help)
    parser = build_parser(command if command in COMMANDS else "")
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # said by the command's own parser, not by the top-level one
            getattr(args, "command_parser", parser).error(
                f"unrecognized arguments: {' '.join(extra)}")
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
            status = args.func(args)
            sys.stdout.flush()  # here, so that a reader gone away is a BrokenPipeError below
        except UsageError as exc:
            _echo(f"{PROG} {args.command}: error: {exc}", sys.stderr)
            return EXIT_USAGE
        except EmbedderError as exc:
            _echo(f"{PROG} {args.command}: error: {exc}", sys.stderr)
            return EXIT_EMBEDDER
        except StoppedError as exc:
            _echo(f"{PROG} {args.command}: error: {exc}", sys.stderr)
            return EXIT_STOPPED
        except BrokenPipeError:  # the reader went away (clasp segment ... | head)
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            stop.ignore()  # a second signal must not cut the clean-up short
            _echo(f"{PROG} {args.command}: interrupted ({signal.Signals(signum).name}); the "
                  f"outputs written are complete: run the same command again to finish",
                  sys.stderr)
            return 128 + int(signum)
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
