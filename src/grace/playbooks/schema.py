"""The playbook format (version 1): read with positions, checked whole, every problem at its place.

:func:`check` reads YAML with ``ruamel.yaml`` (which keeps every key's line and column) and returns
the :class:`Playbook` with every :class:`Problem` found: an unknown key at any depth (with the
nearest known one), an unknown action, parameter or metric, an expression that does not parse,
names something undeclared or gives the wrong type, a reference to a missing or later step, an
invalid cron expression or time zone. Nothing is half-loaded: a playbook with a problem does not run.
"""

from __future__ import annotations

import hashlib
import re
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from croniter import croniter
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.scalarstring import (
    DoubleQuotedScalarString,
    FoldedScalarString,
    LiteralScalarString,
    SingleQuotedScalarString,
)

from grace.playbooks import catalogue, expressions
from grace.playbooks.actions import ActionRegistry, suggest

__all__ = [
    "VERSION",
    "Approval",
    "Arg",
    "Call",
    "EventTrigger",
    "InputSpec",
    "Monitor",
    "Playbook",
    "Problem",
    "Retry",
    "RunPolicy",
    "Schedule",
    "Step",
    "check",
    "check_text",
]

VERSION = 1
NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
EXPR = re.compile(r"^\$\{(?P<expr>.*)\}$", re.DOTALL)
# A user's name, as the accounts take it (grace.auth.accounts): the person a run with no one behind it is for.
OWNER = re.compile(r"^[a-z0-9][a-z0-9_.\-]{1,63}$")
STEP_REF = re.compile(r"(?<![\w.])steps\.(?P<id>[A-Za-z_]\w*)")

TOP_KEYS = (
    "version",
    "name",
    "description",
    "owner",
    "triggers",
    "policy",
    "inputs",
    "monitors",
    "steps",
    "on_failure",
    "always",
)
TRIGGER_KINDS = ("schedule", "event", "manual")
SCHEDULE_KEYS = ("cron", "timezone")
EVENT_KEYS = ("topic", "when")
POLICY_KEYS = ("concurrency", "misfire_grace", "coalesce", "timeout")
INPUT_KEYS = ("type", "default", "required", "description")
MONITOR_KEYS = ("name", "metric", "condition", "severity")
STEP_KEYS = ("id", "description", "action", "with", "when", "retry", "timeout", "failed_when", "rollback", "approval")
RETRY_KEYS = ("max_attempts", "backoff", "initial", "max", "on")
ROLLBACK_KEYS = ("action", "with")
APPROVAL_KEYS = ("message", "timeout", "on_timeout")
SECRET_KEYS = ("secret",)

