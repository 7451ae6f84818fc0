"""The package's layout is its pipeline: imports go one way between stages.

    format (metadata, config)  <-  events  <-  analysis  <-  server
    format, events, analysis   <-  record  (training side, TensorFlow)

`record` may read `events` (a resumed run reads what its earlier attempt
wrote) and run `analysis` (the offline detection over the recent rows, on
the host, chooses which detail rows to keep: `record.recheck`); nothing
below the server imports it, and nothing but the training side imports
TensorFlow. Checked statically (every import statement of the
package, function-level ones included) and by importing each NumPy-side
module in a fresh interpreter.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tb_stability"

# The stage of each top-level name of the package.
STAGE = {
    "version": "format", "metadata": "format", "config": "format",
    "events": "events", "analysis": "analysis", "server": "server",
    "record": "record", "keras": "record", "monitor": "record", "summary": "record",
    "cli": "cli", "plugin": "server", "__init__": "surface",
}
# Which stages each stage may import.
ALLOWED = {
    "format": {"format"},
    "events": {"format", "events"},
    "analysis": {"format", "events", "analysis"},
    "server": {"format", "events", "analysis", "server"},
    "record": {"format", "events", "analysis", "record"},
    "cli": {"format", "events", "analysis", "cli"},
    "surface": {"format", "record"},
}
# Modules that must load without TensorFlow (TensorBoard imports the plugin,
# the CLI and the analysis run where no TensorFlow is installed).
NO_TENSORFLOW = ("tb_stability", "tb_stability.metadata", "tb_stability.config",
                 "tb_stability.cli", "tb_stability.plugin")
# Subpackages that must load without TensorFlow, module by module.
NO_TENSORFLOW_PACKAGES = ("events", "analysis", "server")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        yield ".".join(rel.parts), path


def _stage(module):
    parts = module.split(".")
    if len(parts) == 1:
        return "surface"
    return STAGE.get(parts[1], f"unlisted:{parts[1]}")


def _imports(path):
    """Every tb_stability module an import statement of `path` names."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "tb_stability" and name != "tb_stability":
                yield node.lineno, name


def test_every_module_has_a_stage():
    unlisted = [m for m, _ in _modules() if _stage(m).startswith("unlisted")]
    assert not unlisted, f"add these to STAGE in tests/test_layout.py: {unlisted}"


def test_imports_go_one_way_between_stages():
    problems = []
    for module, path in _modules():
        here = _stage(module)
        for line, name in _imports(path):
            target = name.split(".")
            if len(target) > 1 and target[1] not in STAGE:
                continue  # `from tb_stability import x` names x below
            there = _stage(name)
            if there not in ALLOWED[here]:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: "
                                f"{here} imports {name} ({there})")
    assert not problems, "\n".join(problems)


def test_only_the_training_side_imports_tensorflow():
    problems = []
    for module, path in _modules():
        if _stage(module) in ("record",):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name.split(".")[0] in ("tensorflow", "keras"):
                    problems.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {name}")
    assert not problems, "\n".join(problems)


def _loaded_after(imports):
    code = (f"import sys; import {', '.join(imports)}; "
            "print(*[m in sys.modules for m in ('tensorflow', 'keras', 'tensorboard')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    return dict(zip(("tensorflow", "keras", "tensorboard"), (v == "True" for v in out)))


@pytest.mark.parametrize("package", NO_TENSORFLOW_PACKAGES)
def test_numpy_side_packages_load_without_tensorflow(package):
    modules = [m for m, _ in _modules() if m.split(".")[1:2] == [package]]
    loaded = _loaded_after(modules)
    assert not loaded["tensorflow"] and not loaded["keras"], modules


def test_the_surface_loads_without_tensorflow():
    loaded = _loaded_after(NO_TENSORFLOW)
    assert not loaded["tensorflow"] and not loaded["keras"]


def test_the_analysis_is_numpy_only():
    """Not even TensorBoard: the analysis reads aligned arrays only (the
    event-file reader is imported on the first `load_logdir` call)."""
    modules = [m for m, _ in _modules() if m.split(".")[1:2] == ["analysis"]]
    assert not any(_loaded_after(modules).values()), modules
