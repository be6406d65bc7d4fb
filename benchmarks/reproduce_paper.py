"""Reproduce the CLASP paper's evaluation: COCO-Stuff-27 and ADE20K val with DINOv2.

The paper's method (DINOv2 ViT-S/14 with registers, each image at its own size
rounded to multiples of 14, the paper's K selection ``PAPER_SETTINGS``,
DenseCRF with the paper's settings) is run image by image and scored under
two protocols, both printed:

* per-image Hungarian matching (the protocol of training-free per-image
  methods such as DiffSeg): each image's segments are matched to the classes
  present in it; mIoU and pixel accuracy are averaged over images;
* dataset-level Hungarian matching (STEGO's): segment ids are arbitrary from
  one image to the next, so every segment is first given a data-set-wide
  cluster id: the segments' mean DINOv2 features (unit length) of all images
  are clustered with k-means into as many clusters as there are classes (27
  or 150; transductive, on the evaluated images, as in Deep Spectral
  Methods). One confusion matrix of clusters against classes is summed over
  the data set and matched once.

Commands (data in the official layouts, see ``benchmarks/_data.py``; the
official checkpoint ``dinov2_vits14_reg4_pretrain.pth``)::

    python benchmarks/reproduce_paper.py coco --root /data/cocostuff \\
        --weights /path/dinov2_vits14_reg4_pretrain.pth --out coco27.json
    python benchmarks/reproduce_paper.py ade20k --root /data/ADEChallengeData2016 \\
        --weights /path/dinov2_vits14_reg4_pretrain.pth --out ade20k.json

``coco`` reads ``images/val2017``, ``annotations/val2017`` (COCO-Stuff-164k
label maps, fine ids mapped to the 27 coarse classes) and the curated
2,175-image list ``curated/val2017/Coco164kFull_Stuff_Coarse_7.txt``;
``ade20k`` reads ``images/validation`` and ``annotations/validation`` (2,000
images, 150 classes, 0 ignored). Add ``--device cuda`` on a GPU and
``--cache DIR`` to keep the DINOv2 features between runs.

Plumbing check on the few sample images in ``../shared/data/samples``
(random weights and tiny inputs: the numbers mean nothing)::

    python benchmarks/reproduce_paper.py coco --root ../shared/data/samples/coco \\
        --labels coarse27 --weights random --short-side 112
    python benchmarks/reproduce_paper.py ade20k --root ../shared/data/samples/ade20k \\
        --weights random --short-side 112
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import ade20k, coco_stuff27, resize_and_center_crop  # noqa: E402

from sklearn_clasp.io import load_image  # noqa: E402
from sklearn_clasp.metrics import (  # noqa: E402
    SegmentationScoreAccumulator,
    confusion_matrix,
    segmentation_scores,
)
from sklearn_clasp.pipeline import make_clasp_pipeline  # noqa: E402

logger = logging.getLogger("reproduce_paper")


def _short_side(value):
    return None if value.lower() == "none" else int(value)


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Commands:\n" + __doc__.split("Commands", 1)[1],
    )
    parser.add_argument("dataset", choices=["coco", "ade20k"])
    parser.add_argument("--root", required=True, help="data root (official layout)")
    parser.add_argument(
        "--weights", default="official",
        help="a DINOv2 checkpoint path, 'official' (looked up in $SKLEARN_CLASP_WEIGHTS "
             "and the torch hub cache; downloaded only with --download) or 'random' "
             "(plumbing checks only)")
    parser.add_argument("--download", action="store_true",
                        help="with --weights official: download the file if absent")
    parser.add_argument("--embedder", choices=["dinov2", "handcrafted"], default="dinov2",
                        help="'handcrafted': the weights-free baseline instead of DINOv2")
    parser.add_argument("--model", default="dinov2_vits14_reg", help="DINOv2 backbone")
    parser.add_argument("--labels", choices=["fine", "coarse27"], default="fine",
                        help="coco: fine COCO-Stuff label maps (annotations/) or maps "
                             "already in the 27 coarse classes (labels27/)")
    parser.add_argument("--list", dest="list_file", default=None,
                        help="coco: image id list (default: the curated list under root)")
    parser.add_argument("--short-side", type=_short_side, default=None,
                        help="embedder input short side; 'none' (default) keeps each "
                             "image's size, rounded to multiples of 14, as the paper")
    parser.add_argument("--center-crop", type=int, default=None, metavar="SIZE",
                        help="evaluate on SIZE x SIZE central crops after scaling the "
                             "short side to SIZE (STEGO's evaluation uses 320); default: "
                             "whole images")
    parser.add_argument("--k-rule", choices=["paper", "default"], default="paper",
                        help="'paper': PAPER_SETTINGS (elbow rule, no one-segment test); "
                             "'default': the package defaults")
    parser.add_argument("--refine", choices=["crf", "nearest", "bilinear"], default="crf")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", default=None, help="directory to cache DINOv2 features")
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--random-state", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no per-image progress")
    return parser


def load_dataset(args):
    if args.dataset == "coco":
        return coco_stuff27(args.root, labels=args.labels, list_file=args.list_file,
                            limit=args.limit)
    return ade20k(args.root, limit=args.limit)


def build_pipeline(args):
    if args.embedder == "handcrafted":
        return make_clasp_pipeline("handcrafted", short_side=args.short_side,
                                   paper=args.k_rule == "paper", refine=args.refine,
                                   random_state=args.random_state)
    from sklearn_clasp.embedding import DinoPatchEmbedder

    weights = None if args.weights == "official" else args.weights
    embedder = DinoPatchEmbedder(
        args.model, weights=weights, download=args.download, short_side=args.short_side,
        device=args.device, memory=args.cache, random_state=args.random_state,
    )
    pipe = make_clasp_pipeline(embedder, paper=args.k_rule == "paper", refine=args.refine,
                               random_state=args.random_state)
    with warnings.catch_warnings():
        if args.weights == "random":
            warnings.simplefilter("ignore")  # the random-weights warning, once is enough
        pipe.steps[0][1].fit(None)
    return pipe


def segment_descriptors(features, labels):
    """Mean unit-length feature of every segment ``0 .. max(labels)``.

    ``features`` (n_patches, dim) and ``labels`` (n_patches,); returns
    (n_segments, dim).
    """
    X = np.asarray(features, dtype=np.float64).reshape(len(labels), -1)
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    labels = np.asarray(labels).ravel()
    n = int(labels.max()) + 1
    sums = np.zeros((n, X.shape[1]))
    np.add.at(sums, labels, X)
    sizes = np.bincount(labels, minlength=n)[:, None]
    return sums / np.maximum(sizes, 1)


def dataset_level_scores(descriptors, confusions, n_classes, random_state):
    """Cluster segments across images, then score with one Hungarian matching.

    ``descriptors[i]`` (n_segments_i, dim) and ``confusions[i]`` (n_classes,
    n_segments_i): image ``i``'s segment features and pixel counts of class
    against segment (``confusion_matrix(truth, mask)``). Returns the ``"dataset"`` result of
    ``SegmentationScoreAccumulator`` plus ``n_clusters`` and ``n_segments``.
    """
    from sklearn.cluster import KMeans

    all_desc = np.concatenate(descriptors)
    all_desc /= np.maximum(np.linalg.norm(all_desc, axis=1, keepdims=True), 1e-12)
    n_distinct = len(np.unique(all_desc.round(6), axis=0))
    n_clusters = min(n_classes, n_distinct)
    if n_clusters < n_classes:
        logger.warning("only %d distinct segments in all: clustering them into %d "
                       "clusters, not %d; the dataset-level numbers mean little",
                       n_distinct, n_clusters, n_classes)
    cluster = KMeans(n_clusters=n_clusters, n_init=10,
                     random_state=random_state).fit_predict(all_desc)
    acc = SegmentationScoreAccumulator("dataset", n_classes=n_classes)
    start = 0
    for conf in confusions:
        ids = cluster[start: start + conf.shape[1]]
        start += conf.shape[1]
        rows, cols = np.nonzero(conf)
        counts = conf[rows, cols]
        # the image's scored pixels, as (class, cluster id) pairs
        acc.add(np.repeat(rows, counts), np.repeat(ids[cols], counts))
    result = acc.result()
    result["n_clusters"] = int(n_clusters)
    result["n_segments"] = int(len(all_desc))
    return result


def run(args):
    data = load_dataset(args)
    pipe = build_pipeline(args)
    embed, middle, refine = pipe.steps[0][1], pipe[1:-1], pipe.steps[-1][1]
    descriptors, confusions, rows = [], [], []
    times = {"embed": 0.0, "segment": 0.0, "refine": 0.0}
    for i, (name, image_path, truth_path) in enumerate(data.items):
        image = load_image(image_path)
        truth = data.read_truth(truth_path)
        if args.center_crop:
            image, truth = resize_and_center_crop(image, truth, args.center_crop)
        if truth.shape != image.shape[:2]:
            raise ValueError(f"{name}: image {image.shape[:2]} and ground truth "
                             f"{truth.shape} differ in size.")
        t0 = time.perf_counter()
        records = embed.transform([image])
        t1 = time.perf_counter()
        records = middle.fit_transform(records)
        t2 = time.perf_counter()
        mask = refine.fit_transform(records)[0]
        t3 = time.perf_counter()
        times["embed"] += t1 - t0
        times["segment"] += t2 - t1
        times["refine"] += t3 - t2
        rec = records[0]
        k = int(rec.info["n_clusters"])
        try:
            scored = segmentation_scores(truth, mask)
        except ValueError as exc:  # every pixel ignored
            if "no pixel to score" not in str(exc):
                raise
            scored = None
        descriptors.append(segment_descriptors(rec.feature_matrix, rec.labels.ravel()))
        confusions.append(confusion_matrix(truth, mask, n_true=data.n_classes,
                                           n_pred=len(descriptors[-1])))
        row = {"name": name, "k": k, "grid": list(rec.grid_shape),
               "seconds": round(t3 - t0, 4)}
        if scored is not None:
            row.update(miou=scored["miou"], pixel_accuracy=scored["pixel_accuracy"])
        rows.append(row)
        if not args.quiet:
            print(f"  [{i + 1}/{len(data.items)}] {name}: K={k}"
                  + (f", per-image mIoU {row['miou']:.3f}" if "miou" in row else
                     ", nothing to score"), flush=True)

    n = len(data.items)
    dataset = dataset_level_scores(descriptors, confusions, data.n_classes, args.random_state)
    scored = [r for r in rows if "miou" in r]
    if not scored:
        raise ValueError("no image has any pixel to score.")
    ks = Counter(r["k"] for r in rows)
    settings = {
        "dataset": data.name, "root": str(args.root), "n_images": n,
        "embedder": args.embedder,
        "model": args.model if args.embedder == "dinov2" else None,
        "weights": args.weights if args.embedder == "dinov2" else None,
        "weights_sha256": getattr(embed, "weights_sha256_", None),
        "short_side": args.short_side, "center_crop": args.center_crop,
        "k_rule": args.k_rule, "refine": args.refine, "random_state": args.random_state,
    }
    summary = {
        "per_image": {"miou": float(np.mean([r["miou"] for r in scored])),
                      "pixel_accuracy": float(np.mean([r["pixel_accuracy"] for r in scored])),
                      "n_scored": len(scored)},
        "dataset": {"miou": dataset["miou"], "pixel_accuracy": dataset["pixel_accuracy"],
                    "n_clusters": dataset["n_clusters"], "n_segments": dataset["n_segments"]},
        "k_distribution": {str(k): ks[k] for k in sorted(ks)},
        "seconds_per_image": {key: value / n for key, value in times.items()},
    }
    return {"settings": settings, "summary": summary, "images": rows}


def print_report(result):
    s, r = result["settings"], result["summary"]
    weights = f", weights {s['weights']}" if s["embedder"] == "dinov2" else ""
    crop = f"; {s['center_crop']}px centre crops" if s["center_crop"] else ""
    print(f"\n{s['dataset']}: {s['n_images']} images{crop}; embedder {s['embedder']}"
          f"{weights}; short side {s['short_side'] or 'image size'}; K rule "
          f"{s['k_rule']}; refinement {s['refine']}")
    print(f"  {'protocol':58s} {'mIoU':>6s} {'pix.acc':>7s}")
    print(f"  {'per-image Hungarian (DiffSeg)':58s} {r['per_image']['miou']:6.3f} "
          f"{r['per_image']['pixel_accuracy']:7.3f}")
    d = r["dataset"]
    label = (f"dataset-level Hungarian (STEGO; {d['n_segments']} segments "
             f"k-means -> {d['n_clusters']})")
    print(f"  {label:58s} {d['miou']:6.3f} {d['pixel_accuracy']:7.3f}")
    print("  K per image: " + ", ".join(f"{k}: {v}" for k, v in r["k_distribution"].items()))
    t = r["seconds_per_image"]
    print(f"  seconds per image: embed {t['embed']:.3f}, segment {t['segment']:.3f}, "
          f"refine {t['refine']:.3f}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    result = run(args)
    print_report(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"results written to {args.out}")
    return result


if __name__ == "__main__":
    main()
