"""The paper-reproduction harness (benchmarks/reproduce_paper.py) and its readers.

The harness cannot run on the real benchmarks here (no DINOv2 weights, no full
data), so these tests check its plumbing: on tiny fake data sets written in
the official directory layouts (always), and on the few sample images in
../shared/data/samples (skipped when absent). DINOv2 runs with random weights
on small inputs; nothing touches the network.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sklearn_clasp.datasets import make_shapes_image

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _data  # noqa: E402
import reproduce_paper  # noqa: E402

SAMPLES = _data.SHARED / "samples"

# fine COCO-Stuff-164k ids (id - 1) and their coarse COCO-Stuff-27 classes
PERSON, CAR, BUS, SKY, ROAD, RIVER = 0, 2, 5, 156, 148, 147


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _fake_coco(root, n_images=3, curated=(0, 2)):
    """COCO-Stuff in STEGO's layout; the curated list names a subset."""
    names = [f"{i:012d}" for i in range(n_images)]
    fine = np.array([SKY, CAR, PERSON, ROAD], np.uint8)
    for i, name in enumerate(names):
        image, truth = make_shapes_image(84, 112, n_shapes=3, random_state=i)
        labels = fine[truth]
        labels[:4] = 255  # an unlabelled band
        _save(root / "images" / "val2017" / f"{name}.jpg", image)
        _save(root / "annotations" / "val2017" / f"{name}.png", labels)
    listed = [names[i] for i in curated]
    lst = root / "curated" / "val2017" / _data.COCO_CURATED_LIST
    lst.parent.mkdir(parents=True)
    lst.write_text("\n".join(listed) + "\n")
    return listed


def _fake_ade(root, n_images=2):
    names = [f"ADE_val_{i + 1:08d}" for i in range(n_images)]
    for i, name in enumerate(names):
        image, truth = make_shapes_image(70, 98, n_shapes=2, random_state=10 + i)
        labels = np.array([0, 3, 150], np.uint8)[truth]  # 0 = other (ignored)
        _save(root / "ADEChallengeData2016" / "images" / "validation" / f"{name}.jpg", image)
        _save(root / "ADEChallengeData2016" / "annotations" / "validation" / f"{name}.png",
              labels)
    return names


# --- readers ----------------------------------------------------------------------


def test_fine_to_coarse_table():
    table = _data.COCO_FINE_TO_COARSE
    names = _data.COCO27_CLASSES
    expected = {PERSON: "person", CAR: "vehicle", BUS: "vehicle", SKY: "sky",
                ROAD: "ground", RIVER: "water", 100: "floor",  # carpet
                105: "sky",  # clouds
                101: "ceiling", 170: "wall", 179: "window", 181: "solid",  # wood
                61: "furniture", 91: "textile"}  # chair, banner
    for fine, name in expected.items():
        assert names[table[fine]] == name, fine
    # every one of the 182 fine ids has a coarse class; all 27 are reached
    assert set(table[:182].tolist()) == set(range(27))
    assert table[255] == -1 and (table[182:255] == -2).all()
    # 91 thing ids (0..90) map to the 12 thing classes, stuff to the other 15
    assert set(table[:91].tolist()) == set(range(12))
    assert set(table[91:182].tolist()) == set(range(12, 27))


def test_coco_reader_uses_the_curated_list_and_maps_fine_ids(tmp_path):
    listed = _fake_coco(tmp_path)
    data = _data.coco_stuff27(tmp_path)
    assert data.n_classes == 27 and "Coco164kFull_Stuff_Coarse_7" in data.name
    assert [name for name, _, _ in data.items] == listed
    name, image_path, truth_path = data.items[0]
    truth = data.read_truth(truth_path)
    raw = np.asarray(Image.open(truth_path))
    assert truth.dtype == np.int64 and truth.shape == raw.shape
    assert (truth[raw == 255] == -1).all()
    assert set(np.unique(truth).tolist()) <= {-1, 9, 11, 21, 23}
    np.testing.assert_array_equal(truth[raw == SKY], 23)
    np.testing.assert_array_equal(truth[raw == CAR], 11)
    # without the list file: every image, and the name says so
    (tmp_path / "curated" / "val2017" / _data.COCO_CURATED_LIST).unlink()
    data = _data.coco_stuff27(tmp_path, limit=2)
    assert len(data.items) == 2 and "not the curated list" in data.name


