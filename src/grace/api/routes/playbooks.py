"""Playbooks: the catalogue, a run (queued as a task-manager task, or a dry run answered whole), a run's record."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from grace.api import contract, policy
from grace.api.deps import CurrentPrincipal, ServicesDep
from grace.api.schemas.playbooks import PlaybookList, RunAnswer, RunList
from grace.clock import iso
from grace.playbooks import next_fire

router = APIRouter(prefix="/api/playbooks", tags=["playbooks"])

RunStatus = Literal["queued", "running", "waiting", "succeeded", "failed", "cancelled", "timed_out", "skipped"]


class RunRequest(BaseModel):
    inputs: dict[str, Annotated[str | int | float | bool | list[Any] | dict[str, Any] | None, Field()]] = Field(
        default_factory=dict, description="Input values by name, typed as the playbook declares them."
    )
    dry_run: bool = Field(False, description="Call no action with side effects; answer the whole run at once.")


@router.get("", dependencies=[policy.PLAYBOOKS], response_model=PlaybookList)
async def list_playbooks(services: ServicesDep) -> dict[str, Any]:
    """Every playbook in GRACE_PLAYBOOKS_DIR, checked: triggers (with each schedule's next firing), policy,
    inputs and steps, or its lint problems; and each one's last run."""
    out = []
    now = services.clock.now()
    for listed in services.playbooks.catalogue():
        item: dict[str, Any] = {
            "name": listed.name,
            "path": listed.path,
            "valid": listed.valid,
            "description": listed.description,
            "problems": [p.as_dict() for p in listed.problems],
        }
        pb = listed.playbook
        if pb is not None:
            item.update(
                schedules=[
                    {"cron": s.cron, "timezone": s.timezone, "next_at": iso(next_fire(s.cron, s.timezone, now))}
                    for s in pb.schedules
                ],
                events=[e.topic for e in pb.events],
                manual=pb.manual,
                policy={
                    "concurrency": pb.policy.concurrency,
                    "misfire_grace": pb.policy.misfire_grace,
                    "coalesce": pb.policy.coalesce,
                    "timeout": pb.policy.timeout,
                },
                inputs={
                    n: {"type": s.type, "default": s.default, "required": s.required, "description": s.description}
                    for n, s in pb.inputs.items()
                },
                steps=[s.id for s in pb.steps],
            )
        last = await services.playbooks.last_run(listed.name)
        item["last_run"] = last.as_dict() if last is not None else None
        out.append(item)
    return {"playbooks": out}


@router.post(
    "/{name}/run",
    status_code=202,
    dependencies=[policy.PLAYBOOKS_RUN],
    response_model=RunAnswer,
    responses=contract.errors(
        **{"409": "The playbook's policy is concurrency forbid and a run of it is queued or running (code conflict)."}
    ),
)
async def run_playbook(
    name: str, body: RunRequest, principal: CurrentPrincipal, services: ServicesDep
) -> dict[str, Any]:
    """Run a playbook as a task-manager task (poll GET /api/playbooks/runs/{id}), or dry-run it and answer whole."""
    playbooks = services.playbooks
    playbook = playbooks.named(name)
    if body.dry_run:
        result = await playbooks.execute(playbook, body.inputs, who=principal.name, principal=principal, dry_run=True)
        return {"run": (await playbooks.run_record(result.run_id)).as_dict()}
    run_id = await services.scheduler.queue_manual(playbook, body.inputs, who=principal.name, principal=principal)
    return {"run": (await playbooks.run_record(run_id)).as_dict()}


@router.get("/runs", dependencies=[policy.PLAYBOOKS], response_model=RunList, responses=contract.errors(404))
async def list_runs(
    services: ServicesDep,
    playbook: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=64,
            pattern=r"^[a-z][a-z0-9_]*$",
            description="Only this playbook's runs (404 if it is neither in the directory nor in the history).",
        ),
    ] = None,
    status: Annotated[
        list[RunStatus] | None, Query(max_length=7, description="Only runs in these statuses (repeat the parameter).")
    ] = None,
    before: Annotated[
        str | None,
        Query(min_length=1, max_length=60, description="A run's id: the runs older than it (from next_before)."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="At most this many, newest first.")] = 50,
) -> dict[str, Any]:
    """Runs and skipped firings newest first, each with its steps; page with ``before`` = the answer's next_before."""
    page = await services.playbooks.run_page(
        playbook=playbook, statuses=tuple(dict.fromkeys(status or ())), before=before, limit=limit
    )
    return {"runs": [r.as_dict() for r in page.runs], "next_before": page.next_before}


@router.get("/runs/{run_id}", dependencies=[policy.PLAYBOOKS], response_model=RunAnswer)
async def get_run(run_id: str, services: ServicesDep) -> dict[str, Any]:
    """One run or skipped firing: trigger, who, inputs (secrets redacted), each step's attempts, outcome, durations."""
    return {"run": (await services.playbooks.run_record(run_id)).as_dict()}


@router.post(
    "/runs/{run_id}/cancel",
    dependencies=[policy.PLAYBOOKS_RUN],
    response_model=RunAnswer,
    responses=contract.errors(
        **{
            "409": "The run has already finished (code run_already_finished), or it runs inside the"
            " 'grace playbook execute' command that started it (code conflict)."
        }
    ),
)
async def cancel_run(run_id: str, principal: CurrentPrincipal, services: ServicesDep) -> dict[str, Any]:
    """Cancel a queued, running or waiting run: its pending approval is withdrawn from the inbox, the steps that
    completed roll back and ``always`` runs. A running run is stopped through its task; until its engine has
    cleaned up the answer may still say ``running`` (poll GET /api/playbooks/runs/{id})."""
    return {"run": (await services.scheduler.cancel_run(run_id, by=principal.name)).as_dict()}
