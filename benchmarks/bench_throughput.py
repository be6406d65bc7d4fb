"""Throughput end to end: images per second from files on disk to masks and records on disk.

``segment_collection`` runs over a folder of images (CamVid val repeated to
``--count`` files, or synthetic shape images when ../shared/data is absent
or with ``--synthetic``) and writes each image's mask, overlay and JSON
record. Reported:

- images per second over the whole run (wall clock, start-up of the worker
  processes included; a two-image warm-up run first takes the imports, the
  model and pydensecrf's first call out);
- each stage's seconds per image, from the JSON records (``load``,
  ``embed``: the image's share of its batch, ``affinity``, ``segment``,
  ``refine``, ``write``), and the CPU seconds per image they add up to;
- the floor: the bare forward of the backbone on the same device (DINOv2's
  ``patch_features`` on tensors already made, batched; the weights-free
  embedder's ``handcrafted_patch_features`` on images already decoded), in
  images per second, and the whole run's throughput as a fraction of it;
- on CUDA, the peak GPU memory of this process.

The CPU run of the issue::

    python benchmarks/bench_throughput.py --embedder handcrafted --n-jobs 2 --count 60

The GPU run (one H200; DINOv2 ViT-S/14-reg with random weights costs the same
as the official ones; 448-pixel short side), one command::

    python benchmarks/bench_throughput.py --embedder dinov2 --device cuda \\
        --batch-size 64 512 --count 2000 --n-jobs 1 8 --out gpu.json

Run:  python benchmarks/bench_throughput.py [--embedder handcrafted|dinov2]
      [--device none|cpu|cuda|auto] [--n-jobs N] [--count N] [--synthetic]
      [--short-side 448] [--batch-size B] [--refine crf|nearest|bilinear]
      [--no-overlay] [--work DIR] [--out JSON]
      python benchmarks/bench_throughput.py --waste
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import SHARED, best_of  # noqa: E402

STAGES = ("load", "embed", "affinity", "segment", "refine", "write")


def make_inputs(folder, count, synthetic, seed=0):
    """``count`` image files in ``folder``: CamVid val repeated, or synthetic shapes."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    sources = [] if synthetic else sorted((SHARED / "camvid" / "val").glob("*.png"))
    kind = "CamVid val" if sources else "synthetic shapes (480 x 360)"
    for i in range(count):
        target = folder / f"img{i:05d}.png"
        if target.exists():
            continue
        if sources:
            shutil.copyfile(sources[i % len(sources)], target)
        else:
            from sklearn_clasp.datasets import make_shapes_image

            image, _ = make_shapes_image(360, 480, n_shapes=1 + i % 6, noise=6,
                                         random_state=seed + i)
            Image.fromarray(image).save(target)
    return kind


def make_pipeline(args):
    from sklearn_clasp.pipeline import make_clasp_pipeline

    kw = {"short_side": args.short_side}
    if args.embedder == "dinov2":
        kw.update(weights=args.weights, batch_size=args.batch_size, download=False)
        if args.autocast:
            kw["autocast"] = args.autocast
    device = None if args.device == "none" else args.device
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights warn
        pipe = make_clasp_pipeline(args.embedder, refine=args.refine, random_state=0,
                                   device=device, **kw)
        if args.crf_backend:
            pipe.set_params(refine__backend=args.crf_backend)
        pipe[0].fit(None)
    return pipe


