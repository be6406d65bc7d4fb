"""Which eigengap rule picks K best? Planted partitions and real images.

Every rule runs with the same silhouette search around its K0:

* planted partitions (K = 2..8, noise 0.8 / 1.2 / 1.6, balanced and 4:1
  unbalanced groups: 42 cases, 600 samples, 384 dimensions): exact-K count,
  for the final K and for K0;
* real images, when ../shared/data is present (CamVid val and BSDS500 val,
  weights-free embedder, patch-level labels upsampled without CRF): mean
  per-image Hungarian mIoU against the ground truth (BSDS: the first human
  segmentation), the chosen K distribution, and how often one segment was
  returned;
* near-uniform images (flat colours and smooth gradients with pixel noise):
  how often the one-segment rule fires (it should, every time).

Run:  python benchmarks/bench_k_selection.py [--quick]
"""

import argparse
import itertools
from pathlib import Path

import numpy as np

from sklearn_clasp import adaptive_spectral_clustering, cosine_affinity
from sklearn_clasp.datasets import make_planted_partition
from sklearn_clasp.embedding import HandcraftedPatchEmbedder
from sklearn_clasp.io import load_image
from sklearn_clasp.metrics import segmentation_scores
from sklearn_clasp.refine import upsample_labels

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

RULES = {
    "paper (affinity, elbow)": dict(spectrum="affinity", eigengap_rule="elbow"),
    "affinity, largest": dict(spectrum="affinity", eigengap_rule="largest"),
    "affinity, relative": dict(spectrum="affinity", eigengap_rule="relative"),
    "normalized, elbow": dict(spectrum="normalized", eigengap_rule="elbow"),
    "normalized, largest": dict(spectrum="normalized", eigengap_rule="largest"),
    "normalized, relative": dict(spectrum="normalized", eigengap_rule="relative"),
}


def planted(quick):
    hits = {r: [0, 0] for r in RULES}
    cases = list(itertools.product(range(2, 9), (0.8, 1.2, 1.6), (1.0, 4.0)))
    if quick:
        cases = cases[::3]
    for k, noise, imb in cases:
        X, _ = make_planted_partition(
            k, n_samples=600, n_features=384, noise=noise, imbalance=imb,
            random_state=100 * k + int(10 * noise) + int(imb),
        )
        A = cosine_affinity(X)
        for rule, kw in RULES.items():
            _, info = adaptive_spectral_clustering(
                A, features=X, random_state=0, single_segment_threshold=None, **kw
            )
            hits[rule][0] += info["n_clusters"] == k
            hits[rule][1] += info["eigengap_k"] == k
    print(f"Planted partitions: exact K in {len(cases)} cases")
    print(f"  {'rule':26s} {'final K':>8s} {'K0':>6s}")
    for rule, (final, k0) in hits.items():
        print(f"  {rule:26s} {final:5d}/{len(cases)} {k0:3d}/{len(cases)}")


def _camvid(quick):
    images = sorted((SHARED / "camvid" / "val").glob("*.png"))
    for p in images[: 15 if quick else None]:
        truth = np.asarray(load_image(SHARED / "camvid" / "valannot" / p.name)[:, :, 0])
        yield "camvid", p, truth, 11


def _bsds(quick):
    from scipy.io import loadmat

    images = sorted((SHARED / "bsds500" / "images" / "val").glob("*.jpg"))
    for p in images[: 15 if quick else None]:
        gt = loadmat(SHARED / "bsds500" / "groundTruth" / "val" / (p.stem + ".mat"))
        truth = gt["groundTruth"][0, 0]["Segmentation"][0, 0].astype(np.int64)
        yield "bsds500", p, truth, None


def real_images(quick):
    if not SHARED.is_dir():
        print("\n(../shared/data not found: real-image comparison skipped)")
        return
    embedder = HandcraftedPatchEmbedder()
    results, seconds = {}, []
    for dataset, path, truth, ignore in itertools.chain(_camvid(quick), _bsds(quick)):
        rec = embedder.transform([str(path)])[0]
        X = rec.feature_matrix
        A = cosine_affinity(X)
        for rule, kw in RULES.items():
            labels, info = adaptive_spectral_clustering(A, features=X, random_state=0, **kw)
            mask = upsample_labels(labels.reshape(rec.grid_shape), truth.shape)
            s = segmentation_scores(mask, truth, ignore_index=ignore)
            results.setdefault((dataset, rule), []).append(
                (s["miou"], info["n_clusters"], info["single_segment"])
            )
            if rule == "affinity, relative":
                seconds.append((info["second_eigenvalue"], f"{dataset}/{path.name}"))
    print("\nReal images, weights-free embedder, no CRF (per-image Hungarian mIoU)")
    print(f"  {'dataset':8s} {'rule':26s} {'images':>6s} {'mIoU':>6s} {'median K':>8s} "
          f"{'K range':>8s} {'K=1':>4s}")
    for (dataset, rule), rows in results.items():
        miou = np.mean([r[0] for r in rows])
        ks = [r[1] for r in rows]
        print(f"  {dataset:8s} {rule:26s} {len(rows):6d} {miou:6.3f} {np.median(ks):8.1f} "
              f"{min(ks):>3d}..{max(ks):<3d} {sum(r[2] for r in rows):4d}")
    values = np.array([v for v, _ in seconds])
    lowest = min(seconds)
    print(f"  second eigenvalue of the normalised affinity on these photographs: min "
          f"{lowest[0]:.3f} ({lowest[1]}), 1st percentile {np.percentile(values, 1):.3f}, "
          f"5th {np.percentile(values, 5):.3f}, median {np.median(values):.3f}")


def near_uniform():
    rng = np.random.RandomState(0)
    embedder = HandcraftedPatchEmbedder()
    fired, seconds = 0, []
    cases = 0
    for colour in ([128, 128, 128], [20, 20, 20], [240, 240, 240], [200, 40, 40], [40, 90, 200]):
        for kind in ("flat", "gradient"):
            for noise in (0.0, 4.0, 10.0):
                img = np.empty((224, 280, 3))
                img[:] = colour
                if kind == "gradient":
                    img += np.linspace(-20, 20, 280)[None, :, None]
                img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
                rec = embedder.transform([img])[0]
                X = rec.feature_matrix
                _, info = adaptive_spectral_clustering(cosine_affinity(X), features=X,
                                                       random_state=0)
                fired += info["single_segment"]
                seconds.append(info["second_eigenvalue"])
                cases += 1
    print(f"\nNear-uniform images: one segment in {fired}/{cases}; second eigenvalue of "
          f"the normalised affinity: max {max(seconds):.3f} (threshold 0.05)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases and images")
    args = parser.parse_args()
    planted(args.quick)
    near_uniform()
    real_images(args.quick)


if __name__ == "__main__":
    main()
