"""The absolute imports a Python source file makes, read from its AST (imports inside functions too)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("finfed", "server", "client")  # what the wheel installs: the library and the two Flower apps


def source_files(folders: tuple[str, ...] = LIBRARY) -> list[Path]:
    """Every Python file under the checkout's ``folders``, in a stable order."""
    return [path for folder in folders for path in sorted((ROOT / folder).rglob("*.py"))]


def absolute_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module name) of every absolute `import x` / `from x import y` in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found
