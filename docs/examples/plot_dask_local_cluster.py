"""
Segment a collection on a Dask cluster
======================================

:func:`~sklearn_clasp.segment_collection` runs on a Dask cluster when it is
given a ``distributed.Client`` (or a scheduler address). The images travel as
paths; each worker loads, segments and writes its images itself. This example
uses a small in-process cluster (no network, no extra processes) so that it
runs anywhere; on a real cluster only the way the client is made changes (see
:doc:`/dask`). It needs the ``dask`` extra: ``pip install
"sklearn-clasp[dask]"``.
"""

# %%
# Run the collection on the cluster
# ---------------------------------
import tempfile
from pathlib import Path

from distributed import Client, LocalCluster

from sklearn_clasp import make_clasp_pipeline, segment_collection
from sklearn_clasp.data import sample_image_paths

work = Path(tempfile.mkdtemp())
images = sample_image_paths()
pipe = make_clasp_pipeline("handcrafted", short_side=224, random_state=0)

with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                  dashboard_address=None) as cluster, Client(cluster) as client:
    report = segment_collection(images, work / "dask", pipeline=pipe, client=client)
print(report.summary())

# %%
# The same masks as a local run
# -----------------------------
#
# Each image is segmented on its own with the same settings, so where it runs
# does not change the result.
import numpy as np
from PIL import Image

local = segment_collection(images, work / "local", pipeline=pipe)
for name in ("astronaut", "coffee", "chelsea"):
    a = np.asarray(Image.open(work / "dask" / f"{name}_mask.png"))
    b = np.asarray(Image.open(work / "local" / f"{name}_mask.png"))
    print(f"{name:10s} identical masks: {np.array_equal(a, b)}")

# %%
# On a real cluster
# -----------------
#
# Start a scheduler and workers the way your site does, with the inputs, the
# outputs and the DINOv2 weights on storage that every worker sees at the same
# paths, then point the run at the scheduler::
#
#     report = segment_collection("/shared/photos", "/shared/segmented",
#                                 pipeline=make_clasp_pipeline("dinov2"),
#                                 scheduler="tcp://scheduler-host:8786")
#
# or from the command line: ``clasp segment /shared/photos --out
# /shared/segmented --scheduler tcp://scheduler-host:8786``.
import shutil

shutil.rmtree(work)
