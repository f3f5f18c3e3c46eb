"""Imports point one way (issue 23): text -> runtime/aggregate -> embedder -> stage -> jobs -> api
-> cli, scaleout beside the jobs and below api; no module imports another's private name.

Read from the source (every import, the ones inside functions included), so a lazy import that
points upward fails here as a top-level one would."""
import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[1] / "bertfeat"

# a module may import only from a lower layer, or from inside its own package (tables.duck -> tables)
LAYERS = [
    {"version", "errors", "progress"},
    {"tables", "text", "aggregate"},
    {"models"},
    {"settings", "runtime"},
    {"embedder", "stage", "exporter", "predict"},
    {"scaleout"},
    {"jobs"},
    {"api"},
    {"cli", "__init__"},
    {"__main__"},
]
LAYER = {name: k for k, names in enumerate(LAYERS) for name in names}


def _imports():
    """(importing module's top part, imported module's top part, names, file:line) of every
    relative import in the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        top, package = parts[0], parts[:-1]  # the package a relative import starts from
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = list(package[: len(package) - (node.level - 1)])
                target = base + (node.module.split(".") if node.module else [])
                names = [a.name for a in node.names]
                if not target:  # `from . import x` at the top: x is the module
                    for name in names:
                        yield top, name, [], f"{path.name}:{node.lineno}"
                else:
                    yield top, target[0], names, f"{path.relative_to(PACKAGE)}:{node.lineno}"


def test_every_module_has_a_layer():
    tops = {p.relative_to(PACKAGE).with_suffix("").parts[0] for p in PACKAGE.rglob("*.py")}
    assert tops <= set(LAYER), f"give these a layer in LAYERS: {sorted(tops - set(LAYER))}"


def test_imports_point_down():
    upward = [f"{where}: {src} imports {dst}" for src, dst, _, where in _imports()
              if src != dst and LAYER[dst] >= LAYER[src]]
    assert not upward, "\n".join(upward)


def test_no_private_names_imported_from_another_module():
    private = [f"{where}: {n} from {dst}" for src, dst, names, where in _imports() if src != dst
               for n in names if n.startswith("_") and not n.startswith("__")]
    assert not private, "\n".join(private)


def test_test_modules_import_no_other_test_module():
    """Shared test code lives in tests/helpers.py (and fixtures in conftest.py), so a test
    module can be read, run or deleted on its own."""
    tests = Path(__file__).resolve().parent
    found = []
    for path in sorted(tests.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module and (
                    node.module.startswith("test_") or node.module == "conftest"):
                found.append(f"{path.name}:{node.lineno}: from {node.module}")
    assert not found, "\n".join(found)
