"""Command line: ``python -m sklearn_clasp segment [INPUT ...] --out DIR``.

Segments images with the CLASP pipeline, one at a time, and writes for each
image ``<stem>_mask.png`` (the integer mask at full size), ``<stem>_overlay.png``
(coloured segments and boundaries over the image) and ``<stem>.json``
(diagnostics and settings). With no INPUT the bundled sample images are used.

Exit status: 0 when every image was segmented, 1 when some failed (each
failure is reported on stderr with the image's name and the reason; the other
images still run), 2 on usage errors.

This module is thin on purpose: the work is done by
:func:`sklearn_clasp.pipeline.make_clasp_pipeline` and
:func:`sklearn_clasp.pipeline.segment_image`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("sklearn_clasp.cli")

#: File suffixes taken as images when an INPUT is a directory.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm")

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


class _UsageError(Exception):
    """A problem with the command line or its inputs (exit status 2)."""


def _short_side(text):
    if text.lower() in ("none", "0"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'none', got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'none', got {text!r}")
    return value


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def build_parser():
    """The argument parser of ``python -m sklearn_clasp``."""
    parser = argparse.ArgumentParser(
        prog="python -m sklearn_clasp",
        description="Training-free image segmentation with CLASP (DINOv2 patch features, "
                    "adaptive spectral clustering, DenseCRF).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    seg = commands.add_parser(
        "segment",
        help="segment images and write masks, overlays and JSON diagnostics",
        description="Segment images one at a time. For each image write <stem>_mask.png "
                    "(integer mask, full size), <stem>_overlay.png and <stem>.json into "
                    "--out. With no INPUT, segment the bundled sample images. Exit status: "
                    "0 all succeeded, 1 some failed, 2 usage error.",
    )
    seg.add_argument("inputs", nargs="*", metavar="INPUT",
                     help="image files or directories (their images, not recursive)")
    seg.add_argument("--out", required=True, type=Path, metavar="DIR",
                     help="output directory (created if missing)")
    seg.add_argument("--embedder", choices=("dinov2", "handcrafted"), default="dinov2",
                     help="patch features: DINOv2 ViT-S/14-reg (default) or the "
                          "weights-free handcrafted baseline")
    seg.add_argument("--k-min", type=_positive_int, default=2, help="smallest K (default 2)")
    seg.add_argument("--k-max", type=_positive_int, default=15, help="largest K (default 15)")
    seg.add_argument("--beta", type=_non_negative_float, default=0.5,
                     help="relative width of the K search around the eigengap (default 0.5)")
    seg.add_argument("--no-crf", action="store_true",
                     help="skip the DenseCRF; upsample the patch labels (nearest) instead")
    seg.add_argument("--paper", action="store_true",
                     help="the CLASP paper's K selection (PAPER_SETTINGS)")
    seg.add_argument("--short-side", type=_short_side, default=448, metavar="N",
                     help="scale the shorter image side to N pixels before embedding "
                          "(default 448; 'none' keeps the image size)")
    seg.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    seg.add_argument("--weights", default=None, metavar="PATH",
                     help="DINOv2 checkpoint file, or 'random' (default: the official "
                          "weights, from $SKLEARN_CLASP_WEIGHTS, the torch hub cache, or a "
                          "download)")
    seg.add_argument("--device", default="cpu",
                     help="DINOv2 device: cpu, cuda, cuda:N or auto (default cpu)")
    verbosity = seg.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    return parser


def collect_inputs(inputs):
    """Expand INPUT arguments into a list of image paths.

    Directories contribute their files with an image suffix (sorted, not
    recursive); files are taken as given, so a missing or unreadable file is
    reported when it is segmented. No INPUT means the bundled samples.
    """
    if not inputs:
        from .data import sample_image_paths

        return sample_image_paths()
    paths = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                logger.warning("%s: no image files (%s) in this directory", path,
                               ", ".join(IMAGE_SUFFIXES))
            paths.extend(found)
        else:
            paths.append(path)
    if not paths:
        raise _UsageError("no images to segment: the given directories contain no image files")
    return paths


def _output_stems(paths):
    """Unique output names: the file stem, made unique with a counter if needed."""
    stems, seen = [], {}
    for path in paths:
        stem = path.stem or "image"
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        stems.append(stem if n == 0 else f"{stem}_{n}")
    return stems


def _jsonable(value):
    """Convert numpy values (and NaN) into plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _make_pipeline(args):
    from .pipeline import make_clasp_pipeline

    embedder_params = {"short_side": args.short_side}
    if args.embedder == "dinov2":
        embedder_params.update(weights=args.weights, device=args.device)
    return make_clasp_pipeline(
        args.embedder,
        k_min=args.k_min,
        k_max=args.k_max,
        beta=args.beta,
        refine="nearest" if args.no_crf else "crf",
        paper=args.paper,
        random_state=args.seed,
        **embedder_params,
    )


