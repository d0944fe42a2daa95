"""The import graph of src/baseforge, read from the source (ast), against the layers ARCHITECTURE.md draws
(the table is read from that drawing, so the page and the test cannot differ): imports point down the
layers, no module imports itself back through others (no cycles, counting imports inside functions too),
and imports of baseforge's own modules sit at the top of the file (a function-local import is for heavy
optional libraries only, never to hide an arrow)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from helpers import ROOT

SRC = ROOT / "src"
PACKAGE = SRC / "baseforge"
ARCHITECTURE = ROOT / "ARCHITECTURE.md"
ENTRY = re.compile(r"[\w/]+(/|\.py)")  # a file or folder under src/baseforge, as the drawing names it


def module_of(entry: str) -> str:
    """`train/` -> baseforge.train, `launch.py` -> baseforge.launch, `__init__.py` -> baseforge."""
    parts = entry.removesuffix("/").removesuffix(".py").split("/")
    return ".".join(["baseforge", *(p for p in parts if p != "__init__")])


def drawn_layers(text: str) -> list[set[str]]:
    """The layers of ARCHITECTURE.md's drawing (the first code block under "## Layers"), bottom to top.

    A line that starts at the margin is an entry: the files and folders it opens with, then what they
    are; an indented line goes on with the entry above; a line that is only `|` ends a layer.
    """
    section = text[text.index("\n## Layers\n") :]
    block = section.split("```\n", 2)[1]
    layers: list[set[str]] = [set()]
    for line in block.splitlines():
        if line.strip() == "|":
            layers.append(set())
        elif line and not line[0].isspace():
            names = []
            for word in line.split():
                if not ENTRY.fullmatch(word):
                    break
                names.append(module_of(word))
            assert names, f"ARCHITECTURE.md's drawing: {line!r} names no file or folder"
            layers[-1].update(names)
    return layers[::-1]


# Bottom to top; a module may import its own layer and the ones below, never one above.
LAYERS = drawn_layers(ARCHITECTURE.read_text())
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
    raise AssertionError(f"{name} is in no layer: draw it in ARCHITECTURE.md's layers")


def graph() -> dict[str, list[tuple[str, int, bool]]]:
    known = modules()
    return {name: imports(path, name, known) for name, path in known.items()}


def test_every_module_has_a_layer():
    for name in modules():
        layer(name)


def test_the_drawing_names_modules_that_exist_once_each():
    known = modules()
    drawn = [m for members in LAYERS for m in members]
    missing = [m for m in drawn if m not in known]
    assert not missing, f"ARCHITECTURE.md draws modules that do not exist: {missing}"
    assert len(drawn) == len(set(drawn)) and len(LAYERS) > 1


def test_a_drawing_is_read_as_its_layers():
    drawing = [
        "cli/ __main__.py  top",
        "  |",
        "train/  the run",
        "        more of it: data/ is not an entry here",
        "plan/",
        "  |",
        "__init__.py a/b.py  leaves",
    ]
    text = "x\n## Layers\n\nThe `|` lines.\n\n```\n" + "\n".join(drawing) + "\n```\n\n```\nz/\n```\n"
    assert drawn_layers(text) == [
        {"baseforge", "baseforge.a.b"},
        {"baseforge.train", "baseforge.plan"},
        {"baseforge.cli", "baseforge.__main__"},
    ]


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
