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
* optionally (``--unary soft``) DenseCRF on soft unaries: each patch's class
  fractions, upsampled bilinearly,

and scored against the full-resolution truth. Whatever nearest upsampling
loses is the cost of the patch grid; what the CRF wins back is what it buys.

Two grids: the paper's (each image at its own size, rounded to multiples of
14, so a patch is about 14 x 14 image pixels: ``short_side=None``) and the
package default (the short side scaled to 448 pixels, 32 patches on the
short side). CamVid val is scored against its 11 classes (class 11 ignored),
BSDS500 val against its first human segmentation. The coarse labels are
class ids, the same in every image, so the dataset-level protocol needs no
clustering step here.

With ``--backend pydensecrf torch`` every CRF runs with both backends; their
quality rows are printed side by side, followed by the agreement of the
torch backend's masks with pydensecrf's (fraction of equal pixels, min and
mean over the images) and both backends' time per image.

With ``--segmentations`` it runs the protocol of ``refine_protocol.md``
instead: the segmenter's own segmentations (weights-free embedder, package
defaults) of one half of CamVid val and BSDS500 val, refined by each of the
protocol's candidates (nearest, bilinear, hard- and soft-unary CRFs), scored
against the truth, and the same candidates on the truth coarsened to the
segmenter's grid; ``--summarize`` applies the protocol's decision rule to the
JSON files written by ``--out``.

Run:  python benchmarks/bench_refine.py [--datasets camvid bsds500] [--limit N]
      [--grids paper 448] [--iters 20 10 5 1] [--unary hard soft]
      [--backend pydensecrf torch] [--device auto] [--torch-threads N]
      [--figures]
      python benchmarks/bench_refine.py --segmentations --half choose --n-jobs 2 \
          --out choose.json
      python benchmarks/bench_refine.py --summarize choose.json confirm.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import SHARED, bsds500, camvid, protocol_halves  # noqa: E402

from sklearn_clasp.io import load_image
from sklearn_clasp.embedding import patch_grid_shape  # noqa: E402
from sklearn_clasp.metrics import (  # noqa: E402
    SegmentationScoreAccumulator,
    segmentation_covering,
    segmentation_scores,
    variation_of_information,
)
from sklearn_clasp.refine import (  # noqa: E402
    dense_crf,
    refine_labels,
    upsample_labels,
    upsample_proba,
)

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
    return _coarsen(truth, grid)[0]


def coarsen_proba(truth, grid):
    """The class fractions of every patch, as soft labels.

    Returns ``(classes, labels, proba)``: the classes present (sorted), the
    patch labels as indices into them (the majority of :func:`coarsen`) and
    the fraction of each class among each patch's scored pixels, shape
    ``(h, w, len(classes))``; a patch without scored pixels is sure of its
    nearest patch's label.
    """
    labels, votes = _coarsen(truth, grid)
    classes = np.flatnonzero(votes.sum(0) > 0)
    votes = votes[:, classes].astype(np.float64)
    index = np.searchsorted(classes, labels)
    counts = votes.sum(1, keepdims=True)
    onehot = np.eye(classes.size)[index.ravel()]
    proba = np.where(counts > 0, votes / np.maximum(counts, 1), onehot)
    return classes, index, proba.reshape(*grid, classes.size).astype(np.float32)


def _coarsen(truth, grid):
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
    return labels, votes


