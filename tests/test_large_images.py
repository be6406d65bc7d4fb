"""Images of every size through the pipeline: huge, tiny, extreme aspect ratios.

The memory of each stage is bounded by a parameter: the patch budget of the
embedders (``max_patches``), the dense-affinity bound of the affinity and the
segmenter (``max_dense_samples``) and the refinement resolution of the
refiner (``max_pixels``).
"""

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from sklearn_clasp import make_clasp_pipeline
from sklearn_clasp.embedding import patch_grid_shape
from sklearn_clasp.pipeline import clasp_one


def two_halves(height, width, along="width"):
    """Red and blue halves, split across the longer side."""
    image = np.empty((height, width, 3), np.uint8)
    image[:] = (200, 40, 30)
    if along == "width":
        image[:, width // 2:] = (30, 60, 200)
    else:
        image[height // 2:] = (30, 60, 200)
    return image


# --------------------------------------------------------------------------
# the patch budget
# --------------------------------------------------------------------------


@pytest.mark.parametrize("short_side", [448, None, 14])
@pytest.mark.parametrize("budget", [1, 7, 500, 10_000])
@pytest.mark.parametrize("shape", [(12000, 9000), (10000, 20), (20, 10000), (1, 1),
                                   (3, 100_000), (481, 321)])
def test_patch_budget_is_never_exceeded(shape, budget, short_side):
    rows, cols = patch_grid_shape(*shape, short_side=short_side, max_patches=budget)
    assert rows >= 1 and cols >= 1 and rows * cols <= budget
    free = patch_grid_shape(*shape, short_side=short_side)
    if free[0] * free[1] <= budget:
        assert (rows, cols) == free  # images within the budget are left alone
    else:
        assert rows <= free[0] and cols <= free[1]


def test_patch_budget_keeps_the_aspect_ratio():
    assert patch_grid_shape(9000, 12000, short_side=None, max_patches=10_000) == (86, 115)
    assert patch_grid_shape(10000, 20, max_patches=10_000) == (2236, 4)
    assert patch_grid_shape(20, 10000, short_side=None, max_patches=100) == (1, 100)
    with pytest.raises(ValueError, match="max_patches must be a positive int"):
        patch_grid_shape(100, 100, max_patches=0)


# --------------------------------------------------------------------------
# extreme aspect ratios, tiny and constant images
# --------------------------------------------------------------------------


@pytest.mark.parametrize("shape, along", [((20, 10000), "width"), ((10000, 20), "height")])
def test_extreme_aspect_ratio(shape, along):
    pipe = make_clasp_pipeline("handcrafted", random_state=0, max_patches=2000)
    mask, record = clasp_one(pipe, two_halves(*shape, along=along))
    rows, cols = record.grid_shape
    assert rows * cols <= 2000 and record.info["patch_budget_applied"]
    assert mask.shape == shape
    # The two halves are told apart, with the boundary near the middle.
    long_axis = 1 if along == "width" else 0
    profile = mask.mean(axis=1 - long_axis)
    first, last = profile[: len(profile) // 2 - 600], profile[len(profile) // 2 + 600:]
    assert np.ptp(first) == 0 and np.ptp(last) == 0 and first[0] != last[0]


@pytest.mark.parametrize("short_side", [448, None])
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (13, 13), (1, 40), (30, 2)])
def test_images_smaller_than_a_patch(shape, short_side):
    # (a one-pixel-high image scaled to a 448-pixel short side would be
    # 32 x 14,000 patches: the budget bounds it; a small one keeps this quick)
    pipe = make_clasp_pipeline("handcrafted", short_side=short_side, random_state=0,
                               max_patches=1000)
    image = np.full(shape + (3,), 77, np.uint8)
    mask, record = clasp_one(pipe, image)
    assert mask.shape == shape and mask.dtype == np.int64
    assert record.info["n_clusters"] == 1 and np.all(mask == 0)
    assert record.labels.shape == record.grid_shape


@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255), (30, 160, 90)])
@pytest.mark.parametrize("shape", [(56, 56), (360, 480), (700, 300)])
def test_constant_images_are_one_segment(shape, colour):
    pipe = make_clasp_pipeline("handcrafted", random_state=0)
    mask, record = clasp_one(pipe, np.full(shape + (3,), colour, np.uint8))
    assert record.info["single_segment"] and record.info["n_clusters"] == 1
    assert mask.shape == shape and not mask.any()


def test_dinov2_honours_the_patch_budget():
    from sklearn_clasp.embedding import DinoPatchEmbedder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb = DinoPatchEmbedder(weights="random", model="dinov2_vits14", max_patches=40,
                                random_state=0).fit()
        assert DinoPatchEmbedder().max_patches == 10_000
        wide, tiny = emb.transform([np.zeros((28, 1400, 3), np.uint8),
                                    np.zeros((1, 1, 3), np.uint8)])
    rows, cols = wide.grid_shape
    assert rows * cols <= 40 and cols > 10 * rows
    assert wide.features.shape == (rows, cols, 384)
    assert wide.info["patch_budget_applied"] and wide.info["input_size"] == (rows * 14,
                                                                             cols * 14)
    assert tiny.grid_shape == (6, 6) and tiny.info["patch_budget_applied"]


# --------------------------------------------------------------------------
# a huge image, in bounded memory
# --------------------------------------------------------------------------

_HUGE = textwrap.dedent(
    """
    import json, logging, sys
    import numpy as np
    sys.path.insert(0, {root!r})
    from sklearn_clasp import make_clasp_pipeline
    from sklearn_clasp.pipeline import clasp_one

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))

    image = np.empty((6000, 4500, 3), np.uint8)
    image[:] = (40, 120, 60)
    image[1000:4000, 1500:3800] = (210, 50, 40)
    pipe = make_clasp_pipeline("handcrafted", short_side=None, random_state=0,
                               max_patches=3000)
    pipe.set_params(refine__max_pixels=300_000)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    base = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    mask, record = clasp_one(pipe, image)
    peak = status("VmHWM")
    print(json.dumps(dict(delta=peak - base, mask=mask.nbytes, shape=mask.shape,
                          grid=record.grid_shape,
                          inside=float((mask[1100:3900, 1600:3700] ==
                                        mask[2500, 2500]).mean()),
                          apart=bool(mask[2500, 2500] != mask[300, 300]))))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_huge_image_in_bounded_memory():
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-c", _HUGE.format(root=root)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "clear_refs" in proc.stderr:
        pytest.skip("the kernel does not let this process reset its peak memory")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["shape"] == [6000, 4500]
    assert out["grid"][0] * out["grid"][1] <= 3000
    assert "refining a 6000 x 4500 image at" in proc.stderr
    assert out["inside"] > 0.99 and out["apart"]  # the rectangle is found
    # Beyond the 216 MB output mask, the 27-megapixel image costs little: a
    # full-resolution CRF alone would need several GB.
    assert out["delta"] < out["mask"] + 500 * 2**20, out