def floor(pipe, paths, args):
    """Images per second of the bare backbone forward on the same device."""
    from sklearn_clasp.io import load_image

    images = [load_image(p) for p in paths]
    embed = pipe[0]
    if args.embedder == "handcrafted":
        from sklearn_clasp.embedding import handcrafted_patch_features, patch_grid_shape

        params = embed.get_params()
        kw = {k: params[k] for k in ("patch_size", "color_weight", "texture_weight",
                                     "position_weight", "color_sigma")}
        grids = [patch_grid_shape(*im.shape[:2], short_side=args.short_side,
                                  patch_size=params["patch_size"]) for im in images]
        handcrafted_patch_features(images[0], grids[0], **kw)
        start = time.perf_counter()
        for im, g in zip(images, grids):
            handcrafted_patch_features(im, g, **kw)
        return len(images) / (time.perf_counter() - start), "handcrafted_patch_features"
    import torch

    from sklearn_clasp.embedding._dinov2 import prepare_dino_input

    model = embed.model_
    x, _ = prepare_dino_input(images[0], short_side=args.short_side)
    batch = torch.from_numpy(np.stack([x] * args.batch_size)).permute(0, 3, 1, 2)
    p = next(model.parameters())
    batch = batch.to(p.device, torch.float32).div_(255.0).to(p.dtype)
    sync = torch.cuda.synchronize if p.device.type == "cuda" else (lambda: None)
    autocast = (torch.autocast(p.device.type, dtype=getattr(torch, args.autocast))
                if args.autocast else torch.autocast(p.device.type, enabled=False))
    with torch.inference_mode(), autocast:
        model.patch_features(batch)  # warm-up
        sync()
        n_batches = max(2, -(-len(images) // args.batch_size))
        start = time.perf_counter()
        for _ in range(n_batches):
            model.patch_features(batch)
        sync()
    seconds = time.perf_counter() - start
    return n_batches * args.batch_size / seconds, f"patch_features, batch {args.batch_size}"


def run(args):
    from sklearn_clasp.collection import segment_collection

    work = Path(args.work or tempfile.mkdtemp(prefix="clasp_throughput_"))
    inputs = work / "images"
    kind = make_inputs(inputs, args.count, args.synthetic)
    paths = sorted(inputs.glob("*.png"))[: args.count]
    pipe = make_pipeline(args)
    load_before = os.getloadavg()
    # warm-up: imports, first calls, worker start-up cost measured separately
    t0 = time.perf_counter()
    segment_collection(paths[:2], work / "warmup", pipeline=pipe, n_jobs=1, overwrite=True,
                       write_overlay=not args.no_overlay)
    warmup = time.perf_counter() - t0
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    cuda = args.device in ("cuda", "auto") or args.device.startswith("cuda:")
    if cuda:
        import torch

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    report = segment_collection(paths, out, pipeline=pipe, n_jobs=args.n_jobs,
                                overwrite=True, write_overlay=not args.no_overlay,
                                chunk_size=args.chunk_size)
    wall = time.perf_counter() - start
    load_after = os.getloadavg()
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    per_stage = {s: float(np.mean([r["timings"].get(s, 0.0) for r in records]))
                 for s in STAGES}
    rate = report.n_done / wall
    floor_rate, floor_what = floor(pipe, paths[: min(len(paths), 32)], args)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s)",
        "device": args.device,
        "gpu": _gpu_name() if cuda else None,
        "inputs": f"{len(paths)} files, {kind}",
        "embedder": args.embedder,
        "short_side": args.short_side,
        "n_jobs": args.n_jobs,
        "refine": pipe.get_params()["refine__method"],
        "crf": {k: pipe.get_params()[f"refine__{k}"] for k in ("backend", "unary", "n_iter")},
        "done": report.n_done,
        "failed": report.n_failed,
        "wall_s": wall,
        "images_per_s": rate,
        "warmup_s": warmup,
        "stage_s_per_image": per_stage,
        "stage_sum_s_per_image": float(sum(per_stage.values())),
        "k_median": float(np.median([r["n_clusters"] for r in records])),
        "floor_images_per_s": floor_rate,
        "floor": floor_what,
        "fraction_of_floor": rate / floor_rate,
        "load_average_before_after": [load_before, load_after],
    }
    if cuda:
        import torch

        result["gpu_peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _gpu_name():
    import torch

    return torch.cuda.get_device_name()


def print_result(r):
    print(f"\n{r['inputs']}; {r['embedder']} embedder, short side {r['short_side']}, "
          f"device {r['device']}, n_jobs {r['n_jobs']}, batch size {r['batch_size']}, "
          f"refine {r['refine']} {r['crf']}")
    print(f"{r['done']} done, {r['failed']} failed in {r['wall_s']:.1f} s: "
          f"**{r['images_per_s']:.2f} images/s** (warm-up run {r['warmup_s']:.1f} s; "
          f"median K {r['k_median']:g})")
    print("\n| stage | s/image |\n|---|---|")
    for s, v in r["stage_s_per_image"].items():
        print(f"| {s} | {v:.4f} |")
    print(f"| sum (CPU s/image in the stages) | {r['stage_sum_s_per_image']:.4f} |")
    print(f"\nfloor ({r['floor']}): {r['floor_images_per_s']:.1f} images/s; the run reaches "
          f"{100 * r['fraction_of_floor']:.1f}% of it")
    if r.get("gpu_peak_memory_mb") is not None:
        print(f"GPU {r['gpu']}: peak memory {r['gpu_peak_memory_mb']:.0f} MB")
    print(f"load average before / after: {r['load_average_before_after'][0][0]:.2f} / "
          f"{r['load_average_before_after'][1][0]:.2f} (1 min)")


def waste():
    """The small per-image costs the issue lists, before and after (milliseconds)."""
    from threadpoolctl import threadpool_limits

    from sklearn_clasp.affinity import cosine_affinity, limit_threads
    from sklearn_clasp.datasets import make_planted_partition
    from sklearn_clasp.image import compact_labels
    from sklearn_clasp.spectral._eigen import check_affinity

    def ms(fn, repeats=10):
        return 1e3 * best_of(fn, repeats)[0]

    rng = np.random.RandomState(0)
    rows = []
    for shape in ((360, 480), (1000, 1000)):
        labels = rng.randint(0, 8, (shape[0] // 14 + 1, shape[1] // 14 + 1)).repeat(
            14, 0).repeat(14, 1)[: shape[0], : shape[1]].astype(np.int64)
        rows.append((f"distinct labels of a {shape[1]} x {shape[0]} mask",
                     ms(lambda: np.unique(labels, return_inverse=True)),
                     ms(lambda: compact_labels(labels))))
    rows.append(("thread-pool limit per call (threadpool_limits, a new scan / limit_threads, "
                 "cached)", ms(lambda: threadpool_limits(1).unregister()),
                 ms(lambda: limit_threads(1).__enter__().unregister())))
    X, _ = make_planted_partition(4, n_samples=5476, n_features=384, random_state=0)
    X = X.astype(np.float32)
    A = cosine_affinity(X)
    B = A.copy()
    with limit_threads(None):
        rows.append(("finiteness and symmetry passes over a 5,476-patch affinity (a copy / "
                     "the package's own)", ms(lambda: check_affinity(B), 3),
                     ms(lambda: check_affinity(A), 3)))
    print("\n| cost | before (ms) | now (ms) |\n|---|---|---|")
    for what, before, now in rows:
        print(f"| {what} | {before:.2f} | {now:.3f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedder", choices=["handcrafted", "dinov2"], default="handcrafted")
    parser.add_argument("--weights", default="random",
                        help="DINOv2 weights (default: random, which costs the same)")
    parser.add_argument("--device", default="none",
                        help="'none' (NumPy, SciPy, pydensecrf; DINOv2 on the CPU), 'cpu', "
                             "'cuda', 'cuda:N' or 'auto': the pipeline's device setting")
    parser.add_argument("--autocast", choices=["bfloat16", "float16"], default=None,
                        help="DINOv2 under autocast")
    parser.add_argument("--n-jobs", type=int, nargs="+", default=[2],
                        help="worker processes; several values: one run each")
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--count", type=int, default=60, help="number of image files")
    parser.add_argument("--synthetic", action="store_true", help="synthetic images")
    parser.add_argument("--short-side", type=int, default=448)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[8],
                        help="DINOv2 batch size; several values: one run each (the peak "
                             "GPU memory must not grow with it)")
    parser.add_argument("--refine", choices=["crf", "nearest", "bilinear"], default=None,
                        help="refinement (default: the package default)")
    parser.add_argument("--crf-backend", choices=["pydensecrf", "torch"], default=None,
                        help="the CRF backend alone (default: the pipeline's)")
    parser.add_argument("--no-overlay", action="store_true")
    parser.add_argument("--work", default=None, help="keep inputs and outputs here")
    parser.add_argument("--out", default=None, help="write the result as JSON")
    parser.add_argument("--waste", action="store_true",
                        help="only measure the small per-image costs (before / now)")
    args = parser.parse_args(argv)
    if args.waste:
        return waste()
    results = []
    for n_jobs in args.n_jobs:
        for batch_size in args.batch_size:
            one = argparse.Namespace(**{**vars(args), "n_jobs": n_jobs,
                                        "batch_size": batch_size})
            result = run(one)
            result["batch_size"] = batch_size
            print_result(result)
            results.append(result)
    if args.out:
        Path(args.out).write_text(json.dumps(results[0] if len(results) == 1 else results,
                                             indent=2))
    return results


if __name__ == "__main__":
    main()
