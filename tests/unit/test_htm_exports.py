"""The task manager's public surface is what it means to export, and nothing below the edges imports them."""

from __future__ import annotations

import ast
from pathlib import Path

import grace.htm

PACKAGE = Path(grace.htm.__file__).parent


def test_exported_members() -> None:
    assert sorted(grace.htm.__all__) == sorted(
        [
            "ADMINS",
            "ANYONE",
            "DEFAULT_SHARES",
            "HTM",
            "HTMConfig",
            "Handler",
            "HandlerRegistry",
            "INTERNAL",
            "Origin",
            "Priority",
            "RouteDecision",
            "Status",
            "Submitted",
            "Submitters",
            "Task",
            "TaskContext",
            "TaskRequest",
            "Within",
            "WorkerPool",
            "load_config",
            "load_handlers",
            "task_limits",
        ]
    )
    for name in grace.htm.__all__:
        assert getattr(grace.htm, name) is not None


def test_the_package_imports_neither_fastapi_nor_typer() -> None:
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] in {"fastapi", "typer", "starlette"} for n in names), path.name
