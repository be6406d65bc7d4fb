"""Where the landmark path should take over from the dense affinity (``max_dense_samples``).

Weights-free features of CamVid val images (the first ``--images``) resized so
that their patch grids hold about 4,000 to 10,000 patches (``short_side=None``),
clustered by ``cluster_features`` with the dense affinity
(``max_dense_samples=None``) and with ``m`` random landmarks (``m`` = 2,000,
4,000, 6,000): seconds (one BLAS thread), the chosen K, and the adjusted Rand
index of each partition against the dense one with ``random_state=0``. The
reference spread is the dense path under another seed (``random_state=1``):
a landmark partition that agrees with the dense one as well as a reseeded
dense run does is as good as the dense one.

Run:  python benchmarks/bench_landmarks.py [--images 3] [--sizes 896 1120 1400]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import SHARED, camvid  # noqa: E402


def main(argv=None):
    from sklearn.metrics import adjusted_rand_score
    from threadpoolctl import threadpool_limits

    from sklearn_clasp.embedding import HandcraftedPatchEmbedder
    from sklearn_clasp.image import resize_image
    from sklearn_clasp.io import load_image
    from sklearn_clasp.spectral import cluster_features

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[896, 1120, 1400],
                        help="square image sides in pixels (64, 80, 100 patches a side)")
    parser.add_argument("--landmarks", type=int, nargs="+", default=[2000, 4000, 6000])
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        print(f"{SHARED} not found: nothing to measure.")
        return
    print("| image | patches | dense s | dense K | reseeded dense ARI (K) | "
          + " | ".join(f"{m} landmarks: s, K, ARI" for m in args.landmarks) + " |")
    print("|---|---|---|---|---|" + "---|" * len(args.landmarks))
    with threadpool_limits(1):
        for name, path, _ in camvid().items[: args.images]:
            image = load_image(path)
            for size in args.sizes:
                X = HandcraftedPatchEmbedder(short_side=None).transform(
                    [resize_image(image, (size, size))])[0].feature_matrix
                n = X.shape[0]
                t0 = time.perf_counter()
                dense, info = cluster_features(X, max_dense_samples=None, random_state=0)
                t_dense = time.perf_counter() - t0
                other, info1 = cluster_features(X, max_dense_samples=None, random_state=1)
                cells = [f"{adjusted_rand_score(dense, other):.3f} ({info1['n_clusters']})"]
                for m in args.landmarks:
                    if m >= n:
                        cells.append("-")
                        continue
                    t0 = time.perf_counter()
                    lab, li = cluster_features(X, max_dense_samples=m, random_state=0)
                    cells.append(f"{time.perf_counter() - t0:.2f}, {li['n_clusters']}, "
                                 f"{adjusted_rand_score(dense, lab):.3f}")
                print(f"| {name} | {n} | {t_dense:.2f} | {info['n_clusters']} | "
                      + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
