"""Readers for the benchmark data sets, in their official directory layouts.

Every reader returns a :class:`Dataset`: a list of ``(name, image_path,
truth_path)`` items and a ``read_truth(path)`` function. Ground truth is
returned as int64 class ids ``0 .. n_classes - 1`` with ``-1`` for pixels to
ignore (the metrics of ``sklearn_clasp.metrics`` always ignore negative
values), so every data set is scored the same way:

=============  =========================================  ==========  ================
data set       layout under ``root``                      classes     ignored
=============  =========================================  ==========  ================
CamVid         ``val/*.png``, ``valannot/*.png``          11          11
BSDS500        ``images/val/*.jpg``,                      none        none
               ``groundTruth/val/*.mat``                  (regions)
COCO-Stuff-27  ``images/val2017/*.jpg``,                  27          255
               ``annotations/val2017/*.png`` (fine ids    (from 171
               0..181, mapped to 27 coarse classes),      fine)
               ``curated/val2017/Coco164kFull_Stuff_
               Coarse_7.txt`` (the 2,175-image list)
ADE20K         ``images/validation/*.jpg``,               150         0
               ``annotations/validation/*.png``
=============  =========================================  ==========  ================

BSDS500's ``read_truth`` returns the list of human segmentations (region ids).
The flat layouts of ``../shared/data/samples`` (``images/``, ``labels27/``,
``annotations/``) are accepted too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

#: ``../shared/data`` beside the checkout (may be absent).
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: The curated COCO-Stuff-27 evaluation list of PiCIE and STEGO (2,175 val images).
COCO_CURATED_LIST = "Coco164kFull_Stuff_Coarse_7.txt"

#: The 27 coarse COCO-Stuff classes, in STEGO's order (coarse id = position).
COCO27_CLASSES = (
    "electronic", "appliance", "food", "furniture", "indoor", "kitchen",
    "accessory", "animal", "outdoor", "person", "sports", "vehicle",
    "ceiling", "floor", "food-stuff", "furniture-stuff", "raw-material",
    "textile", "wall", "window", "building", "ground", "plant", "sky",
    "solid", "structural", "water",
)

# Fine COCO-Stuff-164k label id (0..181: the 91 thing ids then the 91 stuff
# ids, each minus one; 255 = unlabelled) -> coarse COCO-Stuff-27 class. The
# table of STEGO (Hamilton et al., ICLR 2022), `fine_to_coarse` of class
# `Coco` in https://github.com/mhamilton723/STEGO/blob/master/src/data.py,
# which also PiCIE's curated evaluation uses; written here as runs of
# consecutive fine ids. Checked against the COCO-Stuff label list: e.g. fine
# 0 person -> 9 person, 2 car -> 11 vehicle, 100 carpet -> 13 floor,
# 105 clouds -> 23 sky, 147 river -> 26 water, 156 sky-other -> 23 sky.
_THING_RUNS = (  # (first fine id, last fine id, coarse id)
    (0, 0, 9), (1, 8, 11), (9, 14, 8), (15, 24, 7), (25, 32, 6), (33, 42, 10),
    (43, 50, 5), (51, 60, 2), (61, 70, 3), (71, 76, 0), (77, 82, 1), (83, 90, 4),
)
_STUFF_COARSE = (  # fine ids 91..181, in order
    17, 17, 22, 20, 20, 22, 15, 25, 16, 13, 12, 12, 17, 17, 23, 15,  # 91..106
    15, 17, 15, 21, 15, 25, 13, 13, 13, 13, 13, 22, 26, 14, 14, 15,  # 107..122
    22, 21, 21, 24, 20, 22, 15, 17, 16, 15, 22, 24, 21, 17, 25, 16,  # 123..138
    21, 17, 22, 16, 21, 21, 25, 21, 26, 21, 24, 20, 17, 14, 21, 26,  # 139..154
    15, 23, 20, 21, 24, 15, 24, 22, 25, 15, 20, 17, 17, 22, 14, 18,  # 155..170
    18, 18, 18, 18, 18, 18, 26, 26, 19, 19, 24,                      # 171..181
)


def _fine_to_coarse_table():
    table = np.full(256, -2, np.int64)  # -2: not a COCO-Stuff id
    for first, last, coarse in _THING_RUNS:
        table[first: last + 1] = coarse
    table[91:182] = _STUFF_COARSE
    table[255] = -1
    return table


#: Lookup table ``fine id (0..255) -> coarse id``; 255 -> -1 (ignore); ids
#: that COCO-Stuff does not use (182..254) -> -2.
COCO_FINE_TO_COARSE = _fine_to_coarse_table()


class Dataset(NamedTuple):
    """A data set: what to read and how to read its ground truth."""

    name: str
    n_classes: int | None  # None: regions without classes (BSDS500)
    items: list  # (name, image_path, truth_path)
    read_truth: Callable


def _read_png_labels(path):
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(
                f"{path}: expected a single-channel label image; got mode {im.mode}."
            )
        return np.asarray(im).astype(np.int64)


def _first_dir(label, *candidates):
    for c in candidates:
        if c.is_dir():
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"{label}: none of these directories exists: {tried}.")


def _limit(items, limit):
    return items if limit is None else items[: int(limit)]


def _pair_up(images_dir, truth_dir, names, truth_suffix=".png", image_suffix=".jpg"):
    items = []
    for name in names:
        image = images_dir / (name + image_suffix)
        truth = truth_dir / (name + truth_suffix)
        for path in (image, truth):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path}: missing (listed image {name!r}); check --root and the "
                    f"directory layout."
                )
        items.append((name, image, truth))
    return items


# --- CamVid and BSDS500 (../shared/data) ----------------------------------------


def camvid(root=None, *, limit=None):
    """CamVid validation split (SegNet's 11 classes; 11 = unlabelled -> -1)."""
    root = Path(root) if root is not None else SHARED / "camvid"
    images = sorted((root / "val").glob("*.png"))
    items = [(p.stem, p, root / "valannot" / p.name) for p in images]

    def read_truth(path):
        truth = _read_png_labels(path)
        truth[truth == 11] = -1
        return truth

    return Dataset("CamVid val", 11, _limit(items, limit), read_truth)


def bsds500(root=None, *, split="val", limit=None):
    """BSDS500; ``read_truth`` returns the list of human segmentations."""
    root = Path(root) if root is not None else SHARED / "bsds500"
    images = sorted((root / "images" / split).glob("*.jpg"))
    items = [(p.stem, p, root / "groundTruth" / split / (p.stem + ".mat")) for p in images]

    def read_truth(path):
        from scipy.io import loadmat

        gt = loadmat(path)["groundTruth"]
        return [
            gt[0, i]["Segmentation"][0, 0].astype(np.int64) for i in range(gt.shape[1])
        ]

    return Dataset(f"BSDS500 {split}", None, _limit(items, limit), read_truth)


# --- the paper's benchmarks -------------------------------------------------------


def coco_stuff27(root, *, labels="fine", list_file=None, split="val2017", limit=None):
    """COCO-Stuff-27 in the layout of STEGO / PiCIE.

    Parameters
    ----------
    root : path
        Holds ``images/<split>/*.jpg`` and, for ``labels="fine"``,
        ``annotations/<split>/*.png`` (the COCO-Stuff-164k label maps: fine
        ids 0..181, 255 unlabelled), or, for ``labels="coarse27"``,
        ``labels27/*.png`` already in the 27 coarse classes (255 unlabelled).
        ``images/`` and ``annotations/`` without the split level work too.
    labels : {"fine", "coarse27"}
        Which label maps to read; fine ids are mapped to the 27 coarse
        classes with STEGO's table.
    list_file : path, default=None
        Image ids to evaluate, one a line. Default: the curated list
        ``root/curated/<split>/Coco164kFull_Stuff_Coarse_7.txt`` when it
        exists, else every image in the images directory (not the paper's
        protocol; the returned name says so).
    split : str, default="val2017"
    limit : int, default=None
        Keep the first ``limit`` items.
    """
    root = Path(root)
    if labels not in ("fine", "coarse27"):
        raise ValueError(f"labels must be 'fine' or 'coarse27'; got {labels!r}.")
    images_dir = _first_dir("COCO-Stuff images", root / "images" / split, root / "images")
    if labels == "fine":
        truth_dir = _first_dir(
            "COCO-Stuff fine label maps (for --labels coarse27 give labels27/)",
            root / "annotations" / split, root / "annotations",
        )
    else:
        truth_dir = _first_dir(
            "COCO-Stuff-27 coarse label maps", root / "labels27" / split, root / "labels27"
        )
    if list_file is None and (root / "curated" / split / COCO_CURATED_LIST).is_file():
        list_file = root / "curated" / split / COCO_CURATED_LIST
    if list_file is not None:
        names = [line.strip() for line in Path(list_file).read_text().splitlines()]
        names = [n for n in names if n]
        subset = f"list {Path(list_file).name}"
    else:
        names = sorted(p.stem for p in images_dir.glob("*.jpg"))
        subset = "every image found, not the curated list"
    if not names:
        raise FileNotFoundError(f"COCO-Stuff: no images to evaluate under {root}.")
    items = _pair_up(images_dir, truth_dir, names)

    def read_truth(path):
        raw = _read_png_labels(path)
        if raw.min() < 0 or raw.max() > 255:
            raise ValueError(f"{path}: label ids outside 0..255.")
        if labels == "coarse27":
            bad = (raw >= 27) & (raw != 255)
            if bad.any():
                raise ValueError(
                    f"{path}: coarse label ids must be 0..26 or 255; found "
                    f"{np.unique(raw[bad])[:5].tolist()}. Fine label maps need "
                    f"--labels fine."
                )
            return np.where(raw == 255, -1, raw)
        truth = COCO_FINE_TO_COARSE[raw]
        if (truth == -2).any():
            raise ValueError(
                f"{path}: fine ids {np.unique(raw[truth == -2])[:5].tolist()} are not "
                f"COCO-Stuff-164k ids (0..181, 255 unlabelled)."
            )
        return truth

    return Dataset(f"COCO-Stuff-27 {split} ({subset})", 27, _limit(items, limit), read_truth)


def ade20k(root, *, split="validation", limit=None):
    """ADE20K SceneParsing (ADEChallengeData2016): 150 classes, 0 = other -> -1.

    ``root`` is the ``ADEChallengeData2016`` directory (or its parent), with
    ``images/<split>/*.jpg`` and ``annotations/<split>/*.png``; ``images/``
    and ``annotations/`` without the split level work too. Class ``k``
    (1..150) becomes ``k - 1``.
    """
    root = Path(root)
    if (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    images_dir = _first_dir("ADE20K images", root / "images" / split, root / "images")
    truth_dir = _first_dir(
        "ADE20K annotations", root / "annotations" / split, root / "annotations"
    )
    names = sorted(p.stem for p in images_dir.glob("*.jpg"))
    if not names:
        raise FileNotFoundError(f"ADE20K: no images under {images_dir}.")
    items = _pair_up(images_dir, truth_dir, names)

    def read_truth(path):
        raw = _read_png_labels(path)
        if raw.max() > 150 or raw.min() < 0:
            raise ValueError(f"{path}: ADE20K class ids must be 0..150.")
        return raw - 1

    return Dataset(f"ADE20K {split}", 150, _limit(items, limit), read_truth)


# --- helpers ------------------------------------------------------------------------


def resize_and_center_crop(image, truth, size):
    """Scale the shorter side to ``size`` and cut the central square.

    STEGO's evaluation transform (image bilinear, labels nearest).
    """
    from PIL import Image

    h, w = truth.shape
    scale = size / min(h, w)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))  # (W, H)
    img = np.asarray(Image.fromarray(image).resize(new, Image.BILINEAR))
    lab = np.asarray(
        Image.fromarray(truth.astype(np.int32)).resize(new, Image.NEAREST)
    ).astype(np.int64)
    top = (new[1] - size) // 2
    left = (new[0] - size) // 2
    return (img[top: top + size, left: left + size],
            lab[top: top + size, left: left + size])


def protocol_halves():
    """The default-choosing protocols' split of CamVid val and BSDS500 val.

    ``{(dataset, half): (Dataset, items)}`` with ``dataset`` ``"camvid"`` or
    ``"bsds500"`` and ``half`` ``"choose"`` (the first 50 items, names sorted)
    or ``"confirm"`` (the rest); see ``k_selection_protocol.md`` and
    ``refine_protocol.md``.
    """
    out = {}
    for tag, ds in (("camvid", camvid()), ("bsds500", bsds500())):
        items = sorted(ds.items, key=lambda it: it[0])
        out[(tag, "choose")] = (ds, items[:50])
        out[(tag, "confirm")] = (ds, items[50:])
    return out


def best_of(fn, repeats=3):
    """``(seconds, result)``: the fastest of ``repeats`` calls of ``fn()`` and its result."""
    import time

    best, out = np.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out
