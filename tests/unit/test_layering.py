"""The dependency rule of docs/architecture.md, read from the source's imports.

- Nothing below the edges (``api``, ``cli``, ``web``) imports a web or command-line framework.
- A package is imported from outside it only through its ``__init__``: ``from grace.storage import
  Database`` (a name in its ``__all__``), never ``from grace.storage.database import Database``.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grace

ROOT = Path(grace.__file__).parent
EDGES = {"grace.api", "grace.cli", "grace.web"}
FRAMEWORKS = {"fastapi", "starlette", "typer", "uvicorn"}
PACKAGES = {f"grace.{p.parent.name}" for p in ROOT.glob("*/__init__.py")}

# Imports that break the rule today, each with why it is tolerated and until when. Empty is the goal.
ALLOWED: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    line: int
    target: str  # the module named by the import statement
    names: tuple[str, ...]  # for ``from target import names``; empty for ``import target``

    def __str__(self) -> str:
        shown = f"from {self.target} import {', '.join(self.names)}" if self.names else f"import {self.target}"
        return f"{self.module}:{self.line}: {shown}"


def module_name(path: Path) -> str:
    parts = ["grace", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> Iterator[Import]:
    """Yield every import statement in the package, at any depth (functions and TYPE_CHECKING too)."""
    for path in sorted(ROOT.rglob("*.py")):
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(name, node.lineno, alias.name, ())
            elif isinstance(node, ast.ImportFrom):
                target = node.module or ""
                if node.level:  # relative: resolve against the importing module's package
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join([*base, *([target] if target else [])])
                yield Import(name, node.lineno, target, tuple(a.name for a in node.names))


def package_of(module: str) -> str | None:
    """Return the top-level package under grace that ``module`` belongs to (None for grace.config and such)."""
    top = ".".join(module.split(".")[:2])
    return top if top in PACKAGES else None


def is_edge(module: str) -> bool:
    return package_of(module) in EDGES


def crossings(found: Iterator[Import]) -> list[str]:
    """Return each import that reaches into another package instead of going through its ``__init__``."""
    broken = []
    for imp in found:
        if not imp.target.startswith("grace."):
            continue
        owner = package_of(imp.target)
        if owner is None or owner == package_of(imp.module):
            continue
        if (imp.module, imp.target) in ALLOWED:
            continue
        if imp.target != owner:
            broken.append(f"{imp} (a module inside {owner})")
            continue
        exported = set(getattr(importlib.import_module(owner), "__all__", ()))
        hidden = [n for n in imp.names if n not in exported]
        if hidden:
            broken.append(f"{imp} ({', '.join(hidden)} not in {owner}.__all__)")
    return broken


def frameworks_below_the_edges(found: Iterator[Import]) -> list[str]:
    return [
        str(imp)
        for imp in found
        if not is_edge(imp.module) and imp.target.split(".")[0] in FRAMEWORKS and not imp.target.startswith("grace.")
    ]


def test_the_walk_sees_every_package_and_edge() -> None:
    # A rule checked over nothing passes: make sure the walk reads the tree it is meant to.
    modules = {imp.module for imp in imports()}
    capabilities = {"grace.storage", "grace.htm", "grace.vault", "grace.bus", "grace.auth", "grace.api", "grace.cli"}
    assert capabilities <= PACKAGES
    assert {"grace.services", "grace.api.app", "grace.cli.main", "grace.htm.queue"} <= modules
    assert any(imp.target == "fastapi" for imp in imports() if is_edge(imp.module))


def test_no_web_or_command_line_framework_is_imported_below_the_edges() -> None:
    assert frameworks_below_the_edges(imports()) == []


def test_packages_import_each_other_only_through_their_init() -> None:
    assert crossings(imports()) == []


def test_every_tolerated_crossing_still_exists() -> None:
    # An allowance outlives its reason silently unless it is checked: remove it with the import.
    present = {(imp.module, imp.target) for imp in imports()}
    assert set(ALLOWED) <= present, f"no longer imported, remove from ALLOWED: {set(ALLOWED) - present}"


def test_the_checks_catch_what_they_are_meant_to() -> None:
    reach_in = Import("grace.htm.queue", 1, "grace.storage.database", ("Database",))
    hidden_name = Import("grace.cli.tasks", 1, "grace.htm", ("load_something_private",))
    through_init = Import("grace.htm.queue", 1, "grace.storage", ("Database",))
    inside = Import("grace.htm.queue", 1, "grace.htm.tables", ("htm_tasks",))
    assert len(crossings(iter([reach_in, hidden_name, through_init, inside]))) == 2
    web_in_capability = Import("grace.vault.service", 1, "fastapi", ("Request",))
    web_at_edge = Import("grace.api.app", 1, "fastapi", ("FastAPI",))
    assert frameworks_below_the_edges(iter([web_in_capability, web_at_edge])) == [str(web_in_capability)]
