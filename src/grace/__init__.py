"""Grace: a self-hosted control plane for a personal AI agent."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("grace")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0"

__all__ = ["__version__"]
