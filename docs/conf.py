"""Sphinx configuration of the sklearn-clasp documentation.

Build (from the repository root; warnings are errors, as in CI)::

    pip install -e ".[docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html

The pages are Markdown (MyST), the API reference is generated from the
numpydoc docstrings, and the gallery scripts in ``docs/examples/`` run during
the build (offline: weights-free embedder or random DINOv2 weights). Add
``-D plot_gallery=0`` to skip running them (the pages then show the figures of
an earlier run, and warn where there is none).
"""

import os
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
# Document the checkout being built, whatever is installed.
sys.path.insert(0, str(DOCS.parent))
sys.path.insert(0, str(DOCS / "_ext"))

import sklearn_clasp  # noqa: E402

# The gallery draws off-screen.
os.environ.setdefault("MPLBACKEND", "Agg")

# -- project -----------------------------------------------------------------

project = "sklearn-clasp"
author = "sklearn-clasp developers"
copyright = "sklearn-clasp developers, BSD-3-Clause"
version = release = sklearn_clasp.__version__

# -- general -----------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "clasp_docs",  # docs/_ext: `clasp --help`, completeness checks, links, gallery helpers
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# -- MyST (Markdown) ---------------------------------------------------------

myst_enable_extensions = ["colon_fence", "deflist"]
# `[text](page.md#some-heading)` links resolve to the heading's slug.
myst_heading_anchors = 3

# -- autodoc / autosummary / numpydoc ----------------------------------------

autosummary_generate = True
# Stub pages are regenerated on every build, so a name removed from the API
# leaves no stale page behind.
shutil.rmtree(DOCS / "generated", ignore_errors=True)
autosummary_imported_members = False
autodoc_typehints = "none"  # numpydoc docstrings already give the types
add_module_names = False

numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False

# -- sphinx-gallery ------------------------------------------------------------

sphinx_gallery_conf = {
    "examples_dirs": ["examples"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r"/plot_",  # run every plot_*.py
    "ignore_pattern": r"__init__\.py",
    "within_subsection_order": "clasp_docs.ExampleOrder",
    "download_all_examples": False,
    "remove_config_comments": True,
    # "Examples using X" on the API pages.
    "doc_module": ("sklearn_clasp",),
    "backreferences_dir": "gen_modules/backreferences",
    # Figures drawn without pyplot (explain_figure returns a plain Figure)
    # are picked up too.
    "image_scrapers": ("clasp_docs.figure_scraper", "matplotlib"),
    "matplotlib_animations": False,
    "show_memory": False,
    "min_reported_time": 1,
    "capture_repr": ("_repr_html_", "__repr__"),
}

# -- HTML ----------------------------------------------------------------------

html_theme = "pydata_sphinx_theme"
html_title = f"sklearn-clasp {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    # the top bar holds one row at 1280 px: three links, the rest under "More"
    "header_links_before_dropdown": 3,
}
html_show_sourcelink = False
