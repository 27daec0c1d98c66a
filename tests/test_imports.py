"""The package's imports: no circle, and data flows one way between the subpackages."""

import ast
from pathlib import Path

import dask_assign

PACKAGE = Path(dask_assign.__file__).parent

#: Subpackages in the order data flows through them; a module may import from its own
#: subpackage and from those before it, never from one after it. ``config`` (settings, read
#: by all) is outside the order: it holds the fitted curves' type from ``calibration``.
FLOW = ("errors", "backends", "files", "chemistry", "io", "filtering", "scoring", "calibration",
        "context", "output", "report", "graph", "training", "cli")


def module_files() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def ancestors(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(2, len(parts))}


def import_graph(top_level_only: bool = True) -> dict[str, set[str]]:
    """Module -> the package modules it imports (at import time: top-level statements,
    where ``top_level_only``), plus the packages those sit in."""
    mods = module_files()
    graph = {m: set() for m in mods}
    for module, path in mods.items():
        tree = ast.parse(path.read_text())
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in nodes:
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    target = base + (f".{node.module}" if node.module else "")
                else:
                    target = node.module or ""
                targets = [target] + [f"{target}.{a.name}" for a in node.names]
            else:
                continue
            graph[module] |= {t for t in targets if t in mods}
    for module in graph:  # importing a module imports its packages (but not the importer's)
        for target in list(graph[module]):
            graph[module] |= ancestors(target)
        graph[module] -= ancestors(module) | {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    assert cycles(import_graph()) == []


def stage(module: str) -> int:
    name = module.split(".")[1] if module.count(".") else "__init__"
    return FLOW.index(name) if name in FLOW else -1


def test_data_flows_one_way_between_subpackages():
    """No module imports from a subpackage further down the flow, not even inside a
    function (those imports are deferred, not allowed to point backwards)."""
    graph = import_graph(top_level_only=False)
    wrong = sorted((m, t) for m, ts in graph.items() for t in ts
                   if stage(m) >= 0 and stage(t) > stage(m))
    assert wrong == []


def test_every_subpackage_says_what_it_holds():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, init


def test_tests_mirror_the_package():
    """Every subpackage has its test folder, holding tests."""
    tests = Path(__file__).parent
    for init in PACKAGE.glob("*/__init__.py"):
        folder = tests / init.parent.name
        assert folder.is_dir() and list(folder.glob("test_*.py")), folder
