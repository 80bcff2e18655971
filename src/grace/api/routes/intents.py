"""Intents: submit one as a task, read, list and cancel; the learning loop's outcomes and summary."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from grace.api import contract, policy
from grace.api.deps import CurrentPrincipal, ServicesDep
from grace.api.idempotency import IdempotencyDep, Record
from grace.api.schemas.intents import IntentAnswer, IntentList, LearningSummary, OutcomeList, OutcomeOut

router = APIRouter(tags=["intents"])

MAX_SLA_MS = 30 * 24 * 3600 * 1000


class NewIntent(BaseModel):
    goal: Annotated[str, Field(min_length=1, max_length=2000, description="What the agent wants done.")]
    handler: Annotated[str, Field(min_length=1, max_length=60, description="The intent handler to run it.")]
    expected_outcome: Annotated[str | None, Field(max_length=500)] = None
    sla_ms: Annotated[int | None, Field(gt=0, le=MAX_SLA_MS, description="At most 30 days.")] = None
    priority: Annotated[str, Field(max_length=40)] = "normal"
    domain: Annotated[str | None, Field(max_length=40, description="One of the handler's domains.")] = None
    context: dict[str, Any] = Field(default_factory=dict, description="Carried into the task's payload.")
    confidence: Annotated[float | None, Field(ge=0, le=1, description="How sure the agent is it will succeed.")] = None
    intent_id: Annotated[str | None, Field(max_length=100, description="Your own id (else one is made).")] = None


@router.post(
    "/api/intents",
    status_code=201,
    dependencies=[policy.TASKS],
    response_model=IntentAnswer,
    response_model_exclude_unset=True,
    responses=contract.errors(**{"409": "The intent_id is already taken."}),
)
async def submit_intent(
    body: NewIntent, principal: CurrentPrincipal, services: ServicesDep, idem: IdempotencyDep
) -> Any:
    """Record an intent and submit it as a task (origin intent) for the named handler."""

    async def work(_: Record | None) -> dict[str, Any]:
        intent = await services.intents.submit(
            principal,
            goal=body.goal,
            handler=body.handler,
            expected_outcome=body.expected_outcome,
            sla_ms=body.sla_ms,
            priority=body.priority,
            domain=body.domain,
            context=body.context,
            confidence=body.confidence,
            intent_id=body.intent_id,
        )
        return {"intent": intent.as_dict()}

    # The key is held while the intent's two writes run: a process killed between them leaves it held,
    # and the sweep resubmits the pending intent, so a retry never makes a second one.
    return await idem.answer(work, IntentAnswer, status_code=201, exclude_unset=True)


@router.get("/api/intents", dependencies=[policy.TASKS], response_model=IntentList, response_model_exclude_unset=True)
async def list_intents(
    principal: CurrentPrincipal,
    services: ServicesDep,
    status: Annotated[str | None, Query(max_length=40, description="Only intents in this status.")] = None,
    domain: Annotated[str | None, Query(max_length=40, description="Only intents of this domain.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many, newest first.")] = 50,
) -> dict[str, Any]:
    """List intents newest first (context left out): members and agents see their own, operators and admins all."""
    intents = await services.intents.list_intents(principal=principal, status=status, domain=domain, limit=limit)
    return {"intents": [i.as_dict(include_context=False) for i in intents]}


@router.get(
    "/api/intents/{intent_id}",
    dependencies=[policy.TASKS],
    response_model=IntentAnswer,
    response_model_exclude_unset=True,
)
async def get_intent(intent_id: str, principal: CurrentPrincipal, services: ServicesDep) -> dict[str, Any]:
    """Show one intent, in step with its task: status, task id, result or reason, whether it was learned from."""
    intent = await services.intents.get(intent_id, principal=principal)
    return {"intent": intent.as_dict()}


@router.post(
    "/api/intents/{intent_id}/cancel",
    dependencies=[policy.TASKS],
    response_model=IntentAnswer,
    response_model_exclude_unset=True,
    responses=contract.errors(**{"409": "The intent has already finished."}),
)
async def cancel_intent(intent_id: str, principal: CurrentPrincipal, services: ServicesDep) -> dict[str, Any]:
    """Cancel an open intent and its task; 409 if it has finished."""
    intent = await services.intents.cancel(intent_id, principal=principal)
    return {"intent": intent.as_dict()}


class NewOutcome(BaseModel):
    action_type: Annotated[str, Field(min_length=1, max_length=100)]
    success: bool
    confidence_score: Annotated[float | None, Field(ge=0, le=1)] = None
    execution_time: Annotated[float, Field(ge=0, le=30 * 24 * 3600, description="Seconds.")]
    context: dict[str, Any] = Field(default_factory=dict)
    domain: Annotated[str | None, Field(max_length=40)] = None
    task_type: Annotated[str | None, Field(max_length=100)] = None
    sla_ms: Annotated[int | None, Field(gt=0, le=MAX_SLA_MS)] = None
    sla_met: bool | None = None


@router.post("/api/learning/outcomes", status_code=201, dependencies=[policy.SIGNED_IN], response_model=OutcomeOut)
async def record_outcome(body: NewOutcome, principal: CurrentPrincipal, services: ServicesDep) -> dict[str, Any]:
    """Record an outcome in the learning loop, as the caller's."""
    return await services.intents.record_outcome(
        principal,
        action_type=body.action_type,
        success=body.success,
        confidence_score=body.confidence_score,
        execution_time=body.execution_time,
        context=body.context,
        domain=body.domain,
        task_type=body.task_type,
        sla_ms=body.sla_ms,
        sla_met=body.sla_met,
    )


@router.get("/api/learning/outcomes", dependencies=[policy.SIGNED_IN], response_model=OutcomeList)
async def list_outcomes(
    principal: CurrentPrincipal,
    services: ServicesDep,
    action_type: Annotated[str | None, Query(max_length=100, description="Only this action type.")] = None,
    domain: Annotated[str | None, Query(max_length=40, description="Only this domain.")] = None,
    intent_id: Annotated[str | None, Query(max_length=100, description="Only this intent's.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many, newest first.")] = 50,
) -> dict[str, Any]:
    """List outcomes newest first: members and agents see their own, operators and admins all."""
    outcomes = await services.intents.list_outcomes(
        principal=principal, action_type=action_type, domain=domain, intent_id=intent_id, limit=limit
    )
    return {"outcomes": outcomes}


@router.get("/api/learning/summary", dependencies=[policy.SIGNED_IN], response_model=LearningSummary)
async def learning_summary(
    principal: CurrentPrincipal,
    services: ServicesDep,
    action_type: Annotated[str | None, Query(max_length=100, description="Only this action type.")] = None,
    domain: Annotated[str | None, Query(max_length=40, description="Only this domain.")] = None,
    window_days: Annotated[float | None, Query(gt=0, le=3650, description="Only the last this many days.")] = None,
) -> dict[str, Any]:
    """Success rate, execution-time percentiles, Brier score and calibration per action type and domain, and a
    suggested SLA per task type (observed p95) beside the configured one."""
    return await services.intents.summary(
        principal=principal, action_type=action_type, domain=domain, window_days=window_days
    )
