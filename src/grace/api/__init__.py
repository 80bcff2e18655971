"""The HTTP edge: thin routes over the capabilities."""

from __future__ import annotations

from grace.api.app import create_app

__all__ = ["create_app"]
