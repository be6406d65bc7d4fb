"""Make ``docs/figures/report.png``: the HTML report of a small real run.

Segments the bundled sample images, a few synthetic shape images and one
damaged file with the weights-free pipeline (``make_clasp_pipeline
("handcrafted", refine="nearest")``), draws the explain figure of one image,
writes the report with :func:`sklearn_clasp.report.write_report` and takes a
screenshot of it in headless Chromium (``apt-get install -y chromium``). The
screenshot is saved as a 256-colour PNG to keep the repository small. Run from
anywhere::

    python docs/figures/make_report_figure.py [--out PATH] [--keep DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:
    import sklearn_clasp  # noqa: F401
except ImportError:  # not installed: use the checkout this script lives in
    sys.path.insert(0, str(HERE.parents[1]))

from PIL import Image

from sklearn_clasp import make_clasp_pipeline, segment_collection
from sklearn_clasp.data import sample_image_paths
from sklearn_clasp.datasets import make_shapes_image
from sklearn_clasp.explain import explain_figure
from sklearn_clasp.report import write_report

logger = logging.getLogger("make_report_figure")


def make_run(root, *, random_state=0):
    """Write the inputs under ``root/photos`` and segment them into ``root/segmented``."""
    inputs = root / "photos"
    inputs.mkdir(parents=True)
    for path in sample_image_paths():
        shutil.copy(path, inputs / path.name)
    for i in range(4):
        image, _ = make_shapes_image(168, 224, n_shapes=1 + i % 3, noise=3.0, random_state=i)
        Image.fromarray(image).save(inputs / f"shapes_{i}.png")
    (inputs / "scan_0042.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    pipe = make_clasp_pipeline("handcrafted", refine="nearest", random_state=random_state)
    pipe[0].fit(None)
    out = root / "segmented"
    report = segment_collection(inputs, out, pipeline=pipe, max_attempts=1)
    logger.info("%s", report.summary())
    figure = explain_figure(inputs / "astronaut.jpg", pipe, dpi=60)
    figure.savefig(out / "astronaut_explain.png")
    return out


def screenshot(page, out, *, size=(1280, 1540)):
    """A screenshot of ``page`` in headless Chromium, saved as a palette PNG."""
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                     if shutil.which(n)), None)
    if chromium is None:
        raise SystemExit("no Chromium found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        shot = Path(profile) / "shot.png"
        command = [chromium, "--headless", "--disable-gpu", "--hide-scrollbars",
                   "--no-first-run", f"--user-data-dir={profile}",
                   "--virtual-time-budget=10000", f"--window-size={size[0]},{size[1]}",
                   f"--screenshot={shot}", page.as_uri()]
        if os.geteuid() == 0:
            command.append("--no-sandbox")
        subprocess.run(command, check=True, capture_output=True, timeout=120)
        with Image.open(shot) as im:
            small = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
            small.save(out, format="PNG", optimize=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "report.png")
    parser.add_argument("--keep", type=Path, default=None,
                        help="make the run in this (new) folder and keep it")
    args = parser.parse_args()
    args.out = args.out.resolve()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep if args.keep is not None else Path(tmp)
        out = make_run(root)
        here = os.getcwd()
        os.chdir(root)  # the page names the folder as it was given: "segmented"
        try:
            page = write_report(out.relative_to(root)).resolve()
        finally:
            os.chdir(here)
        screenshot(page, args.out)
    logger.info("wrote %s (%.0f KB)", args.out, args.out.stat().st_size / 1024)


if __name__ == "__main__":
    main()