CONCURRENCY = ("forbid", "allow", "replace")
SEVERITIES = ("info", "warning", "critical")
BACKOFFS = ("exponential", "constant")
RETRY_ON = ("error", "timeout", "failed_when")
ON_TIMEOUT = ("fail", "continue")
STEP_STATUSES = ("succeeded", "failed", "skipped")


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with a playbook, at its place (1-based line and column)."""

    file: str
    line: int
    column: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.code}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "column": self.column, "code": self.code, "message": self.message}


@dataclass(frozen=True)
class Schedule:
    cron: str
    timezone: str = "UTC"


@dataclass(frozen=True)
class EventTrigger:
    topic: str
    when: expressions.Compiled | None = None


@dataclass(frozen=True)
class RunPolicy:
    concurrency: str = "forbid"
    misfire_grace: float = 300.0
    coalesce: bool = True
    timeout: float = 3600.0


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str
    default: Any = None
    required: bool = False
    description: str = ""

    @property
    def secret(self) -> bool:
        return self.type == "secret"


@dataclass(frozen=True)
class Monitor:
    name: str
    metric: str
    condition: expressions.Compiled
    severity: str = "warning"


@dataclass(frozen=True)
class Retry:
    max_attempts: int = 1
    backoff: str = "exponential"
    initial: float = 1.0
    max: float = 60.0
    on: tuple[str, ...] = ("error", "timeout")


@dataclass(frozen=True)
class Arg:
    """One ``with`` value: a literal, a checked expression, or a secret reference (the key, never the value)."""

    literal: Any = None
    expr: expressions.Compiled | None = None
    secret: bool = False

    def shown(self) -> Any:
        """Return how history and dry runs show this argument before it is resolved."""
        if self.secret:
            key = self.literal if self.expr is None else "${" + self.expr.source + "}"
            return f"<secret {key}>"
        return self.literal if self.expr is None else "${" + self.expr.source + "}"


@dataclass(frozen=True)
class Call:
    action: str
    args: Mapping[str, Arg] = field(default_factory=dict)


@dataclass(frozen=True)
class Approval:
    message: str
    timeout: float = 3600.0
    on_timeout: str = "fail"


@dataclass(frozen=True)
class Step:
    id: str
    phase: str  # main, on_failure, always
    call: Call
    description: str = ""
    when: expressions.Compiled | None = None
    retry: Retry = Retry()
    timeout: float | None = None
    failed_when: expressions.Compiled | None = None
    rollback: Call | None = None
    approval: Approval | None = None
    line: int = 0


@dataclass(frozen=True)
class Playbook:
    name: str
    description: str
    schedules: tuple[Schedule, ...]
    events: tuple[EventTrigger, ...]
    manual: bool
    policy: RunPolicy
    inputs: Mapping[str, InputSpec]
    monitors: tuple[Monitor, ...]
    steps: tuple[Step, ...]
    on_failure: tuple[Step, ...]
    always: tuple[Step, ...]
    source: str
    digest: str
    owner: str | None = None  # the user a scheduled, event or CLI run is for (no one started it)

    @property
    def all_steps(self) -> tuple[Step, ...]:
        return self.steps + self.on_failure + self.always

    def secret_inputs(self) -> set[str]:
        return {name for name, spec in self.inputs.items() if spec.secret}


# -- reading -----------------------------------------------------------------------------


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.allow_duplicate_keys = False
    return yaml


def check(path: Path, registry: ActionRegistry) -> tuple[Playbook | None, list[Problem]]:
    """Read and check the playbook at ``path``; the playbook is None when any problem was found."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Problem(str(path), 1, 1, "unreadable", str(getattr(exc, "strerror", None) or exc))]
    return check_text(text, str(path), registry)


def check_text(text: str, source: str, registry: ActionRegistry) -> tuple[Playbook | None, list[Problem]]:
    """Check playbook ``text``; ``source`` names it in problems."""
    try:
        data = _yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        return None, [Problem(source, line, col, "yaml", str(exc.problem or exc.context or "invalid YAML"))]
    except Exception as exc:  # ruamel raises a few errors outside its marked tree (duplicate keys among them)
        return None, [Problem(source, 1, 1, "yaml", str(exc).splitlines()[0] if str(exc) else "invalid YAML")]
    checker = _Checker(source, registry)
    playbook = checker.playbook(data, text)
    problems = sorted(set(checker.problems))
    return (playbook if not problems else None), problems


