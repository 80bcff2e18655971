"""Conditions in CEL, type-checked against the names a playbook declares.

Every name an expression may use is a declared CEL variable with a type: ``inputs.threshold``,
``steps.stats.output.sla_compliance``, ``event.status``, ``metrics.queue_depth``. The names are
declared whole (dots included), so Google's checker (``cel-expr-python``) refuses a misspelt one
at compile time with its column, rather than letting it evaluate to an error that ``&&`` would
absorb into a silent ``false``. The checker's result type is compared with what the place needs
(a ``when`` is a bool, a ``with`` value the action parameter's type).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cel_expr_python import cel

__all__ = [
    "TYPES",
    "CompileError",
    "Compiled",
    "Scope",
    "cel_type",
    "compile_expression",
]

# The types a playbook names (inputs, action parameters and outputs, metrics, event fields).
TYPES: dict[str, str] = {
    "string": "string",
    "int": "int",
    "double": "double",
    "bool": "bool",
    "list": "list",
    "map": "map",
    "any": "dyn",
    "secret": "string",  # a secret input holds the secret's key; the value is resolved at run time
}

_ERROR = re.compile(r"<input>:(?P<line>\d+):(?P<col>\d+): (?P<message>[^\n]*)")


def cel_type(name: str) -> cel.Type:
    """Return the CEL type for one of :data:`TYPES`."""
    kind = TYPES[name]
    if kind == "string":
        return cel.Type.STRING
    if kind == "int":
        return cel.Type.INT
    if kind == "double":
        return cel.Type.DOUBLE
    if kind == "bool":
        return cel.Type.BOOL
    if kind == "list":
        return cel.Type.List(cel.Type.DYN)
    if kind == "map":
        return cel.Type.Map(cel.Type.STRING, cel.Type.DYN)
    return cel.Type.DYN


@dataclass(frozen=True)
class Scope:
    """The names an expression may use at one place in a playbook, each with its type name."""

    names: Mapping[str, str]

    def env(self) -> cel.Env:
        return cel.NewEnv(variables={name: cel_type(kind) for name, kind in self.names.items()})


class CompileError(Exception):
    """An expression that does not parse or check; ``line``/``column`` are 1-based within the expression."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


@dataclass(frozen=True)
class Compiled:
    """A checked expression, ready to evaluate with the values of the names it was checked against."""

    source: str
    result: str  # the CEL type's name, e.g. "bool", "double"
    _expr: Any

    def evaluate(self, values: Mapping[str, Any]) -> Any:
        """Evaluate against ``values`` (keyed by the declared dotted names); raise ValueError if CEL errs."""
        try:
            value = self._expr.eval(data=dict(values))
        except Exception as exc:  # the binding raises RuntimeError for evaluation errors
            raise ValueError(_first_line(str(exc))) from None
        plain = value.plain_value()
        if value.type() == cel.Type.ERROR:
            raise ValueError(str(plain))
        return plain


def _first_line(text: str) -> str:
    return text.split("\n", 1)[0]


def compile_expression(source: str, scope: Scope, *, want: str | None = None) -> Compiled:
    """Parse and type-check ``source``; ``want`` (one of :data:`TYPES`) is the type the result must have."""
    try:
        expr = scope.env().compile(source)
    except Exception as exc:  # RuntimeError("INVALID_ARGUMENT: ERROR: <input>:1:12: undeclared ...")
        text = str(exc)
        found = _ERROR.search(text)
        if found is None:
            raise CompileError(_first_line(text), 1, 1) from None
        message = found["message"].replace(" (in container '')", "")
        raise CompileError(message, int(found["line"]), int(found["col"])) from None
    result_type = expr.return_type()
    result = result_type.name().lower()
    if want is not None and not _assignable(want, result_type):
        raise CompileError(f"the expression gives {_type_name(result)}, where {want} is needed", 1, 1)
    return Compiled(source, result, expr)


def _assignable(want: str, got: cel.Type) -> bool:
    if TYPES[want] == "dyn" or got == cel.Type.DYN:
        return True
    name = got.name().lower()
    if want == "double":
        return name in ("double", "int")
    if want in ("list", "map"):
        return bool(name.startswith(want))
    return bool(name == TYPES[want])


def _type_name(result: str) -> str:
    return {"dyn": "a value of unknown type"}.get(result, f"a {result}")
