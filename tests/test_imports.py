"""The package has no import cycle, counting imports inside functions (STYLE.md: nothing imports upward).

Every `import` and `from ... import` statement of every module under robustcaps/ is an edge, wherever it
stands in the file; a package `__init__` importing its own submodules is an edge like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "robustcaps"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def module_files() -> dict[str, Path]:
    """Dotted module name → source file, for every module of the package."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` (the module in `path`) imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(name, is_package, node.module, node.level)
            for alias in node.names:
                # `from robustcaps.x import y`: the module robustcaps.x.y when it is one, else robustcaps.x
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
    return {_known(module, modules) for module in found if module.split(".")[0] == PACKAGE} - {None}


def _absolute(name: str, is_package: bool, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    anchor = name.split(".") if is_package else name.split(".")[:-1]
    anchor = anchor[: len(anchor) - (level - 1)]
    return ".".join(anchor + ([module] if module else []))


def _known(module: str, modules: dict[str, Path]) -> str | None:
    """`module`, or the nearest enclosing package module that exists (an import of a name, not a file)."""
    while module and module not in modules:
        module = module.rpartition(".")[0]
    return module or None


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported_modules(name, path, modules) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, iterative)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif child not in state and child in graph:
                state[child] = 1
                path.append(child)
                stack.append(iter(sorted(graph[child])))
    return None


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The modules that are in some cycle, grouped by strongly connected component (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in sorted(graph.get(node, ())):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_imports_resolve_to_module_files():
    assert _absolute("robustcaps.data.norb", False, "splits", 1) == "robustcaps.data.splits"
    assert _absolute("robustcaps.data", True, "norb", 1) == "robustcaps.data.norb"
    assert _absolute("robustcaps.data.norb", False, None, 2) == "robustcaps"
    graph = import_graph()
    assert "robustcaps.data.norb_format" in graph["robustcaps.data.norb"]  # from robustcaps.data.norb_format
    # `from robustcaps.training import checkpoints` names the module, not the package
    assert "robustcaps.training.checkpoints" in graph["robustcaps.training.loop"]


def test_no_import_cycle():
    graph = import_graph()
    cycle = find_cycle(graph)
    components = strongly_connected(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}; modules in cycles: " + "; ".join(
        f"{len(c)}: {', '.join(c)}" for c in components
    )


# The flow of the subpackages: a module imports only from its own layer or the ones before it. The modules
# directly in robustcaps/ (io, provenance, errors, ...) sit below every layer; `python -m robustcaps` above.
LAYERS = ("data", "models", "training", "attacks", "report", "study", "cli")


def _layer(module: str) -> int:
    name = module.removeprefix(f"{PACKAGE}.").split(".")[0]
    if name == "__main__":
        return len(LAYERS)
    return LAYERS.index(name) if name in LAYERS else -1


def test_no_module_imports_a_later_layer():
    upward = {
        module: sorted(m for m in imports if _layer(m) > _layer(module))
        for module, imports in import_graph().items()
        if any(_layer(m) > _layer(module) for m in imports)
    }
    assert not upward, f"modules importing from a later layer: {upward}"


def test_find_cycle_finds_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
