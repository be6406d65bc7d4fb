"""Overhead of DinoPatchEmbedder over the bare DINOv2 forward pass.

Times, in one run and on the same images,

* bare: ``model.forward_features`` on pre-made, pre-normalised, pre-batched
  tensors (what the backbone itself costs), and
* ours: ``DinoPatchEmbedder.transform`` on the uint8 images (validation,
  resizing, normalisation, batching by size, device transfer, float32 copy-out,
  PatchGrid records),

with a warm-up first and the median of interleaved repeats, and prints the
ratio ours / bare (target: at most 1.10). Random weights: the cost does not
depend on the weight values, and no download is needed.

Reproduce with::

    python benchmarks/bench_embed.py                     # ViT-S/14-reg, CPU
    python benchmarks/bench_embed.py --scale 1.5         # resizing included
    python benchmarks/bench_embed.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings

from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from sklearn_clasp.embedding import DinoPatchEmbedder  # noqa: E402
from sklearn_clasp.embedding._dinov2 import _to_tensor, prepare_dino_input  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dinov2_vits14_reg")
    parser.add_argument("--n-square", type=int, default=8, help="448 x 448 images")
    parser.add_argument("--n-wide", type=int, default=4, help="448 x 602 images")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="source images this many times larger, so transform also "
                             "resizes them (the bare forward gets them pre-resized)")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    side, wide = round(448 * args.scale), round(602 * args.scale)
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(args.n_square)]
    images += [rng.integers(0, 256, (side, wide, 3), dtype=np.uint8) for _ in range(args.n_wide)]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights
        emb = DinoPatchEmbedder(
            args.model, weights="random", random_state=0, batch_size=args.batch_size,
            device=args.device, dtype=args.dtype, n_threads=args.threads,
        ).fit()
    model, device, dtype = emb.model_, emb.device_, emb.dtype_

    # The bare forward gets exactly the batches transform will run, made in advance.
    groups = {}
    for img in images:
        x, _ = prepare_dino_input(img, short_side=emb.short_side)
        groups.setdefault(x.shape, []).append(x)
    batches = [
        _to_tensor(group[i : i + args.batch_size], device, dtype)
        for group in groups.values()
        for i in range(0, len(group), args.batch_size)
    ]

    def bare():
        with torch.inference_mode():
            for x in batches:
                model.forward_features(x)
        _sync(device)

    def ours():
        emb.transform(images)
        _sync(device)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    for fn in (bare, ours):  # warm-up
        fn()
    times = {"bare": [], "ours": []}
    cpu = {"bare": [], "ours": []}  # process CPU time: steadier on a shared machine
    for _ in range(args.repeats):
        for name, fn in (("bare", bare), ("ours", ours)):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)

    t_bare = statistics.median(times["bare"])
    t_ours = statistics.median(times["ours"])
    n = len(images)
    print(f"model {args.model}, device {device}, dtype {args.dtype}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    print(f"images: {args.n_square} x {side}x{side} + {args.n_wide} x {side}x{wide} "
          f"(model input 448x448 and 448x602), "
          f"batch size {args.batch_size}, median of {args.repeats} after warm-up")
    print(f"bare forward : {t_bare:8.3f} s  ({1000 * t_bare / n:7.1f} ms/image)  "
          f"runs {[round(t, 3) for t in times['bare']]}")
    print(f"ours         : {t_ours:8.3f} s  ({1000 * t_ours / n:7.1f} ms/image)  "
          f"runs {[round(t, 3) for t in times['ours']]}")
    print(f"ratio ours / bare = {t_ours / t_bare:.3f}  (target <= 1.10); "
          f"best-of ratio {min(times['ours']) / min(times['bare']):.3f}; "
          f"CPU-time ratio {statistics.median(cpu['ours']) / statistics.median(cpu['bare']):.3f}")
    print("reproduce: python benchmarks/bench_embed.py " + " ".join(sys.argv[1:]))
    return t_ours / t_bare


if __name__ == "__main__":
    main()
