"""How much the pipeline's cache stores: each thing once, not every step's output.

Segments the first ``--limit`` CamVid val images with one setting, then
searches three more ``segment__k_max`` values, and prints the size of the cache
directory after each:

* ``make_clasp_pipeline(memory=DIR)``: the embedder's feature cache, the
  features of each image once (for ``"handcrafted"`` and for ``"dinov2"``;
  random weights cost the same bytes as the real ones);
* for comparison, scikit-learn's ``Pipeline(steps, memory=DIR)``, which
  pickles every fitted step with its output (image, features, dense
  affinity, segmented records) for every setting of the later steps.

    python benchmarks/bench_cache.py --limit 10
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import SHARED, camvid  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402

from sklearn_clasp import make_clasp_pipeline  # noqa: E402
from sklearn_clasp.io import load_image  # noqa: E402

K_MAX = (15, 5, 8, 12)


def _mb(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6


def feature_cache(embedder, images, **kw):
    sizes = []
    with tempfile.TemporaryDirectory() as tmp:
        pipe = make_clasp_pipeline(embedder, random_state=0, memory=tmp,
                                   refine="nearest", **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # random weights
            pipe.fit()
        for k in K_MAX:
            pipe.set_params(segment__k_max=k).predict(images)
            sizes.append(_mb(tmp))
    return sizes


def step_cache(images):
    """scikit-learn's Pipeline memory over the same steps (every step's output)."""
    sizes = []
    with tempfile.TemporaryDirectory() as tmp:
        steps = make_clasp_pipeline("handcrafted", random_state=0, refine="nearest").steps
        pipe = Pipeline(steps, memory=tmp)
        for k in K_MAX:
            pipe.set_params(segment__k_max=k).fit(images)
            sizes.append(_mb(tmp))
    return sizes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=10)
    args = ap.parse_args(argv)
    if not (SHARED / "camvid").is_dir():
        sys.exit(f"no data at {SHARED}; see ../shared/README.md")
    data = camvid(limit=args.limit)
    images = [load_image(p) for _, p, _ in data.items]
    pixels = sum(im.nbytes for im in images) / 1e6
    print(f"{len(images)} CamVid val images, {pixels:.1f} MB of pixels; cache size (MB) "
          f"after segment__k_max = {', '.join(map(str, K_MAX))} in turn:")
    rows = {
        "make_clasp_pipeline('handcrafted', memory=DIR)": feature_cache("handcrafted", images),
        "make_clasp_pipeline('dinov2', memory=DIR)": feature_cache(
            "dinov2", images, weights="random", download=False),
        "Pipeline(handcrafted steps, memory=DIR)": step_cache(images),
    }
    for name, sizes in rows.items():
        print(f"  {name:48s}" + "".join(f"{s:9.1f}" for s in sizes))


if __name__ == "__main__":
    main()
