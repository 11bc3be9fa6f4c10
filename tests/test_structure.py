"""The package's structure: no import cycle between its modules (function-local imports included), no submodule
importing the package root, lower layers not importing higher ones, and each family's knowledge in its own file."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "d2pruner"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """Every d2pruner module ``name`` imports, at module level or inside functions."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t == "d2pruner" or t.startswith("d2pruner."))
    return {t for t in found if t in MODULES and t != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def test_there_is_no_import_cycle():
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in GRAPH:
        if name not in index:
            visit(name)
    assert cycles == []


def test_no_submodule_imports_the_package_root():
    offenders = sorted(name for name, targets in GRAPH.items() if name != "d2pruner" and "d2pruner" in targets)
    assert offenders == []


#: layers from the bottom up; a module may import its own layer and those below it, never one above
LAYERS = [
    {"d2pruner.ops", "d2pruner.compat", "d2pruner.resources", "d2pruner.architecture", "d2pruner.geometry",
     "d2pruner.tokens", "d2pruner.memory"},
    {"d2pruner.graph", "d2pruner.grounding", "d2pruner.priors"},
    {"d2pruner.methods", "d2pruner.families"},
    {"d2pruner.efficiency", "d2pruner.pruning", "d2pruner.presets"},
    {"d2pruner.analysis", "d2pruner.viz", "d2pruner.serving"},
    {"d2pruner.eval", "d2pruner.report", "d2pruner.calibrate"},
]


def layer_of(name: str) -> int:
    for level, group in enumerate(LAYERS):
        if any(name == g or name.startswith(g + ".") for g in group):
            return level
    return len(LAYERS)  # the package root


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n != "d2pruner"))
def test_lower_layers_never_import_higher_ones(name):
    if name.endswith(".__main__"):
        return  # a command-line entry point sits above everything it runs
    higher = sorted(t for t in GRAPH[name] if layer_of(t) > layer_of(name))
    assert higher == [], f"{name} (layer {layer_of(name)}) imports {higher}"


def _string_constants(tree: ast.AST) -> set[str]:
    """Every string literal of a module but its docstrings."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return {n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings}


def test_generic_code_keys_no_table_on_a_family_name():
    """Family names appear only in their own family files (and the registry): generic code asks the family."""
    names = {"llava", "llava_next", "qwen2_5_vl", "internvl", "qwen3_vl", "llava_onevision"}
    offenders = {}
    for name, path in MODULES.items():
        if name.startswith("d2pruner.families"):
            continue
        hits = sorted(names & _string_constants(ast.parse(path.read_text())))
        if hits:
            offenders[name] = hits
    assert offenders == {}
