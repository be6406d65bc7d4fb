"""Make ``docs/figures/readme.png``: CLASP on the bundled sample images.

Runs the weights-free pipeline (``make_clasp_pipeline("handcrafted")``, CRF
refinement) on each sample image and stacks, one row per image, the input next
to the overlay of its refined mask. The figure is saved as a 256-colour PNG to
keep the repository small. Run from anywhere::

    python docs/figures/make_readme_figure.py [--out PATH]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
try:
    import sklearn_clasp  # noqa: F401
except ImportError:  # not installed: use the checkout this script lives in
    sys.path.insert(0, str(HERE.parents[1]))

from sklearn_clasp import make_clasp_pipeline
from sklearn_clasp.data import sample_image_paths
from sklearn_clasp.io import load_image
from sklearn_clasp.pipeline import clasp_one
from sklearn_clasp.visualize import overlay, side_by_side

logger = logging.getLogger("make_readme_figure")


def stack_rows(rows, pad=4):
    """Stack RGB images vertically, left-aligned on white, ``pad`` rows apart."""
    width = max(r.shape[1] for r in rows)
    height = sum(r.shape[0] for r in rows) + pad * (len(rows) - 1)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    y = 0
    for r in rows:
        canvas[y : y + r.shape[0], : r.shape[1]] = r
        y += r.shape[0] + pad
    return canvas


def save_small_png(path, rgb, colors=256):
    """Save an RGB figure as an optimised palette PNG (a third of the RGB size)."""
    from PIL import Image

    image = Image.fromarray(rgb).quantize(colors, method=Image.Quantize.MEDIANCUT)
    image.save(path, format="PNG", optimize=True)


def make_figure(out, *, random_state=0):
    pipe = make_clasp_pipeline("handcrafted", random_state=random_state)
    pipe[0].fit(None)
    rows = []
    for path in sample_image_paths():
        start = time.perf_counter()
        mask, record = clasp_one(pipe, path)
        logger.info("%s: grid %s, K=%d (eigengap %d), %d segments in the mask, %.2f s",
                    path.name, record.grid_shape, record.info["n_clusters"],
                    record.info["eigengap_k"], np.unique(mask).size,
                    time.perf_counter() - start)
        image = load_image(path)
        rows.append(side_by_side(image, overlay(image, mask)))
    figure = stack_rows(rows)
    save_small_png(out, figure)
    return figure


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "readme.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    figure = make_figure(args.out, random_state=args.seed)
    logger.info("wrote %s (%dx%d px, %.0f KB)", args.out, figure.shape[1], figure.shape[0],
                args.out.stat().st_size / 1024)


if __name__ == "__main__":
    main()
