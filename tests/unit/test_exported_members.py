"""Each package exports exactly what it means to: every name in ``__all__`` exists and is public."""

from __future__ import annotations

import importlib
import pkgutil
import types

import pytest

import grace

PACKAGES = sorted(
    m.name for m in pkgutil.walk_packages(grace.__path__, prefix="grace.") if m.ispkg and "migrations" not in m.name
)


@pytest.mark.parametrize("name", PACKAGES)
def test_package_exports(name: str) -> None:
    package = importlib.import_module(name)
    exported = getattr(package, "__all__", None)
    if name in {"grace.cli", "grace.api.routes"}:
        return  # edge namespaces: their modules are the surface
    assert exported is not None, f"{name} has no __all__"
    assert len(exported) == len(set(exported)), f"{name}.__all__ repeats a name"
    for member in exported:
        assert hasattr(package, member), f"{name}.__all__ names missing {member}"
        assert not member.startswith("_")
    public = {
        n
        for n, v in vars(package).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType) and n != "annotations"
    }
    assert public == set(exported), f"{name}: public but not exported: {public - set(exported)}"
