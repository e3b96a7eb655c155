"""Layers only look down (docs/design.md), the folders are the layers, the import graph has no cycles,
and no module imports another module's private names.

Every `import` and `from … import` in clamp's modules counts, at module level or inside a
function, so an upward dependency cannot hide in a function body. A module's layer is its
folder's (FOLDERS), or "top" for the modules at the package root. The checker itself is tested on
the real modules with an upward import, a cycle and a private import added.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent / "clamp"

# bottom → top: the folders of each layer; a module may import its own layer and those below it
FOLDERS = {
    "names": ["names"],
    "model": ["models", "tasks", "values", "measures"],
    "recipe": ["recipe"],
    "store": ["store"],
    "run": ["training"],
    "analysis": ["analysis"],
    "top": [],                                   # the modules at the root: api, cli, console, schema, __init__
}
LAYER_OF = {folder: i for i, folders in enumerate(FOLDERS.values()) for folder in folders}
NAME = {i: name for i, name in enumerate(FOLDERS)}
TOP = len(FOLDERS) - 1


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def rank(module: str) -> int:
    """The layer of a module: its folder's; the root modules are the top layer."""
    first = module.split(".")[0]
    if "." not in module and first not in LAYER_OF:
        return TOP
    return LAYER_OF[first]


def is_package(module: str) -> bool:
    return (ROOT / module.replace(".", "/") / "__init__.py").is_file()


def imports_of(source: str, module: str) -> list[tuple[str, int, list[str]]]:
    """(clamp module imported, line, names imported from it) for every import statement in the source."""
    pkg = module.split(".") if is_package(module) else module.split(".")[:-1]
    if module == "__init__":
        pkg = []
    known = set(sources_names())
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[:len(pkg) - node.level + 1] if node.level > 1 else pkg
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("clamp"):
                target = node.module.removeprefix("clamp").lstrip(".")
            else:
                continue
            for a in node.names:                        # `from . import x` imports the module x
                sub = f"{target}.{a.name}" if target else a.name
                if sub in known:
                    out.append((sub, node.lineno, []))
                else:
                    out.append((target or "__init__", node.lineno, [a.name]))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "clamp" or a.name.startswith("clamp."):
                    out.append((a.name.removeprefix("clamp").lstrip(".") or "__init__", node.lineno, []))
    return out


def violations(modules: dict[str, str]) -> tuple[list[str], nx.DiGraph]:
    graph = nx.DiGraph()
    bad = []
    for mod, source in modules.items():
        graph.add_node(mod)
        for target, line, names in imports_of(source, mod):
            if target == mod or target not in modules:
                continue
            where = f"clamp/{mod.replace('.', '/')}.py:{line}: {mod}"
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                bad.append(f"{where} imports {', '.join(private)}, private to {target}")
            if is_package(target) and target != "__init__" and mod.split(".")[0] == target:
                continue                                  # a folder's own __init__ (its re-exports)
            graph.add_edge(mod, target)
            if rank(target) > rank(mod):
                bad.append(f"{where} ({NAME[rank(mod)]}) imports {target} ({NAME[rank(target)]}), a layer above it")
    return bad, graph


def sources_names() -> list[str]:
    return [module_name(p) for p in ROOT.rglob("*.py")]


def sources() -> dict[str, str]:
    return {module_name(p): p.read_text(encoding="utf-8") for p in ROOT.rglob("*.py")}


def test_every_folder_is_a_layer_with_a_docstring_that_says_so():
    folders = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    assert sorted(LAYER_OF) == folders, f"folders without a layer (or layers without a folder): {folders}"
    for folder in folders:
        doc = ast.get_docstring(ast.parse((ROOT / folder / "__init__.py").read_text()))
        assert doc and f"Layer {LAYER_OF[folder] + 1} of {len(FOLDERS)}" in doc, folder
    root = sorted(p.stem for p in ROOT.glob("*.py"))
    assert root == ["__init__", "api", "cli", "console", "schema"], root       # the top layer is small


def test_layers_only_look_down_and_nothing_private_is_imported():
    bad, _ = violations(sources())
    assert not bad, "\n".join(bad)


def test_the_import_graph_has_no_cycles():
    _, graph = violations(sources())
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, cycles


@pytest.mark.parametrize("module, line", [
    ("recipe.compile", "from ..store.files import read_metrics"),              # module level
    ("values.base", "def f():\n    from ..training.donor import Donor\n"),     # hidden in a function
    ("names.sites", "import clamp.cli"),                                        # absolute
    ("tasks.fewshot", "from ..training.train import Trainer"),                  # relative, two levels up
    ("measures.base", "from ..analysis import report"),                         # a module by `from . import`
    ("training.train", "from ..analysis.graph import Graph"),
])
def test_the_check_sees_an_upward_import(module, line):
    """The checker on the real modules with one upward import added: it must name it."""
    modules = sources()
    modules[module] += "\n" + line + "\n"
    bad, _ = violations(modules)
    assert len(bad) == 1 and f" {module} (" in bad[0], bad


def test_the_check_sees_a_private_import():
    modules = sources()
    modules["training.runs"] += "\nfrom .train import _Progress\n"
    bad, _ = violations(modules)
    assert len(bad) == 1 and "imports _Progress, private to training.train" in bad[0], bad


def test_the_check_sees_a_cycle():
    modules = sources()
    modules["names.errors"] += "\nfrom .sites import parse\n"                  # names → names, but a cycle
    _, graph = violations(modules)
    assert list(nx.simple_cycles(graph))


MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def size_table() -> list[tuple[str, int, list[tuple[str, int, str]]]]:
    """(module, its lines, [(a function over the limit, its lines, the reason beside its def)])."""
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        long = []
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1                     # type: ignore[operator]
                if n > MAX_FUNCTION_LINES:
                    head = " ".join(lines[node.lineno - 1:(node.body[0].lineno - 1)])
                    reason = head.split("# long:", 1)[1].strip() if "# long:" in head else ""
                    long.append((node.name, n, reason))
        out.append((str(path.relative_to(ROOT.parent)), len(lines), long))
    return out


def test_modules_are_small_and_long_functions_say_why():
    rows = size_table()
    big = [(m, n) for m, n, _ in rows if n > MAX_MODULE_LINES]
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"
    unexplained = [(m, f, n) for m, _, long in rows for f, n, why in long if not why]
    assert not unexplained, f"functions over {MAX_FUNCTION_LINES} lines without '# long: <reason>': {unexplained}"


if __name__ == "__main__":                     # the module-size table of docs/design.md
    for m, n, long in size_table():
        print(f"| {m} | {n} | " + "; ".join(f"{f} ({k} lines: {why})" for f, k, why in long) + " |")
