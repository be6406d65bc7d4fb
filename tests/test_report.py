"""The HTML report of a run's output folder (sklearn_clasp.report)."""

import json
import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from urllib.parse import unquote

import pytest
from PIL import Image
from sklearn.utils._param_validation import InvalidParameterError
from threadpoolctl import threadpool_limits

from sklearn_clasp import make_clasp_pipeline, segment_collection
from sklearn_clasp.data import sample_image_paths
from sklearn_clasp.datasets import make_shapes_image
from sklearn_clasp.report import write_report

# A file name (a folder "<script>alert(1)<" holding "script>.png") whose source path reads
# <script>alert(1)</script>.png, and one that would add an element and an attribute if it
# were ever parsed as HTML.
SCRIPT_DIR = "<script>alert(1)<"
SCRIPT_FILE = "script>.png"
PAYLOAD_FILE = "猫 \"q\" & 'é' <img src=x onerror=\"document.title='pwned'\">.png"
# A record field that would close the data's <script> element if it were not escaped.
CLOSER = "</script><script>document.documentElement.setAttribute('data-pwned','1')</script>"
# A record file whose own name is markup.
MARKUP_STEM = "<img src=x onerror=document.title='pwned'>"


@pytest.fixture(autouse=True)
def _one_openmp_thread():
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def _shapes(path, i, size=(72, 96)):
    image, _ = make_shapes_image(*size, n_shapes=1 + i % 3, noise=3.0, random_state=i)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real small run: sample photographs, shapes, hostile names, one broken file."""
    root = tmp_path_factory.mktemp("report")
    inputs = root / "in"
    inputs.mkdir()
    for path in sorted(sample_image_paths())[1:]:  # chelsea, coffee
        with Image.open(path) as im:
            im.convert("RGB").resize((160, 120)).save(inputs / os.path.basename(path))
    for i in range(3):
        _shapes(inputs / f"shapes{i}.png", i)
    script_source = _shapes(inputs / SCRIPT_DIR / SCRIPT_FILE, 3)
    payload_source = _shapes(inputs / PAYLOAD_FILE, 4)
    (inputs / "broken.png").write_bytes(b"this is not a PNG")
    out = root / "out"
    pipe = make_clasp_pipeline("handcrafted", short_side=None, refine="nearest",
                               random_state=0)
    report = segment_collection(inputs, out, pipeline=pipe, max_attempts=1)
    assert report.n_done == 7 and report.n_failed == 1
    records = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    return {"root": root, "out": out, "records": records, "script_source": script_source,
            "payload_source": payload_source}


def _copy_run(run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run["out"], out, symlinks=True)
    return out


class _Doc(HTMLParser):
    """Elements (tag, attributes) and the texts of the elements by tag, class and #id."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.elements, self.texts, self.stack, self.scripts = [], {}, [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.elements.append((tag, attrs))
        if tag not in ("img", "meta", "input", "br", "link"):
            self.stack.append((tag, attrs.get("class", ""), attrs.get("id"), []))

    def handle_endtag(self, tag):
        while self.stack:
            name, cls, ident, parts = self.stack.pop()
            text = "".join(parts)
            for key in [name, *cls.split()] + ([f"#{ident}"] if ident else []):
                self.texts.setdefault(key, []).append(text)
            if name == "script":
                self.scripts.append(text)
            if self.stack:
                self.stack[-1][3].append(text)
            if name == tag:
                break

    def handle_data(self, data):
        if self.stack:
            self.stack[-1][3].append(data)


def _parse(text):
    doc = _Doc()
    doc.feed(text)
    doc.close()
    return doc


def _data(page_text):
    """The JSON data embedded in the page."""
    found = re.search(r'<script type="application/json" id="clasp-data">(.*?)</script>',
                      page_text, re.S)
    assert found, "no data element"
    return json.loads(found.group(1))


def _count(doc, ident):
    values = [a["data-count"] for _, a in doc.elements if a.get("id") == ident]
    return int(values[0]) if values else None


# --------------------------------------------------------------------------
# the page and its data
# --------------------------------------------------------------------------


