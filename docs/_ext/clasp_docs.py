"""Sphinx helpers for the sklearn-clasp documentation.

- ``clasp-help`` directive: the ``--help`` text of ``clasp`` or one of its
  commands, produced by :func:`sklearn_clasp.cli.build_parser` at build time,
  so the CLI reference cannot drift from the code.
- CLI completeness check: every long option of every ``clasp`` command that is
  not generated from an estimator parameter must be mentioned (as
  ```--option```) in ``cli.md`` (the generated ones are documented by the
  estimators and shown in the embedded ``--help``).
- API completeness check: every name in the ``__all__`` of a documented module
  must be listed in ``api.rst``, and no private module may be listed.
- Markdown files included from another directory (``benchmarks/RESULTS.md``
  in ``benchmarks.md``) get their relative links and image paths rebased, so
  that they resolve in the built docs as they do on a repository browser;
  links from the pages to files outside ``docs/`` (``../SECURITY.md``) become
  download links.
- :func:`figure_scraper`: a sphinx-gallery image scraper for matplotlib
  figures made without pyplot (``explain_figure`` returns such a figure).
- :class:`ExampleOrder`: the order of the gallery, from first steps to
  details.
- :func:`_patch_sphinx_dict_unparse`: lets Sphinx's source analyser read
  modules with a ``{**a, ...}`` dict in a decorator; without it, the ``#:``
  comments documenting the constants of those modules are lost silently.

Problems are logged as Sphinx warnings, which are errors under
``sphinx-build -W`` (as in CI).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

# Modules whose ``__all__`` the API reference must cover, with the module the
# names are documented under (private modules are documented under their own
# path: their names are not re-exported).
API_MODULES = (
    "sklearn_clasp",
    "sklearn_clasp.pipeline",
    "sklearn_clasp.records",
    "sklearn_clasp.embedding",
    "sklearn_clasp.embedding.weights",
    "sklearn_clasp.affinity",
    "sklearn_clasp.device",
    "sklearn_clasp.spectral",
    "sklearn_clasp.refine",
    "sklearn_clasp.permutohedral",
    "sklearn_clasp.collection",
    "sklearn_clasp.report",
    "sklearn_clasp.io",
    "sklearn_clasp.image",
    "sklearn_clasp.metrics",
    "sklearn_clasp.visualize",
    "sklearn_clasp.explain",
    "sklearn_clasp.datasets",
    "sklearn_clasp.data",
    "sklearn_clasp.cli",
)

# Width of the ``--help`` text in the docs (argparse reads $COLUMNS).
HELP_COLUMNS = 92


# -- clasp --help ---------------------------------------------------------------


def _subparser(parser, command):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            if command in action.choices:
                return action.choices[command]
            raise KeyError(
                f"clasp-help: unknown command {command!r}; "
                f"choose from {sorted(action.choices)}"
            )
    raise KeyError("clasp-help: the clasp parser has no sub-commands")


def clasp_help_text(command=None):
    """The ``--help`` text of ``clasp`` (``command=None``) or of one command."""
    from sklearn_clasp.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_COLUMNS)
    try:
        parser = build_parser()
        if command is not None:
            parser = _subparser(parser, command)
        return parser.format_help().rstrip()
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


class ClaspHelpDirective(SphinxDirective):
    """``.. clasp-help:: [COMMAND]``: a literal block with the help text."""

    required_arguments = 0
    optional_arguments = 1
    has_content = False
    option_spec = {"caption": directives.unchanged}

    def run(self):
        command = self.arguments[0] if self.arguments else None
        try:
            text = clasp_help_text(command)
        except Exception as exc:  # report in the build log, with the location
            logger.warning("clasp-help: %s", exc, location=self.get_location())
            return []
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        self.set_source_info(block)
        return [block]


def check_cli_coverage(app):
    """Warn about ``clasp`` options that ``cli.md`` does not mention."""
    from sklearn_clasp.cli import build_parser, pipeline_setting_specs, run_setting_specs

    generated = {s.flag for s in pipeline_setting_specs() + run_setting_specs()}
    page = Path(app.srcdir) / "cli.md"
    if not page.exists():
        logger.warning("CLI reference %s is missing", page)
        return
    text = page.read_text(encoding="utf-8")
    parser = build_parser()
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                for option in (o for a in sub._actions for o in a.option_strings):
                    if not option.startswith("--") or option in ("--help", *generated):
                        continue
                    if not re.search(re.escape(option) + r"(?![\w-])", text):
                        missing.append(f"clasp {command} {option}")
    if missing:
        logger.warning(
            "options not described in the CLI reference (docs/cli.md): %s",
            ", ".join(sorted(set(missing))),
            location="cli",
        )


# -- API completeness -------------------------------------------------------------

_CURRENTMODULE = re.compile(r"^\.\. (?:currentmodule|module)::\s*(\S+)", re.M)


def documented_names(api_text):
    """Fully qualified names listed in the autosummary tables of ``api_text``."""
    names = set()
    module = None
    in_summary = False
    for line in api_text.splitlines():
        m = _CURRENTMODULE.match(line)
        if m:
            module = m.group(1)
            in_summary = False
            continue
        if line.startswith(".. autosummary::"):
            in_summary = True
            continue
        if in_summary:
            stripped = line.strip()
            if not stripped or stripped.startswith(":"):
                continue
            if not line.startswith((" ", "\t")):
                in_summary = False
                continue
            name = stripped.lstrip("~")
            names.add(name if "." in name and name.startswith("sklearn_clasp") else
                      f"{module}.{name}")
    return names


def check_api_coverage(app):
    """Warn about public names (``__all__``) missing from ``api.rst``."""
    api = Path(app.srcdir) / "api.rst"
    if not api.exists():
        logger.warning("API reference %s is missing", api)
        return
    listed = documented_names(api.read_text(encoding="utf-8"))
    private = sorted(n for n in listed if any(p.startswith("_") and not p.startswith("__")
                                               for p in n.split(".")))
    if private:
        logger.warning("private names in the API reference (docs/api.rst): %s",
                       ", ".join(private), location="api")
    listed_short = {}
    for full in listed:
        listed_short.setdefault(full.rsplit(".", 1)[-1], set()).add(full)
    missing = []
    for modname in API_MODULES:
        module = importlib.import_module(modname)
        for name in getattr(module, "__all__", ()):
            if name.startswith("__"):
                continue
            if f"{modname}.{name}" in listed:
                continue
            # a re-export (e.g. sklearn_clasp.CosineAffinity) is covered by
            # its home module's entry when it is the same object
            obj = getattr(module, name, None)
            covered = False
            for full in listed_short.get(name, ()):
                home, _, attr = full.rpartition(".")
                try:
                    if obj is not None and getattr(importlib.import_module(home), attr) is obj:
                        covered = True
                        break
                except (ImportError, AttributeError):
                    continue
            if not covered:
                missing.append(f"{modname}.{name}")
    if missing:
        logger.warning(
            "public names missing from the API reference (docs/api.rst): %s",
            ", ".join(sorted(missing)),
            location="api",
        )


# -- relative links in Markdown ---------------------------------------------------------

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_MD_TARGET = re.compile(r"(!?)(\[[^\]]*\]\()(<[^>]*>|[^)\s]+)")
_HTML_TARGET = re.compile(r"""((?:src|href)\s*=\s*["'])([^"']+)""")
_REF_DEFINITION = re.compile(r"^(\s{0,3}\[[^\]]+\]:\s*)(\S+)")
_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")


def _split_target(target):
    """``(bracketed, path, anchor)`` of a relative target, or None for URLs and anchors."""
    bracketed = target.startswith("<") and target.endswith(">")
    inner = target[1:-1] if bracketed else target
    if not inner or inner.startswith(("#", "/")) or _URL.match(inner):
        return None
    path, sep, anchor = inner.partition("#")
    return bracketed, path, sep + anchor


def _join_target(bracketed, path, anchor):
    target = path.replace(os.sep, "/") + anchor
    return f"<{target}>" if bracketed else target


def rewrite_markdown_targets(text, rewrite):
    """Apply ``rewrite(target, is_image)`` to the relative link targets of Markdown.

    Inline links and images and reference definitions are rewritten; fenced
    code blocks, code spans, URLs and anchors are left alone.

    Returns
    -------
    text : str
        The rewritten text.
    raw_html_targets : list of str
        Relative ``src``/``href`` targets of raw HTML (not rewritten).
    """
    def sub_inline(g):
        if _split_target(g.group(3)) is None:
            return g.group(0)
        return g.group(1) + g.group(2) + rewrite(g.group(3), bool(g.group(1)))

    def sub_definition(g):
        if _split_target(g.group(2)) is None:
            return g.group(0)
        return g.group(1) + rewrite(g.group(2), False)

    out = []
    raw_html = []
    fence = None
    for line in text.splitlines(keepends=True):
        m = _FENCE.match(line)
        if fence is not None:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            out.append(line)
            continue
        if m:
            fence = m.group(1)
            out.append(line)
            continue
        parts = re.split(r"(`+[^`]*`+)", line)
        for i in range(0, len(parts), 2):  # outside code spans
            part = _MD_TARGET.sub(sub_inline, parts[i])
            raw_html.extend(g.group(2) for g in _HTML_TARGET.finditer(part)
                            if _split_target(g.group(2)) is not None)
            if i == 0:
                part = _REF_DEFINITION.sub(sub_definition, part)
            parts[i] = part
        out.append("".join(parts))
    return "".join(out), raw_html


def rebase_target(target, from_dir, to_dir):
    """Relative ``target`` of a file in ``from_dir``, made relative to ``to_dir``."""
    split = _split_target(target)
    if split is None:
        return target
    bracketed, path, anchor = split
    rebased = os.path.relpath(os.path.normpath(os.path.join(from_dir, path)), to_dir)
    return _join_target(bracketed, rebased, anchor)


def outside_link_as_download(target, doc_dir, srcdir):
    """A link to an existing file outside the docs becomes a download link.

    MyST takes a link to a ``.md`` file for a link to a page; a page outside
    the documentation (``../SECURITY.md``) cannot be one, so the file is
    offered as a download (MyST's ``path:`` links) instead of failing.
    """
    split = _split_target(target)
    if split is None:
        return target
    bracketed, path, anchor = split
    full = os.path.normpath(os.path.join(doc_dir, path))
    if os.path.commonpath([full, srcdir]) == srcdir or not os.path.isfile(full):
        return target
    return _join_target(bracketed, "path:" + path, "")


def _fix_markdown(app, text, from_dir, docname, what):
    """Rebase ``text`` (a file in ``from_dir``) onto ``docname``'s directory."""
    srcdir = os.path.normpath(app.srcdir)
    to_dir = os.path.normpath(os.path.join(srcdir, os.path.dirname(docname)))

    def rewrite(target, is_image):
        if from_dir != to_dir:
            target = rebase_target(target, from_dir, to_dir)
        if not is_image:
            target = outside_link_as_download(target, to_dir, srcdir)
        return target

    text, raw_html = rewrite_markdown_targets(text, rewrite)
    if raw_html and from_dir != to_dir:
        logger.warning(
            "%s: relative links in raw HTML do not resolve in the docs (%s); use "
            "Markdown syntax, ![alt](path.png) or [text](path)",
            what, ", ".join(raw_html), location=docname,
        )
    return text


def fix_included_markdown(app, relative_path, parent_docname, content):
    """``include-read``: rebase a Markdown file included from another directory.

    Its relative links and images (``../docs/figures/plot.png`` in
    ``benchmarks/RESULTS.md``) then resolve in the built docs as they do on a
    repository browser.
    """
    if Path(relative_path).suffix.lower() != ".md":
        return
    docname = getattr(app.env, "docname", None) or parent_docname
    from_dir = os.path.normpath(os.path.join(app.srcdir, os.path.dirname(relative_path)))
    content[0] = _fix_markdown(app, content[0], from_dir, docname, str(relative_path))


def fix_page_links(app, docname, source):
    """``source-read``: links from a Markdown page to files outside the docs."""
    path = app.env.doc2path(docname)
    if Path(path).suffix.lower() != ".md":
        return
    from_dir = os.path.normpath(os.path.dirname(path))
    source[0] = _fix_markdown(app, source[0], from_dir, docname, docname)


# -- sphinx-gallery scraper ---------------------------------------------------------


def figure_scraper(block, block_vars, gallery_conf, **kwargs):
    """Save matplotlib figures that live in the example's namespace but not in pyplot.

    Each such figure is saved once, after the first code block at whose end it
    exists. Runs before sphinx-gallery's matplotlib scraper, and marks the
    pyplot figures it sees (that scraper saves and closes them; once closed
    they would look like figures without pyplot).
    """
    from matplotlib.figure import Figure
    from sphinx_gallery.scrapers import figure_rst

    figures = []
    for value in list(block_vars["example_globals"].values()):
        if not isinstance(value, Figure) or getattr(value, "_clasp_docs_seen", False):
            continue
        value._clasp_docs_seen = True
        if value.canvas.manager is None and all(value is not f for f in figures):
            figures.append(value)
    paths = []
    for fig, path in zip(figures, block_vars["image_path_iterator"]):
        fig.savefig(path, **kwargs)
        paths.append(path)
    return figure_rst(paths, gallery_conf["src_dir"])


# -- gallery order ----------------------------------------------------------------------

#: Gallery scripts in reading order; others follow, by file name.
EXAMPLE_ORDER = (
    "plot_segment_sample_images.py",
    "plot_segment_a_folder.py",
    "plot_choosing_k.py",
    "plot_crf_refinement.py",
    "plot_grid_search.py",
    "plot_components.py",
    "plot_dinov2_random_weights.py",
    "plot_dask_local_cluster.py",
)


class ExampleOrder:
    """sphinx-gallery ``within_subsection_order``: :data:`EXAMPLE_ORDER` first."""

    def __init__(self, src_dir):
        self.src_dir = src_dir

    def __call__(self, filename):
        name = os.path.basename(filename)
        if name in EXAMPLE_ORDER:
            return (0, EXAMPLE_ORDER.index(name), name)
        return (1, 0, name)


# -- Sphinx source analyser -------------------------------------------------------------


def _patch_sphinx_dict_unparse():
    """Make ``sphinx.pycode.ast.unparse`` accept ``{**mapping, key: value}``.

    Some Sphinx versions pair the dict's keys (skipping the ``None`` key of a
    ``**`` entry) with all its values and fail; the module's ``#:`` comments
    (``PAPER_SETTINGS``...) are then dropped without a warning.
    """
    import ast

    from sphinx.pycode import ast as sphinx_ast

    visitor = getattr(sphinx_ast, "_UnparseVisitor", None)
    if visitor is None or getattr(visitor, "_clasp_docs_patched", False):
        return

    def visit_Dict(self, node: ast.Dict) -> str:
        items = [("**" + self.visit(v)) if k is None else (self.visit(k) + ": " + self.visit(v))
                 for k, v in zip(node.keys, node.values)]
        return "{" + ", ".join(items) + "}"

    visitor.visit_Dict = visit_Dict
    visitor._clasp_docs_patched = True


def setup(app):
    _patch_sphinx_dict_unparse()
    app.add_directive("clasp-help", ClaspHelpDirective)
    app.connect("builder-inited", check_api_coverage)
    app.connect("builder-inited", check_cli_coverage)
    app.connect("include-read", fix_included_markdown)
    app.connect("source-read", fix_page_links)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
