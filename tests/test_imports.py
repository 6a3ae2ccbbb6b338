"""con2lib's modules import in layers: no import circle, and every import goes down the layers.

Every ``import`` counts, also those inside functions and under ``TYPE_CHECKING``: a late import only
hides a circle or a shortcut through the layers, and the layers are what a reader follows
(con2lib/__init__.py, docs/architecture.md): core (config, paths, paramfiles) < method | data < runs
< analysis | serving < sweeps < cli. The method imports nothing of MLflow, papermill, the CLI, data
loading or parameter files; scoring imports no training code; data knows nothing of training.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "con2lib"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The con2lib modules ``path`` imports (``from con2lib import x``: the module x when it is one).

    Args:
        modules: every module of the package, by dotted name.
    """
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules
            # from a package, its submodules: importing those, not the package's own names
            found |= submodules if len(submodules) == len(node.names) else {node.module, *submodules}
    return {name for name in found if name in modules and name != module_name(path)}


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, modules) for f in files}


def external_imports(path: Path) -> set[str]:
    """Top-level names of everything ``path`` imports that is not con2lib (``mlflow``, ``argparse``, ...)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found - {"con2lib"}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One import circle per strongly connected group of modules (Tarjan), each as a path back to its start."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_con2lib_has_no_import_cycles() -> None:
    graph = import_graph()
    assert {"con2lib.cli", "con2lib.method.train", "con2lib.config", "con2lib.data"} <= set(graph)
    assert "con2lib.config" in graph["con2lib.method.train"]  # the graph sees imports
    assert cycles(graph) == [], "modules importing each other (directly or through others)"


# layer of each package (a module's layer is that of its longest listed prefix); equal layers with
# different names are siblings that may not import each other
LAYERS = {
    "con2lib": ("core", 0), "con2lib.paths": ("core", 0), "con2lib.config": ("core", 0),
    "con2lib.paramfiles": ("core", 0), "con2lib.checks": ("core", 0),
    "con2lib.method": ("method", 1), "con2lib.data": ("data", 1),
    "con2lib.runs": ("runs", 2),
    "con2lib.analysis": ("analysis", 3), "con2lib.serving": ("serving", 3),
    "con2lib.sweeps": ("sweeps", 4),
    "con2lib.cli": ("cli", 5),
    "con2lib.pyfunc_model": ("saved models", 6),  # the old path of logged models' pyfunc: above all
}
# what the method may not import: tracking, notebooks, command lines, parameter files, data loading
METHOD_BANS = {"mlflow", "papermill", "nbformat", "nbconvert", "argparse", "yaml", "submitit", "PIL"}
TRAINING = {"con2lib.method.train", "con2lib.method.losses", "con2lib.method.checkpoint", "con2lib.method.epochs",
            "con2lib.method.learning_signal", "con2lib.method.schedules", "con2lib.method.distributed"}
SCORING = ("con2lib.method.scores", "con2lib.method.evaluate", "con2lib.analysis.baselines", "con2lib.analysis.metrics")


def layer(module: str) -> tuple[str, int]:
    owner = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[owner]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports that go up the layers or sideways into a sibling package."""
    bad = []
    for module, imported in sorted(graph.items()):
        (name, level) = layer(module)
        for target in sorted(imported):
            (t_name, t_level) = layer(target)
            if t_level > level or (t_level == level and t_name != name):
                bad.append(f"{module} ({name}) imports {target} ({t_name})")
    return bad


def test_layer_rule_finds_an_upward_and_a_sideways_import() -> None:
    assert layer_violations({"con2lib.method.train": {"con2lib.runs.tracking"}}) == [
        "con2lib.method.train (method) imports con2lib.runs.tracking (runs)"]
    assert layer_violations({"con2lib.data.base": {"con2lib.method.models"}}) != []
    assert layer_violations({"con2lib.cli": {"con2lib.method.train", "con2lib.config"}}) == []


def test_every_import_goes_down_the_layers() -> None:
    graph = import_graph()
    assert all(layer(m) for m in graph)  # every module has a layer
    assert layer_violations(graph) == []


def test_the_method_imports_no_tracking_cli_data_or_parameter_files() -> None:
    for path in sorted((PACKAGE / "method").rglob("*.py")):
        banned = external_imports(path) & METHOD_BANS
        assert not banned, f"{path.relative_to(ROOT)} imports {sorted(banned)}"


def test_scoring_imports_no_training_code() -> None:
    graph = import_graph()
    scoring = [m for m in graph if m.startswith(SCORING)]
    assert "con2lib.method.evaluate" in scoring and "con2lib.method.scores.gaussian" in scoring
    for module in scoring:
        training = {t for t in graph[module] if t.startswith(tuple(TRAINING))}
        assert not training, f"{module} imports training code {sorted(training)}"


def test_data_knows_nothing_of_training() -> None:
    graph = import_graph()
    for module in (m for m in graph if m.startswith("con2lib.data")):
        assert graph[module] <= {m for m in graph if layer(m)[0] in ("core", "data")}, module


def documented_modules(text: str) -> set[str]:
    """``package/module.py`` paths named in docs/architecture.md's package table (a row without a package
    continues the one above; ``core`` and ``top`` are con2lib's own folder)."""
    found, package = set(), ""
    for row in text.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if not row.startswith("|") or len(cells) != 3 or set(cells[0]) <= {"-"} and cells[0]:
            continue
        if cells[0]:
            package = "" if cells[0] in ("core", "top") else cells[0].strip("`")
        found |= {package + name for name in re.findall(r"`([\w/]+\.py)`", cells[1])}
    return found


def test_architecture_doc_names_every_module() -> None:
    documented = documented_modules((ROOT / "docs" / "architecture.md").read_text())
    modules = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
               if p.name != "__init__.py" or p.parent.name == "data"}  # data/__init__.py holds the registry
    assert modules - documented == set(), "modules missing from docs/architecture.md's table"
    assert documented - modules == set(), "docs/architecture.md names modules that do not exist"


def test_every_name_a_module_exports_exists() -> None:
    """``__all__`` lists only names the module has: a name left behind by a move breaks ``import *``."""
    import importlib

    for path in sorted(PACKAGE.rglob("*.py")):
        module = importlib.import_module(module_name(path))
        missing = [name for name in getattr(module, "__all__", ()) if not hasattr(module, name)]
        assert not missing, f"{module.__name__}.__all__ names {missing}, which it does not define"
