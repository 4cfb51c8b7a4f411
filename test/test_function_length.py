"""No function or method in rsd_drive/ is longer than MAX_LINES (issue 18: a long function is
several pieces a newcomer has to find inside it). Read with ``ast``; a function's length is
from its ``def`` (decorators excluded) to its last line, nested functions included."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'rsd_drive'
MAX_LINES = 80
# (path relative to the repository, function name): not yet split.
ALLOWED: set = set()


def function_lengths():
    """-> [(lines, 'path:line name', (path, name))] of every function in the package."""
    found = []
    for path in sorted(PACKAGE.rglob('*.py')):
        rel = path.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                found.append((lines, f'{rel}:{node.lineno} {node.name}', (rel, node.name)))
    return found


def test_no_function_over_max_lines():
    long = sorted(((n, where) for n, where, key in function_lengths()
                   if n > MAX_LINES and key not in ALLOWED), reverse=True)
    assert not long, f'functions over {MAX_LINES} lines (split them): ' + '; '.join(
        f'{where} ({n} lines)' for n, where in long)


def test_allowed_long_functions_still_exist():
    """An entry of ALLOWED that is gone (split or renamed) is removed from the list too."""
    keys = {key for _, _, key in function_lengths()}
    assert ALLOWED <= keys, f'stale ALLOWED entries: {sorted(ALLOWED - keys)}'
