"""The code's shape: imports go one way (no cycles among the project's modules, counting imports inside
functions), and the layers keep to their folders."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the package it installs as (pyproject's package-dir)
FOLDERS = {"edgellm": "edgellm", "quantize": "edgellm.quantize", "tui": "edgellm.tui"}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules `name` imports anywhere in its file (a package import counts as its __init__)."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[: len(here) - node.level + 1]) if node.level else ""
            module = ".".join(filter(None, [base, node.module or ""]))
            targets = [module] + [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `edgellm.plan.planner.make_plan` -> `edgellm.plan.planner`
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "edgellm.engine.runtime" in graph["edgellm.commands.run"]  # imported inside the command function
    assert "edgellm.errors" in graph["edgellm.quantize.convert"]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_layers_keep_to_their_folders():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("edgellm.quantize"):
            assert not {d for d in deps if d.startswith(("edgellm.tui", "edgellm.engine.runtime", "edgellm.commands"))}, name
        if name.startswith("edgellm.tui"):
            assert "edgellm.engine.llamacpp" not in deps, f"{name} talks to llama.cpp directly"
        if not name.startswith(("edgellm.tui", "edgellm.commands")):
            assert not {d for d in deps if d.startswith("edgellm.tui")}, f"{name} reaches up into the TUI"


# The stages from the floor up. A module may import its own layer and the layers below it, never one above, and
# never a peer beside it (bench and serve). A layer is a package, or part of one: the engine's lower floor (the
# llama.cpp binding and what builds on it alone) sits under the planner, its upper floor (which loads what the
# planner decided) above it.
SHARED = ("edgellm", *(f"edgellm.{m}" for m in ("errors", "paths", "progress", "fsutil", "interrupt", "testhooks", "procmem")))
ENGINE_FLOOR = ("edgellm.engine", *(f"edgellm.engine.{m}" for m in (
    "llamacpp", "sampling", "chat_formats", "chat_template", "adapters", "rpc", "quality", "embedding", "reasoning",
    "speculate", "images", "vision")))
ENGINE_TOP = ("edgellm.engine.runtime", "edgellm.engine.measure", "edgellm.engine.launch", "edgellm.engine.draft")
LAYERS: list[dict[str, tuple[str, ...]]] = [
    {"shared helpers": SHARED},
    {"formats": ("edgellm.formats",)},
    {"engine (binding)": ENGINE_FLOOR},
    {"quantize": ("edgellm.quantize",)},
    {"store": ("edgellm.store",)},
    {"plan": ("edgellm.plan",)},
    {"hub": ("edgellm.hub",)},
    {"engine (running)": ENGINE_TOP},
    {"bench": ("edgellm.bench",), "eval": ("edgellm.eval",), "serve": ("edgellm.serve",)},
    {"tui": ("edgellm.tui",)},
    {"commands": ("edgellm.commands",)},
    {"cli": ("edgellm.cli", "edgellm.__main__")},
]
LAYER_NAMES = [name for floor in LAYERS for name in floor]


def layer_of(module: str) -> tuple[int, str]:
    """(floor, layer name) of a module: the layer listing it, or its package, by the longest match."""
    best: tuple[int, int, str] | None = None
    for floor, layers in enumerate(LAYERS):
        for name, prefixes in layers.items():
            for p in prefixes:
                exact = p in SHARED + ENGINE_FLOOR + ENGINE_TOP
                if module == p or (not exact and module.startswith(p + ".")):
                    if best is None or len(p) > best[0]:
                        best = (len(p), floor, name)
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS"
    return best[1], best[2]


def test_every_module_has_a_layer():
    for name in import_graph():
        layer_of(name)


@pytest.mark.parametrize("layer", LAYER_NAMES)
def test_each_layer_imports_only_itself_and_the_layers_below(layer):
    graph = import_graph()
    wrong = []
    for name, deps in graph.items():
        floor, here = layer_of(name)
        if here != layer:
            continue
        for d in sorted(deps):
            f, there = layer_of(d)
            if f > floor or (f == floor and there != here):
                wrong.append(f"{name} ({here}) imports {d} ({there})")
    assert wrong == [], "imports against the stages: " + "; ".join(wrong)


def test_the_planner_and_the_store_never_load_a_model():
    for name, deps in import_graph().items():
        if name.startswith(("edgellm.plan", "edgellm.store", "edgellm.quantize")):
            assert not set(deps) & set(ENGINE_TOP), f"{name} loads a model"
            assert not {d for d in deps if d.startswith(("edgellm.commands", "edgellm.serve", "edgellm.tui"))}, name
        if name.startswith("edgellm.store"):  # a listing that needs "what fits here" lives above the planner
            assert not {d for d in deps if d.startswith(("edgellm.plan", "edgellm.hub"))}, f"{name} asks the planner or the hub"


def test_the_hub_asks_the_planner_only_where_it_plans():
    for name, deps in import_graph().items():
        if not name.startswith("edgellm.hub"):
            continue
        assert "edgellm.plan.devices" not in deps, f"{name} knows the planner's devices"
        if name not in ("edgellm.hub.remote_plan", "edgellm.hub.model"):
            assert not {d for d in deps if d.startswith("edgellm.plan")}, f"{name} asks the planner"


def test_the_engine_does_not_reach_up():
    for name, deps in import_graph().items():
        if name.startswith("edgellm.engine"):
            assert not {d for d in deps if d.startswith(("edgellm.commands", "edgellm.serve", "edgellm.tui", "edgellm.hub",
                                                           "edgellm.bench"))}, name


def test_packages_say_what_they_own_and_import_nothing():
    """Each package's __init__ is a docstring: importing a package loads none of its modules (start-up stays
    fast, and no circle runs through an __init__)."""
    for folder in ("edgellm", "tui"):
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            tree = ast.parse(init.read_text())
            assert ast.get_docstring(tree), f"{init.relative_to(ROOT)} has no docstring"
            imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
            assert all(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in imports), init


def test_the_top_level_holds_a_dozen_modules_at_most_and_no_hidden_packages():
    modules = sorted(p.stem for p in (ROOT / "edgellm").glob("*.py"))
    assert len(modules) <= 12, modules
    names = modules + sorted(p.name for p in (ROOT / "edgellm").iterdir() if (p / "__init__.py").is_file())
    # `hub` beside `hubclients`, `bench` beside `bench_report`: a package hiding in name prefixes
    shared = [(a, b) for a in names for b in names if a != b and not a.startswith("__") and b.startswith(a)]
    assert shared == [], shared
