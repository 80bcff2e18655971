"""Task manager tables, and on PostgreSQL the claim function.

Revision ID: 0002_htm
Revises: 0001_platform
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_htm"
down_revision = "0001_platform"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

ORIGINS = (
    ("user_request", 0, 3000),
    ("intent", 1, 2500),
    ("hunter_alert", 2, 1500),
    ("external_api", 3, 1000),
    ("scheduler", 4, 1000),
    ("filesystem", 5, 500),
    ("remediation", 6, 300),
    ("internal", 7, 200),
)

# The claim, in one round trip and one short transaction: lock the dispatch
# counter, release due delayed/deferred tasks, read each origin's state, run the
# fair pick (the same integer arithmetic as grace/htm/fairness.py, which is the
# reference and is property-tested), then take each picked origin's next task by
# priority and age with FOR UPDATE SKIP LOCKED. Called outside an explicit
# transaction, so the counter's lock is held only while the function runs.
CLAIM_FUNCTION = """
CREATE OR REPLACE FUNCTION htm_claim(
    p_worker text,
    p_n integer,
    p_now timestamptz,
    p_lease_seconds double precision,
    p_capacity integer,
    p_fallback_capacity integer,
    p_live_after timestamptz
) RETURNS SETOF htm_tasks
LANGUAGE plpgsql AS $fn$
DECLARE
    v_seq bigint;
    v_cap integer;
    v_total integer;
    v_k integer;
    o_name text[];
    o_weight integer[];
    o_credit bigint[];
    o_since bigint[];
    o_running integer[];
    o_ready integer[];
    o_quota integer[];
    o_took integer[];
    v_picks integer[] := '{}';
    v_slots integer[];
    v_planned integer;
    v_cand boolean[];
    v_round integer;
    v_any_ready boolean;
    v_any_under boolean;
    v_best integer;
    v_sno bigint;
    j integer;
    i integer;
    rec htm_tasks%ROWTYPE;
