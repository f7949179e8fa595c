"""The house stays easy to live in: no module of the product over 500 lines, no function over 80
(benchmarks and tests aside).  A module or function that grows past these wants splitting along
its seams before it grows further (issue #29)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("cluster", "pipelines", "train", "infer")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def product_modules() -> list[Path]:
    files = [p for package in PRODUCT for p in sorted((ROOT / package).rglob("*.py"))]
    return files + sorted(ROOT.glob("cycledrums_*.py"))


def test_no_module_is_over_500_lines():
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in product_modules()}
    assert len(sizes) > 40  # the walk found the product
    assert {name: n for name, n in sizes.items() if n >= MAX_MODULE_LINES} == {}


def test_no_function_is_over_80_lines():
    long = {}
    for path in product_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines >= MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT).as_posix()}:{node.name}"] = lines
    assert long == {}
