"""Size limits on src/baseforge, read from the source (ast): a module of at most 400 lines, a function
or method of at most 60 (decorators not counted), and the training loop (train/loop.py) under 200,
so that it stays one screen to read. A split should give each piece a name that says what it does."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

PACKAGE = ROOT / "src" / "baseforge"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
LOOP = PACKAGE / "train" / "loop.py"
LOOP_BELOW = 200


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_modules_are_at_most_400_lines():
    long = [
        f"{name(path)}: {n} lines"
        for path in modules()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not long, f"modules over {MAX_MODULE_LINES} lines (move a coherent part out):\n" + "\n".join(long)


def test_functions_are_at_most_60_lines():
    long = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{name(path)}:{node.lineno} {node.name}: {n} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them):\n" + "\n".join(long)


def test_the_training_loop_stays_under_200_lines():
    n = len(LOOP.read_text().splitlines())
    assert n < LOOP_BELOW, f"{name(LOOP)}: {n} lines; keep it under {LOOP_BELOW} (hand work off to its parts)"
