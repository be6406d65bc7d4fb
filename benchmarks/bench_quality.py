"""Segmentation quality on CamVid val and BSDS500 val: CLASP against baselines.

Every feature-based method works on the same features, those of the
weights-free ``HandcraftedPatchEmbedder`` (default 448-pixel short side), and
the same cosine affinity (not DINOv2: these numbers are not comparable with
the paper's):

* CLASP with the package defaults, and with the paper's K rule
  (``PAPER_SETTINGS``);
* the straightforward paper implementation (``benchmarks/reference.py``);
* k-means (unit-length features, 10 restarts) and
  ``sklearn.cluster.SpectralClustering`` (``affinity="precomputed"``) with a
  fixed K = 6, chosen a priori, not tuned; on CamVid also with the oracle K
  (the number of classes present in the image's ground truth, clipped to
  2..15).

Their patch labels all go through the same refinement: nearest upsampling,
and DenseCRF with the paper's settings. Pixel methods of scikit-image, on
the pixels, at settings fixed a priori: ``felzenszwalb`` (library defaults;
and ``scale=500``) and ``slic`` (library defaults; and ``n_segments=6``, the
fixed K above). Their output is already at full resolution and is scored as
it is.

Protocols, each number says which:

* per-image Hungarian matching (DiffSeg's): every image matched on its own,
  mIoU and pixel accuracy averaged over images; CamVid class 11 ignored;
  BSDS500 scored against every human segmentation and averaged;
* dataset-level Hungarian matching (STEGO's; CamVid, feature-based methods
  only): every segment's mean feature is clustered across the data set into
  11 clusters with k-means, then one matching over the summed confusion;
* BSDS500 region measures against the human segmentations: segmentation
  covering (of the human regions by the segmentation, Arbelaez et al. 2011),
  variation of information (bits) and the probabilistic Rand index (mean Rand
  index over the humans); "mean" over the humans, and the best human.

``--sweep`` adds k-means with K = 2..12 (nearest upsampling): a sensitivity
sweep on the reported images, so not a test result.

Run:  python benchmarks/bench_quality.py [--datasets camvid bsds500] [--limit N]
      [--no-crf] [--sweep] [--n-jobs 1] [--cache DIR] [--out results.json] [--figures]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from joblib import Memory, Parallel, delayed
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import SHARED, bsds500, camvid  # noqa: E402
from reference import straightforward_clasp  # noqa: E402
from reproduce_paper import dataset_level_scores, segment_descriptors  # noqa: E402

from sklearn_clasp import PAPER_SETTINGS, adaptive_spectral_clustering, cosine_affinity  # noqa: E402
from sklearn_clasp.embedding import HandcraftedPatchEmbedder  # noqa: E402
from sklearn_clasp.io import load_image  # noqa: E402
from sklearn_clasp.metrics import (  # noqa: E402
    confusion_matrix,
    segmentation_covering,
    segmentation_scores,
    variation_of_information,
)
from sklearn_clasp.refine import dense_crf, upsample_labels  # noqa: E402

#: The fixed K of k-means and SpectralClustering (and slic), set a priori.
FIXED_K = 6
SWEEP_KS = range(2, 13)
SEED = 0
FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"
NAMES = {"camvid": "CamVid val", "bsds500": "BSDS500 val"}


# --- methods ------------------------------------------------------------------------


def _unit(X):
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def _kmeans(X, k, n_init=10):
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=n_init, random_state=SEED).fit_predict(_unit(X))


def _spectral(A, k):
    from sklearn.cluster import SpectralClustering

    return SpectralClustering(n_clusters=k, affinity="precomputed",
                              random_state=SEED).fit_predict(A)


def patch_methods(oracle_k):
    """name -> function(X, A) -> patch labels (n,). Same features for all."""
    methods = {
        "CLASP (defaults)": lambda X, A: adaptive_spectral_clustering(
            A, features=X, random_state=SEED)[0],
        "CLASP (paper K rule)": lambda X, A: adaptive_spectral_clustering(
            A, features=X, random_state=SEED, **PAPER_SETTINGS)[0],
        "straightforward paper impl.": lambda X, A: straightforward_clasp(
            X, random_state=SEED)[0],
        f"k-means, K={FIXED_K}": lambda X, A: _kmeans(X, FIXED_K),
        f"SpectralClustering, K={FIXED_K}": lambda X, A: _spectral(A, FIXED_K),
    }
    if oracle_k is not None:
        methods["k-means, oracle K"] = lambda X, A: _kmeans(X, oracle_k)
        methods["SpectralClustering, oracle K"] = lambda X, A: _spectral(A, oracle_k)
    return methods


def pixel_methods():
    """name -> function(image) -> pixel labels (H, W). Settings fixed a priori."""
    from skimage.segmentation import felzenszwalb, slic

    return {
        "felzenszwalb (defaults)": lambda im: felzenszwalb(im),
        "felzenszwalb (scale=500)": lambda im: felzenszwalb(im, scale=500),
        "slic (defaults)": lambda im: slic(im),
        f"slic (n_segments={FIXED_K})": lambda im: slic(im, n_segments=FIXED_K),
    }


def _features(path):
    rec = HandcraftedPatchEmbedder().transform([str(path)])[0]
    return rec.feature_matrix, rec.grid_shape


# --- one image ------------------------------------------------------------------------


def rand_index(truth, mask):
    """Rand index from the contingency table (``sklearn.metrics.rand_score``, faster)."""
    n = confusion_matrix(truth, mask).astype(np.float64)
    total = n.sum()
    pairs = total * (total - 1) / 2
    same_both = ((n * n).sum() - total) / 2
    same_pred = ((n.sum(1) ** 2).sum() - total) / 2
    same_true = ((n.sum(0) ** 2).sum() - total) / 2
    return 1.0 - (same_pred + same_true - 2 * same_both) / pairs


def _region_scores(mask, truths):
    """BSDS500: per-human scores -> mean over humans and best human."""
    cov, voi, ri, miou, acc = [], [], [], [], []
    for g in truths:
        s = segmentation_scores(g, mask)
        miou.append(s["miou"])
        acc.append(s["pixel_accuracy"])
        cov.append(segmentation_covering(g, mask))
        voi.append(variation_of_information(g, mask))
        ri.append(rand_index(g, mask))
    return {"miou": np.mean(miou), "pixel_accuracy": np.mean(acc),
            "covering": np.mean(cov), "covering_best": np.max(cov),
            "voi": np.mean(voi), "voi_best": np.min(voi), "pri": np.mean(ri)}


def evaluate_image(kind, item, read_truth, crf, sweep, features):
    """Run every method on one image and score it; returns a small dict."""
    name, image_path, truth_path = item
    image = load_image(image_path)
    truth = read_truth(truth_path)
    shape = image.shape[:2]
    t0 = time.perf_counter()
    X, grid = features(image_path)
    t_feat = time.perf_counter() - t0
    A = cosine_affinity(X)
    if kind == "camvid":
        present = np.unique(truth[truth >= 0])
        oracle_k = int(np.clip(len(present), 2, 15))
    else:
        oracle_k = None

    def score(mask):
        if kind == "camvid":
            s = segmentation_scores(truth, mask)
            return {"miou": s["miou"], "pixel_accuracy": s["pixel_accuracy"]}
        return _region_scores(mask, truth)

    out = {"name": name, "features_s": t_feat, "methods": {}, "oracle_k": oracle_k}
    for method, func in patch_methods(oracle_k).items():
        t0 = time.perf_counter()
        labels = np.asarray(func(X, A))
        seconds = time.perf_counter() - t0
        _, labels = np.unique(labels, return_inverse=True)  # 0 .. K-1
        k = int(labels.max()) + 1
        nearest = upsample_labels(labels.reshape(grid), shape)
        res = {"k": k, "seconds": seconds, "nearest": score(nearest)}
        masks = {"nearest": nearest}
        if crf:
            t0 = time.perf_counter()
            masks["crf"] = dense_crf(image, nearest)
            res["crf_seconds"] = time.perf_counter() - t0
            res["crf"] = score(masks["crf"])
        if kind == "camvid":  # for the dataset-level protocol
            res["descriptors"] = segment_descriptors(X, labels)
            res["confusion"] = {r: confusion_matrix(truth, m, n_true=11, n_pred=k)
                                for r, m in masks.items()}
        out["methods"][method] = res
    for method, func in pixel_methods().items():
        t0 = time.perf_counter()
        mask = np.asarray(func(image), dtype=np.int64)
        seconds = time.perf_counter() - t0
        mask -= mask.min()
        out["methods"][method] = {"k": int(len(np.unique(mask))), "seconds": seconds,
                                  "pixel": score(mask)}
    if sweep:
        out["sweep"] = {}
        for k in SWEEP_KS:
            mask = upsample_labels(_kmeans(X, k, n_init=3).reshape(grid), shape)
            if kind == "camvid":
                out["sweep"][k] = {"miou": segmentation_scores(truth, mask)["miou"]}
            else:
                out["sweep"][k] = {"covering": float(np.mean(
                    [segmentation_covering(g, mask) for g in truth]))}
    return out


# --- reporting -------------------------------------------------------------------------


def _fmt_k(ks):
    ks = np.asarray(ks)
    return f"{np.median(ks):g} ({ks.min()}..{ks.max()})"


def summarize(kind, results):
    """Print the Markdown tables; return a JSON-able summary."""
    methods = list(results[0]["methods"])
    summary = {"n_images": len(results),
               "features_s": float(np.mean([r["features_s"] for r in results])),
               "methods": {}}
    if kind == "camvid":
        print("\nmIoU and pixel accuracy: per-image Hungarian (DiffSeg's protocol) and "
              "dataset-level Hungarian (STEGO's; segments clustered into 11 with "
              "k-means); class 11 ignored.\n")
        print("| method | refinement | mIoU per-image | pix. acc. per-image | mIoU "
              "dataset | pix. acc. dataset | K median (range) | s/image segment | "
              "s/image CRF |")
        print("|---|---|---|---|---|---|---|---|---|")
    else:
        print("\nPer image against each human segmentation; 'mean' averages over the "
              "humans, 'best' takes the best human. mIoU: per-image Hungarian. VoI in "
              "bits (lower is better).\n")
        print("| method | refinement | covering mean | covering best | VoI mean | "
              "VoI best | PRI | mIoU per-image | segments median (range) | "
              "s/image segment | s/image CRF |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
    for method in methods:
        rows = [r["methods"][method] for r in results]
        ks = [r["k"] for r in rows]
        seconds = float(np.mean([r["seconds"] for r in rows]))
        refinements = [x for x in ("nearest", "crf", "pixel") if x in rows[0]]
        entry = {"k": dict(sorted(Counter(ks).items())), "seconds": seconds}
        for ref in refinements:
            mean = {m: float(np.mean([r[ref][m] for r in rows])) for m in rows[0][ref]}
            crf_s = (f"{np.mean([r['crf_seconds'] for r in rows]):.3f}"
                     if ref == "crf" else "-")
            label = {"nearest": "nearest", "crf": "DenseCRF", "pixel": "(pixels)"}[ref]
            if kind == "camvid":
                if "confusion" in rows[0]:
                    ds = dataset_level_scores([r["descriptors"] for r in rows],
                                              [r["confusion"][ref] for r in rows], 11, SEED)
                    mean["dataset_miou"] = ds["miou"]
                    mean["dataset_pixel_accuracy"] = ds["pixel_accuracy"]
                    dcols = f"{ds['miou']:.3f} | {ds['pixel_accuracy']:.3f}"
                else:
                    dcols = "n/a | n/a"
                print(f"| {method} | {label} | {mean['miou']:.3f} | "
                      f"{mean['pixel_accuracy']:.3f} | {dcols} | {_fmt_k(ks)} | "
                      f"{seconds:.3f} | {crf_s} |")
            else:
                print(f"| {method} | {label} | {mean['covering']:.3f} | "
                      f"{mean['covering_best']:.3f} | {mean['voi']:.3f} | "
                      f"{mean['voi_best']:.3f} | {mean['pri']:.3f} | {mean['miou']:.3f} | "
                      f"{_fmt_k(ks)} | {seconds:.3f} | {crf_s} |")
            entry[ref] = mean
        summary["methods"][method] = entry
    print(f"\nfeatures (shared by the feature-based methods): "
          f"{summary['features_s']:.3f} s/image")
    adaptive = [m for m in methods if m.startswith(("CLASP", "straightforward"))]
    if kind == "camvid":
        adaptive.append("k-means, oracle K")
    same = sum(r["methods"]["CLASP (paper K rule)"]["k"]
               == r["methods"]["straightforward paper impl."]["k"] for r in results)
    summary["same_k_as_straightforward"] = same
    print(f"\nCLASP (paper K rule) and the straightforward implementation chose the same "
          f"K on {same} of {len(results)} images.")
    print("\nK distribution (images per K):\n")
    print("| method | " + " | ".join(f"K={k}" for k in range(1, 16)) + " |")
    print("|---|" + "---|" * 15)
    for m in adaptive:
        c = summary["methods"][m]["k"]
        print(f"| {m} | " + " | ".join(str(c.get(k, "")) for k in range(1, 16)) + " |")
    if "sweep" in results[0]:
        key = "miou" if kind == "camvid" else "covering"
        label = "mIoU per-image" if kind == "camvid" else "covering mean"
        sweep = {k: float(np.mean([r["sweep"][k][key] for r in results])) for k in SWEEP_KS}
        summary["sweep"] = {"metric": key, "values": sweep}
        print(f"\nSweep (k-means, nearest upsampling; on the reported images, so NOT a "
              f"test result): {label} by K\n")
        print("| K | " + " | ".join(str(k) for k in SWEEP_KS) + " |")
        print("|---|" + "---|" * len(SWEEP_KS))
        print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in sweep.values()) + " |")
    return summary


def k_figure(summaries, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = ["CLASP (defaults)", "CLASP (paper K rule)", "straightforward paper impl."]
    fig, axes = plt.subplots(1, len(summaries), figsize=(5 * len(summaries), 3.2),
                             squeeze=False)
    width = 0.27
    for ax, (kind, summary) in zip(axes[0], summaries.items()):
        ks = np.arange(1, 16)
        for j, m in enumerate(methods):
            c = summary["methods"][m]["k"]
            ax.bar(ks + (j - 1) * width, [c.get(int(k), 0) for k in ks], width, label=m)
        ax.set_title(f"{NAMES[kind]}: chosen K ({summary['n_images']} images)")
        ax.set_xlabel("K")
        ax.set_ylabel("images")
        ax.set_xticks(ks)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"figure written to {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=["camvid", "bsds500"],
                        default=["camvid", "bsds500"])
    parser.add_argument("--limit", type=int, default=None, help="first N images of each")
    parser.add_argument("--no-crf", action="store_true", help="skip the DenseCRF rows")
    parser.add_argument("--sweep", action="store_true", help="add the k-means K sweep")
    parser.add_argument("--n-jobs", type=int, default=1, help="images in parallel")
    parser.add_argument("--cache", default=None,
                        help="feature cache directory (default: a temporary one)")
    parser.add_argument("--out", default=None, help="write the summaries as JSON here")
    parser.add_argument("--figures", action="store_true",
                        help="write docs/figures/quality_k_distribution.png")
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        print(f"{SHARED} not found: nothing to measure.")
        return None
    cache = args.cache or tempfile.mkdtemp(prefix="clasp_quality_")
    features = Memory(cache, verbose=0).cache(_features)
    summaries = {}
    for kind in args.datasets:
        data = camvid(limit=args.limit) if kind == "camvid" else bsds500(limit=args.limit)
        print(f"\n## {data.name}: {len(data.items)} images, weights-free embedder")
        t0 = time.perf_counter()
        with threadpool_limits(1):  # one BLAS/OpenMP thread per process (see RESULTS)
            results = Parallel(n_jobs=args.n_jobs)(
                delayed(evaluate_image)(kind, item, data.read_truth, not args.no_crf,
                                        args.sweep, features)
                for item in data.items
            )
        summaries[kind] = summarize(kind, results)
        print(f"\n({time.perf_counter() - t0:.0f} s for {data.name})")
    if args.out:
        Path(args.out).write_text(json.dumps(summaries, indent=1, default=float))
    if args.figures:
        FIGURES.mkdir(parents=True, exist_ok=True)
        k_figure(summaries, FIGURES / "quality_k_distribution.png")
    return summaries


if __name__ == "__main__":
    main()
