"""The import graph of src/baseforge, read from the source (ast), as ARCHITECTURE.md draws it:
imports point down the layers, no module imports itself back through others (no cycles, counting
imports inside functions too), and imports of baseforge's own modules sit at the top of the file
(a function-local import is for heavy optional libraries only, never to hide an arrow)."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

SRC = ROOT / "src"
PACKAGE = SRC / "baseforge"
# Bottom to top; a module may import its own layer and the ones below, never one above.
LAYERS = [
    {
        "baseforge",
        "baseforge.errors",
        "baseforge.fileio",
        "baseforge.progress",
        "baseforge.runlock",
        "baseforge.rundir",
        "baseforge.records",
    },
    {"baseforge.hardware", "baseforge.tokenizer", "baseforge.presets"},
    {"baseforge.model"},
    {"baseforge.config", "baseforge.overrides", "baseforge.data", "baseforge.generate"},
    {"baseforge.train"},
    {"baseforge.eval", "baseforge.plan", "baseforge.memory_model"},
    {"baseforge.launch"},  # builds a run from a config: reads train/ and eval/ (ARCHITECTURE.md)
    {"baseforge.cli", "baseforge.__main__"},
]
# Files that are not baseforge's own modules: code shipped to run inside transformers.
NOT_OURS = {"baseforge.eval.hf_remote.modeling_baseforge", "baseforge.eval.hf_remote.configuration_baseforge"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: path for name, path in found.items() if name not in NOT_OURS}


def resolve(name: str, known: dict) -> str | None:
    """The baseforge module an imported name lives in (a package's __init__ for `from pkg import x`)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(path: Path, name: str, known: dict) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for each import of a baseforge module."""
    tree = ast.parse(path.read_text())
    local = {
        id(n)
        for f in ast.walk(tree)
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
        for n in ast.walk(f)
    }
    out = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] != "baseforge":
                continue
            found = resolve(target, known)
            if found and found != name:
                out.append((found, node.lineno, id(node) in local))
    return out


def layer(name: str) -> int:
    for rank, members in enumerate(LAYERS):
        if any(name == m or name.startswith(m + ".") for m in members if m != "baseforge") or name in members:
            return rank
    raise AssertionError(f"{name} is in no layer: add it to LAYERS (and ARCHITECTURE.md)")


def graph() -> dict[str, list[tuple[str, int, bool]]]:
    known = modules()
    return {name: imports(path, name, known) for name, path in known.items()}


def test_every_module_has_a_layer():
    for name in modules():
        layer(name)


def test_imports_point_down():
    upward = [
        f"{name}:{line} imports {target} (layer {layer(target)} > {layer(name)})"
        for name, edges in graph().items()
        for target, line, _ in edges
        if layer(target) > layer(name)
    ]
    assert not upward, "\n".join(upward)


def test_no_function_local_imports_of_our_own_modules():
    hidden = [
        f"{name}:{line} imports {target}"
        for name, edges in graph().items()
        for target, line, local in edges
        if local
    ]
    assert not hidden, "\n".join(hidden)


def test_no_import_cycles():
    edges = {name: {target for target, _, _ in out} for name, out in graph().items()}
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not cycles, "\n".join(cycles)
