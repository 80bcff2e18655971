"""Playbooks: the catalogue, a run (queued as a task-manager task, or a dry run answered whole), a run's record."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from grace.api import contract, policy
from grace.api.deps import CurrentPrincipal, ServicesDep
from grace.api.schemas.playbooks import PlaybookList, RunAnswer

router = APIRouter(prefix="/api/playbooks", tags=["playbooks"])


class RunRequest(BaseModel):
    inputs: dict[str, Annotated[str | int | float | bool | list[Any] | dict[str, Any] | None, Field()]] = Field(
        default_factory=dict, description="Input values by name, typed as the playbook declares them."
    )
    dry_run: bool = Field(False, description="Call no action with side effects; answer the whole run at once.")


@router.get("", dependencies=[policy.PLAYBOOKS], response_model=PlaybookList)
async def list_playbooks(services: ServicesDep) -> dict[str, Any]:
    """Every playbook in GRACE_PLAYBOOKS_DIR, checked: triggers, policy, inputs and steps, or its lint problems."""
    out = []
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
                schedules=[{"cron": s.cron, "timezone": s.timezone} for s in pb.schedules],
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


@router.get("/runs/{run_id}", dependencies=[policy.PLAYBOOKS], response_model=RunAnswer)
async def get_run(run_id: str, services: ServicesDep) -> dict[str, Any]:
    """One run or skipped firing: trigger, who, inputs (secrets redacted), each step's attempts, outcome, durations."""
    return {"run": (await services.playbooks.run_record(run_id)).as_dict()}
