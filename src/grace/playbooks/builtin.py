"""The actions Grace ships: each calls one capability's public API.

``needs`` names the issue an action waits for when the capability it calls has not landed; such an
action is declared (so playbooks lint) and fails its step with that reason when run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from grace import errors
from grace.playbooks.actions import Action, ActionContext, ActionFailed, ActionRegistry, Param

__all__ = ["ALERT_TOPIC", "default_registry"]

log = logging.getLogger("grace.playbooks")

ALERT_TOPIC = "playbooks.alert"
PUBLISH_PREFIX = "playbooks."


# -- task manager ---------------------------------------------------------------------------


async def htm_stats(ctx: ActionContext, args: dict[str, Any]) -> dict[str, Any]:
    htm = ctx.need("htm")
    sla = await htm.sla_stats()
    routing = await htm.routing_stats()
    origins = routing["origins"]
    rate = sla.get("sla_compliance_rate")
    return {
        "sla_compliance": 1.0 if rate is None else float(rate),
        "sla_finished": int(sla.get("finished_with_sla") or 0),
        "slow_tasks": int(sla.get("active_violations") or 0),
        "throughput_mb_s": float(sum(o["throughput_mb_s"] for o in origins.values())),
        "completed_last_minute": int(sum(o["completed_last_minute"] for o in origins.values())),
        "starved_origins": [name for name, o in origins.items() if o["starved"]],
        "queue_depth": int(sum(o["total_queued"] for o in origins.values())),
        "workers": int(routing.get("workers") or 0),
    }


async def htm_create_task(ctx: ActionContext, args: dict[str, Any]) -> dict[str, Any]:
    htm = ctx.need("htm")
    decision = await htm.route_task(
        args["task_type"],
        payload={**(args.get("payload") or {}), "playbook": ctx.playbook, "run_id": ctx.run_id},
        origin=args.get("origin") or "scheduler",
        priority=args.get("priority") or "normal",
    )
    return {"task_id": str(decision["task_id"]), "decision": str(decision.get("decision", ""))}


async def htm_cancel_task(ctx: ActionContext, args: dict[str, Any]) -> dict[str, Any]:
    htm = ctx.need("htm")
    try:
        task = await htm.cancel(args["task_id"], principal=None)
        status = task.status.value
    except errors.TaskAlreadyFinished:
        status = "finished"
    return {"status": status}


async def htm_reap(ctx: ActionContext, args: dict[str, Any]) -> dict[str, Any]:
    finished = await ctx.need("htm").reap()
    return {"returned": len(finished)}


async def htm_rebalance(ctx: ActionContext, args: dict[str, Any]) -> dict[str, Any]:
    """Serve starved origins first and reset fair-share credits (``HTM.rebalance``)."""
    result = await ctx.need("htm").rebalance()
    return {
        "changed": bool(result["changed"]),
        "starved": list(result["starved"]),
        "served_first": list(result["served_first"]),
    }


# -- operator, bus, audit ----------------------------------------------------------------------


async def operator_alert(ctx: ActionContext, args: dict[str, Any]) -> dict[str, Any]:
    payload = {
        "severity": args.get("severity") or "warning",
        "message": args["message"],
        "details": args.get("details") or {},
        "playbook": ctx.playbook,
        "run_id": ctx.run_id,
        "step": ctx.step_id,
    }
    event = await ctx.need("bus").publish(ALERT_TOPIC, payload)
    log.warning(
        "playbooks.operator_alert",
        extra={
            "playbook": ctx.playbook,
            "run_id": ctx.run_id,
            "severity": payload["severity"],
            "alert": args["message"],
        },
    )
    return {"event_id": int(event.id)}


async def bus_publish(ctx: ActionContext, args: dict[str, Any]) -> dict[str, Any]:
    topic = args["topic"]
    if not topic.startswith(PUBLISH_PREFIX):
        raise ActionFailed(f"a playbook publishes only under {PUBLISH_PREFIX}*: a capability's own topics are its own")
    event = await ctx.need("bus").publish(topic, {**(args.get("payload") or {}), "run_id": ctx.run_id})
    return {"event_id": int(event.id)}


async def audit_record(ctx: ActionContext, args: dict[str, Any]) -> dict[str, Any]:
    vault = ctx.need("vault")
    entry = await vault.audit.record(
        f"playbook.{args['event']}",
        actor=f"playbook:{ctx.playbook}",
        outcome=args.get("outcome") or "ok",
        details={**(args.get("details") or {}), "run_id": ctx.run_id},
    )
    return {"seq": int(entry.seq)}


# -- vault keys --------------------------------------------------------------------------------


async def vault_keys_status(ctx: ActionContext, args: dict[str, Any]) -> dict[str, Any]:
    status = await ctx.need("vault").keys_status()
    now = ctx.capabilities.clock.now()
    expires = status["expires_at"]
    days = (datetime.fromisoformat(expires) - now).total_seconds() / 86400 if expires else 0.0
    active = status["active_key"] or {}
    due = datetime.fromisoformat(status["next_scheduled_rotation"]) <= now
    return {
        "active_key_id": str(active.get("id") or ""),
        "active_term": int(active.get("term") or 0),
        "expires_in_days": round(days, 3),
        "expiring_soon": bool(status["expiring_soon"]),
        "expired": bool(status["expired"]),
        "rotation_due": bool(due or status["expiring_soon"] or status["rotation_in_progress"]),
        "rotation_in_progress": status["rotation_in_progress"] is not None,
        "archived_keys": sum(1 for k in status["keys"] if k["status"] == "archived"),
    }


async def vault_warn_expiry(ctx: ActionContext, args: dict[str, Any]) -> dict[str, Any]:
    return {"warned": bool(await ctx.need("vault").check_key_expiry())}


async def vault_rotate_keys(ctx: ActionContext, args: dict[str, Any]) -> dict[str, Any]:
    report = await ctx.need("vault").rotate_keys(by=f"playbook:{ctx.playbook}")
    return {
        "rotation_id": report.rotation_id,
        "from_key_id": str(report.from_key_id or ""),
        "to_key_id": report.to_key_id,
        "rewrapped": int(report.rewrapped),
        "archived": list(report.archived),
    }


async def vault_verify_keys(ctx: ActionContext, args: dict[str, Any]) -> dict[str, Any]:
    """Check every component reads the new key: one active key, no data key left under another, audit intact."""
    vault = ctx.need("vault")
    status = await vault.keys_status()
    problems: list[str] = []
    active = status["active_key"] or {}
    if status["active_keys"] != 1:
        problems.append(f"{status['active_keys']} active keys")
    if args.get("expect_key_id") and active.get("id") != args["expect_key_id"]:
        problems.append("the active key is not the one just generated")
    if status["rotation_in_progress"]:
        problems.append("a rotation is unfinished")
    stranded = sum(k["data_keys"] for k in status["keys"] if k["status"] != "active")
    if stranded:
        problems.append(f"{stranded} data keys still wrapped under an old key")
    report = await vault.verify_audit()
    if not report.ok:
        problems.append("the audit chain does not verify")
    return {"ok": not problems, "problems": problems}


async def vault_archived_keys(ctx: ActionContext, args: dict[str, Any]) -> dict[str, Any]:
    status = await ctx.need("vault").keys_status()
    archived = [k["id"] for k in status["keys"] if k["status"] == "archived"]
    return {"archived": len(archived), "kept": True}


async def vault_secrets_due(ctx: ActionContext, args: dict[str, Any]) -> dict[str, Any]:
    return {"published": int(await ctx.need("vault").publish_rotation_due())}


async def vault_expire_consents(ctx: ActionContext, args: dict[str, Any]) -> dict[str, Any]:
    return {"expired": int(await ctx.need("vault").expire_pending())}


async def vault_consent(ctx: ActionContext, args: dict[str, Any]) -> dict[str, Any]:
    vault = ctx.need("vault")
    record = await vault.get_consent(args["consent_id"])
    return {
        "status": record.status,
        "risk_level": record.risk_level,
        "secret_type": record.secret_type,
        "governance_decision": str(record.governance_decision or ""),
        "anomalies": list(record.anomalies),
        "second_approval_required": bool(record.second_approval_required),
    }


async def vault_verify_audit(ctx: ActionContext, args: dict[str, Any]) -> dict[str, Any]:
    report = await ctx.need("vault").verify_audit()
    return {"ok": report.ok, "entries": int(report.entries)}


async def secret_check(ctx: ActionContext, args: dict[str, Any]) -> dict[str, Any]:
    """Confirm a secret resolves (its value is given to the action and never returned)."""
    value = args["secret"]
    return {"resolved": bool(value)}


# -- voice and learning ----------------------------------------------------------------------------


async def voice_reprocess(ctx: ActionContext, args: dict[str, Any]) -> dict[str, Any]:
    voice = ctx.need("voice")
    if ctx.principal is None:
        raise ActionFailed("reprocessing a note needs the person the run is for")
    result: Mapping[str, Any] = await voice.reprocess(ctx.principal, args["note_id"])
    return {"status": str(result.get("status", ""))}


async def voice_note(ctx: ActionContext, args: dict[str, Any]) -> dict[str, Any]:
    voice = ctx.need("voice")
    if ctx.principal is None:
        raise ActionFailed("reading a note needs the person the run is for")
    note: Mapping[str, Any] = await voice.status(ctx.principal, args["note_id"])
    consents = note.get("consents") or {}
    return {
        "status": str(note.get("status", "")),
        "stage": str(note.get("stage") or ""),
        "failed_stage": str(note.get("failed_stage") or ""),
        "consent_learning": bool(consents.get("learning", False)),
    }


async def learning_record(ctx: ActionContext, args: dict[str, Any]) -> dict[str, Any]:
    """Record an outcome in the learning loop (``LearningLoop.record_outcome``), owned by the run's person."""
    learning = ctx.need("learning")
    execution_time = args.get("execution_time")
    if execution_time is None:
        started = ctx.run_started_at or ctx.capabilities.clock.now()
        execution_time = max(0.0, (ctx.capabilities.clock.now() - started).total_seconds())
    context = {**(args.get("details") or {}), "playbook": ctx.playbook, "run_id": ctx.run_id}
    try:
        outcome: Mapping[str, Any] = await learning.record_outcome(
            action_type=args["kind"],
            success=bool(args.get("success", True)),
            execution_time=float(execution_time),
            context=context,
            owner_id=ctx.principal.user_id if ctx.principal is not None else None,
            recorded_by=f"playbook:{ctx.playbook}",
            domain=args.get("domain") or None,
        )
    except errors.InvalidInput as exc:
        raise ActionFailed(f"the learning loop refused the outcome: {exc}") from None
    return {"recorded": True, "id": str(outcome["outcome_id"])}