def variants(image, truth, grid, opts):
    """name -> (mask, seconds), and the backends' masks of each CRF run.

    The second dict maps ``(unary, n_iter)`` to ``{backend: (mask, seconds)}``.
    """
    shape = truth.shape
    coarse = coarsen(truth, grid)
    out, runs = {}, {}
    t0 = time.perf_counter()
    nearest = upsample_labels(coarse, shape)
    out["nearest"] = (nearest, time.perf_counter() - t0)
    t0 = time.perf_counter()
    out["bilinear"] = (upsample_labels(coarse, shape, method="bilinear"),
                       time.perf_counter() - t0)
    if "soft" in opts.unary:
        classes, _, proba = coarsen_proba(truth, grid)
    for unary in opts.unary:
        for n_iter in opts.iters:
            for backend in opts.backend:
                kw = dict(n_iter=n_iter, backend=backend, device=opts.device)
                t0 = time.perf_counter()
                if unary == "hard":
                    mask = dense_crf(image, nearest, **kw)
                else:
                    pixel_proba = upsample_proba(proba, shape)
                    mask = classes[dense_crf(image, proba=pixel_proba, **kw)]
                seconds = time.perf_counter() - t0
                label = (f"DenseCRF{' soft' if unary == 'soft' else ''}, {n_iter} iter."
                         + (" (paper)" if n_iter == 20 and unary == "hard" else "")
                         + (f" [{backend}]" if len(opts.backend) > 1 else ""))
                out[label] = (mask, seconds)
                runs.setdefault((unary, n_iter), {})[backend] = (mask, seconds)
    return out, runs


def run(kind, data, opts):
    n_classes = 11 if kind == "camvid" else None
    results, agreement = {}, {}
    for item in data.items:
        name, image_path, truth_path = item
        image = load_image(image_path)
        truth = data.read_truth(truth_path)
        if kind == "bsds500":
            truth = truth[0] - truth[0].min()  # first human; regions 0..
        for grid_name in opts.grids:
            grid = patch_grid_shape(*truth.shape, short_side=GRIDS[grid_name])
            masks, runs = variants(image, truth, grid, opts)
            for variant, (mask, seconds) in masks.items():
                entry = results.setdefault((grid_name, variant), {
                    "rows": [], "seconds": [], "grid": [],
                    "acc": SegmentationScoreAccumulator(
                        "dataset", n_classes=n_classes) if n_classes else None,
                })
                s = segmentation_scores(truth, mask)
                row = {"miou": s["miou"], "pixel_accuracy": s["pixel_accuracy"]}
                if kind == "bsds500":
                    row["covering"] = segmentation_covering(truth, mask)
                    row["voi"] = variation_of_information(truth, mask)
                else:
                    entry["acc"].add(truth, mask)
                entry["rows"].append(row)
                entry["seconds"].append(seconds)
                entry["grid"].append(grid)
            for (unary, n_iter), by_backend in runs.items():
                ref_mask, ref_seconds = by_backend[opts.backend[0]]
                for backend, (mask, seconds) in list(by_backend.items())[1:]:
                    a = agreement.setdefault((grid_name, unary, n_iter, backend), {
                        "agree": [], "seconds": [], "ref_seconds": [], "differ": 0,
                        "pixels": 0})
                    a["agree"].append(float((mask == ref_mask).mean()))
                    a["differ"] += int((mask != ref_mask).sum())
                    a["pixels"] += mask.size
                    a["seconds"].append(seconds)
                    a["ref_seconds"].append(ref_seconds)
    return results, agreement


