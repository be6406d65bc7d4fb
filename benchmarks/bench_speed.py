"""Speed of CLASP stage by stage, end to end, and against other implementations.

One run, side by side, on the same inputs:

1. **Stages** at square images of 224, 448, 672, 868 and 1036 pixels
   (16 x 16 to 74 x 74 patches; a CamVid image resized when ../shared/data
   is present, else a synthetic image of flat shapes), each embedded at its
   own size (``short_side=None``): the weights-free embedder, the DINOv2
   ViT-S/14-reg embedder with random weights (the same compute as the real
   weights), the cosine affinity, the leading eigenpairs, the one-segment
   test, the K search (k-means and silhouettes over the K range) and the
   DenseCRF. The clustering stages run on the weights-free embedder's
   features (random DINOv2 features have no structure to cluster). Their
   growth with the number of patches ``n`` is fitted as ``t ~ n**p`` and
   plotted on log-log axes (``docs/figures/speed_scaling.png``).
2. **End to end**: images per second of ``clasp_one`` (embed, affinity,
   segment, DenseCRF) with each embedder.
3. **Ratios**, interleaved: ``adaptive_spectral_clustering`` (from the
   features: affinity included; paper settings and defaults) against
   ``benchmarks/reference.py::straightforward_clasp`` on the same features,
   and the clustering alone against ``sklearn.cluster.SpectralClustering(
   affinity="precomputed", n_clusters=<the K we chose>)`` on the same
   affinity.
4. **Memory**, each case in a fresh subprocess: the peak resident memory
   (``VmHWM``, reset through ``/proc/self/clear_refs`` after the baseline,
   else ``ru_maxrss``) above the baseline of the imports and the inputs, for
   clustering a 1036 x 1036 image's 5,476 patches, a 20,000-sample feature
   matrix (landmarks, and the dense path with ``max_dense_samples=None``),
   and a synthetic 12000 x 9000 image segmented end to end.

Timings are the best of ``--repeats`` runs, interleaved so that load on the
machine affects every contender alike.

Run:  python benchmarks/bench_speed.py [--quick] [--repeats N] [--threads N]
      [--no-dino] [--no-memory] [--plot PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import best_of  # noqa: E402
from reference import straightforward_clasp  # noqa: E402

from sklearn_clasp import (  # noqa: E402
    PAPER_SETTINGS,
    adaptive_spectral_clustering,
    cosine_affinity,
)
from sklearn_clasp.datasets import make_shapes_image  # noqa: E402
from sklearn_clasp.io import load_image
from sklearn_clasp.image import resize_image  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
SIZES = (224, 448, 672, 868, 1036)
QUICK_SIZES = (224, 448, 1036)
STAGES = ("embed (weights-free)", "embed (DINOv2)", "affinity", "eigen",
          "one-segment test", "K search", "CRF")


def _source_image(size):
    paths = sorted((SHARED / "camvid" / "val").glob("*.png"))
    if paths:
        return resize_image(load_image(paths[0]), (size, size)), f"CamVid {paths[0].name}"
    image, _ = make_shapes_image(size, size, n_shapes=5, noise=6, random_state=0)
    return image, "synthetic shapes"


# --------------------------------------------------------------------------
# 1-3: stages, end to end, ratios
# --------------------------------------------------------------------------
def run_sizes(sizes, repeats, dino, ref_max_n):
    from sklearn.cluster import SpectralClustering

    from sklearn_clasp.embedding import HandcraftedPatchEmbedder
    from sklearn_clasp.pipeline import make_clasp_pipeline, clasp_one
    from sklearn_clasp.refine import refine_labels

    hand = HandcraftedPatchEmbedder(short_side=None)
    pipe_hand = make_clasp_pipeline("handcrafted", short_side=None, random_state=0)
    if dino:
        from sklearn_clasp.embedding import DinoPatchEmbedder

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            demb = DinoPatchEmbedder(weights="random", short_side=None, random_state=0).fit()
            pipe_dino = make_clasp_pipeline("dinov2", weights="random", short_side=None,
                                            random_state=0)
            pipe_dino[0].fit(None)
    # warm-up: BLAS, OpenMP, torch, pydensecrf
    warm, _ = _source_image(112)
    clasp_one(pipe_hand, warm)
    if dino:
        clasp_one(pipe_dino, warm)

    rows = []
    for size in sizes:
        image, source = _source_image(size)
        r = {"size": size, "source": source}
        t, recs = best_of(lambda: hand.transform([image]), repeats)
        r["embed (weights-free)"] = t
        X = recs[0].feature_matrix
        r["n"] = n = X.shape[0]
        if dino:
            r["embed (DINOv2)"], _ = best_of(lambda: demb.transform([image]), repeats)
        r["affinity"], A = best_of(lambda: cosine_affinity(X), repeats)
        timings = []
        for _ in range(repeats):
            labels, info = adaptive_spectral_clustering(A, features=X, random_state=0)
            timings.append(info["timings"])
        for key, name in (("eigen", "eigen"), ("one_segment_test", "one-segment test"),
                          ("k_search", "K search")):
            r[name] = min(t.get(key, np.nan) for t in timings)
        r["K"] = k = info["n_clusters"]
        grid = labels.reshape(recs[0].grid_shape)
        r["CRF"], _ = best_of(lambda: refine_labels(image, grid, method="crf", max_pixels=None),
                             repeats)
        # end to end, one image at a time
        r["e2e weights-free"], _ = best_of(lambda: clasp_one(pipe_hand, image), repeats)
        if dino:
            r["e2e DINOv2"], _ = best_of(lambda: clasp_one(pipe_dino, image), repeats)

        # ratios, interleaved
        best = dict.fromkeys(("ours", "ours paper", "ours cluster", "reference", "sklearn SC"),
                             np.inf)
        run_ref = n <= ref_max_n
        for _ in range(repeats):
            t0 = time.perf_counter()
            adaptive_spectral_clustering(cosine_affinity(X), features=X, random_state=0)
            best["ours"] = min(best["ours"], time.perf_counter() - t0)
            t0 = time.perf_counter()
            _, info_p = adaptive_spectral_clustering(cosine_affinity(X), features=X,
                                                     random_state=0, **PAPER_SETTINGS)
            best["ours paper"] = min(best["ours paper"], time.perf_counter() - t0)
            t0 = time.perf_counter()
            adaptive_spectral_clustering(A, features=X, random_state=0)
            best["ours cluster"] = min(best["ours cluster"], time.perf_counter() - t0)
            if run_ref:
                t0 = time.perf_counter()
                _, k_ref, _ = straightforward_clasp(X, random_state=0)
                best["reference"] = min(best["reference"], time.perf_counter() - t0)
            if k >= 2:
                t0 = time.perf_counter()
                SpectralClustering(n_clusters=k, affinity="precomputed",
                                   random_state=0).fit(A.astype(np.float64))
                best["sklearn SC"] = min(best["sklearn SC"], time.perf_counter() - t0)
        r.update(best)
        r["K paper"] = info_p["n_clusters"]
        r["K ref"] = k_ref if run_ref else None
        rows.append(r)
        print(f"  {size} px, {n} patches: done", file=sys.stderr, flush=True)
    return rows


def _fmt(t):
    if t is None or not np.isfinite(t):
        return "-"
    return f"{t:.3f}" if t < 10 else f"{t:.1f}"


def print_tables(rows, dino):
    stages = [s for s in STAGES if dino or s != "embed (DINOv2)"]
    print("\n### Stage timings (seconds, best of the repeats)\n")
    print("| image | patches | " + " | ".join(stages) + " | K |")
    print("|---" * (len(stages) + 3) + "|")
    for r in rows:
        print(f"| {r['size']} x {r['size']} | {r['n']} | "
              + " | ".join(_fmt(r[s]) for s in stages) + f" | {r['K']} |")
    n = np.array([r["n"] for r in rows], dtype=float)
    if len(rows) >= 2:
        print("\nGrowth with the number of patches n, fitted t ~ n**p over these sizes:\n")
        print("| stage | p |")
        print("|---|---|")
        for s in stages + ["ours cluster", "reference", "sklearn SC"]:
            t = np.array([r[s] for r in rows], dtype=float)
            ok = np.isfinite(t) & (t > 0)
            if ok.sum() >= 2:
                p = np.polyfit(np.log(n[ok]), np.log(t[ok]), 1)[0]
                print(f"| {s} | {p:.2f} |")

    print("\n### End to end (clasp_one: embed, affinity, segment, DenseCRF)\n")
    heads = ["weights-free"] + (["DINOv2 (random weights)"] if dino else [])
    print("| image | " + " | ".join(f"{h}: s | {h}: images/s" for h in heads) + " |")
    print("|---" * (1 + 2 * len(heads)) + "|")
    for r in rows:
        cells = [r["e2e weights-free"]] + ([r["e2e DINOv2"]] if dino else [])
        print(f"| {r['size']} x {r['size']} | "
              + " | ".join(f"{_fmt(c)} | {1.0 / c:.2f}" for c in cells) + " |")

    print("\n### Against the straightforward implementation and sklearn's "
          "SpectralClustering\n")
    print("| image | patches | ours from features (s) | ours, paper settings (s) | "
          "reference (s) | reference / ours paper | K ours paper / ref | "
          "ours clustering only (s) | SpectralClustering (s) | SC / ours |")
    print("|---" * 10 + "|")
    for r in rows:
        ratio_ref = r["reference"] / r["ours paper"] if np.isfinite(r["reference"]) else None
        ratio_sc = r["sklearn SC"] / r["ours cluster"] if np.isfinite(r["sklearn SC"]) else None
        print(f"| {r['size']} x {r['size']} | {r['n']} | {_fmt(r['ours'])} | "
              f"{_fmt(r['ours paper'])} | {_fmt(r['reference'])} | "
              f"{'-' if ratio_ref is None else f'{ratio_ref:.1f}x'} | "
              f"{r['K paper']} / {r['K ref'] if r['K ref'] is not None else '-'} | "
              f"{_fmt(r['ours cluster'])} | {_fmt(r['sklearn SC'])} | "
              f"{'-' if ratio_sc is None else f'{ratio_sc:.1f}x'} |")


def plot(rows, path, dino):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = np.array([r["n"] for r in rows], dtype=float)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    stages = [s for s in STAGES if dino or s != "embed (DINOv2)"]
    for s in stages:
        axes[0].loglog(n, [r[s] for r in rows], "o-", label=s)
    axes[0].set_title("CLASP stage by stage")
    for name, style in (("ours cluster", "o-"), ("ours paper", "s-"),
                        ("reference", "^--"), ("sklearn SC", "v--")):
        t = np.array([r[name] for r in rows], dtype=float)
        ok = np.isfinite(t)
        label = {"ours cluster": "ours: clustering (given the affinity)",
                 "ours paper": "ours: paper settings, from features",
                 "reference": "straightforward (reference.py), from features",
                 "sklearn SC": "SpectralClustering (given the affinity, our K)"}[name]
        axes[1].loglog(n[ok], t[ok], style, label=label)
    axes[1].set_title("Clustering against other implementations")
    for ax in axes:
        ax.set_xlabel("patches per image (square images, 14-pixel patches)")
        ax.set_ylabel("seconds")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xticks(n, [f"{int(v)}\n{r['size']} px" for v, r in zip(n, rows)])
        ax.minorticks_off()
        ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")


# --------------------------------------------------------------------------
# 4: memory, in fresh subprocesses
# --------------------------------------------------------------------------
def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _start_peak():
    """Reset the peak-RSS counter if the kernel allows; return (baseline, how)."""
    base = _rss_mb()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return base, "VmHWM"
    except OSError:
        return base, "ru_maxrss"


def _peak_mb(how):
    if how == "VmHWM":
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _huge_image(height, width, seed=0):
    """Flat shapes with pixel noise, built in row chunks (no full-size temporaries)."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.uint8)
    cx, cy, rad = 0.35 * width, 0.45 * height, 0.22 * min(height, width)
    xs = np.arange(width)
    for r0 in range(0, height, 256):
        r1 = min(r0 + 256, height)
        yy = np.arange(r0, r1)[:, None]
        block = np.empty((r1 - r0, width, 3), np.uint8)
        block[:] = (120, 150, 90)
        disc = (xs[None, :] - cx) ** 2 + (yy - cy) ** 2 < rad ** 2
        block[disc] = (200, 60, 40)
        rect = (xs[None, :] > 0.6 * width) & (yy > 0.2 * height) & (yy < 0.7 * height)
        block[rect & ~disc] = (40, 80, 200)
        noise = rng.integers(0, 9, size=block.shape, dtype=np.uint8)
        np.add(block, noise, out=block)
        image[r0:r1] = block
    return image