class _Checker:
    def __init__(self, source: str, registry: ActionRegistry) -> None:
        self.source = source
        self.registry = registry
        self.problems: list[Problem] = []

    # -- positions and problems --------------------------------------------------------

    def add(self, at: tuple[int, int], code: str, message: str) -> None:
        self.problems.append(Problem(self.source, at[0], at[1], code, message))

    @staticmethod
    def key_at(node: Any, key: Any) -> tuple[int, int]:
        try:
            line, col = node.lc.key(key)
            return line + 1, col + 1
        except (AttributeError, KeyError, TypeError):
            return _Checker.node_at(node)

    @staticmethod
    def value_at(node: Any, key: Any) -> tuple[int, int]:
        try:
            if isinstance(node, CommentedSeq):
                line, col = node.lc.item(key)
            else:
                line, col = node.lc.value(key)
            return line + 1, col + 1
        except (AttributeError, KeyError, TypeError, IndexError):
            return _Checker.node_at(node)

    @staticmethod
    def node_at(node: Any) -> tuple[int, int]:
        lc = getattr(node, "lc", None)
        if lc is not None and lc.line is not None:
            return lc.line + 1, lc.col + 1
        return 1, 1

    def mapping(self, node: Any, at: tuple[int, int], what: str, allowed: Iterable[str]) -> CommentedMap | None:
        """Check ``node`` is a mapping of known keys; report each unknown key with the nearest known one."""
        if not isinstance(node, CommentedMap):
            self.add(at, "type", f"{what} must be a mapping")
            return None
        allowed = tuple(allowed)
        for key in node:
            if not isinstance(key, str) or key not in allowed:
                self.add(
                    self.key_at(node, key),
                    "unknown_key",
                    f"unknown key {key!r} in {what}{suggest(str(key), allowed)}",
                )
        return node

    def seq(self, node: Any, at: tuple[int, int], what: str) -> CommentedSeq | None:
        if not isinstance(node, CommentedSeq):
            self.add(at, "type", f"{what} must be a list")
            return None
        return node

    def string(self, node: CommentedMap, key: str, what: str, *, required: bool = False) -> str | None:
        if key not in node:
            if required:
                self.add(self.node_at(node), "missing", f"{what} needs {key!r}")
            return None
        value = node[key]
        if not isinstance(value, str) or not value.strip():
            self.add(self.value_at(node, key), "type", f"{what}: {key} must be non-empty text")
            return None
        return str(value)

    def number(self, node: CommentedMap, key: str, what: str, *, low: float, high: float) -> float | None:
        if key not in node:
            return None
        value = node[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            self.add(self.value_at(node, key), "range", f"{what}: {key} must be a number from {low:g} to {high:g}")
            return None
        return float(value)

    def choice(self, node: CommentedMap, key: str, what: str, choices: tuple[str, ...]) -> str | None:
        if key not in node:
            return None
        value = node[key]
        if not isinstance(value, str) or value not in choices:
            self.add(
                self.value_at(node, key),
                "choice",
                f"{what}: {key} must be one of {', '.join(choices)}{suggest(str(value), choices)}",
            )
            return None
        return str(value)

    def flag(self, node: CommentedMap, key: str, what: str) -> bool | None:
        if key not in node:
            return None
        if not isinstance(node[key], bool):
            self.add(self.value_at(node, key), "type", f"{what}: {key} must be true or false")
            return None
        return bool(node[key])

    # -- expressions --------------------------------------------------------------------

    def expression(
        self,
        node: Any,
        key: Any,
        source: str,
        scope: Mapping[str, str],
        *,
        want: str | None,
        offset: int = 0,
        steps: _StepOrder | None = None,
    ) -> expressions.Compiled | None:
        """Compile ``source`` found at ``node[key]``; map an error's position into the file."""
        base_line, base_col = self.value_at(node, key)
        value = node[key]
        if isinstance(value, CommentedMap):  # {secret: ...}: the expression is the inner value
            base_line, base_col = self.value_at(value, "secret")
            value = value["secret"]
        quote = 1 if isinstance(value, DoubleQuotedScalarString | SingleQuotedScalarString) else 0
        block = isinstance(value, LiteralScalarString | FoldedScalarString)

        def place(line: int, column: int) -> tuple[int, int]:
            if block:
                return base_line + line, base_col + 1 + column
            if line > 1:
                return base_line + line - 1, column
            return base_line, base_col + quote + offset + column - 1

        if steps is not None:
            for found in STEP_REF.finditer(source):
                problem = steps.problem(found["id"])
                if problem is not None:
                    code, message = problem
                    self.add(place(*_line_col(source, found.start())), code, message)
                    return None
        try:
            return expressions.compile_expression(source, expressions.Scope(scope), want=want)
        except expressions.CompileError as exc:
            message = exc.message
            undeclared = re.search(r"undeclared reference to '([^']+)'", message)
            if undeclared:
                name = undeclared[1]
                message = f"undeclared name {name!r}{suggest(name, scope)}"
                code = "undeclared"
                # The checker points at the last dot of a dotted name; point at its start.
                index = _index(source, exc.line, exc.column)
                start = source.rfind(name.split(".")[0], 0, index + 1)
                if start >= 0:
                    exc.line, exc.column = _line_col(source, start)
            elif "Syntax error" in message:
                code = "syntax"
            else:
                code = "type"
            self.add(place(exc.line, exc.column), code, message)
            return None

    # -- the document ---------------------------------------------------------------------

    def playbook(self, data: Any, text: str) -> Playbook | None:
        root = self.mapping(data, (1, 1), "the playbook", TOP_KEYS)
        if root is None:
            return None
        version = root.get("version")
        if "version" not in root:
            self.add((1, 1), "missing", f"the playbook needs 'version: {VERSION}'")
        elif version != VERSION or isinstance(version, bool):
            self.add(
                self.value_at(root, "version"),
                "version",
                f"version {version!r} is not known; this Grace reads {VERSION}",
            )
        name = self.string(root, "name", "the playbook", required=True)
        if name is not None and not NAME.match(name):
            self.add(
                self.value_at(root, "name"), "name", "name: lower-case letters, digits and _, starting with a letter"
            )
        description = self.string(root, "description", "the playbook") or ""
        owner = self.string(root, "owner", "the playbook")
        if owner is not None and not OWNER.match(owner):
            self.add(
                self.value_at(root, "owner"),
                "owner",
                "owner: a user's name (2 to 64 lower-case letters, digits, '.', '_' or '-')",
            )
        inputs = self.inputs(root)
        policy = self.policy(root)
        schedules, events, manual, event_fields = self.triggers(root, inputs)
        monitors = self.monitors(root, inputs, event_fields)
        base_scope = self.base_scope(inputs, monitors, event_fields)
        order = _StepOrder(self.step_ids(root))
        outputs: dict[str, Mapping[str, str]] = {}
        main = self.steps(root, "steps", "main", base_scope, order, outputs, required=True)
        order.finish_main()
        end_scope = {**base_scope, "run.outcome": "string", "run.failed_step": "string", "run.error": "string"}
        on_failure = self.steps(root, "on_failure", "on_failure", end_scope, order, outputs)
        always = self.steps(root, "always", "always", end_scope, order, outputs)
        if self.problems or name is None:
            return None
        return Playbook(
            name=name,
            description=description,
            schedules=tuple(schedules),
            events=tuple(events),
            manual=manual,
            policy=policy,
            inputs=inputs,
            monitors=tuple(monitors),
            steps=tuple(main),
            on_failure=tuple(on_failure),
            always=tuple(always),
            source=self.source,
            digest=hashlib.sha256(text.encode()).hexdigest()[:16],
            owner=owner,
        )

    def inputs(self, root: CommentedMap) -> dict[str, InputSpec]:
        found: dict[str, InputSpec] = {}
        if "inputs" not in root:
            return found
        node = self.mapping(root["inputs"], self.value_at(root, "inputs"), "inputs", root["inputs"] or ())
        if node is None:
            return found
        types = tuple(expressions.TYPES)
        for name in node:
            what = f"input {name!r}"
            if not isinstance(name, str) or not NAME.match(name):
                self.add(self.key_at(node, name), "name", f"{what}: lower-case letters, digits and _")
                continue
            spec = self.mapping(node[name], self.value_at(node, name), what, INPUT_KEYS)
            if spec is None:
                continue
            kind = self.choice(spec, "type", what, types)
            if "type" not in spec:
                self.add(self.key_at(node, name), "missing", f"{what} needs a type")
            kind = kind or "any"
            required = self.flag(spec, "required", what) or False
            default = _plain(spec.get("default"))
            if "default" in spec and not _literal_fits(kind, default):
                self.add(self.value_at(spec, "default"), "type", f"{what}: the default is not a {kind}")
            if kind == "secret" and "default" in spec and not isinstance(default, str):
                self.add(self.value_at(spec, "default"), "type", f"{what}: a secret's default is its key")
            found[name] = InputSpec(name, kind, default, required, str(spec.get("description") or ""))
        return found

    def policy(self, root: CommentedMap) -> RunPolicy:
        if "policy" not in root:
            return RunPolicy()
        node = self.mapping(root["policy"], self.value_at(root, "policy"), "policy", POLICY_KEYS)
        if node is None:
            return RunPolicy()
        base = RunPolicy()
        return RunPolicy(
            concurrency=self.choice(node, "concurrency", "policy", CONCURRENCY) or base.concurrency,
            misfire_grace=_or(self.number(node, "misfire_grace", "policy", low=0, high=7 * 86400), base.misfire_grace),
            coalesce=_or(self.flag(node, "coalesce", "policy"), base.coalesce),
            timeout=_or(self.number(node, "timeout", "policy", low=1, high=86400), base.timeout),
        )

    def triggers(
        self, root: CommentedMap, inputs: Mapping[str, InputSpec]
    ) -> tuple[list[Schedule], list[EventTrigger], bool, dict[str, str]]:
        schedules: list[Schedule] = []
        events: list[EventTrigger] = []
        manual = False
        fields: dict[str, str] = {}
        if "triggers" not in root:
            return schedules, events, True, fields
        seq = self.seq(root["triggers"], self.value_at(root, "triggers"), "triggers")
        if seq is None:
            return schedules, events, manual, fields
        input_scope = {f"inputs.{n}": s.type for n, s in inputs.items()}
        for i, item in enumerate(seq):
            at = self.value_at(seq, i)
            node = self.mapping(item, at, "a trigger", TRIGGER_KINDS)
            if node is None:
                continue
            kinds = [k for k in node if k in TRIGGER_KINDS]
            if len(kinds) != 1:
                self.add(at, "trigger", "a trigger is one of schedule, event or manual")
                continue
            kind = kinds[0]
            if kind == "manual":
                manual = True
                if node["manual"] not in (None, True) and not (isinstance(node["manual"], dict) and not node["manual"]):
                    self.add(self.value_at(node, "manual"), "type", "manual takes no settings")
                continue
            if kind == "schedule":
                spec = self.mapping(node["schedule"], self.value_at(node, "schedule"), "schedule", SCHEDULE_KEYS)
                if spec is None:
                    continue
                cron = self.string(spec, "cron", "schedule", required=True)
                zone = self.string(spec, "timezone", "schedule") or "UTC"
                if cron is not None and not _valid_cron(cron):
                    self.add(self.value_at(spec, "cron"), "cron", f"invalid cron expression {cron!r} (five fields)")
                    cron = None
                if "timezone" in spec and zone not in _zones():
                    self.add(
                        self.value_at(spec, "timezone"),
                        "timezone",
                        f"unknown time zone {zone!r}{suggest(zone, _zones())}",
                    )
                    continue
                if cron is not None:
                    schedules.append(Schedule(cron, zone))
                continue
            spec = self.mapping(node["event"], self.value_at(node, "event"), "event", EVENT_KEYS)
            if spec is None:
                continue
            topic = self.string(spec, "topic", "event", required=True)
            if topic is None:
                continue
            if topic not in catalogue.EVENTS:
                self.add(
                    self.value_at(spec, "topic"),
                    "topic",
                    f"unknown event topic {topic!r}{suggest(topic, catalogue.EVENTS)}",
                )
                continue
            topic_fields = {f"event.{k}": v for k, v in catalogue.EVENTS[topic].items()}
            for k, v in topic_fields.items():
                fields[k] = v if fields.get(k, v) == v else "any"
            when = None
            if "when" in spec:
                source = spec["when"]
                if not isinstance(source, str):
                    self.add(self.value_at(spec, "when"), "type", "event: when must be an expression")
                else:
                    scope = {**input_scope, **topic_fields, **RUN_NAMES}
                    when = self.expression(spec, "when", source, scope, want="bool")
            events.append(EventTrigger(topic, when))
        return schedules, events, manual, fields

    def monitors(
        self, root: CommentedMap, inputs: Mapping[str, InputSpec], event_fields: Mapping[str, str]
    ) -> list[Monitor]:
        found: list[Monitor] = []
        if "monitors" not in root:
            return found
        seq = self.seq(root["monitors"], self.value_at(root, "monitors"), "monitors")
        if seq is None:
            return found
        metrics: dict[str, str] = {}
        nodes: list[tuple[CommentedMap, str, str]] = []
        for i, item in enumerate(seq):
            node = self.mapping(item, self.value_at(seq, i), "a monitor", MONITOR_KEYS)
            if node is None:
                continue
            name = self.string(node, "name", "a monitor", required=True)
            metric = self.string(node, "metric", "a monitor", required=True)
            if name is not None and not NAME.match(name):
                self.add(self.value_at(node, "name"), "name", "monitor name: lower-case letters, digits and _")
                name = None
            if metric is not None and metric not in catalogue.METRICS:
                self.add(
                    self.value_at(node, "metric"),
                    "metric",
                    f"unknown metric {metric!r}{suggest(metric, catalogue.METRICS)}",
                )
                metric = None
            if name is None or metric is None:
                continue
            metrics[f"metrics.{metric}"] = catalogue.METRICS[metric].type
            nodes.append((node, name, metric))
        scope = {**{f"inputs.{n}": s.type for n, s in inputs.items()}, **metrics, **dict(event_fields), **RUN_NAMES}
        for node, name, metric in nodes:
            severity = self.choice(node, "severity", "a monitor", SEVERITIES) or "warning"
            source = node.get("condition")
            if not isinstance(source, str):
                self.add(self.node_at(node), "missing", "a monitor needs a condition")
                continue
            compiled = self.expression(node, "condition", source, scope, want="bool")
            if compiled is not None:
                found.append(Monitor(name, metric, compiled, severity))
        return found

    @staticmethod
    def base_scope(
        inputs: Mapping[str, InputSpec], monitors: list[Monitor], event_fields: Mapping[str, str]
    ) -> dict[str, str]:
        scope: dict[str, str] = {f"inputs.{n}": s.type for n, s in inputs.items()}
        for monitor in monitors:
            scope[f"metrics.{monitor.metric}"] = catalogue.METRICS[monitor.metric].type
            scope[f"monitors.{monitor.name}.firing"] = "bool"
            scope[f"monitors.{monitor.name}.severity"] = "string"
        scope.update(event_fields)
        scope.update(RUN_NAMES)
        return scope

    def step_ids(self, root: CommentedMap) -> list[tuple[str, str]]:
        """Every step id with its block, in order (for reference checks before the steps are read)."""
        ids: list[tuple[str, str]] = []
        for block in ("steps", "on_failure", "always"):
            seq = root.get(block)
            if isinstance(seq, CommentedSeq):
                for item in seq:
                    if isinstance(item, CommentedMap) and isinstance(item.get("id"), str):
                        ids.append((str(item["id"]), block))
        return ids

    def steps(
        self,
        root: CommentedMap,
        block: str,
        phase: str,
        scope: dict[str, str],
        order: _StepOrder,
        outputs: dict[str, Mapping[str, str]],
        *,
        required: bool = False,
    ) -> list[Step]:
        found: list[Step] = []
        if block not in root:
            if required:
                self.add((1, 1), "missing", "the playbook needs steps")
            return found
        seq = self.seq(root[block], self.value_at(root, block), block)
        if seq is None:
            return found
        if required and not seq:
            self.add(self.value_at(root, block), "missing", "the playbook needs at least one step")
        for i, item in enumerate(seq):
            step = self.step(item, self.value_at(seq, i), block, phase, scope, order, outputs)
            if step is not None:
                found.append(step)
        return found

    def step(
        self,
        item: Any,
        at: tuple[int, int],
        block: str,
        phase: str,
        scope: dict[str, str],
        order: _StepOrder,
        outputs: dict[str, Mapping[str, str]],
    ) -> Step | None:
        named = item.get("id") if isinstance(item, CommentedMap) else None
        label = f"step {named!r}" if isinstance(named, str) else f"a step in {block}"
        node = self.mapping(item, at, label, STEP_KEYS)
        if node is None:
            return None
        step_id = self.string(node, "id", f"a step in {block}", required=True)
        if step_id is not None and not NAME.match(step_id):
            self.add(self.value_at(node, "id"), "name", "step id: lower-case letters, digits and _")
            step_id = None
        if step_id is not None and not order.enter(step_id):
            self.add(self.value_at(node, "id"), "duplicate", f"step id {step_id!r} is used twice")
            step_id = None
        what = f"step {step_id!r}" if step_id else f"a step in {block}"
        here = dict(scope)
        for ran in order.before():
            here[f"steps.{ran}.status"] = "string"
            for name, kind in outputs.get(ran, {}).items():
                here[f"steps.{ran}.output.{name}"] = kind
        when = self.condition(node, "when", what, here, order)
        call = self.call(node, what, here, order)
        if call is not None and step_id is not None:
            action = self.registry.get(call.action)
            outputs[step_id] = dict(action.outputs) if action else {}
        own = dict(here)
        if step_id is not None:
            for name, kind in outputs.get(step_id, {}).items():
                own[f"steps.{step_id}.output.{name}"] = kind
        failed_when = self.condition(node, "failed_when", what, own, order, self_id=step_id)
        retry = self.retry(node, what)
        timeout = self.number(node, "timeout", what, low=0.001, high=86400)
        rollback = None
        if "rollback" in node:
            spec = self.mapping(node["rollback"], self.value_at(node, "rollback"), f"{what}: rollback", ROLLBACK_KEYS)
            if spec is not None:
                rollback = self.call(spec, f"{what}: rollback", own, order, self_id=step_id)
        approval = None
        if "approval" in node and phase != "main":
            self.add(
                self.key_at(node, "approval"),
                "approval",
                f"{what}: an approval belongs among the main steps ({block} runs without waiting for anyone)",
            )
        elif "approval" in node:
            spec = self.mapping(node["approval"], self.value_at(node, "approval"), f"{what}: approval", APPROVAL_KEYS)
            if spec is not None:
                message = self.string(spec, "message", f"{what}: approval", required=True) or ""
                approval = Approval(
                    message,
                    _or(self.number(spec, "timeout", f"{what}: approval", low=1, high=7 * 86400), 3600.0),
                    self.choice(spec, "on_timeout", f"{what}: approval", ON_TIMEOUT) or "fail",
                )
        if step_id is None or call is None:
            return None
        return Step(
            id=step_id,
            phase=phase,
            call=call,
            description=str(node.get("description") or ""),
            when=when,
            retry=retry,
            timeout=timeout,
            failed_when=failed_when,
            rollback=rollback,
            approval=approval,
            line=self.node_at(node)[0],
        )

    def condition(
        self,
        node: CommentedMap,
        key: str,
        what: str,
        scope: Mapping[str, str],
        order: _StepOrder,
        *,
        self_id: str | None = None,
    ) -> expressions.Compiled | None:
        if key not in node:
            return None
        source = node[key]
        if not isinstance(source, str):
            self.add(self.value_at(node, key), "type", f"{what}: {key} must be an expression")
            return None
        return self.expression(node, key, source, scope, want="bool", steps=order.view(self_id))

    def call(
        self,
        node: CommentedMap,
        what: str,
        scope: Mapping[str, str],
        order: _StepOrder,
        *,
        self_id: str | None = None,
    ) -> Call | None:
        name = self.string(node, "action", what, required=True)
        if name is None:
            return None
        action = self.registry.get(name)
        if action is None:
            self.add(
                self.value_at(node, "action"),
                "action",
                f"unknown action {name!r}{suggest(name, self.registry.names())}",
            )
            return None
        args: dict[str, Arg] = {}
        given = node.get("with")
        if given is None:
            given = CommentedMap()
        elif not isinstance(given, CommentedMap):
            self.add(self.value_at(node, "with"), "type", f"{what}: with must be a mapping")
            return None
        for key in given:
            if key not in action.params:
                self.add(
                    self.key_at(given, key),
                    "unknown_key",
                    f"{name} takes no parameter {key!r}{suggest(str(key), action.params)}",
                )
                continue
            arg = self.arg(given, key, action.params[key].type, f"{name}.{key}", scope, order, self_id)
            if arg is not None:
                args[str(key)] = arg
        for pname, param in action.params.items():
            if param.required and pname not in given:
                self.add(self.value_at(node, "action"), "missing", f"{name} needs the parameter {pname!r}")
        return Call(name, args)

    def arg(
        self,
        given: CommentedMap,
        key: str,
        kind: str,
        what: str,
        scope: Mapping[str, str],
        order: _StepOrder,
        self_id: str | None,
    ) -> Arg | None:
        value = given[key]
        if isinstance(value, CommentedMap) and "secret" in value:
            self.mapping(value, self.value_at(given, key), f"{what}: a secret reference", SECRET_KEYS)
            if kind != "secret":
                self.add(
                    self.value_at(given, key),
                    "secret",
                    f"{what} is not a secret parameter: a secret goes only where one is declared",
                )
                return None
            inner = value["secret"]
            if not isinstance(inner, str) or not inner:
                self.add(self.value_at(value, "secret"), "type", f"{what}: secret names the secret's key")
                return None
            found = EXPR.match(inner)
            if found is None:
                return Arg(literal=str(inner), secret=True)
            expr = self.expression(given, key, found["expr"], scope, want="string", offset=2, steps=order.view(self_id))
            return Arg(expr=expr, secret=True) if expr is not None else None
        if kind == "secret":
            self.add(self.value_at(given, key), "secret", f"{what} takes a secret reference: {{secret: KEY}}")
            return None
        if isinstance(value, str):
            found = EXPR.match(value)
            if found is not None:
                expr = self.expression(given, key, found["expr"], scope, want=kind, offset=2, steps=order.view(self_id))
                return Arg(expr=expr) if expr is not None else None
            if "${" in value:
                self.add(
                    self.value_at(given, key), "syntax", f"{what}: an expression must be the whole value: ${{...}}"
                )
                return None
        plain = _plain(value)
        if _has_expression(plain):
            self.add(self.value_at(given, key), "syntax", f"{what}: expressions inside lists and mappings are not read")
            return None
        if not _literal_fits(kind, plain):
            self.add(self.value_at(given, key), "type", f"{what} must be a {kind}")
            return None
        return Arg(literal=plain)

    def retry(self, node: CommentedMap, what: str) -> Retry:
        if "retry" not in node:
            return Retry()
        spec = self.mapping(node["retry"], self.value_at(node, "retry"), f"{what}: retry", RETRY_KEYS)
        if spec is None:
            return Retry()
        base = Retry()
        attempts = self.number(spec, "max_attempts", f"{what}: retry", low=1, high=100)
        if attempts is not None and attempts != int(attempts):
            self.add(self.value_at(spec, "max_attempts"), "type", f"{what}: retry: max_attempts is a whole number")
        on: tuple[str, ...] = base.on
        if "on" in spec:
            items = self.seq(spec["on"], self.value_at(spec, "on"), f"{what}: retry: on")
            if items is not None:
                for i, kind in enumerate(items):
                    if kind not in RETRY_ON:
                        self.add(
                            self.value_at(items, i),
                            "choice",
                            f"{what}: retry on must name {', '.join(RETRY_ON)}{suggest(str(kind), RETRY_ON)}",
                        )
                on = tuple(str(k) for k in items)
        initial = _or(self.number(spec, "initial", f"{what}: retry", low=0, high=3600), base.initial)
        most = _or(self.number(spec, "max", f"{what}: retry", low=0, high=86400), base.max)
        if most < initial:
            self.add(self.node_at(spec), "range", f"{what}: retry: max must not be below initial")
        return Retry(
            max_attempts=int(attempts or base.max_attempts),
            backoff=self.choice(spec, "backoff", f"{what}: retry", BACKOFFS) or base.backoff,
            initial=initial,
            max=most,
            on=on,
        )


RUN_NAMES: dict[str, str] = {"run.id": "string", "run.trigger": "string", "run.dry_run": "bool"}


class _StepOrder:
    """Which step ids an expression may name: earlier ones in the run order (main steps, then the block)."""

    def __init__(self, ids: list[tuple[str, str]]) -> None:
        self.blocks = dict(ids)
        self.entered: list[str] = []
        self.main: list[str] = []
        self._main_done = False
        self._self: str | None = None

    def enter(self, step_id: str) -> bool:
        if step_id in self.entered:
            return False
        self.entered.append(step_id)
        return True

    def finish_main(self) -> None:
        self.main = list(self.entered)
        self._main_done = True
        self._block_start = len(self.entered)

    def before(self) -> list[str]:
        """The steps that have run (or were decided) before the one entered last."""
        if not self._main_done:
            return self.entered[:-1]
        block = self.blocks.get(self.entered[-1]) if self.entered else None
        same = [s for s in self.entered[self._block_start : -1] if self.blocks.get(s) == block]
        return self.main + same

    def view(self, self_id: str | None) -> _StepOrder:
        view = _StepOrder.__new__(_StepOrder)
        view.__dict__.update(self.__dict__)
        view._self = self_id
        return view

    def problem(self, ref: str) -> tuple[str, str] | None:
        if ref == self._self or ref in self.before():
            return None
        if ref in self.blocks:
            if self.entered and ref == self.entered[-1]:
                return "step_order", f"step {ref!r} cannot name its own output before it runs"
            return "step_order", f"step {ref!r} runs later, or in another block: name only steps that ran before"
        return "step_ref", f"no step {ref!r}{suggest(ref, self.blocks)}"


def _index(source: str, line: int, column: int) -> int:
    lines = source.split("\n")
    return sum(len(x) + 1 for x in lines[: line - 1]) + column - 1


def _line_col(source: str, index: int) -> tuple[int, int]:
    line = source.count("\n", 0, index) + 1
    start = source.rfind("\n", 0, index) + 1
    return line, index - start + 1


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _plain(value: Any) -> Any:
    """Return ruamel's node as plain Python values."""
    if isinstance(value, CommentedMap):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, CommentedSeq):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def _has_expression(value: Any) -> bool:
    if isinstance(value, str):
        return "${" in value
    if isinstance(value, dict):
        return any(_has_expression(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_expression(v) for v in value)
    return False


def _literal_fits(kind: str, value: Any) -> bool:
    if value is None:
        return True
    if kind in ("any",):
        return True
    if kind in ("string", "secret"):
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "double":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "list":
        return isinstance(value, list)
    if kind == "map":
        return isinstance(value, dict)
    return False


def _valid_cron(expr: str) -> bool:
    if len(expr.split()) != 5:
        return False
    try:
        return bool(croniter.is_valid(expr))
    except Exception:  # croniter raises for some malformed fields instead of answering False
        return False


@cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())
