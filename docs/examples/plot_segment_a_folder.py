"""
Segment a folder and read the outputs
=====================================

:func:`~sklearn_clasp.segment_collection` (what ``clasp segment`` runs)
segments every image of a folder and writes, per image, the integer mask, a
colour overlay and a JSON record; images that cannot be segmented are listed
in ``failures.jsonl``. This example segments a folder holding the three
bundled photographs and one broken file, reads every output back, and runs the
same job from the command line.
"""

# %%
# A folder of images
# ------------------
#
# The three sample photographs, one of them in a sub-folder, and a file with an
# image suffix that is not an image.
import shutil
import tempfile
from pathlib import Path

from sklearn_clasp.data import sample_image_paths

work = Path(tempfile.mkdtemp())
photos = work / "photos"
(photos / "cats").mkdir(parents=True)
astronaut, coffee, chelsea = sample_image_paths()
shutil.copy(astronaut, photos)
shutil.copy(coffee, photos)
shutil.copy(chelsea, photos / "cats")
(photos / "broken.jpg").write_text("not a JPEG")
print(sorted(str(p.relative_to(work)) for p in photos.rglob("*") if p.is_file()))

# %%
# Segment it
# ----------
#
# The weights-free embedder keeps the example offline (``make_clasp_pipeline()``
# would use DINOv2). The report says what happened to each image; its
# ``summary()`` is what ``clasp segment`` prints. The broken file is reported
# (and logged as a warning) and the others go on. A failing image is normally
# tried ``max_attempts=3`` times, for transient errors; once is enough here.
from sklearn_clasp import make_clasp_pipeline, segment_collection

pipe = make_clasp_pipeline("handcrafted", short_side=224, random_state=0)
out = work / "segmented"
report = segment_collection(photos, out, pipeline=pipe, max_attempts=1)
print(report.summary())

# %%
# The output folder
# -----------------
#
# Each image gets ``<name>_mask.png``, ``<name>_overlay.png`` and
# ``<name>.json``, where ``<name>`` is its path relative to the folder searched,
# with ``/`` turned into ``__`` (``cats/chelsea.jpg`` -> ``cats__chelsea``).
for path in sorted(out.iterdir()):
    print(f"{path.name:28s} {path.stat().st_size:8d} bytes")

# %%
# The mask is an 8-bit grayscale PNG (16-bit above 255 segments) with values
# ``0 .. K-1`` at the image's full size. NumPy and Pillow read it back; here
# it is drawn next to the overlay that was written with it.
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from sklearn_clasp.visualize import color_labels

mask = np.asarray(Image.open(out / "cats__chelsea_mask.png"))
overlay_png = np.asarray(Image.open(out / "cats__chelsea_overlay.png"))
print("mask:", mask.shape, mask.dtype, "values", np.unique(mask))

fig, axes = plt.subplots(1, 2, figsize=(8, 2.9), layout="constrained")
axes[0].imshow(color_labels(mask))
axes[0].set_title("cats__chelsea_mask.png (coloured)", fontsize=10)
axes[1].imshow(overlay_png)
axes[1].set_title("cats__chelsea_overlay.png", fontsize=10)
for ax in axes:
    ax.set_axis_off()
plt.show()

# %%
# The JSON record holds what was chosen and why: the number of segments
# ``n_clusters``, the eigengap estimate ``eigengap_k``, the silhouette of each
# K tried, the eigenvalues, timings per stage, and the settings with their
# hash and the input's SHA-256 (used to skip finished images on a re-run).
import json

record = json.loads((out / "cats__chelsea.json").read_text())
print(sorted(record))
print({key: record[key] for key in ("n_clusters", "n_segments", "eigengap_k",
                                    "image_size", "grid_shape")})
print("silhouette per K:", record["silhouette_scores"])
print("seconds per stage:", {k: round(v, 3) for k, v in record["timings"].items()})

# %%
# ``failures.jsonl`` has one JSON object per line for each image that failed,
# with the error; it is appended to, never rewritten.
for line in (out / "failures.jsonl").read_text().splitlines():
    failure = json.loads(line)
    print(failure["name"], "|", failure["error_type"], "|", failure["attempts"], "attempts")

# %%
# Resuming
# --------
#
# Running the same job again skips every image whose record matches the input
# bytes and the settings, and retries only the failure. Changing a setting
# that affects the result redoes the images.
again = segment_collection(photos, out, pipeline=pipe, max_attempts=1)
print(f"{again.n_done} segmented, {again.n_skipped} skipped, {again.n_failed} failed")

# %%
# The same from the command line
# -------------------------------
#
# ``clasp segment`` takes files, folders and glob patterns; every pipeline
# parameter is an option (see :doc:`/cli`). The exit status is 1 because one
# image failed. :func:`sklearn_clasp.cli.main` runs the command in-process;
# in a shell: ``clasp segment photos --out segmented_cli --embedder handcrafted
# --embed-short-side 224 --max-attempts 1 --quiet``.
from sklearn_clasp.cli import main

status = main(["segment", str(photos), "--out", str(work / "segmented_cli"),
               "--embedder", "handcrafted", "--embed-short-side", "224",
               "--max-attempts", "1", "--quiet"])
print("exit status:", status)
print(sorted(p.name for p in (work / "segmented_cli").iterdir()))

shutil.rmtree(work)