BEGIN
    SELECT dispatched INTO v_seq FROM htm_scheduler WHERE id = 1 FOR UPDATE;
    IF v_seq IS NULL THEN
        RAISE EXCEPTION 'htm_scheduler row missing; start the task manager once to create it';
    END IF;

    UPDATE htm_tasks SET status = 'queued'
     WHERE status IN ('delayed', 'deferred') AND queued_at <= p_now;

    IF p_capacity > 0 THEN
        v_cap := p_capacity;
    ELSE
        SELECT coalesce(sum(concurrency), 0)::integer INTO v_cap
          FROM htm_workers WHERE heartbeat_at >= p_live_after AND NOT stopping;
        IF v_cap = 0 THEN
            v_cap := p_fallback_capacity;
        END IF;
    END IF;

    SELECT array_agg(o.origin ORDER BY o.position),
           array_agg(o.weight ORDER BY o.position),
           array_agg(o.credit ORDER BY o.position),
           array_agg(o.since ORDER BY o.position),
           array_agg(coalesce(r.n, 0)::integer ORDER BY o.position),
           array_agg(q.n::integer ORDER BY o.position),
           sum(o.weight)::integer
      INTO o_name, o_weight, o_credit, o_since, o_running, o_ready, v_total
      FROM htm_origins o
      LEFT JOIN (SELECT origin, count(*) AS n FROM htm_tasks WHERE status = 'running' GROUP BY origin) r
             ON r.origin = o.origin
      CROSS JOIN LATERAL (
            SELECT count(*) AS n FROM (
                SELECT 1 FROM htm_tasks t WHERE t.status = 'queued' AND t.origin = o.origin LIMIT p_n
            ) AS x
      ) AS q;

    v_k := coalesce(array_length(o_name, 1), 0);
    IF v_k = 0 THEN
        RETURN;
    END IF;
    o_quota := array_fill(0, ARRAY[v_k]);
    o_took := array_fill(0, ARRAY[v_k]);
    v_cand := array_fill(false, ARRAY[v_k]);
    FOR i IN 1..v_k LOOP
        o_quota[i] := greatest(1, (o_weight[i] * v_cap + v_total - 1) / v_total);
    END LOOP;

    FOR j IN 0..p_n - 1 LOOP
        v_sno := v_seq + j;
        v_round := 0;
        v_any_ready := false;
        v_any_under := false;
        FOR i IN 1..v_k LOOP
            IF o_ready[i] > 0 THEN
                v_any_ready := true;
                v_round := v_round + o_weight[i];
                IF o_running[i] < o_quota[i] THEN
                    v_any_under := true;
                END IF;
            END IF;
        END LOOP;
        EXIT WHEN NOT v_any_ready;

        FOR i IN 1..v_k LOOP
            v_cand[i] := o_ready[i] > 0 AND (NOT v_any_under OR o_running[i] < o_quota[i]);
            IF o_ready[i] > 0 THEN
                o_credit[i] := o_credit[i] + o_weight[i];
            END IF;
        END LOOP;

        v_best := 0;
        FOR i IN 1..v_k LOOP
            IF v_cand[i] AND v_sno - o_since[i] + 1 >= (v_total + o_weight[i] - 1) / o_weight[i] THEN
                IF v_best = 0 OR o_weight[i] < o_weight[v_best]
                   OR (o_weight[i] = o_weight[v_best] AND o_since[i] < o_since[v_best]) THEN
                    v_best := i;
                END IF;
            END IF;
        END LOOP;
        IF v_best = 0 THEN
            FOR i IN 1..v_k LOOP
                IF v_cand[i] AND (
                    v_best = 0
                    OR o_credit[i] > o_credit[v_best]
                    OR (o_credit[i] = o_credit[v_best] AND o_weight[i] > o_weight[v_best])
                ) THEN
                    v_best := i;
                END IF;
            END LOOP;
        END IF;

        o_credit[v_best] := o_credit[v_best] - v_round;
        o_ready[v_best] := o_ready[v_best] - 1;
        o_running[v_best] := o_running[v_best] + 1;
        FOR i IN 1..v_k LOOP
            IF o_ready[i] <= 0 AND i <> v_best THEN
                o_credit[i] := least(o_credit[i], 0);
            END IF;
            IF i = v_best OR o_ready[i] <= 0 THEN
                o_since[i] := v_sno + 1;
            END IF;
            o_credit[i] := greatest(-v_round, least(v_round, o_credit[i]));
        END LOOP;

        v_picks := array_append(v_picks, v_best);
    END LOOP;

    -- Take each picked origin's tasks in one statement, numbering them in pick order.
    v_planned := coalesce(array_length(v_picks, 1), 0);
    FOR i IN 1..v_k LOOP
        CONTINUE WHEN NOT (i = ANY (v_picks));
        v_slots := ARRAY(
            SELECT u.ord - 1 FROM unnest(v_picks) WITH ORDINALITY AS u(o, ord) WHERE u.o = i ORDER BY u.ord
        );
        FOR rec IN
            WITH picked AS (
                SELECT t.seq, t.priority_rank FROM htm_tasks t
                 WHERE t.status = 'queued' AND t.origin = o_name[i]
                 ORDER BY t.priority_rank, t.seq
                 LIMIT array_length(v_slots, 1)
                 FOR UPDATE SKIP LOCKED
            ), numbered AS (
                SELECT p.seq, row_number() OVER (ORDER BY p.priority_rank, p.seq) AS rn FROM picked p
            )
            UPDATE htm_tasks h
               SET status = 'running',
                   worker_id = p_worker,
                   attempts = h.attempts + 1,
                   started_at = p_now,
                   lease_expires_at = p_now + make_interval(secs => p_lease_seconds),
                   dispatch_seq = v_seq + v_slots[n.rn]
              FROM numbered n
             WHERE h.seq = n.seq
            RETURNING h.*
        LOOP
            o_took[i] := o_took[i] + 1;
            RETURN NEXT rec;
        END LOOP;
    END LOOP;

    UPDATE htm_origins o
       SET credit = v.credit, since = v.since, dispatched = o.dispatched + v.took
      FROM unnest(o_name, o_credit, o_since, o_took) AS v(origin, credit, since, took)
     WHERE o.origin = v.origin;
    -- Numbers of picks that found their task taken by a cancel at that instant are left unused.
    UPDATE htm_scheduler SET dispatched = v_seq + v_planned WHERE id = 1;
    RETURN;
