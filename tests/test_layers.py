"""The shape of src/: imports only point down the layers below, and no module imports itself back.

The layer order is written here once (docs/ARCHITECTURE.md draws it). A module may import its own
package, any lower layer, never a higher one, and never a peer in the same layer (model/ and tasks/
do not know each other). The graph is read from the source (ast), so lazy imports inside functions
count too: an upward import hidden in a function is still an upward import.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "lorasweep"

# Lowest first. Each entry is a set of peers: top-level modules or subpackages of lorasweep.
LAYERS: list[set[str]] = [
    {"errors", "console", "compat", "locks"},
    {"config"},
    {"model", "tasks"},
    {"run"},
    {"executors"},
    {"sweep"},
    {"cli", "export"},
]
PLUGINS = "hydra_plugins"  # above every layer: Hydra's adapters over sweep/ and executors/
ANALYSIS = SRC.parent / "analysis"  # reads result files only: imports nothing of src/ (and needs no torch)
UNITS = sorted(set().union(*LAYERS))


def unit(module: str) -> str:
    """lorasweep.run.plan -> run; lorasweep.errors -> errors."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_of(name: str) -> int:
    for i, peers in enumerate(LAYERS):
        if name in peers:
            return i
    raise AssertionError(f"lorasweep.{name} is in no layer: add it to LAYERS in tests/test_layers.py")


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every lorasweep module `path` imports, absolute or relative, at the top or inside a function."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from . import x` / `from ..model import methods`: x may be a module
            found |= {f"{target}.{a.name}" for a in node.names if _is_module(f"{target}.{a.name}")}
    return {m for m in found if m == "lorasweep" or m.startswith("lorasweep.")} - {me}


def _is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def graph() -> dict[str, set[str]]:
    return {module_name(p): {m for m in imports_of(p) if _is_module(m)} for p in sorted(SRC.rglob("*.py"))
            if module_name(p).startswith(("lorasweep", PLUGINS))}


def test_every_module_is_in_a_layer():
    for p in PACKAGE.iterdir():
        if p.name.startswith("__") or p.name.startswith("."):
            continue
        if p.suffix == ".py" or (p / "__init__.py").is_file():
            layer_of(p.stem if p.suffix == ".py" else p.name)


def upward_or_sideways(edges: dict[str, set[str]]) -> list[str]:
    """Every import that points up the layers or sideways to a peer."""
    wrong = []
    for module, targets in edges.items():
        if not module.startswith("lorasweep."):
            continue  # lorasweep/__init__ (docs only) and the plugins, which sit above everything
        mine = unit(module)
        for target in targets:
            theirs = unit(target)
            if target == "lorasweep" or theirs == mine:
                continue
            if layer_of(theirs) > layer_of(mine):
                wrong.append(f"{module} imports {target}: {theirs} is above {mine}")
            elif layer_of(theirs) == layer_of(mine):
                wrong.append(f"{module} imports {target}: {theirs} and {mine} are peers")
    return sorted(wrong)


