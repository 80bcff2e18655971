"""Playbooks: the catalogue with triggers and last runs, each playbook's run history, run now or dry-run, a run live.

The pages ask the playbooks service (``Services.playbooks``) and the scheduler as the API does
(``/api/playbooks``), under the same policies: operators and admins see them (``playbooks``) and run
them (``playbooks_run``); a member gets the "You can't do that here" page and no nav item; an agent
never. A real run is queued as a task-manager task, and its page refreshes itself (htmx polling of
the run's own fragment) until the run has finished; a dry run is answered whole.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Form, Query, Request
from starlette.responses import RedirectResponse, Response

from grace import errors, jsontext
from grace.api import PLAYBOOKS, PLAYBOOKS_RUN, CurrentPrincipal, ServicesDep
from grace.auth import Principal
from grace.playbooks import Playbook, RunRecord, next_fire
from grace.services import Services
from grace.web.playbook_views import FINAL, run_status, step_views, trigger_words
from grace.web.rendering import render
from grace.web.routing import is_htmx, page_router

__all__ = ["HISTORY_PAGE", "POLL_SECONDS", "router"]

router = page_router()

HISTORY_PAGE = 20
POLL_SECONDS = 2
INPUT_PREFIX = "input_"
# Field kinds for a typed input: the HTML control and, for numbers, its step.
CONTROLS = {"bool": "select", "int": "number", "double": "number"}


def _run_row(record: RunRecord) -> dict[str, Any]:
    """A run as a history line: its status in words, trigger, who, when, how long, and each step's outcome."""
    return {
        "record": record,
        "status": run_status(record.status),
        "trigger": trigger_words(record.trigger),
        "steps": step_views(record),
    }


def _input_fields(playbook: Playbook) -> list[dict[str, Any]]:
    fields = []
    for name, spec in playbook.inputs.items():
        default = spec.default
        if spec.type in ("list", "map", "any") and default is not None:
            value = jsontext.dumps(default)
        elif isinstance(default, bool):
            value = "true" if default else "false"
        else:
            value = "" if default is None else str(default)
        fields.append(
            {
                "name": name,
                "field": INPUT_PREFIX + name,
                "type": spec.type,
                "control": CONTROLS.get(spec.type, "text"),
                "step": "1" if spec.type == "int" else "any",
                "value": value,
                "required": spec.required and spec.default is None,
                "description": spec.description,
            }
        )
    return fields


def _triggers(playbook: Playbook, services: Services) -> dict[str, Any]:
    now = services.clock.now()
    return {
        "schedules": [
            {"cron": s.cron, "timezone": s.timezone, "next_at": next_fire(s.cron, s.timezone, now)}
            for s in playbook.schedules
        ],
        "events": [e.topic for e in playbook.events],
        "manual": playbook.manual,
    }