def test_page_embeds_every_record_once_with_counts_and_thumbnails(run, tmp_path):
    out = _copy_run(run, tmp_path)
    page = write_report(out)
    assert page == out / "report.html"
    text = page.read_text(encoding="utf-8")
    data = _data(text)
    doc = _parse(text)
    names = sorted(r["n"] for r in data["records"])
    assert names == sorted(run["records"])
    assert _count(doc, "n-records") == len(run["records"]) == 7
    assert _count(doc, "n-failed") == 1 and _count(doc, "n-images") == 8
    assert _count(doc, "n-unreadable") == 0
    assert [f["n"] for f in data["failures"]] == ["broken"]
    assert "not a readable image file" in data["failures"][0]["e"]
    # the histogram counts every record's K
    bars = {int(a["data-k"]): None for t, a in doc.elements if "data-k" in a}
    shown = [int(a["data-count"]) for t, a in doc.elements
             if t == "span" and a.get("class") == "hn"]
    ks = [rec["n_clusters"] for rec in run["records"].values()]
    assert sorted(bars) == sorted(set(ks)) and sum(shown) == len(ks)
    for entry in data["records"]:
        rec = run["records"][entry["n"]]
        assert (entry["k"], entry["k0"]) == (rec["n_clusters"], rec["eigengap_k"])
        assert entry["sil"] == pytest.approx(rec["silhouette"], abs=1e-4)
        assert entry["s"] == rec["source"] and entry["sz"] == rec["image_size"]
        assert entry["f"] == 3 and "w" not in entry  # mask and overlay, no warning
        assert set(data["stages"]) == set(rec["timings"])
        for field, suffix in (("it", ".i.jpg"), ("ot", ".o.jpg")):
            thumb = out / "report_files" / f"{entry[field]}{suffix}"
            with Image.open(thumb) as im:
                assert im.format == "JPEG" and max(im.size) <= 256
    by_name = {e["n"]: e for e in data["records"]}
    with Image.open(out / "report_files" / f"{by_name['chelsea']['it']}.i.jpg") as im:
        assert im.size == (160, 120)  # never enlarged
    assert len(list((out / "report_files").iterdir())) == 14