def default_registry() -> ActionRegistry:
    """Return the registry of Grace's own actions."""
    s, i, d, b, m, lst = "string", "int", "double", "bool", "map", "list"
    return ActionRegistry(
        [
            Action(
                "htm.stats",
                "read the task manager's SLA and routing figures",
                htm_stats,
                outputs={
                    "sla_compliance": d,
                    "sla_finished": i,
                    "slow_tasks": i,
                    "throughput_mb_s": d,
                    "completed_last_minute": i,
                    "starved_origins": lst,
                    "queue_depth": i,
                    "workers": i,
                },
                side_effects=False,
            ),
            Action(
                "htm.create_task",
                "submit a task to the task manager",
                htm_create_task,
                params={
                    "task_type": Param(s, required=True),
                    "payload": Param(m),
                    "origin": Param(s),
                    "priority": Param(s),
                },
                outputs={"task_id": s, "decision": s},
            ),
            Action(
                "htm.cancel_task",
                "cancel a task",
                htm_cancel_task,
                params={"task_id": Param(s, required=True)},
                outputs={"status": s},
            ),
            Action("htm.reap", "return dead workers' tasks to the queue", htm_reap, outputs={"returned": i}),
            Action(
                "htm.rebalance",
                "serve starved origins first at the next free slots and reset fair-share credits",
                htm_rebalance,
                outputs={"changed": b, "starved": lst, "served_first": lst},
            ),
            Action(
                "operator.alert",
                "alert the operator: a bus event (playbooks.alert) and a log line",
                operator_alert,
                params={"message": Param(s, required=True), "severity": Param(s), "details": Param(m)},
                outputs={"event_id": i},
            ),
            Action(
                "bus.publish",
                "publish an event under playbooks.*",
                bus_publish,
                params={"topic": Param(s, required=True), "payload": Param(m)},
                outputs={"event_id": i},
            ),
            Action(
                "audit.record",
                "append an entry to the vault's audit log (event playbook.<event>)",
                audit_record,
                params={"event": Param(s, required=True), "outcome": Param(s), "details": Param(m)},
                outputs={"seq": i},
            ),
            Action(
                "vault.keys_status",
                "read the vault's keyring: expiry, due rotation, archived keys",
                vault_keys_status,
                outputs={
                    "active_key_id": s,
                    "active_term": i,
                    "expires_in_days": d,
                    "expiring_soon": b,
                    "expired": b,
                    "rotation_due": b,
                    "rotation_in_progress": b,
                    "archived_keys": i,
                },
                side_effects=False,
            ),
            Action(
                "vault.warn_expiry",
                "publish secrets.key.expiring when within 7 days",
                vault_warn_expiry,
                outputs={"warned": b},
            ),
            Action(
                "vault.rotate_keys",
                "generate and persist a new key, re-wrap every data key, archive the old key",
                vault_rotate_keys,
                outputs={"rotation_id": s, "from_key_id": s, "to_key_id": s, "rewrapped": i, "archived": lst},
            ),
            Action(
                "vault.verify_keys",
                "verify every data key is under the active key and the audit chain holds",
                vault_verify_keys,
                params={"expect_key_id": Param(s)},
                outputs={"ok": b, "problems": lst},
                side_effects=False,
            ),
            Action(
                "vault.archived_keys",
                "count the archived keys (kept, never deleted)",
                vault_archived_keys,
                outputs={"archived": i, "kept": b},
                side_effects=False,
            ),
            Action(
                "vault.secrets_due",
                "publish secrets.rotation.due for each secret that has become due",
                vault_secrets_due,
                outputs={"published": i},
            ),
            Action(
                "vault.expire_consents",
                "expire unanswered consent requests",
                vault_expire_consents,
                outputs={"expired": i},
            ),
            Action(
                "vault.consent",
                "read a consent request: status, risk, governance, anomalies",
                vault_consent,
                params={"consent_id": Param(s, required=True)},
                outputs={
                    "status": s,
                    "risk_level": s,
                    "secret_type": s,
                    "governance_decision": s,
                    "anomalies": lst,
                    "second_approval_required": b,
                },
                side_effects=False,
            ),
            Action(
                "vault.verify_audit",
                "verify the audit chain",
                vault_verify_audit,
                outputs={"ok": b, "entries": i},
                side_effects=False,
            ),
            Action(
                "secret.check",
                "resolve a secret through the vault (with consent) and confirm it is there",
                secret_check,
                params={"secret": Param("secret", required=True)},
                outputs={"resolved": b},
            ),
            Action(
                "voice.note",
                "read a voice note's status and consents",
                voice_note,
                params={"note_id": Param(s, required=True)},
                outputs={"status": s, "stage": s, "failed_stage": s, "consent_learning": b},
                side_effects=False,
            ),
            Action(
                "voice.reprocess",
                "resume a failed voice note from the stage that failed",
                voice_reprocess,
                params={"note_id": Param(s, required=True)},
                outputs={"status": s},
            ),
            Action(
                "learning.record",
                "feed an outcome to the learning loop",
                learning_record,
                params={
                    "kind": Param(s, required=True, description="the outcome's action type"),
                    "success": Param(b, default=True),
                    "execution_time": Param(d, description="seconds; default: since the run started"),
                    "domain": Param(s),
                    "details": Param(m),
                },
                outputs={"recorded": b, "id": s},
            ),
        ]
    )