def _settings(args):
    return {
        "embedder": args.embedder,
        "k_min": args.k_min,
        "k_max": args.k_max,
        "beta": args.beta,
        "refine": "nearest" if args.no_crf else "crf",
        "paper": args.paper,
        "short_side": args.short_side,
        "seed": args.seed,
        "weights": args.weights,
        "device": args.device if args.embedder == "dinov2" else None,
    }


def _segment_one(pipe, path, stem, out_dir, settings):
    """Segment one image and write its three files; return its summary dict."""
    from .pipeline import segment_image
    from .visualize import overlay, save_png

    start = time.perf_counter()
    record, mask = segment_image(pipe, path)
    seconds = time.perf_counter() - start
    info = record.info
    height, width = record.image.shape[:2]
    summary = {
        "source": str(path),
        "image_size": [int(height), int(width)],
        "grid_shape": [int(v) for v in record.grid_shape],
        "n_clusters": int(info["n_clusters"]),
        "n_segments": int(np.unique(mask).size),
        "eigengap_k": info.get("eigengap_k"),
        "silhouette": info.get("silhouette"),
        "silhouette_scores": info.get("silhouette_scores", {}),
        "eigenvalues": info.get("eigenvalues"),
        "second_eigenvalue": info.get("second_eigenvalue"),
        "single_segment": info.get("single_segment"),
        "seconds": round(seconds, 3),
        "settings": settings,
        "outputs": {
            "mask": f"{stem}_mask.png",
            "overlay": f"{stem}_overlay.png",
        },
    }
    save_png(out_dir / f"{stem}_mask.png", mask)
    save_png(out_dir / f"{stem}_overlay.png", overlay(record.image, mask))
    with open(out_dir / f"{stem}.json", "w", encoding="utf-8") as fh:
        json.dump(_jsonable(summary), fh, indent=2)
        fh.write("\n")
    return summary


def run_segment(args):
    """The ``segment`` command; returns the exit status."""
    if args.k_min > args.k_max:
        raise _UsageError(f"--k-min {args.k_min} is larger than --k-max {args.k_max}")
    if args.embedder != "dinov2" and args.weights is not None:
        raise _UsageError("--weights only applies to --embedder dinov2")
    paths = collect_inputs(args.inputs)
    out_dir = args.out
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _UsageError(f"cannot create the output directory {out_dir}: {exc}") from exc

    pipe = _make_pipeline(args)
    logger.info("loading the %s embedder", args.embedder)
    try:
        pipe[0].fit(None)
    except Exception as exc:
        print(f"error: could not set up the {args.embedder} embedder: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_SOME_FAILED
    settings = _settings(args)

    lines, n_failed = [], 0
    total_start = time.perf_counter()
    for i, (path, stem) in enumerate(zip(paths, _output_stems(paths)), start=1):
        logger.info("[%d/%d] %s", i, len(paths), path)
        try:
            s = _segment_one(pipe, path, stem, out_dir, settings)
        except Exception as exc:  # one bad image must not stop the others
            reason = f"{type(exc).__name__}: {exc}"
            n_failed += 1
            print(f"error: {path}: {reason}", file=sys.stderr)
            logger.debug("traceback for %s", path, exc_info=True)
            lines.append(f"{path}: FAILED ({reason})")
            continue
        logger.info("%s: K=%d in %.2f s", path, s["n_clusters"], s["seconds"])
        lines.append(
            f"{path}: {s['image_size'][0]}x{s['image_size'][1]} px, grid "
            f"{s['grid_shape'][0]}x{s['grid_shape'][1]}, K={s['n_clusters']} (eigengap "
            f"{s['eigengap_k']}), {s['n_segments']} segment(s) in the mask, "
            f"{s['seconds']:.2f} s -> {out_dir / stem}_mask.png"
        )
    total = time.perf_counter() - total_start
    for line in lines:
        print(line)
    print(f"total: {len(paths) - n_failed} of {len(paths)} image(s) segmented, {n_failed} "
          f"failed, {total:.2f} s")
    return EXIT_SOME_FAILED if n_failed else EXIT_OK


def main(argv=None):
    """Run the command line; returns the exit status (0, 1 or 2).

    Parameters
    ----------
    argv : list of str, default=None
        Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns
    -------
    status : int
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on errors, 0 for --help
        return int(exc.code or 0)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run_segment(args)
    except _UsageError as exc:
        print(f"{parser.prog} segment: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
