"""The architecture page tells the truth: every arrow is an import, no private reach-arounds."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sklearn_clasp"


def _module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports():
    """``{module: {(imported module, name or None), ...}}`` for every relative import."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    found.setdefault(module, set()).add((target, alias.name))
    return found


IMPORTS = _imports()


def _arrows():
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| `(sklearn_clasp[\w.]*)` \| `(sklearn_clasp[\w.]*)` \|", text, re.M)
    assert len(rows) > 20
    return rows


@pytest.mark.parametrize("source, target", _arrows())
def test_every_arrow_of_the_architecture_page_is_an_import(source, target):
    # a package's imports are those of its modules too
    imported = set().union(*(v for k, v in IMPORTS.items()
                             if k == source or k.startswith(source + ".")))
    targets = {t for t, _ in imported}
    # importing a name from a package counts as using its submodule of that name
    targets |= {f"{t}.{name}" for t, name in imported}
    assert target in targets, f"{source} does not import {target}"


def test_no_private_imports_across_packages():
    packages = {_module_name(p) for p in PACKAGE.rglob("__init__.py")}
    for module, imported in IMPORTS.items():
        parent = module.rsplit(".", 1)[0]
        # a module of a sub-package may use its package's private parts; a top-level
        # module only its own
        own_package = module if module in packages or parent == "sklearn_clasp" else parent
        for target, name in imported:
            private = [part for part in target.split(".") if part.startswith("_")]
            if (name.startswith("_") and not name.startswith("__")) or private:
                assert target.startswith(own_package + ".") or target == own_package, (
                    f"{module} imports {name} from {target}, private to another package")


def test_import_and_version_load_neither_scikit_learn_nor_torch():
    import subprocess
    import sys

    code = ("import sys, sklearn_clasp; from sklearn_clasp.cli import main; main(['--version']); "
            "print(sorted(m for m in ('sklearn', 'torch', 'scipy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
    # the public names are still there, imported on first use
    code = "import sklearn_clasp as s; print(s.make_clasp_pipeline.__module__, 'torch' in dir())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.stdout.split()[0] == "sklearn_clasp.pipeline"


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")))
def test_benchmarks_import_only_names_the_package_has(script):
    """A benchmark that imports a name the package no longer has fails only when run."""
    import importlib

    tree = ast.parse((ROOT / "benchmarks" / script).read_text())
    missing = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sklearn_clasp"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):
                    try:
                        importlib.import_module(f"{node.module}.{alias.name}")
                    except ImportError:
                        missing.append(f"{node.module}.{alias.name} (line {node.lineno})")
    assert missing == [], f"{script} imports names that do not exist: {missing}"


@pytest.mark.parametrize("function, estimator", [
    ("sklearn_clasp.refine:dense_crf", "sklearn_clasp.refine:CRFRefiner"),
    ("sklearn_clasp.refine:refine_labels", "sklearn_clasp.refine:CRFRefiner"),
    ("sklearn_clasp.spectral:adaptive_spectral_clustering",
     "sklearn_clasp.spectral:AdaptiveSpectralSegmenter"),
    ("sklearn_clasp.spectral:cluster_features",
     "sklearn_clasp.spectral:AdaptiveSpectralSegmenter"),
    ("sklearn_clasp.affinity:cosine_affinity", "sklearn_clasp.affinity:CosineAffinity"),
])
def test_functional_form_and_estimator_default_alike(function, estimator):
    """A setting means the same through the function and the estimator: one default."""
    import importlib
    import inspect

    def load(spec):
        module, name = spec.split(":")
        return getattr(importlib.import_module(module), name)

    def defaults(obj):
        return {n: p.default for n, p in inspect.signature(obj).parameters.items()
                if p.default is not inspect.Parameter.empty}

    fn, est = defaults(load(function)), load(estimator)().get_params()
    shared = sorted(set(fn) & set(est) - {"random_state"})
    assert len(shared) >= 2, shared
    assert {n: fn[n] for n in shared} == {n: est[n] for n in shared}