@router.get("/playbooks", dependencies=[PLAYBOOKS])
async def playbooks_page(request: Request, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    """Every playbook: what it does, its triggers (each schedule's next firing), its last run and outcome."""
    shown = []
    for listed in services.playbooks.catalogue():
        last = await services.playbooks.last_run(listed.name)
        item: dict[str, Any] = {"listed": listed, "last": _run_row(last) if last else None}
        if listed.playbook is not None:
            item.update(_triggers(listed.playbook, services))
        shown.append(item)
    context = {"principal": principal, "page": "playbooks", "playbooks": shown}
    return render(request, "playbooks.html", context)


async def _playbook_page(
    request: Request,
    principal: Principal,
    services: Services,
    name: str,
    before: str | None = None,
    *,
    error: str = "",
    given: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    playbook = services.playbooks.named(name)
    page = await services.playbooks.run_page(playbook=playbook.name, before=before, limit=HISTORY_PAGE)
    fields = _input_fields(playbook)
    for f in fields:
        if given and f["field"] in given:
            f["value"] = given[f["field"]]
    context = {
        "principal": principal,
        "page": "playbooks",
        "playbook": playbook,
        "fields": fields,
        "runs": [_run_row(r) for r in page.runs],
        "next_before": page.next_before,
        "older": before is not None,
        "error": error,
        **_triggers(playbook, services),
    }
    return render(request, "playbook.html", context, status=status)


@router.get("/playbooks/runs/{run_id}", dependencies=[PLAYBOOKS])
async def run_page(run_id: str, request: Request, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    """One run: its trigger, who, inputs, status, and each step with attempts, durations and errors.

    While the run is queued or running the page asks for its own fragment (htmx) every two seconds;
    the fragment of a finished run no longer asks.
    """
    return await _run_page(request, principal, services, run_id[:60])


async def _run_page(
    request: Request, principal: Principal, services: Services, run_id: str, *, error: str = "", status: int = 200
) -> Response:
    record = await services.playbooks.run_record(run_id)
    context = {
        "principal": principal,
        "page": "playbooks",
        "run": _run_row(record),
        "final": record.status in FINAL,
        "poll": f"every {POLL_SECONDS}s",
        "error": error,
    }
    if is_htmx(request):
        return render(request, "_playbook_run.html", context, status=status)
    return render(request, "playbook_run.html", context, status=status)


@router.post("/playbooks/runs/{run_id}/cancel", dependencies=[PLAYBOOKS_RUN])
async def cancel_run(run_id: str, request: Request, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    """Cancel the run (queued, running or waiting for its approval), then show it; a finished run says so (409)."""
    try:
        await services.scheduler.cancel_run(run_id[:60], by=principal.name)
    except errors.Conflict as exc:
        return await _run_page(request, principal, services, run_id[:60], error=exc.message, status=409)
    return RedirectResponse(f"/playbooks/runs/{run_id[:60]}", status_code=303)


@router.get("/playbooks/{name}", dependencies=[PLAYBOOKS])
async def playbook_page(
    name: str,
    request: Request,
    principal: CurrentPrincipal,
    services: ServicesDep,
    before: Annotated[str | None, Query(min_length=1, max_length=60)] = None,
) -> Response:
    """One playbook: its steps and inputs, Run now and Dry run, and its run history (``before``: older runs)."""
    return await _playbook_page(request, principal, services, name[:64], before)


@router.post("/playbooks/{name}/run", dependencies=[PLAYBOOKS_RUN])
async def run_playbook(
    name: str,
    request: Request,
    principal: CurrentPrincipal,
    services: ServicesDep,
    mode: Annotated[Literal["run", "dry_run"], Form()],
) -> Response:
    """Run the playbook now (queued as a task) or dry-run it (answered whole); then show the run."""
    playbook = services.playbooks.named(name[:64])
    form = await request.form()
    given = {
        key: value[:2000]
        for key, value in form.items()
        if key.startswith(INPUT_PREFIX) and isinstance(value, str) and len(key) <= 100
    }
    inputs: dict[str, str] = {}
    for key, value in given.items():
        input_name = key[len(INPUT_PREFIX) :]
        spec = playbook.inputs.get(input_name)
        if spec is not None and value == "" and spec.type not in ("string", "secret"):
            continue  # an emptied number or list keeps its default
        inputs[input_name] = value
    try:
        if mode == "dry_run":
            result = await services.playbooks.execute(
                playbook, inputs, who=principal.name, principal=principal, dry_run=True
            )
            run_id = result.run_id
        else:
            run_id = await services.scheduler.queue_manual(playbook, inputs, who=principal.name, principal=principal)
    except (errors.InvalidInput, errors.Conflict) as exc:
        code = 409 if isinstance(exc, errors.Conflict) else 422
        return await _playbook_page(
            request, principal, services, playbook.name, error=exc.message, given=given, status=code
        )
    return RedirectResponse(f"/playbooks/runs/{run_id}", status_code=303)