def child(case):
    """Run one memory case in this (fresh) process; print one JSON line."""
    warnings.simplefilter("ignore")
    out = {"case": case}
    if case == "cluster1036":
        from sklearn_clasp.embedding import HandcraftedPatchEmbedder

        image, _ = _source_image(1036)
        X = HandcraftedPatchEmbedder(short_side=None).fit_transform([image])[0].feature_matrix
        X = np.ascontiguousarray(X)
        base, how = _start_peak()
        t0 = time.perf_counter()
        labels, info = adaptive_spectral_clustering(cosine_affinity(X), features=X,
                                                    random_state=0)
        out.update(seconds=time.perf_counter() - t0, n=int(X.shape[0]),
                   K=int(info["n_clusters"]))
    elif case in ("planted20k", "planted20k-dense"):
        from sklearn_clasp import AdaptiveSpectralSegmenter
        from sklearn_clasp.datasets import make_planted_partition

        X, y = make_planted_partition(6, n_samples=20_000, n_features=384, noise=1.0,
                                      random_state=0)
        X = X.astype(np.float32)
        base, how = _start_peak()
        t0 = time.perf_counter()
        seg = AdaptiveSpectralSegmenter(
            random_state=0, max_dense_samples=None if case.endswith("dense") else 10_000
        ).fit(X)
        from sklearn.metrics import adjusted_rand_score

        out.update(seconds=time.perf_counter() - t0, n=20_000, K=int(seg.n_clusters_),
                   ari=float(adjusted_rand_score(y, seg.labels_)),
                   landmarks=seg.landmark_indices_ is not None)
    elif case.startswith("huge"):
        from sklearn_clasp.pipeline import make_clasp_pipeline, clasp_one

        _, embedder, short_side = case.split(":")
        short_side = None if short_side == "none" else int(short_side)
        kwargs = dict(weights="random") if embedder == "dinov2" else {}
        pipe = make_clasp_pipeline(embedder, short_side=short_side, random_state=0, **kwargs)
        pipe[0].fit(None)
        image = _huge_image(12000, 9000)
        base, how = _start_peak()
        t0 = time.perf_counter()
        mask, record = clasp_one(pipe, image)
        out.update(seconds=time.perf_counter() - t0, grid=list(record.grid_shape),
                   K=int(record.info["n_clusters"]), mask_shape=list(mask.shape),
                   mask_mb=mask.nbytes / 2**20, image_mb=image.nbytes / 2**20,
                   budget=bool(record.info.get("patch_budget_applied")))
    else:
        raise SystemExit(f"unknown case {case!r}")
    peak = _peak_mb(how)
    out.update(baseline_mb=base, peak_mb=peak, delta_mb=peak - base, how=how)
    print(json.dumps(out))