END;
$fn$;
"""


def upgrade() -> None:
    op.create_table(
        "htm_tasks",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(40), nullable=False),
        sa.Column("task_type", sa.String(100), nullable=False),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("priority_rank", sa.SmallInteger(), nullable=False),
        sa.Column("origin", sa.String(32), nullable=False),
        sa.Column("origin_rule", sa.String(64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("data_size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(40), nullable=True),
        sa.Column("created_by_name", sa.String(140), nullable=False),
        sa.Column("intent_id", sa.String(100), nullable=True),
        sa.Column("sla_ms", sa.BigInteger(), nullable=True),
        sa.Column("deadline", TS, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("route", sa.String(16), nullable=False),
        sa.Column("route_reason", sa.String(400), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("timeout_seconds", sa.Float(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("admitted_at", TS, nullable=False),
        sa.Column("queued_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("lease_expires_at", TS, nullable=True),
        sa.Column("worker_id", sa.String(120), nullable=True),
        sa.Column("dispatch_seq", sa.BigInteger(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.UniqueConstraint("task_id", name="uq_htm_tasks_task_id"),
    )
    queued = sa.text("status = 'queued'")
    waiting = sa.text("status IN ('delayed', 'deferred')")
    running = sa.text("status = 'running'")
    op.create_index(
        "ix_htm_tasks_claim",
        "htm_tasks",
        ["origin", "priority_rank", "seq"],
        postgresql_where=queued,
        sqlite_where=queued,
    )
    op.create_index("ix_htm_tasks_waiting", "htm_tasks", ["queued_at"], postgresql_where=waiting, sqlite_where=waiting)
    op.create_index(
        "ix_htm_tasks_running",
        "htm_tasks",
        ["origin", "lease_expires_at"],
        postgresql_where=running,
        sqlite_where=running,
    )
    op.create_index("ix_htm_tasks_admitted", "htm_tasks", ["origin", "admitted_at"])
    op.create_index("ix_htm_tasks_created_by", "htm_tasks", ["created_by", "seq"])
    op.create_index("ix_htm_tasks_intent_id", "htm_tasks", ["intent_id"])
    op.create_index("ix_htm_tasks_finished_at", "htm_tasks", ["finished_at"])

    origins = op.create_table(
        "htm_origins",
        sa.Column("origin", sa.String(32), primary_key=True),
        sa.Column("position", sa.SmallInteger(), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("credit", sa.BigInteger(), nullable=False),
        sa.Column("since", sa.BigInteger(), nullable=False),
        sa.Column("dispatched", sa.BigInteger(), nullable=False),
    )
    scheduler = op.create_table(
        "htm_scheduler",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("dispatched", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "htm_workers",
        sa.Column("worker_id", sa.String(120), primary_key=True),
        sa.Column("host", sa.String(100), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("task_types", sa.JSON(), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("heartbeat_at", TS, nullable=False),
        sa.Column("stopping", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "htm_late_completions",
        sa.Column("id", SEQ, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(40), nullable=False),
        sa.Column("worker_id", sa.String(120), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("at", TS, nullable=False),
    )
    op.create_index("ix_htm_late_completions_task_id", "htm_late_completions", ["task_id"])
    op.bulk_insert(
        origins,
        [{"origin": o, "position": p, "weight": w, "credit": 0, "since": 0, "dispatched": 0} for o, p, w in ORIGINS],
    )
    op.bulk_insert(scheduler, [{"id": 1, "dispatched": 0}])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CLAIM_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION IF EXISTS "
            "htm_claim(text, integer, timestamptz, double precision, integer, integer, timestamptz)"
        )
    for table in ("htm_late_completions", "htm_workers", "htm_scheduler", "htm_origins", "htm_tasks"):
        op.drop_table(table)
