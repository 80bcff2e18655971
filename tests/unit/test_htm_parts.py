"""The task manager's parts get the collaborators they use, never the facade, and touch nothing private of another."""

from __future__ import annotations

import ast
from pathlib import Path

import grace.htm
from grace import storage
from grace.bus import InProcessBus
from grace.clock import ManualClock
from grace.htm import HTM, load_config

PACKAGE = Path(grace.htm.__file__).parent
FACADE_MODULES = {"__init__.py", "service.py"}
# Underscored names that are a library's public API: SQLAlchemy's Row._mapping, Enum's value lookup.
LIBRARY_NAMES = {"_mapping", "_value2member_map_"}


def _imports(tree: ast.AST) -> set[str]:
    """Every module, and every ``module.name``, the tree imports."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_no_part_imports_the_facade() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name in FACADE_MODULES:
            continue
        imported = _imports(ast.parse(path.read_text()))
        assert not imported & {"grace.htm.service", "grace.htm.HTM", "grace.htm.service.HTM"}, path.name


def test_no_module_reads_a_private_member_of_another_object() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
                continue
            if node.attr in LIBRARY_NAMES or (isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}):
                continue
            raise AssertionError(f"{path.name}:{node.lineno} reads {ast.unparse(node)}")


def _reachable(root: object) -> list[object]:
    """The objects of the task manager's own classes reachable from ``root`` through their attributes."""
    seen: dict[int, object] = {}
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or not type(obj).__module__.startswith("grace.htm"):
            continue
        seen[id(obj)] = obj
        if hasattr(obj, "__dict__"):
            todo.extend(vars(obj).values())
    return list(seen.values())


def test_a_built_task_manager_gives_no_part_a_way_back_to_the_facade(tmp_path: Path) -> None:
    clock = ManualClock()
    htm = HTM(storage.Database(f"sqlite:///{tmp_path / 'grace.db'}"), InProcessBus(clock=clock), clock, load_config())
    htm.local.pool = htm.new_pool()
    assert htm.pool in _reachable(htm.local)  # the walk follows attributes
    parts = [htm.submitter, htm.recorder, htm.sla, htm.sla_report, htm.rescuer, htm.local, htm.pool, htm.queue]
    for part in parts:
        assert not any(isinstance(obj, HTM) for obj in _reachable(part)), type(part).__name__