def run_memory(cases):
    results = []
    for case in cases:
        proc = subprocess.run([sys.executable, __file__, "--child", case],
                              capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0:
            print(f"  {case}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"  memory {case}: done", file=sys.stderr, flush=True)
    print("\n### Peak memory (fresh subprocess per case)\n")
    print("| case | time (s) | baseline RSS (MB) | peak RSS (MB) | peak above baseline (MB) "
          "| details |")
    print("|---|---|---|---|---|---|")
    names = {
        "cluster1036": "cluster a 1036 x 1036 image (affinity + segmenter)",
        "planted20k": "20,000 x 384 features, default (landmarks)",
        "planted20k-dense": "20,000 x 384 features, max_dense_samples=None (dense)",
        "huge:handcrafted:448": "12000 x 9000 image, weights-free, short_side=448",
        "huge:handcrafted:none": "12000 x 9000 image, weights-free, short_side=None",
        "huge:dinov2:none": "12000 x 9000 image, DINOv2 random, short_side=None",
    }
    for r in results:
        details = {k: v for k, v in r.items() if k not in (
            "case", "seconds", "baseline_mb", "peak_mb", "delta_mb", "how")}
        details = ", ".join(f"{k}={round(v, 3) if isinstance(v, float) else v}"
                            for k, v in details.items())
        print(f"| {names.get(r['case'], r['case'])} | {_fmt(r['seconds'])} | "
              f"{r['baseline_mb']:.0f} | {r['peak_mb']:.0f} | {r['delta_mb']:.0f} | "
              f"{details} |")
    if results:
        print(f"\nPeak measured with {results[0]['how']} (resident set, whole process);"
              f" the baseline is the process after its imports and inputs.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="sizes 224, 448, 1036; one repeat; fewer memory cases")
    parser.add_argument("--repeats", type=int, default=None, help="best of N (default 3)")
    parser.add_argument("--no-dino", action="store_true", help="skip the DINOv2 embedder")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory cases")
    parser.add_argument("--threads", type=int, default=None,
                        help="limit every thread pool (BLAS, OpenMP, torch) to N threads "
                             "for all contenders alike; on a machine shared with other jobs "
                             "multi-threaded BLAS can be many times slower than one thread")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "figures" / "speed_scaling.png"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    repeats = args.repeats or (1 if args.quick else 3)
    sizes = QUICK_SIZES if args.quick else SIZES
    dino = not args.no_dino
    print(f"# bench_speed: {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, numpy {np.__version__}; "
          f"best of {repeats}{' (quick)' if args.quick else ''}; threads: "
          f"{args.threads or 'library defaults'}")
    if args.threads:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        with threadpool_limits(args.threads):
            rows = run_sizes(sizes, repeats, dino, ref_max_n=np.inf)
    else:
        rows = run_sizes(sizes, repeats, dino, ref_max_n=np.inf)
    print_tables(rows, dino)
    plot(rows, args.plot, dino)
    if not args.no_memory:
        cases = ["cluster1036", "planted20k", "huge:handcrafted:448",
                 "huge:handcrafted:none"]
        if not args.quick:
            cases.insert(2, "planted20k-dense")
            if dino:
                cases.append("huge:dinov2:none")
        run_memory(cases)


if __name__ == "__main__":
    main()
