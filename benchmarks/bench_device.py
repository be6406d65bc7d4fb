"""The torch path (``device=...``): which eigensolver, what autocast does, does it agree.

Three sections, each on the device given (``--device cpu`` where there is no
GPU):

- ``eigen``: the ``k_max + 1 = 16`` leading eigenpairs of real image
  affinities (the weights-free embedder's cosine affinity of CamVid and
  BSDS500 images at 448 pixels, and of CamVid images resized to 672 and 868
  pixels at their own size) by SciPy (the NumPy path: LAPACK ``syevr`` up to
  512 rows, ARPACK above), ``torch.linalg.eigh`` (all eigenpairs),
  ``torch.lobpcg`` and the block Krylov method of the torch path
  (``leading_eigenpairs_torch``): seconds (best of 3, one thread on the CPU)
  and the largest eigenvalue error relative to ``l_1`` against float64 LAPACK.
- ``agreement``: every ``--step``-th CamVid val and BSDS500 val image
  segmented by ``AdaptiveSpectralSegmenter`` with ``device=None`` and with
  ``--device``: same K, adjusted Rand index of the patch labels, seconds.
- ``autocast``: DINOv2 ViT-S/14-reg (random weights, or ``--weights``) at 448
  pixels in float32 and under bfloat16 autocast (float16 too on CUDA):
  per-patch cosine similarity of the features to float32's, their relative
  error, the time per image, and what the segmenter makes of them (same K,
  ARI). Random weights give features without meaning; the numbers say how
  much the arithmetic moves them, not what it does to a trained model's
  segments.

Run:  python benchmarks/bench_device.py [--sections eigen agreement autocast]
      [--device cpu] [--step 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import SHARED, best_of, bsds500, camvid  # noqa: E402


def _images(step):
    items = camvid().items[::step] + bsds500().items[::step]
    return [path for _, path, _ in items]


def section_eigen(device, args):
    import torch
    from scipy import linalg

    from sklearn_clasp.affinity import cosine_affinity, limit_threads
    from sklearn_clasp.embedding import HandcraftedPatchEmbedder
    from sklearn_clasp.image import resize_image
    from sklearn_clasp.io import load_image
    from sklearn_clasp.spectral import leading_eigenpairs
    from sklearn_clasp.spectral._torch import _dense_eigh, leading_eigenpairs_torch

    k = 16
    paths = camvid().items[:2] + bsds500().items[:2]
    cases = [(p, 448) for _, p, _ in paths] + [(p, s) for _, p, _ in camvid().items[:2]
                                              for s in (672, 868)]
    print("\n## Leading eigenpairs (16), seconds (max eigenvalue error / l_1)\n")
    print(f"| patches | SciPy (NumPy path) | torch.linalg.eigh | torch.lobpcg "
          f"| block Krylov (torch path) |  [{device}]")
    print("|---|---|---|---|---|")
    for path, size in cases:
        image = load_image(path)
        if size == 448:
            rec = HandcraftedPatchEmbedder().transform([image])[0]
        else:
            rec = HandcraftedPatchEmbedder(short_side=None).transform(
                [resize_image(image, (size, size))])[0]
        A = cosine_affinity(rec.feature_matrix)
        n = A.shape[0]
        ref = linalg.eigh(A.astype(np.float64), eigvals_only=True,
                          subset_by_index=[n - k, n - 1])[::-1]

        def err(w):
            return float(np.abs(np.asarray(w, np.float64) - ref).max() / ref[0])

        with limit_threads(1, user_api=None):
            ta, (va, _) = best_of(lambda: leading_eigenpairs(A, k, random_state=0))
        At = torch.from_numpy(A).to(device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        def timed(fn):
            def run():
                out = fn()
                sync()
                return out
            return run

        te, (we, _) = best_of(timed(lambda: _dense_eigh(At, k)), 1 if n > 2000 else 3)
        tl, (wl, _) = best_of(timed(lambda: torch.lobpcg(At, k=k, largest=True, tol=1e-5,
                                                        niter=100)))
        tk, (wk, _) = best_of(timed(lambda: leading_eigenpairs_torch(At, k)))
        print(f"| {n} | {ta:.4f} ({err(va):.0e}) | {te:.3f} ({err(we.cpu()):.0e}) "
              f"| {tl:.3f} ({err(wl.cpu()):.0e}) | {tk:.4f} ({err(wk.cpu()):.0e}) |",
              flush=True)


def section_agreement(device, args):
    from sklearn.metrics import adjusted_rand_score

    from sklearn_clasp import AdaptiveSpectralSegmenter
    from sklearn_clasp.pipeline import make_clasp_pipeline

    paths = _images(args.step)
    records = make_clasp_pipeline("handcrafted")[:2].fit_transform([str(p) for p in paths])
    rows = []
    for rec in records:
        t0 = time.perf_counter()
        (a,) = AdaptiveSpectralSegmenter(random_state=0).fit_transform([rec])
        t1 = time.perf_counter()
        (b,) = AdaptiveSpectralSegmenter(random_state=0, device=str(device)).fit_transform(
            [rec])
        t2 = time.perf_counter()
        rows.append((a.info["n_clusters"] == b.info["n_clusters"],
                     adjusted_rand_score(a.labels.ravel(), b.labels.ravel()), t1 - t0,
                     t2 - t1))
    same, ari, tn, tt = (np.array(c) for c in zip(*rows))
    print(f"\n## NumPy path against the torch path on {device}: {len(rows)} images "
          f"(every {args.step}th of CamVid val and BSDS500 val)\n")
    print(f"same K: {int(same.sum())}/{len(rows)}; ARI min {ari.min():.4f}, mean "
          f"{ari.mean():.4f}; images with ARI >= 0.99: {int((ari >= 0.99).sum())}; "
          f"segmenter s/image (affinity given): NumPy {np.median(tn):.4f}, torch "
          f"{np.median(tt):.4f} (medians)")


def section_autocast(device, args):
    import torch

    from sklearn.metrics import adjusted_rand_score

    from sklearn_clasp import AdaptiveSpectralSegmenter, CosineAffinity
    from sklearn_clasp.embedding import DinoPatchEmbedder

    paths = _images(args.step)
    modes = [None, "bfloat16"] + (["float16"] if device.type == "cuda" else [])
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mode in modes:
            emb = DinoPatchEmbedder(weights=args.weights, device=str(device), autocast=mode,
                                    batch_size=4, download=False, random_state=0).fit()
            emb.transform([str(paths[0])])  # warm-up
            start = time.perf_counter()
            recs = emb.transform([str(p) for p in paths])
            seconds = (time.perf_counter() - start) / len(paths)
            segs = AdaptiveSpectralSegmenter(random_state=0).fit_transform(
                CosineAffinity().fit_transform(recs))
            out[mode] = (recs, segs, seconds)
    ref_recs, ref_segs, ref_s = out[None]
    print(f"\n## DINOv2 ViT-S/14-reg ({args.weights} weights) under autocast on {device}: "
          f"{len(paths)} images at 448 px\n")
    print("| mode | s/image | cosine to float32: min / median | relative error (Frobenius, "
          "median) | same K | ARI min / mean |")
    print("|---|---|---|---|---|---|")
    print(f"| float32 | {ref_s:.3f} | 1 / 1 | 0 | - | - |")
    for mode in modes[1:]:
        recs, segs, seconds = out[mode]
        cos, rel, same, ari = [], [], [], []
        for a, b, sa, sb in zip(ref_recs, recs, ref_segs, segs):
            fa = a.feature_matrix.astype(np.float64)
            fb = b.feature_matrix.astype(np.float64)
            c = (fa * fb).sum(1) / np.linalg.norm(fa, axis=1) / np.linalg.norm(fb, axis=1)
            cos.append(c)
            rel.append(np.linalg.norm(fa - fb) / np.linalg.norm(fa))
            same.append(sa.info["n_clusters"] == sb.info["n_clusters"])
            ari.append(adjusted_rand_score(sa.labels.ravel(), sb.labels.ravel()))
        cos = np.concatenate(cos)
        print(f"| {mode} autocast | {seconds:.3f} | {cos.min():.4f} / {np.median(cos):.5f} "
              f"| {np.median(rel):.4f} | {int(np.sum(same))}/{len(same)} "
              f"| {np.min(ari):.3f} / {np.mean(ari):.3f} |")
    del torch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=["eigen", "agreement", "autocast"],
                        choices=["eigen", "agreement", "autocast"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--step", type=int, default=10, help="every N-th image")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        print(f"{SHARED} not found: nothing to measure.")
        return
    import torch

    from sklearn_clasp.device import resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    for name in args.sections:
        globals()[f"section_{name}"](device, args)


if __name__ == "__main__":
    main()