def circles(edges: dict[str, set[str]]) -> list[str]:
    """Every import circle, as a path that comes back to where it started."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    found = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                found.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_imports_point_down_the_layers():
    wrong = upward_or_sideways(graph())
    assert not wrong, "\n".join(wrong)


def test_no_import_circles():
    found = circles(graph())
    assert not found, "import circles:\n" + "\n".join(found)


def test_the_checks_catch_what_they_are_for():
    assert upward_or_sideways({"lorasweep.model.loading": {"lorasweep.sweep.grid"}}) == [
        "lorasweep.model.loading imports lorasweep.sweep.grid: sweep is above model"]
    assert upward_or_sideways({"lorasweep.model.loading": {"lorasweep.tasks.metrics"}}) == [
        "lorasweep.model.loading imports lorasweep.tasks.metrics: tasks and model are peers"]
    assert upward_or_sideways({"lorasweep.run.plan": {"lorasweep.model.params", "lorasweep.run.store"}}) == []
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_every_subpackage_says_what_it_holds_and_may_import():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc.split()) >= 15, f"{init}: a docstring saying what the package holds"
        assert "May import:" in doc, f"{init}: say what it may import ('May import: ...')"


def test_the_package_docstring_names_every_unit():
    doc = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text())) or ""
    assert [u for u in UNITS if not re.search(rf"\b{u}\b", doc)] == []


def may_import_mismatch(package: str, doc: str) -> list[str]:
    """Where a package's "May import:" paragraph disagrees with LAYERS: the units it names before
    "Not" must be exactly those of the layers below it; the ones it names after "Not" none of them."""
    said = doc.partition("May import:")[2].split("\n\n")[0]
    allowed_text, _, refused_text = said.partition("Not ")
    named = lambda text: {u for u in UNITS if re.search(rf"\b{u}\b", text)}
    below = {u for peers in LAYERS[:layer_of(package)] for u in peers}
    wrong = [f"{package}: may import {u}, which is not below it" for u in sorted(named(allowed_text) - below)]
    wrong += [f"{package}: does not say it may import {u}" for u in sorted(below - named(allowed_text))]
    wrong += [f"{package}: says it may not import {u}, which is below it" for u in sorted(named(refused_text) & below)]
    return wrong


def test_each_may_import_line_matches_the_layers():
    wrong = []
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        wrong += may_import_mismatch(init.parent.name, ast.get_docstring(ast.parse(init.read_text())) or "")
    assert not wrong, "\n".join(wrong)


def src_imports_of_analysis() -> list[str]:
    """Every import of lorasweep (or the Hydra plugins) in analysis/: it reads result files only."""
    found = []
    for path in sorted(ANALYSIS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            found += [f"{path.name} imports {n}" for n in names if n.split(".")[0] in ("lorasweep", PLUGINS)]
    return found


def test_analysis_imports_nothing_of_src():
    assert ANALYSIS.is_dir()
    assert src_imports_of_analysis() == []


def test_the_doc_and_analysis_checks_catch_what_they_are_for(tmp_path, monkeypatch):
    good = "Models.\n\nMay import: config and the leaves (errors, console, compat, locks). Not tasks/ (a peer).\n"
    assert may_import_mismatch("model", good) == []
    assert may_import_mismatch("model", good.replace(", locks", "")) == ["model: does not say it may import locks"]
    assert may_import_mismatch("model", good.replace("config and", "config, run and")) == [
        "model: may import run, which is not below it"]
    assert may_import_mismatch("run", "May import: model, tasks, config, errors, console, compat, locks. "
                                      "Not executors/, nor config.") == ["run: says it may not import config, "
                                                                         "which is below it"]
    (tmp_path / "tables.py").write_text("import pandas\nfrom lorasweep.run import store\nfrom .load import x\n")
    monkeypatch.setattr(__import__(__name__), "ANALYSIS", tmp_path)
    assert src_imports_of_analysis() == ["tables.py imports lorasweep.run"]


def issue_citations(paths) -> list[str]:
    """Module docstrings that cite a tracker issue ("issue 15"): a number that means nothing in the repo."""
    cite = re.compile(r"\bissues? #?\d+", re.IGNORECASE)
    return [f"{p.name}: {m.group(0)}" for p in paths
            for m in cite.finditer(ast.get_docstring(ast.parse(p.read_text())) or "")]


def test_no_module_docstring_cites_an_issue_number(tmp_path):
    assert issue_citations(sorted(SRC.rglob("*.py")) + sorted(ANALYSIS.rglob("*.py"))) == []
    (tmp_path / "gpus.py").write_text('"""Which GPUs a worker gets (issue 15).\n\nSee Issue #3."""\n')
    assert issue_citations([tmp_path / "gpus.py"]) == ["gpus.py: issue 15", "gpus.py: Issue #3"]
