"""Do unsupervised scores rank settings as the ground truth does?

For a grid of segmenter settings (``k_max``, ``beta``, ``eigengap_rule``,
``k_selection``, the paper's rule), every image of CamVid val and BSDS500 val
is segmented (weights-free ``HandcraftedPatchEmbedder`` features, cosine
affinity, the adaptive segmenter, DenseCRF refinement) and scored with

* the labelled scores: mean per-image Hungarian mIoU (CamVid, ignoring
  "unlabelled"; BSDS500: mean over the annotators) and the segmentation
  covering (BSDS500);
* unsupervised candidates, none of which is the segmenter's own criterion
  except the baseline:

  ``silhouette``
      the silhouette of the chosen partition (what the default
      ``k_selection="silhouette"`` maximises; the baseline);
  ``noise_stability``
      ARI between the partition and the partition of the same image with
      Gaussian noise added to its features (10 % of their spread), another
      seed;
  ``subsample_stability``
      ARI, on the kept patches, between the partition and the partition of a
      random 80 % of the patches;
  ``crf_agreement``
      the fraction of pixels the DenseCRF leaves with the label of their
      patch (how well the patch partition follows the image's edges).

For each data set and candidate, the Spearman correlation over the settings
between the candidate's mean and the labelled mean is printed and written to
JSON. Features are cached (``--cache``) so a rerun costs only the
segmentation.

    python benchmarks/bench_unsupervised_scorer.py --limit 25 --cache /tmp/clasp_feat \\
        --n-jobs 2 --out /tmp/unsup.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from joblib import Memory, Parallel, delayed
from scipy.stats import spearmanr
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import SHARED, bsds500, camvid  # noqa: E402

from sklearn_clasp.affinity import cosine_affinity  # noqa: E402
from sklearn_clasp.embedding import HandcraftedPatchEmbedder  # noqa: E402
from sklearn_clasp.image import resample_nearest  # noqa: E402
from sklearn_clasp.io import load_image  # noqa: E402
from sklearn_clasp.metrics import segmentation_covering, segmentation_scores  # noqa: E402
from sklearn_clasp.refine import dense_crf  # noqa: E402
from sklearn_clasp.spectral import PAPER_SETTINGS, adaptive_spectral_clustering  # noqa: E402

SEED = 0
NOISE = 0.10
KEEP = 0.8


def settings_grid():
    """The settings compared, by name."""
    grid = {}
    for k_max in (3, 5, 8, 15):
        for beta in (0.0, 0.5, 1.0):
            grid[f"k_max={k_max} beta={beta}"] = dict(k_max=k_max, beta=beta)
    for rule in ("largest", "elbow", "entropy"):
        grid[f"eigengap_rule={rule}"] = dict(eigengap_rule=rule)
    for sel in ("eigengap", "stability", "gap"):
        grid[f"k_selection={sel}"] = dict(k_selection=sel)
    grid["paper"] = dict(PAPER_SETTINGS)
    return grid


def _features(path):
    (rec,) = HandcraftedPatchEmbedder().transform([str(path)])
    return rec.features


def _segment(X, grid_shape, params, seed):
    A = cosine_affinity(X)
    labels, info = adaptive_spectral_clustering(A, features=X, random_state=seed, **params)
    return labels, info


def score_image(path, truth, features, settings, kind):
    image = load_image(str(path))
    h, w = features.shape[:2]
    X = features.reshape(h * w, -1).astype(np.float64)
    rng = np.random.RandomState(SEED)
    noisy = X + NOISE * X.std(axis=0, keepdims=True) * rng.randn(*X.shape)
    keep = np.sort(rng.choice(h * w, int(KEEP * h * w), replace=False))
    truths = truth if isinstance(truth, list) else [truth]
    out = {}
    for name, params in settings.items():
        labels, info = _segment(X, (h, w), params, SEED)
        pixels = resample_nearest(labels.reshape(h, w), image.shape[:2])
        mask = dense_crf(image, pixels)
        row = {"n_clusters": int(info["n_clusters"]),
               "silhouette": float(info["silhouette"])}
        row["miou"] = float(np.mean([segmentation_scores(t, mask)["miou"] for t in truths]))
        if kind == "bsds":
            row["covering"] = float(np.mean([segmentation_covering(t, mask) for t in truths]))
        noisy_labels, _ = _segment(noisy, (h, w), params, SEED + 1)
        row["noise_stability"] = float(adjusted_rand_score(labels, noisy_labels))
        sub_labels, _ = adaptive_spectral_clustering(
            cosine_affinity(X[keep]), features=X[keep], random_state=SEED + 2, **params)
        row["subsample_stability"] = float(adjusted_rand_score(labels[keep], sub_labels))
        row["crf_agreement"] = float(np.mean(mask == pixels))
        out[name] = row
    return out


CANDIDATES = ("silhouette", "noise_stability", "subsample_stability", "crf_agreement")


def run(dataset, kind, limit, cache, n_jobs):
    data = dataset(limit=limit)
    memory = Memory(cache, verbose=0)
    features = memory.cache(_features)
    settings = settings_grid()
    items = [(p, data.read_truth(t)) for _, p, t in data.items]
    feats = [features(p) for p, _ in items]
    t0 = time.perf_counter()
    per_image = Parallel(n_jobs=n_jobs)(
        delayed(score_image)(p, t, f, settings, kind) for (p, t), f in zip(items, feats))
    seconds = time.perf_counter() - t0
    labelled = ("miou", "covering") if kind == "bsds" else ("miou",)
    means = {name: {key: float(np.mean([img[name][key] for img in per_image]))
                    for key in per_image[0][name]} for name in settings}
    rho = {}
    for target in labelled:
        y = [means[n][target] for n in settings]
        rho[target] = {c: float(spearmanr([means[n][c] for n in settings], y)[0])
                       for c in CANDIDATES}
    return {"dataset": data.name, "n_images": len(items), "seconds": seconds,
            "means": means, "spearman": rho}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=25, help="images per data set")
    ap.add_argument("--cache", default="/tmp/clasp_unsup_features")
    ap.add_argument("--n-jobs", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not (SHARED / "camvid").is_dir():
        sys.exit(f"no data at {SHARED}; see ../shared/README.md")
    results = [run(camvid, "camvid", args.limit, args.cache, args.n_jobs),
               run(bsds500, "bsds", args.limit, args.cache, args.n_jobs)]
    for r in results:
        print(f"\n{r['dataset']} ({r['n_images']} images, {r['seconds']:.0f} s)")
        names = list(r["means"])
        cols = ["n_clusters", *r["spearman"], *CANDIDATES]
        print(f"{'setting':28s}" + "".join(f"{c[:12]:>13s}" for c in cols))
        for n in names:
            print(f"{n:28s}" + "".join(f"{r['means'][n][c]:13.3f}" for c in cols))
        for target, rho in r["spearman"].items():
            print(f"Spearman with {target}: "
                  + ", ".join(f"{c} {v:+.2f}" for c, v in rho.items()))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
