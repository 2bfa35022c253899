"""The library stays readable: no function in ``sinkmatch/`` over 80 lines of code.

Lines of code: lines holding a token of the function (its signature included), not counting
blank lines, comments and docstrings. Run as a script to list the longest functions::

    python tests/test_code_shape.py [N]
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sinkmatch"
MAX_FUNCTION_LINES = 80

_SKIP = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENDMARKER,
}


def function_lengths(path: Path) -> list[tuple[int, str]]:
    """``(lines of code, "file:line name")`` for every function and method in ``path``."""
    src = path.read_text()
    tree = ast.parse(src)
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = body[0] if body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                if isinstance(first.value.value, str):
                    docstrings.update(range(first.lineno, first.end_lineno + 1))
    code: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type not in _SKIP:
            code.update(ln for ln in range(tok.start[0], tok.end[0] + 1) if ln not in docstrings)
    rel = path.relative_to(PACKAGE.parent)
    return [
        (
            sum(1 for ln in range(node.lineno, node.end_lineno + 1) if ln in code),
            f"{rel}:{node.lineno} {node.name}",
        )
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]


def all_lengths() -> list[tuple[int, str]]:
    rows = [row for path in sorted(PACKAGE.rglob("*.py")) for row in function_lengths(path)]
    return sorted(rows, reverse=True)


def test_no_function_is_longer_than_80_lines_of_code():
    rows = all_lengths()
    assert len(rows) > 100  # the walk found the package
    too_long = [f"{n} {where}" for n, where in rows if n > MAX_FUNCTION_LINES]
    assert too_long == []


if __name__ == "__main__":
    for n, where in all_lengths()[: int(sys.argv[1]) if len(sys.argv) > 1 else 15]:
        print(n, where)
