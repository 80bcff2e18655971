"""Every route's every parameter, sent a NUL character and integers past 64 bits: never a 5xx.

Built from the app's route table (path, query, body and form parameters, read from each route's
dependants), so a later route or field cannot bring the class back. Each request is otherwise
valid enough to get past the shape checks of the fields it does not probe.
"""

from __future__ import annotations

import enum
import typing
from typing import Any

import httpx
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from grace.api import create_app
from grace.api.policy import api_routes
from grace.config import Settings

NUL = "fu\x00zz"
NUMBERS = [2**63, -(2**63) - 1, 2**63 - 1, -(2**63), 1e308]


def _base(annotation: Any) -> Any:
    """Return the one type under Optional/Annotated, or the annotation itself."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        return _base(args[0])
    if typing.get_origin(annotation) is typing.Annotated:
        return _base(args[0])
    return annotation


def sample(annotation: Any, info: FieldInfo | None = None) -> Any:
    """A plausible value for a field of ``annotation``, within its declared bounds."""
    kind = _base(annotation)
    low = 1
    for rule in getattr(info, "metadata", []) or []:
        for name in ("ge", "gt", "min_length"):
            value = getattr(rule, name, None)
            if isinstance(value, int | float):
                low = max(low, int(value) + (1 if name == "gt" else 0))
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return {name: sample(f.annotation, f) for name, f in kind.model_fields.items() if f.is_required()}
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return next(iter(kind)).value
    if kind is bool:
        return False
    if kind is int or kind is float:
        return low
    if typing.get_origin(kind) is list:
        return []
    if typing.get_origin(kind) is dict or kind is dict:
        return {}
    return "fuzz" + "z" * max(0, low - 4)


def fields(dependant: Dependant, kind: str) -> list[Any]:
    """Return the ``kind`` parameters (path_params, query_params, body_params) of ``dependant`` and its dependencies."""
    found = list(getattr(dependant, kind))
    for inner in dependant.dependencies:
        found.extend(f for f in fields(inner, kind) if f.alias not in {g.alias for g in found})
    return found


def probes(route: APIRoute) -> list[tuple[str, str, Any]]:
    """Return (where, name, annotation) for every parameter of ``route``."""
    out: list[tuple[str, str, Any]] = []
    for field in fields(route.dependant, "path_params"):
        out.append(("path", field.alias, field.field_info.annotation))
    for field in fields(route.dependant, "query_params"):
        out.append(("query", field.alias, field.field_info.annotation))
    for field in fields(route.dependant, "body_params"):
        kind = _base(field.field_info.annotation)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            out.extend(("body", name, f.annotation) for name, f in kind.model_fields.items())
        else:
            out.append(("form", field.alias, field.field_info.annotation))
    return out


def bad_values(annotation: Any) -> list[Any]:
    kind = _base(annotation)
    if kind is int or kind is float:
        return NUMBERS
    if kind is str or (isinstance(kind, type) and issubclass(kind, enum.Enum)):
        return [NUL]
    if typing.get_origin(kind) is list:
        return [[NUL]]
    if typing.get_origin(kind) is dict or kind is dict:
        return [{"k": NUL}, {"n": 2**63}]
    return []


async def test_no_parameter_of_any_route_gives_a_5xx_for_nul_or_huge_numbers(
    settings: Settings, services: Any, admin_headers: dict[str, str]
) -> None:
    app = create_app(settings, services=services)
    sent = 0
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://grace.test") as http:
        for route in api_routes(app):
            if "stream" in route.path:
                continue  # an event stream answers 200 and stays open; its parameters are bounded below
            params = probes(route)
            body_model = next(
                (
                    _base(f.field_info.annotation)
                    for f in fields(route.dependant, "body_params")
                    if isinstance(_base(f.field_info.annotation), type)
                    and issubclass(_base(f.field_info.annotation), BaseModel)
                ),
                None,
            )
            base_body = sample(body_model) if body_model is not None else None
            for where, name, annotation in params:
                for value in bad_values(annotation):
                    path = route.path
                    query: dict[str, str] = {}
                    body = dict(base_body) if base_body is not None else None
                    form: dict[str, str] | None = None
                    for other_where, other, _ in params:
                        if other_where == "path":
                            path = path.replace("{" + other + "}", str(value if other == name else "fuzz"))
                    if where == "query":
                        query[name] = str(value)
                    elif where == "body":
                        body = {**(body or {}), name: value}
                    elif where == "form":
                        form = {name: str(value)}
                    for method in sorted(route.methods or ()):
                        response = await http.request(
                            method,
                            path.replace("\x00", "%00"),
                            params=query,
                            json=body if form is None and method != "GET" else None,
                            data=form,
                            headers=admin_headers,
                        )
                        sent += 1
                        assert response.status_code < 500, (method, route.path, where, name, value, response.text)
                        if (value == NUL or value in (2**63, -(2**63) - 1)) and where != "form":
                            assert 400 <= response.status_code < 500, (method, route.path, name, response.text)
    assert sent > 50
