"""What the refinement stage buys: upsampling ground truth coarsened to the patch grid.

The segmenter labels one 14 x 14 patch at a time. To measure the refinement
stage alone, free of any segmentation error, the ground truth itself is
coarsened to the patch grid (each patch takes the majority label of its
scored pixels; patches with none take the nearest patch's label) and then
brought back to full resolution by

* nearest upsampling (the paper's patch-based variant),
* bilinear upsampling of the one-hot maps,
* DenseCRF on the nearest upsampling: the paper's settings (20 iterations)
  and fewer iterations (10, 5, 1),

and scored against the full-resolution truth. Whatever nearest upsampling
loses is the cost of the patch grid; what the CRF wins back is what it buys.

Two grids: the paper's (each image at its own size, rounded to multiples of
14, so a patch is about 14 x 14 image pixels: ``short_side=None``) and the
package default (the short side scaled to 448 pixels, 32 patches on the
short side). CamVid val is scored against its 11 classes (class 11 ignored),
BSDS500 val against its first human segmentation. The coarse labels are
class ids, the same in every image, so the dataset-level protocol needs no
clustering step here.

Run:  python benchmarks/bench_refine.py [--datasets camvid bsds500] [--limit N]
      [--grids paper 448] [--figures]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import SHARED, bsds500, camvid  # noqa: E402

from sklearn_clasp.io import load_image
from sklearn_clasp.embedding import patch_grid_shape  # noqa: E402
from sklearn_clasp.metrics import (  # noqa: E402
    SegmentationScoreAccumulator,
    segmentation_covering,
    segmentation_scores,
    variation_of_information,
)
from sklearn_clasp.refine import dense_crf, upsample_labels  # noqa: E402

GRIDS = {"paper": None, "448": 448}
CRF_ITERS = (20, 10, 5, 1)
FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"
NAMES = {"camvid": "CamVid val", "bsds500": "BSDS500 val"}


def coarsen(truth, grid):
    """Majority label of the scored pixels of every patch, shape ``grid``.

    A pixel ``(y, x)`` belongs to patch ``(y * h // H, x * w // W)``, the same
    cells as ``upsample_labels(..., method="nearest")``. Negative truth is not
    counted; a patch without scored pixels takes its nearest patch's label.
    """
    H, W = truth.shape
    h, w = grid
    rows = (np.arange(H) * h) // H
    cols = (np.arange(W) * w) // W
    cell = (rows[:, None] * w + cols[None, :]).ravel()
    t = truth.ravel()
    valid = t >= 0
    n_cls = int(t.max()) + 1
    votes = np.bincount(cell[valid] * n_cls + t[valid], minlength=h * w * n_cls)
    votes = votes.reshape(h * w, n_cls)
    labels = votes.argmax(1).reshape(h, w)
    empty = (votes.sum(1) == 0).reshape(h, w)
    if empty.all():
        raise ValueError("no scored pixel in the image")
    if empty.any():
        idx = ndimage.distance_transform_edt(empty, return_distances=False,
                                             return_indices=True)
        labels = labels[idx[0], idx[1]]
    return labels


def variants(image, coarse, shape):
    """name -> (mask, seconds)."""
    out = {}
    t0 = time.perf_counter()
    nearest = upsample_labels(coarse, shape)
    out["nearest"] = (nearest, time.perf_counter() - t0)
    t0 = time.perf_counter()
    out["bilinear"] = (upsample_labels(coarse, shape, method="bilinear"),
                       time.perf_counter() - t0)
    for n_iter in CRF_ITERS:
        t0 = time.perf_counter()
        mask = dense_crf(image, nearest, n_iter=n_iter)
        label = f"DenseCRF, {n_iter} iter." + (" (paper)" if n_iter == 20 else "")
        out[label] = (mask, time.perf_counter() - t0)
    return out


def run(kind, data, grids):
    n_classes = 11 if kind == "camvid" else None
    results = {}
    for item in data.items:
        name, image_path, truth_path = item
        image = load_image(image_path)
        truth = data.read_truth(truth_path)
        if kind == "bsds500":
            truth = truth[0] - truth[0].min()  # first human; regions 0..
        for grid_name in grids:
            grid = patch_grid_shape(*truth.shape, short_side=GRIDS[grid_name])
            coarse = coarsen(truth, grid)
            for variant, (mask, seconds) in variants(image, coarse, truth.shape).items():
                entry = results.setdefault((grid_name, variant), {
                    "rows": [], "seconds": [], "grid": [],
                    "acc": SegmentationScoreAccumulator(
                        "dataset", n_classes=n_classes) if n_classes else None,
                })
                s = segmentation_scores(mask, truth)
                row = {"miou": s["miou"], "pixel_accuracy": s["pixel_accuracy"]}
                if kind == "bsds500":
                    row["covering"] = segmentation_covering(mask, truth)
                    row["voi"] = variation_of_information(mask, truth)
                else:
                    entry["acc"].update(mask, truth)
                entry["rows"].append(row)
                entry["seconds"].append(seconds)
                entry["grid"].append(grid)
    return results


def report(kind, results):
    summary = {}
    if kind == "camvid":
        print("\n| grid | upsampling | mIoU per-image | pix. acc. per-image | mIoU dataset "
              "| pix. acc. dataset | s/image |")
        print("|---|---|---|---|---|---|---|")
    else:
        print("\n| grid | upsampling | covering | VoI (bits) | mIoU per-image | "
              "pix. acc. per-image | s/image |")
        print("|---|---|---|---|---|---|---|")
    for (grid_name, variant), entry in results.items():
        rows = entry["rows"]
        mean = {m: float(np.mean([r[m] for r in rows])) for m in rows[0]}
        seconds = float(np.mean(entry["seconds"]))
        h = np.median([g[0] for g in entry["grid"]])
        w = np.median([g[1] for g in entry["grid"]])
        grid_label = f"{grid_name} (median {h:g}x{w:g})"
        if kind == "camvid":
            ds = entry["acc"].result()
            mean["dataset_miou"], mean["dataset_pixel_accuracy"] = ds["miou"], ds[
                "pixel_accuracy"]
            print(f"| {grid_label} | {variant} | {mean['miou']:.3f} | "
                  f"{mean['pixel_accuracy']:.3f} | {ds['miou']:.3f} | "
                  f"{ds['pixel_accuracy']:.3f} | {seconds:.3f} |")
        else:
            print(f"| {grid_label} | {variant} | {mean['covering']:.3f} | "
                  f"{mean['voi']:.3f} | {mean['miou']:.3f} | {mean['pixel_accuracy']:.3f} "
                  f"| {seconds:.3f} |")
        summary[(grid_name, variant)] = mean
    return summary


def figure(summaries, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summaries), figsize=(5.5 * len(summaries), 3.4),
                             squeeze=False)
    for ax, (kind, summary) in zip(axes[0], summaries.items()):
        grids = sorted({g for g, _ in summary}, key=list(GRIDS).index)
        names = [v for g, v in summary if g == grids[0]]
        x = np.arange(len(names))
        width = 0.8 / len(grids)
        for j, g in enumerate(grids):
            ax.bar(x + (j - (len(grids) - 1) / 2) * width,
                   [summary[(g, v)]["miou"] for v in names], width, label=f"{g} grid")
        ax.set_xticks(x)
        ax.set_xticklabels([n.replace(" (paper)", "\n(paper)").replace("DenseCRF, ", "CRF ")
                            for n in names], fontsize=8)
        lo = min(v["miou"] for v in summary.values())
        ax.set_ylim(max(0.0, lo - 0.05), 1.0)
        ax.set_ylabel("per-image mIoU vs full-res truth")
        ax.set_title(f"{NAMES[kind]}: truth coarsened to the patch grid")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"figure written to {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=["camvid", "bsds500"],
                        default=["camvid", "bsds500"])
    parser.add_argument("--grids", nargs="+", choices=list(GRIDS), default=list(GRIDS))
    parser.add_argument("--limit", type=int, default=None, help="first N images of each")
    parser.add_argument("--figures", action="store_true",
                        help="write docs/figures/quality_refinement.png")
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        print(f"{SHARED} not found: nothing to measure.")
        return None
    summaries = {}
    for kind in args.datasets:
        data = camvid(limit=args.limit) if kind == "camvid" else bsds500(limit=args.limit)
        what = "11 classes" if kind == "camvid" else "the first human segmentation"
        print(f"\n## {data.name}: {len(data.items)} images, against {what}")
        t0 = time.perf_counter()
        summaries[kind] = report(kind, run(kind, data, args.grids))
        print(f"\n({time.perf_counter() - t0:.0f} s)")
    if args.figures:
        FIGURES.mkdir(parents=True, exist_ok=True)
        figure(summaries, FIGURES / "quality_refinement.png")
    return summaries


if __name__ == "__main__":
    main()