def test_coco_reader_errors(tmp_path):
    _fake_coco(tmp_path)
    with pytest.raises(FileNotFoundError, match="labels27"):
        _data.coco_stuff27(tmp_path, labels="coarse27")
    with pytest.raises(ValueError, match="labels"):
        _data.coco_stuff27(tmp_path, labels="coarse")
    lst = tmp_path / "mine.txt"
    lst.write_text("000000000000\n000000000099\n")
    with pytest.raises(FileNotFoundError, match="000000000099"):
        _data.coco_stuff27(tmp_path, list_file=lst)
    # a fine label map read as coarse, and an id COCO-Stuff does not use
    bad = tmp_path / "labels27" / "000000000000.png"
    _save(bad, np.full((4, 4), 40, np.uint8))
    one = tmp_path / "one.txt"
    one.write_text("000000000000\n")
    with pytest.raises(ValueError, match="--labels fine"):
        _data.coco_stuff27(tmp_path, labels="coarse27", list_file=one).read_truth(bad)
    _save(bad, np.full((4, 4), 200, np.uint8))
    with pytest.raises(ValueError, match="not COCO-Stuff-164k ids"):
        _data.coco_stuff27(tmp_path).read_truth(bad)


def test_ade20k_reader(tmp_path):
    names = _fake_ade(tmp_path)
    for root in (tmp_path, tmp_path / "ADEChallengeData2016"):
        data = _data.ade20k(root)
        assert data.n_classes == 150
        assert [n for n, _, _ in data.items] == names
    truth = data.read_truth(data.items[0][2])
    assert set(np.unique(truth).tolist()) == {-1, 2, 149}
    with pytest.raises(FileNotFoundError, match="ADE20K images"):
        _data.ade20k(tmp_path / "nowhere")


def test_resize_and_center_crop():
    image = np.zeros((40, 60, 3), np.uint8)
    truth = np.zeros((40, 60), np.int64)
    truth[:, 30:] = 5
    img, lab = _data.resize_and_center_crop(image, truth, 20)
    assert img.shape == (20, 20, 3) and lab.shape == (20, 20)
    # the central square of the 20 x 30 rescaled map: columns 5..24, edge at 15
    assert (lab[:, :10] == 0).all() and (lab[:, 10:] == 5).all()


# --- the harness end to end -----------------------------------------------------------


def _run(argv):
    return reproduce_paper.main([*argv, "--quiet"])


@pytest.mark.slow
def test_harness_on_fake_coco_official_layout(tmp_path):
    root = tmp_path / "cocostuff"
    listed = _fake_coco(root)
    out = tmp_path / "result.json"
    result = _run(["coco", "--root", str(root), "--weights", "random",
                   "--short-side", "56", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert [r["name"] for r in result["images"]] == listed
    s = result["summary"]
    assert result["settings"]["k_rule"] == "paper" and result["settings"]["n_images"] == 2
    for protocol in ("per_image", "dataset"):
        assert 0 < s[protocol]["miou"] <= 1 and 0 < s[protocol]["pixel_accuracy"] <= 1
    assert sum(s["k_distribution"].values()) == 2
    assert s["dataset"]["n_segments"] == sum(r["k"] for r in result["images"])
    assert min(s["seconds_per_image"].values()) > 0


def test_harness_scores_a_good_segmentation_highly(tmp_path):
    # the weights-free embedder separates flat-coloured shapes: if images,
    # labels and masks were misaligned or misread, the scores would collapse
    root = tmp_path / "ade"
    _fake_ade(root, n_images=2)
    result = _run(["ade20k", "--root", str(root), "--embedder", "handcrafted",
                   "--short-side", "none", "--k-rule", "default"])
    s = result["summary"]
    assert s["per_image"]["miou"] > 0.9
    assert s["per_image"]["pixel_accuracy"] > 0.95
    assert s["dataset"]["pixel_accuracy"] > 0.9


@pytest.mark.shared_data
@pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/data/samples is absent")
@pytest.mark.parametrize("dataset, extra, n_images", [
    ("coco", ["--labels", "coarse27"], 2),
    ("ade20k", ["--refine", "nearest"], 3),
])
@pytest.mark.slow
def test_harness_on_shared_samples(dataset, extra, n_images):
    root = SAMPLES / ("coco" if dataset == "coco" else "ade20k")
    result = _run([dataset, "--root", str(root), "--weights", "random",
                   "--short-side", "56", *extra])
    assert result["settings"]["n_images"] == n_images
    assert result["settings"]["weights"] == "random"
    s = result["summary"]
    assert s["per_image"]["n_scored"] == n_images
    assert 0 < s["per_image"]["miou"] <= 1 and 0 < s["dataset"]["pixel_accuracy"] <= 1
    for row in result["images"]:
        assert 2 <= row["k"] <= 15


@pytest.mark.shared_data
@pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/data/samples is absent")
def test_shared_sample_labels_are_read_as_documented():
    data = _data.coco_stuff27(SAMPLES / "coco", labels="coarse27")
    truth = data.read_truth(dict((n, t) for n, _, t in data.items)["000000142238"])
    # ignore (255) becomes -1; person, sports, plant and sky are present
    assert set(np.unique(truth).tolist()) == {-1, 9, 10, 22, 23}
    ade = _data.ade20k(SAMPLES / "ade20k")
    assert len(ade.items) == 3 and ade.read_truth(ade.items[0][2]).min() == -1