def test_no_string_from_names_or_records_can_close_the_script_or_make_markup(run, tmp_path):
    out = _copy_run(run, tmp_path)
    name = next(n for n, r in run["records"].items() if r["source"].endswith(SCRIPT_FILE))
    record = json.loads((out / f"{name}.json").read_text())
    record["settings_hash"] = CLOSER
    record["n_clusters"] = CLOSER
    (out / f"{name}.json").write_text(json.dumps(record))
    other = json.loads((out / "shapes0.json").read_text())
    other["source"] = CLOSER
    (out / f"{MARKUP_STEM}.json").write_text(json.dumps(other))
    with open(out / "failures.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"name": MARKUP_STEM, "source": CLOSER, "error": CLOSER}) + "\n")
    text = write_report(out, title=CLOSER).read_text(encoding="utf-8")
    # the only script elements are the data and the page's own script
    assert text.count("<script") == 2 and text.lower().count("</script") == 2
    assert "<img" not in text, text[text.index("<img") - 300:text.index("<img") + 100]
    data = _data(text)
    by_name = {e["n"]: e for e in data["records"]}
    assert by_name[MARKUP_STEM]["s"] == CLOSER  # the strings survive exactly
    assert by_name[MARKUP_STEM]["u"] == (
        "%3Cimg%20src%3Dx%20onerror%3Ddocument.title%3D%27pwned%27%3E")
    assert any("n_clusters is not a count" in w for w in by_name[name]["w"])
    assert {r["s"] for r in data["records"]} >= {str(run["script_source"]),
                                                  str(run["payload_source"])}
    assert data["failures"][-1]["e"] == CLOSER
    doc = _parse(text)
    assert doc.texts["#n-records"] == ["8"] and "#clasp-data" in doc.texts
    assert doc.texts["h1"] == [CLOSER]  # the title is text


def test_records_are_read_defensively_and_every_entry_is_counted(run, tmp_path):
    out = _copy_run(run, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = dict(run["records"]["shapes0"], source="/secret/outside.png")
    (outside / "secret.json").write_text(json.dumps(secret))
    os.symlink(outside / "secret.json", out / "linked.json")
    (out / "truncated.json").write_text('{"n_clusters": 3, "sour')
    (out / "list.json").write_text("[1, 2, 3]")
    (out / "other.json").write_text('{"hello": "world"}')
    (out / "latin1.json").write_bytes(b'{"source": "caf\xe9"}')
    (out / ".hidden.json").write_text("{}")
    (out / "bare.json").write_text('{"source": "\\udc80 lone surrogate"}')
    (out / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (out / "huge.json").write_text('{"source": "h", "n_clusters": 1%s}' % ("0" * 400))
    # a record whose overlay is gone, one whose overlay is a link out of the folder, one
    # without an overlay by choice, one with a background and an explain figure
    (out / "shapes1_overlay.png").unlink()
    (out / "shapes2_overlay.png").unlink()
    shutil.copy(run["out"] / "shapes2_overlay.png", outside / "o.png")
    os.symlink(outside / "o.png", out / "shapes2_overlay.png")
    rec = json.loads((out / "shapes0.json").read_text())
    rec["outputs"]["overlay"] = None
    rec["background"] = {"segment": 0, "score": 0.8123}
    (out / "shapes0_overlay.png").unlink()
    (out / "shapes0.json").write_text(json.dumps(rec))
    Image.new("RGB", (40, 30), "white").save(out / "chelsea_explain.png")
    rec = json.loads((out / "chelsea.json").read_text())
    rec["background"] = {"segment": None, "score": 0.1}
    del rec["timings"], rec["silhouette"], rec["eigengap_k"]
    (out / "chelsea.json").write_text(json.dumps(rec))
    with open(out / "failures.jsonl", "a", encoding="utf-8") as fh:
        fh.write("not json\n")
        fh.write("[]\n")
        fh.write(json.dumps({"name": "broken", "error": "again"}) + "\n")
        fh.write(json.dumps({"name": "shapes1", "error": "once"}) + "\n")

    text = write_report(out).read_text(encoding="utf-8")
    data, doc = _data(text), _parse(text)
    unreadable = {u["file"]: u["reason"] for u in data["unreadable"]}
    assert unreadable["linked.json"] == "symbolic link (not followed)"
    assert unreadable["truncated.json"].startswith("not valid JSON")
    assert unreadable["list.json"] == "not a JSON object (a list)"
    assert unreadable["other.json"].startswith("not a record")
    assert unreadable["latin1.json"] == "not UTF-8 text"
    assert unreadable["failures.jsonl, line 2"].startswith("not valid JSON")
    assert unreadable["failures.jsonl, line 3"] == "not a JSON object"
    assert unreadable["deep.json"] == "not valid JSON (nested too deeply)"
    assert len(unreadable) == 8 and _count(doc, "n-unreadable") == 8
    assert "/secret/outside.png" not in text and ".hidden" not in text
    by_name = {e["n"]: e for e in data["records"]}
    assert len(by_name) == 9 == _count(doc, "n-records")  # 7 + bare + huge
    assert "k" not in by_name["huge"] and any(w.startswith("n_clusters is not a count: 1000")
                                              for w in by_name["huge"]["w"])
    assert by_name["bare"]["s"] == "? lone surrogate"
    assert "the record has no n_clusters" in by_name["bare"]["w"]
    assert "the overlay 'shapes1_overlay.png' is missing" in by_name["shapes1"]["w"]
    assert "the overlay is a symbolic link (not followed)" in by_name["shapes2"]["w"]
    assert "ot" not in by_name["shapes2"] and by_name["shapes2"]["f"] == 1
    assert by_name["shapes0"]["bg"] == [0, 0.8123] and "ot" not in by_name["shapes0"]
    assert "w" not in by_name["shapes0"]  # no overlay, by choice: not a warning
    assert by_name["chelsea"]["bg"] == [None, 0.1] and by_name["chelsea"]["f"] == 7
    assert not {"t", "sil", "k0"} & set(by_name["chelsea"])
    failures = {f["n"]: f for f in data["failures"]}
    assert failures["broken"]["c"] == 2 and failures["broken"]["e"] == "again"
    assert failures["shapes1"]["r"] == 1 and "r" not in failures["broken"]
    assert _count(doc, "n-failed") == 1 and _count(doc, "n-failed-with-record") == 1
    assert _count(doc, "n-warned") == sum("w" in e for e in data["records"]) == 4


def test_thumbnails_are_made_once_and_again_only_when_their_source_changes(run, tmp_path):
    out = _copy_run(run, tmp_path)
    write_report(out)
    thumbs = out / "report_files"
    before = {p.name: p.stat().st_mtime_ns for p in thumbs.iterdir()}
    time.sleep(0.01)
    data = _data(write_report(out).read_text(encoding="utf-8"))
    assert {p.name: p.stat().st_mtime_ns for p in thumbs.iterdir()} == before
    old = {e["n"]: (e["it"], e["ot"]) for e in data["records"]}
    # a new overlay: a new thumbnail, and the old one removed
    Image.new("RGB", (300, 100), "red").save(out / "shapes0_overlay.png")
    os.utime(out / "shapes0_overlay.png", ns=(1, 1))
    data = _data(write_report(out, thumbnail_size=64).read_text(encoding="utf-8"))
    new = {e["n"]: (e["it"], e["ot"]) for e in data["records"]}
    assert all(new[n][0] != old[n][0] and new[n][1] != old[n][1] for n in new)
    names = {p.name for p in thumbs.iterdir()}
    assert len(names) == 14 and not names & set(before)
    with Image.open(thumbs / f"{new['shapes0'][1]}.o.jpg") as im:
        assert im.size == (64, 21) and im.getpixel((30, 10))[0] > 200
    # a source changed since the run: no image thumbnail from the new bytes
    for p in thumbs.iterdir():
        p.unlink()
    _shapes(run["root"] / "changed" / "x.png", 9)
    rec = json.loads((out / "shapes1.json").read_text())
    rec["source"] = str(run["root"] / "changed" / "x.png")
    (out / "shapes1.json").write_text(json.dumps(rec))
    rec = json.loads((out / "shapes2.json").read_text())
    rec["source"] = str(run["root"] / "no" / "such.png")
    (out / "shapes2.json").write_text(json.dumps(rec))
    data = _data(write_report(out, n_jobs=2).read_text(encoding="utf-8"))
    by_name = {e["n"]: e for e in data["records"]}
    assert "it" not in by_name["shapes1"] and "it" not in by_name["shapes2"]
    assert "the source image has changed since it was segmented" in by_name["shapes1"]["w"]
    assert "the source image is not found" in by_name["shapes2"]["w"]
    assert "it" in by_name["shapes0"] and "ot" in by_name["shapes2"]
    data = _data(write_report(out, source_thumbnails=False).read_text(encoding="utf-8"))
    assert not any("it" in e for e in data["records"])
    assert not list(thumbs.glob("*.i.jpg"))


def test_a_source_edited_or_removed_after_its_thumbnail_is_said_so_on_the_next_report(
        run, tmp_path):
    """Once its thumbnail existed, a changed or deleted source was never checked again:
    the old thumbnail was shown with no warning."""
    import hashlib

    out = _copy_run(run, tmp_path)
    sources = {}
    for i, name in enumerate(("shapes1", "shapes2")):  # sources of our own, to change
        path = _shapes(tmp_path / "src" / f"{name}.png", i)
        rec = json.loads((out / f"{name}.json").read_text())
        rec["source"], rec["input_sha256"] = str(path), hashlib.sha256(
            path.read_bytes()).hexdigest()
        (out / f"{name}.json").write_text(json.dumps(rec))
        sources[name] = path
    data = _data(write_report(out).read_text(encoding="utf-8"))
    assert all("it" in e for e in data["records"] if e["n"] in sources)
    with open(sources["shapes1"], "ab") as fh:  # edited in place
        fh.write(b"more bytes")
    sources["shapes2"].unlink()
    data = _data(write_report(out).read_text(encoding="utf-8"))
    by_name = {e["n"]: e for e in data["records"]}
    assert "the source image has changed since it was segmented" in by_name["shapes1"]["w"]
    assert "the source image is not found" in by_name["shapes2"]["w"]
    assert "it" not in by_name["shapes1"] and "it" not in by_name["shapes2"]


def test_page_elsewhere_links_the_folder_relatively(run, tmp_path):
    out = _copy_run(run, tmp_path)
    page = write_report(out, path=tmp_path / "pages" / "run 1.html")
    data = _data(page.read_text(encoding="utf-8"))
    assert data["out"] == "../out/" and data["thumbs"] == "run%201_files/"
    entry = data["records"][0]
    assert (page.parent / "run 1_files" / f"{entry['ot']}.o.jpg").is_file()
    assert (page.parent / "../out" / f"{entry['n']}_overlay.png").is_file()
    assert not (out / "report.html").exists()


def test_links_in_the_way_are_replaced_not_followed(run, tmp_path):
    out = _copy_run(run, tmp_path)
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    os.symlink(target, out / "report_files")
    os.symlink(target / "keep.txt", out / "report.html")
    write_report(out)
    assert (out / "report_files").is_dir() and not (out / "report_files").is_symlink()
    assert not (out / "report.html").is_symlink()
    assert (target / "keep.txt").read_text() == "keep" and len(list(target.iterdir())) == 1


def test_bad_arguments_are_refused_with_a_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        write_report(tmp_path / "file")
    with pytest.raises(IsADirectoryError, match="report.html"):
        write_report(tmp_path, path=tmp_path)
    (tmp_path / "report_files").write_text("x")
    with pytest.raises(NotADirectoryError, match="move it away"):
        write_report(tmp_path)
    with pytest.raises(InvalidParameterError):
        write_report(tmp_path, thumbnail_size=4)
    with pytest.raises(InvalidParameterError):
        write_report(tmp_path, page_size=0)


def test_an_empty_folder_gives_a_page_and_library_code_does_not_print(tmp_path, capsys):
    text = write_report(tmp_path).read_text(encoding="utf-8")
    doc = _parse(text)
    assert _count(doc, "n-images") == 0 and "No record has a K." in text
    assert _data(text)["records"] == []
    assert capsys.readouterr() == ("", "")


@pytest.mark.slow
def test_ten_thousand_records_in_bounded_time_and_size(tmp_path):
    rec = {
        "source": "/data/collection/some/folder/image_00000.jpg",
        "input_sha256": "0" * 64, "settings_hash": "a" * 64, "settings": {"x": 1},
        "image_size": [480, 640], "grid_shape": [32, 44], "n_clusters": 3,
        "eigengap_k": 3, "silhouette": 0.512345, "silhouette_scores": {"2": 0.4, "3": 0.5},
        "eigenvalues": [float(i) for i in range(16)], "run_id": "r" * 16,
        "timings": {"load": 0.01, "embed": 0.2, "affinity": 0.01, "segment": 0.1,
                    "refine": 0.3, "write": 0.02},
        "background": {"segment": 0, "score": 0.7},
        "outputs": {"mask": "x_mask.png", "overlay": "x_overlay.png"},
    }
    n = 10_000
    for i in range(n):
        rec["source"] = f"/data/collection/some/folder/image_{i:05d}.jpg"
        rec["n_clusters"] = 2 + i % 7
        (tmp_path / f"image_{i:05d}.json").write_text(json.dumps(rec))
    start = time.perf_counter()
    page = write_report(tmp_path)
    seconds = time.perf_counter() - start
    size = page.stat().st_size
    data = _data(page.read_text(encoding="utf-8"))
    assert len(data["records"]) == n
    assert sum(1 for e in data["records"] if e["k"] == 2) == len(range(0, n, 7))
    # about 0.6 s and 2.7 MB here; generous bounds for a busy machine
    assert seconds < 20, seconds
    assert size < 4_000_000, size


# --------------------------------------------------------------------------
# in a browser
# --------------------------------------------------------------------------


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium (apt-get install -y chromium)")


def _browse(page, tmp_path):
    return _browse_uri(page.as_uri(), tmp_path)


def _browse_uri(uri, tmp_path):
    """The DOM of the page after its scripts ran, from headless Chromium."""
    command = [_chromium(), "--headless", "--disable-gpu", "--no-first-run",
               "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'p'}",
               "--virtual-time-budget=10000", "--window-size=1400,5000"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    done = subprocess.run([*command, "--dump-dom", uri], capture_output=True,
                          timeout=180, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode("utf-8")


@pytest.mark.slow
def test_in_a_browser_images_render_counts_match_and_names_stay_text(run, tmp_path):
    out = _copy_run(run, tmp_path)
    Image.new("RGB", (40, 30), "white").save(out / "shapes0_explain.png")
    other = json.loads((out / "shapes0.json").read_text())
    other["source"] = CLOSER
    other["background"] = {"segment": 1, "score": 0.75}
    (out / f"{MARKUP_STEM}.json").write_text(json.dumps(other))
    shutil.copy(out / "shapes0_overlay.png", out / f"{MARKUP_STEM}_overlay.png")
    shutil.copy(out / "shapes0_mask.png", out / f"{MARKUP_STEM}_mask.png")
    (out / "truncated.json").write_text("{")
    # a name that the page sorts after "chelsea" although "chelsea-b.json" < "chelsea.json"
    shutil.copy(out / "shapes0.json", out / "chelsea-b.json")
    shutil.copy(out / "shapes0_overlay.png", out / "chelsea-b_overlay.png")
    shutil.copy(out / "shapes0_mask.png", out / "chelsea-b_mask.png")
    page = write_report(out)
    data = _data(page.read_text(encoding="utf-8"))
    expected_images = sum(("it" in e) + ("ot" in e) for e in data["records"])
    assert expected_images == 2 * 8 + 1  # the markup-named record has no source image

    dom = _browse(page, tmp_path)
    doc = _parse(dom)
    root = next(a for t, a in doc.elements if t == "html")
    assert root.get("data-rendered") == "1"
    assert int(root["data-images-expected"]) == expected_images
    assert int(root["data-images-loaded"]) == expected_images
    assert int(root["data-images-failed"]) == 0
    # nothing from the data ran or became an element
    assert doc.texts["title"] == ["CLASP report: out"] and "data-pwned" not in root
    assert not [a for t, a in doc.elements if t == "img" and a.get("src") == "x"]
    assert not [a for t, a in doc.elements if "onerror" in a]
    # the counts shown match the records
    cards = [a for t, a in doc.elements if t == "article"]
    assert len(cards) == len(data["records"]) == 9 == _count(doc, "n-records")
    assert [a["data-name"] for a in cards] == [e["n"] for e in data["records"]]
    order = [a["data-name"] for a in cards]
    assert order.index("chelsea-b") == order.index("chelsea") + 1
    by_id = {a["id"]: a for t, a in doc.elements if "id" in a}
    assert by_id["cards"]["data-shown"] == "9"
    assert by_id["failure-table"]["data-rows"] == "1" == str(_count(doc, "n-failed"))
    assert by_id["unreadable-table"]["data-rows"] == "1" == str(_count(doc, "n-unreadable"))
    assert doc.texts["#showing"] == ["Showing 1\u20139 of 9 matching image(s) (9 in all)."]
    assert doc.texts["k"] == [str(e.get("k", "\u2013")) for e in data["records"]]
    # hostile names are shown as text, exactly
    sources = doc.texts["source"]
    assert str(run["script_source"]) in sources  # .../<script>alert(1)</script>.png
    assert str(run["payload_source"]) in sources and CLOSER in sources
    assert MARKUP_STEM in doc.texts["name"] and "broken" in doc.texts["name"]
    assert "segment 1 (score 0.750)" in doc.texts["bg"]
    explain = [a["href"] for t, a in doc.elements if a.get("class") == "explain"]
    assert explain == ["shapes0_explain.png"]
    hrefs = [a["href"] for t, a in doc.elements if t == "a" and "href" in a]
    markup = [h for h in hrefs if h.startswith("%3Cimg") and h.endswith("_overlay.png")]
    assert len(markup) == 2 and (out / unquote(markup[0])).is_file()


@pytest.mark.slow
def test_in_a_browser_filtering_sorting_and_pages_follow_the_address(run, tmp_path):
    out = _copy_run(run, tmp_path)
    page = write_report(out, page_size=3)
    data = _data(page.read_text(encoding="utf-8"))
    records = data["records"]

    def shown(fragment):
        doc = _parse(_browse_uri(page.as_uri() + fragment, tmp_path))
        cards = [a["data-name"] for t, a in doc.elements if t == "article"]
        showing = next(a for t, a in doc.elements if a.get("id") == "showing")
        return cards, int(showing["data-matching"]), doc

    cards, matching, doc = shown("")
    assert cards == sorted(r["n"] for r in records)[:3] and matching == 7
    assert any("page 1 of 3" in t for t in doc.texts["pager"])
    cards, matching, _ = shown("#page=3")
    assert cards == sorted(r["n"] for r in records)[6:]
    k = records[0]["k"]
    cards, matching, _ = shown(f"#kmin={k}&kmax={k}")
    assert matching == sum(r["k"] == k for r in records)
    assert set(cards) <= {r["n"] for r in records if r["k"] == k}
    cards, matching, _ = shown("#sort=sil-desc&smin=0.9")
    best = sorted((r for r in records if r["sil"] >= 0.9), key=lambda r: -r["sil"])
    assert cards == [r["n"] for r in best][:3] and matching == len(best)
    cards, matching, _ = shown("#q=CHELSEA")
    assert cards == ["chelsea"] and matching == 1
