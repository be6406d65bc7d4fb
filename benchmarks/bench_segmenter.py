"""Speed of AdaptiveSpectralSegmenter against the straightforward implementation.

Both run, interleaved, on the same features with 1024 (32x32) and 1369 (37x37)
patches: 384-dimensional planted partitions (K = 2..8, three noise levels,
balanced and unbalanced) and, when ../shared/data is present, the weights-free
embedder's features of CamVid and BSDS500 images. The package runs with
PAPER_SETTINGS (the same K rule as the reference), so the chosen K can be
compared; its default settings are timed too.

Timings are the best of three runs each, interleaved.

Run:  python benchmarks/bench_segmenter.py [--quick] [--repeats N]
"""

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import straightforward_clasp  # noqa: E402

from sklearn_clasp import PAPER_SETTINGS, adaptive_spectral_clustering, cosine_affinity  # noqa: E402
from sklearn_clasp.datasets import make_planted_partition  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def planted_inputs(quick):
    ks = range(2, 9)
    noises = (0.8, 1.2) if quick else (0.8, 1.2, 1.6)
    imbalances = (1.0,) if quick else (1.0, 4.0)
    for n, k, noise, imb in itertools.product((1024, 1369), ks, noises, imbalances):
        X, _ = make_planted_partition(
            k, n_samples=n, n_features=384, noise=noise, imbalance=imb,
            random_state=1000 * k + int(10 * noise) + n,
        )
        yield f"planted n={n} K={k} noise={noise} imb={imb}", X.astype(np.float32)


def image_inputs(quick):
    try:
        from sklearn_clasp.embedding import HandcraftedPatchEmbedder
        from sklearn_clasp.io import load_image
    except ImportError:
        return
    paths = sorted((SHARED / "camvid" / "val").glob("*.png"))[: 4 if quick else 10]
    paths += sorted((SHARED / "bsds500" / "images" / "val").glob("*.jpg"))[: 4 if quick else 10]
    for i, path in enumerate(paths):
        side = 32 if i % 2 == 0 else 37
        image = load_image(path)
        emb = HandcraftedPatchEmbedder(short_side=None)
        # Resize so the grid is side x side patches (1024 or 1369).
        from sklearn_clasp.image import resize_image

        image = resize_image(image, (side * 14, side * 14))
        rec = emb.fit_transform([image])[0]
        yield f"{path.parent.parent.name}/{path.name} n={side * side}", rec.feature_matrix


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer inputs")
    parser.add_argument("--repeats", type=int, default=3, help="best of N timings")
    args = parser.parse_args()

    rows = []
    inputs = list(planted_inputs(args.quick)) + list(image_inputs(args.quick))
    # Warm-up (BLAS, k-means threads).
    X0 = inputs[0][1]
    straightforward_clasp(X0)
    adaptive_spectral_clustering(cosine_affinity(X0), features=X0, random_state=0)
    for name, X in inputs:
        # Best of `repeats` for each, interleaved, so that load on the machine
        # affects both sides alike.
        t_ref = t_paper = t_def = np.inf
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            _, k_ref, _ = straightforward_clasp(X, random_state=0)
            t_ref = min(t_ref, time.perf_counter() - t0)
            t0 = time.perf_counter()
            _, info = adaptive_spectral_clustering(
                cosine_affinity(X), features=X, random_state=0, **PAPER_SETTINGS
            )
            t_paper = min(t_paper, time.perf_counter() - t0)
            t0 = time.perf_counter()
            _, info_def = adaptive_spectral_clustering(
                cosine_affinity(X), features=X, random_state=0
            )
            t_def = min(t_def, time.perf_counter() - t0)
        rows.append((name, X.shape[0], k_ref, info["n_clusters"], info_def["n_clusters"],
                     t_ref, t_paper, t_def))

    print(f"{'input':46s} {'n':>5s} {'K ref':>5s} {'K ours':>6s} {'K def':>5s} "
          f"{'ref s':>7s} {'ours s':>7s} {'speedup':>7s} {'def s':>7s}")
    for name, n, kr, kp, kd, tr, tp, td in rows:
        print(f"{name:46s} {n:5d} {kr:5d} {kp:6d} {kd:5d} {tr:7.3f} {tp:7.3f} "
              f"{tr / tp:7.1f} {td:7.3f}")
    speedups = np.array([r[5] / r[6] for r in rows])
    same = np.array([r[2] == r[3] for r in rows])
    ok = (speedups >= 5) & same
    print()
    for n in (1024, 1369):
        sel = np.array([r[1] == n for r in rows])
        if sel.any():
            print(f"n={n}: median speedup {np.median(speedups[sel]):.1f}x "
                  f"(min {speedups[sel].min():.1f}x), same K {same[sel].mean():.0%}, "
                  f"median time ref {np.median([r[5] for r, s in zip(rows, sel) if s]):.3f} s, "
                  f"ours (paper settings) {np.median([r[6] for r, s in zip(rows, sel) if s]):.3f} s, "
                  f"ours (defaults) {np.median([r[7] for r, s in zip(rows, sel) if s]):.3f} s")
    print(f"all {len(rows)} inputs: >=5x faster at the same K on {ok.mean():.0%} "
          f"(target: >= 95%); same K on {same.mean():.0%}; "
          f"median speedup {np.median(speedups):.1f}x")


if __name__ == "__main__":
    main()
