"""Layers only look down (docs/design.md), and the import graph has no cycles.

Every `import` and `from … import` in clamp's modules counts, at module level or inside a
function, so an upward dependency cannot hide in a function body. The checker itself is tested
on a module with an upward import added.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent / "clamp"

# bottom → top; a module may import its own layer and those below it
LAYERS = {
    "names": ["errors", "registry", "sites", "yamlio", "schema", "columns", "phases"],
    "model": ["model", "stacked", "tasks", "tasks.base", "tasks.fewshot", "tasks.repeat_tokens", "tasks.affine",
              "values", "measures", "optim", "adapter", "modsites", "plugins", "usermodel", "seam", "nnsight_seam",
              "hf"],
    "recipe": ["recipe", "overrides", "outputs", "spec", "budget", "compile", "suite"],
    "store": ["owned", "store"],
    "run": ["hooks", "donor", "train", "ensemble", "runs", "pool", "raybackend", "posthoc", "benches"],
    "analysis": ["results", "composition", "draw", "graph", "explanations", "report", "htmlreport"],
    "top": ["api", "cli", "__init__"],
}
RANK = {m: i for i, mods in enumerate(LAYERS.values()) for m in mods}
NAME = {i: name for i, name in enumerate(LAYERS)}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str) -> list[tuple[str, int]]:
    """(clamp module imported, line) for every import statement anywhere in the source."""
    pkg = module.split(".")[:-1] if not module.endswith("__init__") else []
    if module in ("tasks",):
        pkg = ["tasks"]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[:len(pkg) - node.level + 1] if node.level > 1 else pkg
                target = ".".join(base + ([node.module] if node.module else []))
                names = [a.name for a in node.names]
            elif (node.module or "").startswith("clamp"):
                target = node.module.removeprefix("clamp").lstrip(".")
                names = [a.name for a in node.names]
            else:
                continue
            for n in names:                             # `from . import x` imports the module x
                sub = f"{target}.{n}" if target else n
                out.append((sub if sub in RANK else target or "__init__", node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "clamp" or a.name.startswith("clamp."):
                    out.append((a.name.removeprefix("clamp").lstrip(".") or "__init__", node.lineno))
    return out


def violations(modules: dict[str, str]) -> tuple[list[str], nx.DiGraph]:
    graph = nx.DiGraph()
    bad = []
    for mod, source in modules.items():
        graph.add_node(mod)
        for target, line in imports_of(source, mod):
            if target == mod or target not in RANK:
                continue
            graph.add_edge(mod, target)
            if RANK[target] > RANK[mod]:
                bad.append(f"clamp/{mod.replace('.', '/')}.py:{line}: {mod} ({NAME[RANK[mod]]}) imports "
                           f"{target} ({NAME[RANK[target]]}), a layer above it")
    return bad, graph


def sources() -> dict[str, str]:
    return {module_name(p): p.read_text(encoding="utf-8") for p in ROOT.rglob("*.py")}


def test_every_module_has_a_layer():
    missing = sorted(set(sources()) - set(RANK))
    assert not missing, f"modules without a layer in tests/test_layers.py: {missing}"
    stale = sorted(set(RANK) - set(sources()))
    assert not stale, f"layers name modules that do not exist: {stale}"


def test_layers_only_look_down():
    bad, _ = violations(sources())
    assert not bad, "\n".join(bad)


def test_the_import_graph_has_no_cycles():
    _, graph = violations(sources())
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, cycles


@pytest.mark.parametrize("module, line", [
    ("compile", "from .store import read_metrics"),                       # module level
    ("values", "def f():\n    from .donor import Donor\n"),               # hidden in a function
    ("sites", "import clamp.cli"),                                         # absolute
    ("tasks.fewshot", "from ..train import Trainer"),                      # relative, two levels up
    ("measures", "from . import report"),                                  # a module by `from . import`
])
def test_the_check_sees_an_upward_import(module, line):
    """The checker on the real modules with one upward import added: it must name it."""
    modules = sources()
    modules[module] += "\n" + line + "\n"
    bad, _ = violations(modules)
    assert len(bad) == 1 and f" {module} (" in bad[0], bad


def test_the_check_sees_a_cycle():
    modules = sources()
    modules["errors"] += "\nfrom .sites import parse\n"                  # names → names, but a cycle
    _, graph = violations(modules)
    assert list(nx.simple_cycles(graph))