def report_agreement(agreement, ref_backend):
    """Each other backend's agreement with the first one, and their times."""
    print(f"\nAgreement with {ref_backend} (fraction of equal pixels per image) and "
          f"time per image:\n")
    print(f"| grid | CRF | backend | agreement min | agreement mean | images >= 0.99 "
          f"| pixels differing | s/image | {ref_backend} s/image |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (grid_name, unary, n_iter, backend), a in agreement.items():
        agree = np.array(a["agree"])
        print(f"| {grid_name} | {unary}, {n_iter} iter. | {backend} | {agree.min():.5f} "
              f"| {agree.mean():.5f} | {int((agree >= 0.99).sum())}/{agree.size} "
              f"| {a['differ']} of {a['pixels']} | {np.mean(a['seconds']):.3f} "
              f"| {np.mean(a['ref_seconds']):.3f} |")


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


# --------------------------------------------------------------------------
# the protocol of refine_protocol.md: the segmenter's own segmentations
# --------------------------------------------------------------------------

#: The protocol's candidates: name -> refine_labels keywords.
CANDIDATES = {
    "nearest": dict(method="nearest"),
    "bilinear": dict(method="bilinear"),
    "hard 20": dict(method="crf", unary="hard", n_iter=20),
    "hard 10": dict(method="crf", unary="hard", n_iter=10),
    "hard 5": dict(method="crf", unary="hard", n_iter=5),
    "soft 20": dict(method="crf", unary="soft", n_iter=20),
    "soft 10": dict(method="crf", unary="soft", n_iter=10),
    "soft 5": dict(method="crf", unary="soft", n_iter=5),
    "soft 10, t = 4": dict(method="crf", unary="soft", n_iter=10, temperature=4.0),
    "soft 5, t = 4": dict(method="crf", unary="soft", n_iter=5, temperature=4.0),
}
BASELINE = "hard 20"


def _score(tag, mask, truth):
    """CamVid: mIoU and pixel accuracy; BSDS500 (a list of humans): covering, VoI."""
    if tag == "camvid":
        s = segmentation_scores(truth, mask)
        return {"miou": float(s["miou"]), "pixel_accuracy": float(s["pixel_accuracy"])}
    return {"covering": float(np.mean([segmentation_covering(g, mask) for g in truth])),
            "voi": float(np.mean([variation_of_information(g, mask) for g in truth]))}


def protocol_image(tag, item, read_truth):
    """Every candidate on one image: its segmentation and its coarsened truth."""
    from sklearn_clasp.pipeline import make_clasp_pipeline

    name, image_path, truth_path = item
    image = load_image(image_path)
    truth = read_truth(truth_path)
    pipe = make_clasp_pipeline("handcrafted", random_state=0)
    t0 = time.perf_counter()
    (rec,) = pipe[:-1].fit_transform([image])
    out = {"name": name, "segment_s": time.perf_counter() - t0,
           "k": int(rec.info["n_clusters"]), "real": {}, "coarse": {}, "seconds": {}}
    for cand, kw in CANDIDATES.items():
        t0 = time.perf_counter()
        mask = refine_labels(image, rec.labels, proba=rec.proba, **kw)
        out["seconds"][cand] = time.perf_counter() - t0
        out["real"][cand] = _score(tag, mask, truth)
    # the coarsened truth on the segmenter's grid (BSDS500: the first human)
    first = truth if tag == "camvid" else truth[0] - truth[0].min()
    classes, index, fractions = coarsen_proba(first, rec.grid_shape)
    for cand, kw in CANDIDATES.items():
        mask = classes[refine_labels(image, index, proba=fractions, **kw)]
        s = _score(tag, mask, first if tag == "camvid" else [first])
        out["coarse"][cand] = s
    return out


def run_protocol(half, n_jobs, limit, partial=None):
    """Every image of one half; with ``partial`` (a JSON-lines file) each image's
    row is appended as it is done, and rows already there are not redone."""
    import json

    from joblib import Parallel, delayed

    done = {}
    if partial is not None and Path(partial).is_file():
        for line in Path(partial).read_text().splitlines():
            row = json.loads(line)
            done[(row["dataset"], row["name"])] = row

    def one(tag, item, read_truth):
        row = dict(protocol_image(tag, item, read_truth), dataset=tag)
        if partial is not None:
            with open(partial, "a") as f:
                f.write(json.dumps(row) + "\n")
        return row

    results = {}
    for (tag, h), (ds, items) in protocol_halves().items():
        if h != half:
            continue
        items = items if limit is None else items[:limit]
        todo = [it for it in items if (tag, it[0]) not in done]
        t0 = time.perf_counter()
        Parallel(n_jobs=n_jobs)(delayed(one)(tag, item, ds.read_truth) for item in todo)
        if partial is not None:
            for line in Path(partial).read_text().splitlines():
                row = json.loads(line)
                done[(row["dataset"], row["name"])] = row
        print(f"{tag} {half}: {len(todo)} images in {time.perf_counter() - t0:.0f} s "
              f"({len(items) - len(todo)} done before)", flush=True)
        results[tag] = [done[(tag, it[0])] for it in items]
    return results


def _means(rows, part, key):
    return {c: float(np.mean([r[part][c][key] for r in rows])) for c in CANDIDATES}


def summarize_protocol(paths):
    """Tables for each half, and the protocol's decision on the choosing half."""
    import json

    halves = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        halves[data["half"]] = data["results"]
    summary = {}
    for half, results in halves.items():
        cam, bsd = results.get("camvid", []), results.get("bsds500", [])
        table = {
            "C": _means(cam, "real", "miou"), "acc": _means(cam, "real", "pixel_accuracy"),
            "B": _means(bsd, "real", "covering"), "voi": _means(bsd, "real", "voi"),
            "C*": _means(cam, "coarse", "miou"), "B*": _means(bsd, "coarse", "covering"),
            "s": {c: float(np.mean([r["seconds"][c] for r in cam + bsd])) for c in CANDIDATES},
        }
        summary[half] = table
        print(f"\n### {half} half: CamVid {len(cam)} images, BSDS500 {len(bsd)} images\n")
        print("| candidate | CamVid mIoU (C) | dC | CamVid pix. acc. | BSDS500 covering (B) "
              "| dB | BSDS500 VoI | coarsened CamVid mIoU (C*) | coarsened BSDS500 "
              "covering (B*) | s/image |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for c in CANDIDATES:
            dc = table["C"][c] - table["C"][BASELINE]
            db = table["B"][c] - table["B"][BASELINE]
            print(f"| {c} | {table['C'][c]:.4f} | {dc:+.4f} | {table['acc'][c]:.3f} "
                  f"| {table['B'][c]:.4f} | {db:+.4f} | {table['voi'][c]:.3f} "
                  f"| {table['C*'][c]:.4f} | {table['B*'][c]:.4f} | {table['s'][c]:.3f} |")
    if "choose" not in summary:
        return summary
    t = summary["choose"]
    print("\nDecision (choosing half): eligible = dC > 0 and dB > 0 and C* >= C*(hard 20) "
          "and B* >= B*(hard 20); M = min(dC, dB)\n")
    eligible = {}
    for c in CANDIDATES:
        if c == BASELINE:
            continue
        dc = t["C"][c] - t["C"][BASELINE]
        db = t["B"][c] - t["B"][BASELINE]
        ok = (dc > 0 and db > 0 and t["C*"][c] >= t["C*"][BASELINE]
              and t["B*"][c] >= t["B*"][BASELINE])
        print(f"- {c}: dC {dc:+.4f}, dB {db:+.4f}, C* {t['C*'][c]:.4f}, B* {t['B*'][c]:.4f}"
              f", M {min(dc, db):+.4f}: {'eligible' if ok else 'not eligible'}")
        if ok:
            eligible[c] = min(dc, db)
    winner = None
    if eligible:
        best = max(eligible.values())
        close = [c for c, m in eligible.items() if m >= best - 0.003]
        winner = min(close, key=lambda c: t["s"][c])
        print(f"\nwinner: {winner} (largest M {best:+.4f}; within 0.003: {close}; "
              f"cheapest taken)")
    else:
        print("\nno eligible candidate: the default stays hard 20")
    if winner is not None and "confirm" in summary:
        u = summary["confirm"]
        dc = u["C"][winner] - u["C"][BASELINE]
        db = u["B"][winner] - u["B"][BASELINE]
        confirmed = dc >= 0 and db >= 0
        print(f"confirming half: {winner} dC {dc:+.4f}, dB {db:+.4f}: "
              f"{'confirmed' if confirmed else 'NOT confirmed: the default stays hard 20'}")
    print("\nTargets for soft unaries (each half): coarsened truth not worse than nearest; "
          "real segmentations better than the hard-unary CRF of the same iterations")
    for half, t in summary.items():
        for c in CANDIDATES:
            if not c.startswith("soft"):
                continue
            hard = "hard " + c.split()[1].rstrip(",")
            vs_nearest = (t["C*"][c] >= t["C*"]["nearest"], t["B*"][c] >= t["B*"]["nearest"])
            vs_hard = (t["C"][c] > t["C"][hard], t["B"][c] > t["B"][hard])
            print(f"- {half}, {c}: >= nearest on coarsened truth (CamVid, BSDS500) "
                  f"{vs_nearest}; > {hard} on real (CamVid, BSDS500) {vs_hard}")
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=["camvid", "bsds500"],
                        default=["camvid", "bsds500"])
    parser.add_argument("--grids", nargs="+", choices=list(GRIDS), default=list(GRIDS))
    parser.add_argument("--limit", type=int, default=None, help="first N images of each")
    parser.add_argument("--iters", nargs="+", type=int, default=list(CRF_ITERS),
                        help="CRF iteration counts to run")
    parser.add_argument("--unary", nargs="+", choices=["hard", "soft"], default=["hard"],
                        help="CRF unaries: the patch labels, and/or the patches' "
                             "class fractions")
    parser.add_argument("--backend", nargs="+", choices=["pydensecrf", "torch"],
                        default=["pydensecrf"],
                        help="CRF backends; with two, the second is compared with "
                             "the first")
    parser.add_argument("--device", default="auto", help="device of the torch backend")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch's CPU threads (default: torch's own choice)")
    parser.add_argument("--figures", action="store_true",
                        help="write docs/figures/quality_refinement.png")
    parser.add_argument("--segmentations", action="store_true",
                        help="run refine_protocol.md on the segmenter's own segmentations")
    parser.add_argument("--half", choices=["choose", "confirm"], default="choose",
                        help="the protocol's half (with --segmentations)")
    parser.add_argument("--n-jobs", type=int, default=1,
                        help="images refined in parallel (with --segmentations)")
    parser.add_argument("--out", default=None, help="JSON file for --segmentations")
    parser.add_argument("--summarize", nargs="+", default=None,
                        help="JSON files of --segmentations runs: tables and decision")
    args = parser.parse_args(argv)
    if args.summarize:
        return summarize_protocol(args.summarize)
    if not SHARED.is_dir():
        print(f"{SHARED} not found: nothing to measure.")
        return None
    if args.segmentations:
        import json

        t0 = time.perf_counter()
        partial = None if args.out is None else f"{args.out}.partial"
        results = run_protocol(args.half, args.n_jobs, args.limit, partial)
        print(f"({time.perf_counter() - t0:.0f} s)")
        if args.out:
            Path(args.out).write_text(json.dumps({"half": args.half, "results": results}))
        return results
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    for backend in args.backend:  # imports and first-call set-up, outside the timings
        dense_crf(np.zeros((16, 16, 3), np.uint8), np.eye(16, dtype=np.int64), n_iter=1,
                  backend=backend, device=args.device)
    summaries = {}
    for kind in args.datasets:
        data = camvid(limit=args.limit) if kind == "camvid" else bsds500(limit=args.limit)
        what = "11 classes" if kind == "camvid" else "the first human segmentation"
        print(f"\n## {data.name}: {len(data.items)} images, against {what}")
        t0 = time.perf_counter()
        results, agreement = run(kind, data, args)
        summaries[kind] = report(kind, results)
        if agreement:
            report_agreement(agreement, args.backend[0])
        print(f"\n({time.perf_counter() - t0:.0f} s)")
    if args.figures:
        FIGURES.mkdir(parents=True, exist_ok=True)
        figure(summaries, FIGURES / "quality_refinement.png")
    return summaries


if __name__ == "__main__":
    main()
