"""On PostgreSQL, record a worker's outcomes and claim its next tasks in one call.

Revision ID: 0005_htm_finish_claim
Revises: 0004_htm_sla
"""

from __future__ import annotations

from alembic import op

revision = "0005_htm_finish_claim"
down_revision = "0004_htm_sla"
branch_labels = None
depends_on = None

# A worker whose tasks finished has free slots: it records the outcomes and claims into those
# slots in one round trip. The dispatch counter's lock is taken first, then the finished tasks'
# rows in seq order, then htm_claim runs as usual (re-taking the counter lock it already holds).
# Taking the counter first means no transaction ever holds task rows while waiting for it, so
# there is no lock cycle with heartbeats, reaping or SLA escalation (which lock task rows in seq
# order and never take the counter). Outcome rows come back with their recorded status, claimed
# rows as 'running' (no outcome is ever recorded as 'running'), so the caller can tell them apart.
FINISH_CLAIM_FUNCTION = """
CREATE OR REPLACE FUNCTION htm_finish_claim(
    p_worker text,
    p_task_ids text[],
    p_attempts integer[],
    p_statuses text[],
    p_finished timestamptz[],
    p_queued timestamptz[],
    p_results text[],
    p_errors text[],
    p_give_back integer[],
    p_n integer,
    p_now timestamptz,
    p_lease_seconds double precision,
    p_capacity integer,
    p_fallback_capacity integer,
    p_live_after timestamptz
) RETURNS SETOF htm_tasks
LANGUAGE plpgsql AS $fn$
BEGIN
    IF p_n > 0 THEN
        PERFORM 1 FROM htm_scheduler WHERE id = 1 FOR UPDATE;
    END IF;
    PERFORM 1 FROM htm_tasks WHERE task_id = ANY (p_task_ids) ORDER BY seq FOR UPDATE;
    RETURN QUERY
    UPDATE htm_tasks AS t
       SET status = v.status,
           finished_at = v.finished_at,
           queued_at = coalesce(v.queued_at, t.queued_at),
           result = CAST(v.result AS json),
           error = v.error,
           lease_expires_at = NULL,
           worker_id = CASE WHEN v.status IN ('delayed', 'queued') THEN NULL ELSE t.worker_id END,
           attempts = t.attempts - v.give_back
      FROM unnest(p_task_ids, p_attempts, p_statuses, p_finished, p_queued, p_results, p_errors, p_give_back)
           AS v(task_id, attempt, status, finished_at, queued_at, result, error, give_back)
     WHERE t.task_id = v.task_id AND t.status = 'running' AND t.worker_id = p_worker AND t.attempts = v.attempt
    RETURNING t.*;
    IF p_n > 0 THEN
        RETURN QUERY
        SELECT * FROM htm_claim(p_worker, p_n, p_now, p_lease_seconds, p_capacity, p_fallback_capacity, p_live_after);
    END IF;
END;
$fn$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FINISH_CLAIM_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION IF EXISTS htm_finish_claim(text, text[], integer[], text[], timestamptz[], timestamptz[], "
            "text[], text[], integer[], integer, timestamptz, double precision, integer, integer, timestamptz)"
        )
