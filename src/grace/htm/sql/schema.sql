-- The task manager's hot-path schema as it stands: what `upgrade head` leaves in the database for
-- the claims (the partial indexes both backends' claims read, and PostgreSQL's claim functions).
--
-- This is the current copy. Each migration that created or changed one of these keeps a frozen copy
-- of its own version (a migration never changes once released, so it never reads this file). To
-- change a definition, edit it here and copy it into a new migration;
-- tests/integration/test_htm_sql.py fails until what the migrations leave matches this file.
--
-- Blocks are named `-- name: <name>`; the comment lines right after a name describe the block.
-- Loaded by grace.htm.sql.

-- name: ix_htm_tasks_claim
-- Queued tasks by origin, then priority, then deadline (tasks with one first, earliest first), then
-- age: every claim's probes and take (both backends; migration 0016_htm_deadline_order).
-- `deadline IS NULL` is a key of its own because SQLite sorts NULL first and cannot index NULLS LAST.
CREATE INDEX ix_htm_tasks_claim ON htm_tasks (origin, priority_rank, (deadline IS NULL), deadline, seq) WHERE status = 'queued';

-- name: ix_htm_tasks_waiting
-- Delayed and deferred tasks by the time they are due: the claims' release of due waiting tasks.
CREATE INDEX ix_htm_tasks_waiting ON htm_tasks (queued_at) WHERE status IN ('delayed', 'deferred');

-- name: ix_htm_tasks_running
-- Running tasks by origin and lease: the claims' running counts, heartbeats and the reap.
CREATE INDEX ix_htm_tasks_running ON htm_tasks (origin, lease_expires_at) WHERE status = 'running';

-- name: htm_claim
-- PostgreSQL: the claim in one round trip (migrations 0007_htm_single_claim and, for the order
-- within an origin, 0016_htm_deadline_order). Locks the dispatch
-- counter, releases due waiting tasks, reads every origin's state, runs the fair pick
-- (grace/htm/fairness.py is the reference; a test checks both paths against it) and takes the
-- picked tasks with FOR UPDATE SKIP LOCKED while saving the origins' state and the counter.
-- A claim of one task (p_n = 1) does the pick inside the statement that takes the task.
-- The fast path's ready test is a scalar subquery with LIMIT 1 rather than EXISTS: without
-- statistics the planner turns a correlated EXISTS into one scan of every queued task.
CREATE OR REPLACE FUNCTION htm_claim(
    p_worker text,
    p_n integer,
    p_now timestamptz,
    p_lease_seconds double precision,
    p_capacity integer,
    p_fallback_capacity integer,
    p_live_after timestamptz,
    p_async_commit boolean DEFAULT false
) RETURNS SETOF htm_tasks
LANGUAGE plpgsql
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $fn$
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
    o_bound integer[];
    o_planned integer[];
    v_pick_origin text[] := '{}';
    v_pick_rank integer[] := '{}';
    v_planned integer := 0;
    v_round integer;
    v_any_ready boolean;
    v_any_under boolean;
    v_best integer;
    v_due integer;
    v_sno bigint;
    j integer;
    i integer;
BEGIN
    IF p_async_commit THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    SELECT dispatched INTO v_seq FROM htm_scheduler WHERE id = 1 FOR UPDATE;
    IF v_seq IS NULL THEN
        RAISE EXCEPTION 'htm_scheduler row missing; start the task manager once to create it';
    END IF;

    -- Waiting tasks that are due join the queue; one locked elsewhere joins at a later claim (a
    -- claim never waits for a task row, so it can hold the counter while others hold task rows).
    IF EXISTS (SELECT 1 FROM htm_tasks WHERE status IN ('delayed', 'deferred') AND queued_at <= p_now) THEN
        UPDATE htm_tasks SET status = 'queued'
         WHERE seq IN (
             SELECT w.seq FROM htm_tasks w
              WHERE w.status IN ('delayed', 'deferred') AND w.queued_at <= p_now
              ORDER BY w.seq
                FOR UPDATE SKIP LOCKED
         );
    END IF;

    IF p_n = 1 THEN
        RETURN QUERY
        WITH st AS (
            SELECT o.origin, o.position, o.weight, o.credit, o.since,
                   (SELECT count(*) FROM htm_tasks r WHERE r.status = 'running' AND r.origin = o.origin)::integer
                       AS running,
                   coalesce((
                       SELECT true FROM htm_tasks t WHERE t.status = 'queued' AND t.origin = o.origin LIMIT 1
                   ), false) AS ready
              FROM htm_origins o
        ), tot AS (
            SELECT sum(st.weight)::integer AS total,
                   coalesce(sum(st.weight) FILTER (WHERE st.ready), 0)::integer AS round,
                   CASE WHEN p_capacity > 0 THEN p_capacity ELSE coalesce(nullif((
                       SELECT coalesce(sum(w.concurrency), 0)::integer FROM htm_workers w
                        WHERE w.heartbeat_at >= p_live_after AND NOT w.stopping
                   ), 0), p_fallback_capacity) END AS cap
              FROM st
        ), sized AS (
            SELECT st.*, tot.round,
                   st.credit + CASE WHEN st.ready THEN st.weight ELSE 0 END AS earned,
                   st.running < greatest(1, (st.weight * tot.cap + tot.total - 1) / tot.total) AS under,
                   v_seq - st.since + 1 >= (tot.total + st.weight - 1) / st.weight AS due
              FROM st, tot
        ), chosen AS (
            SELECT s.origin FROM sized s
             WHERE s.ready AND (s.under OR NOT EXISTS (SELECT 1 FROM sized u WHERE u.ready AND u.under))
             ORDER BY s.due DESC,
                      CASE WHEN s.due THEN s.weight END, CASE WHEN s.due THEN s.since END,
                      CASE WHEN s.due THEN s.position END,
                      s.earned DESC, s.weight DESC, s.position
             LIMIT 1
        ), taken AS (
            UPDATE htm_tasks h
               SET status = 'running',
                   worker_id = p_worker,
                   attempts = h.attempts + 1,
                   started_at = p_now,
                   lease_expires_at = p_now + make_interval(secs => p_lease_seconds),
                   dispatch_seq = v_seq
             WHERE h.seq = (
                 SELECT t.seq FROM htm_tasks t
                  WHERE t.status = 'queued' AND t.origin = (SELECT c.origin FROM chosen c)
                  ORDER BY t.priority_rank, (t.deadline IS NULL), t.deadline, t.seq
                  LIMIT 1
                  FOR UPDATE SKIP LOCKED
             )
            RETURNING h.*
        ), origins_saved AS (
            UPDATE htm_origins o
               SET credit = greatest(-s.round, least(s.round, CASE
                       WHEN s.origin = c.origin THEN s.earned - s.round
                       WHEN NOT s.ready THEN least(s.earned, 0)
                       ELSE s.earned END)),
                   since = CASE WHEN s.origin = c.origin OR NOT s.ready THEN v_seq + 1 ELSE s.since END,
                   dispatched = o.dispatched + (SELECT count(*) FROM taken x WHERE x.origin = o.origin)
              FROM sized s, chosen c
             WHERE o.origin = s.origin
        ), counter_saved AS (
            UPDATE htm_scheduler SET dispatched = v_seq + 1 WHERE id = 1 AND EXISTS (SELECT 1 FROM chosen)
        )
        SELECT * FROM taken;
        RETURN;
    END IF;

    SELECT array_agg(o.origin ORDER BY o.position),
           array_agg(o.weight ORDER BY o.position),
           array_agg(o.credit ORDER BY o.position),
           array_agg(o.since ORDER BY o.position),
           array_agg(r.n::integer ORDER BY o.position),
           array_agg(q.n::integer ORDER BY o.position),
           sum(o.weight)::integer,
           CASE WHEN p_capacity > 0 THEN p_capacity ELSE (
               SELECT coalesce(sum(w.concurrency), 0)::integer FROM htm_workers w
                WHERE w.heartbeat_at >= p_live_after AND NOT w.stopping
           ) END
      INTO o_name, o_weight, o_credit, o_since, o_running, o_ready, v_total, v_cap
      FROM htm_origins o
      CROSS JOIN LATERAL (
            SELECT count(*) AS n FROM htm_tasks r WHERE r.status = 'running' AND r.origin = o.origin
      ) AS r
      CROSS JOIN LATERAL (
            SELECT count(*) AS n FROM (
                SELECT 1 FROM htm_tasks t WHERE t.status = 'queued' AND t.origin = o.origin LIMIT p_n
            ) AS x
      ) AS q;

    v_k := coalesce(array_length(o_name, 1), 0);
    IF v_k = 0 THEN
        RETURN;
    END IF;
    IF v_cap = 0 THEN
        v_cap := p_fallback_capacity;
    END IF;
    o_quota := array_fill(0, ARRAY[v_k]);
    o_bound := array_fill(0, ARRAY[v_k]);
    o_planned := array_fill(0, ARRAY[v_k]);
    FOR i IN 1..v_k LOOP
        o_quota[i] := greatest(1, (o_weight[i] * v_cap + v_total - 1) / v_total);
        o_bound[i] := (v_total + o_weight[i] - 1) / o_weight[i];
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

        -- One pass: every origin with work earns its weight; among the candidates (under quota,
        -- or all when none is) the most overdue past its wait bound wins, else the most credit.
        v_best := 0;
        v_due := 0;
        FOR i IN 1..v_k LOOP
            CONTINUE WHEN o_ready[i] <= 0;
            o_credit[i] := o_credit[i] + o_weight[i];
            CONTINUE WHEN v_any_under AND o_running[i] >= o_quota[i];
            IF v_sno - o_since[i] + 1 >= o_bound[i] AND (
                v_due = 0 OR o_weight[i] < o_weight[v_due]
                OR (o_weight[i] = o_weight[v_due] AND o_since[i] < o_since[v_due])
            ) THEN
                v_due := i;
            END IF;
            IF v_best = 0 OR o_credit[i] > o_credit[v_best]
               OR (o_credit[i] = o_credit[v_best] AND o_weight[i] > o_weight[v_best]) THEN
                v_best := i;
            END IF;
        END LOOP;
        IF v_due > 0 THEN
            v_best := v_due;
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

        o_planned[v_best] := o_planned[v_best] + 1;
        v_pick_origin := v_pick_origin || o_name[v_best];
        v_pick_rank := v_pick_rank || o_planned[v_best];
        v_planned := v_planned + 1;
    END LOOP;

    IF v_planned = 0 THEN
        RETURN;  -- nothing to take: the state is unchanged
    END IF;

    -- Take every picked origin's next tasks by priority, deadline (earliest first, none last) and
    -- age, and save the origins' state and the counter, in one statement. Numbers of picks whose
    -- task a cancel took at that instant are left unused.
    RETURN QUERY
    WITH wanted AS (
        SELECT w.origin, count(*)::integer AS k FROM unnest(v_pick_origin) AS w(origin) GROUP BY w.origin
    ), picked AS (
        SELECT p.seq, w.origin,
               row_number() OVER (
                   PARTITION BY w.origin ORDER BY p.priority_rank, (p.deadline IS NULL), p.deadline, p.seq
               ) AS rn
          FROM wanted w
          CROSS JOIN LATERAL (
              SELECT t.seq, t.priority_rank, t.deadline FROM htm_tasks t
               WHERE t.status = 'queued' AND t.origin = w.origin
               ORDER BY t.priority_rank, (t.deadline IS NULL), t.deadline, t.seq
               LIMIT w.k
               FOR UPDATE SKIP LOCKED
          ) AS p
    ), slots AS (
        SELECT s.origin, s.rn, s.ord - 1 AS slot
          FROM unnest(v_pick_origin, v_pick_rank) WITH ORDINALITY AS s(origin, rn, ord)
    ), taken AS (
        UPDATE htm_tasks h
           SET status = 'running',
               worker_id = p_worker,
               attempts = h.attempts + 1,
               started_at = p_now,
               lease_expires_at = p_now + make_interval(secs => p_lease_seconds),
               dispatch_seq = v_seq + s.slot
          FROM picked p
          JOIN slots s ON s.origin = p.origin AND s.rn = p.rn
         WHERE h.seq = p.seq
        RETURNING h.*
    ), origins_saved AS (
        UPDATE htm_origins o
           SET credit = v.credit,
               since = v.since,
               dispatched = o.dispatched + (SELECT count(*) FROM taken x WHERE x.origin = o.origin)
          FROM unnest(o_name, o_credit, o_since) AS v(origin, credit, since)
         WHERE o.origin = v.origin
    ), counter_saved AS (
        UPDATE htm_scheduler SET dispatched = v_seq + v_planned WHERE id = 1
    )
    SELECT * FROM taken;
END;
$fn$;

-- name: htm_finish_claim
-- PostgreSQL: a batch of outcomes, then (when p_n > 0) a claim into the slots they free, in one
-- round trip (migration 0007_htm_single_claim). Outcomes first (their rows locked in seq order by
-- the statement that updates them), then the claim, which takes the counter's lock (see the lock
-- order in grace/htm/queue.py). The settings apply to the claim it calls as well: its reads also
-- all have indexes.
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
LANGUAGE plpgsql
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET enable_seqscan = off
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $fn$
BEGIN
    RETURN QUERY
    -- A join from the ids (not task_id = ANY): the plan is kept for the session, and for a
    -- scalar array the planner picks a sequential scan while the table is small.
    WITH locked AS MATERIALIZED (
        SELECT t.seq, x.i
          FROM unnest(p_task_ids) WITH ORDINALITY AS x(task_id, i)
          JOIN htm_tasks t ON t.task_id = x.task_id
         ORDER BY t.seq
           FOR UPDATE OF t
    )
    UPDATE htm_tasks AS t
       SET status = p_statuses[l.i],
           finished_at = p_finished[l.i],
           queued_at = coalesce(p_queued[l.i], t.queued_at),
           result = CAST(p_results[l.i] AS json),
           error = p_errors[l.i],
           lease_expires_at = NULL,
           worker_id = CASE WHEN p_statuses[l.i] IN ('delayed', 'queued') THEN NULL ELSE t.worker_id END,
           attempts = t.attempts - p_give_back[l.i]
      FROM locked l
     WHERE t.seq = l.seq
       -- IS NOT DISTINCT FROM (status is never null) keeps the running tasks' partial index from
       -- driving this update: the planner would read every running task of every worker.
       AND t.status IS NOT DISTINCT FROM 'running' AND t.worker_id = p_worker AND t.attempts = p_attempts[l.i]
    RETURNING t.*;
    IF p_n > 0 THEN
        RETURN QUERY
        SELECT * FROM htm_claim(p_worker, p_n, p_now, p_lease_seconds, p_capacity, p_fallback_capacity, p_live_after);
    END IF;
END;
$fn$;

-- name: htm_submit
-- PostgreSQL: route a group of new tasks and insert them, in one round trip (migration
-- 0019_htm_submit). Takes the routing locks of the group's origins (p_lock_keys, in the order
-- grace.htm.routing.lock_origins takes them), reads the origins' load and their burst windows, decides
-- each task in order exactly as grace/htm/routing.py's decide() does (that is the reference; a test
-- checks both paths give the same decisions, rows and events), inserts the tasks (with their
-- htm.task.created events into htm_outbox when p_event_topic is given) and wakes idle workers when
-- any task is queued. Sent on its own (autocommit), the routing locks are held only while the server
-- runs it, so two processes' groups no longer wait on each other's round trips.
-- - The burst window of each origin is a min-heap of its latest admissions (at most its limit), in
--   one flat array: its root is the limit-th latest admission, Python's times[-limit].
-- - Which origins have queued work is read only when capacity is full: only then is anyone starved.
-- - Returns each task's route, quota used (running/quota), reasoning and admission time, in order.
CREATE OR REPLACE FUNCTION htm_submit(
    p_now timestamptz,
    p_order text[],
    p_weights integer[],
    p_bursts integer[],
    p_lock_keys bigint[],
    p_capacity integer,
    p_fallback_capacity integer,
    p_live_after timestamptz,
    p_defer_us bigint,
    p_defer_text text,
    p_defer_json text,
    p_event_topic text,
    p_wake_channel text,
    p_task_id text[],
    p_task_type text[],
    p_priority text[],
    p_priority_rank smallint[],
    p_origin text[],
    p_origin_rule text[],
    p_payload text[],
    p_data_size_bytes bigint[],
    p_created_by text[],
    p_created_by_name text[],
    p_intent_id text[],
    p_sla_ms bigint[],
    p_deadline timestamptz[],
    p_max_attempts integer[],
    p_timeout_seconds double precision[],
    p_sla_due_at timestamptz[]
) RETURNS TABLE (r_route text, r_quota_used text, r_reasoning text, r_admitted_at timestamptz)
LANGUAGE plpgsql
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    n integer := coalesce(array_length(p_task_id, 1), 0);
    k integer := array_length(p_order, 1);
    v_key bigint;
    v_cap integer;
    v_total bigint := 0;
    v_sum integer := 0;
    v_full boolean;
    v_running integer[];
    v_quota integer[];
    v_waiting boolean[];
    v_oi integer[];
    v_count integer[];
    v_heap timestamptz[] := '{}';
    v_off integer[];
    v_size integer[];
    v_win timestamptz[];
    v_route text[] := '{}';
    v_used text[] := '{}';
    v_reason text[] := '{}';
    v_admitted timestamptz[] := '{}';
    v_delay text[] := '{}';
    v_any_queued boolean := false;
    v_slot timestamptz;
    v_at timestamptz;
    v_us bigint;
    v_ms bigint;
    v_starved text;
    v_lim integer;
    v_o integer;
    v_s integer;
    v_x timestamptz;
    v_tmp timestamptz;
    i integer;
    j integer;
    c integer;
    p integer;
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    FOREACH v_key IN ARRAY p_lock_keys LOOP
        PERFORM pg_advisory_xact_lock(v_key);
    END LOOP;

    -- The load (grace.htm.routing.load): capacity, running counts, quotas.
    IF p_capacity > 0 THEN
        v_cap := p_capacity;
    ELSE
        SELECT coalesce(sum(w.concurrency), 0)::integer INTO v_cap
          FROM htm_workers w WHERE w.heartbeat_at >= p_live_after AND NOT w.stopping;
        IF v_cap = 0 THEN
            v_cap := greatest(1, p_fallback_capacity);
        END IF;
    END IF;
    SELECT array_agg((SELECT count(*) FROM htm_tasks r WHERE r.status = 'running' AND r.origin = o.name)::integer
                     ORDER BY o.i)
      INTO v_running
      FROM unnest(p_order) WITH ORDINALITY AS o(name, i);
    FOR j IN 1..k LOOP
        v_total := v_total + p_weights[j];
        v_sum := v_sum + v_running[j];
    END LOOP;
    v_quota := array_fill(0, ARRAY[k]);
    FOR j IN 1..k LOOP
        v_quota[j] := greatest(1, (p_weights[j]::bigint * v_cap + v_total - 1) / v_total)::integer;
    END LOOP;
    v_full := v_sum >= v_cap;
    IF v_full THEN
        SELECT array_agg(coalesce((
                   SELECT true FROM htm_tasks t WHERE t.status = 'queued' AND t.origin = o.name LIMIT 1
               ), false) ORDER BY o.i)
          INTO v_waiting
          FROM unnest(p_order) WITH ORDINALITY AS o(name, i);
    ELSE
        v_waiting := array_fill(false, ARRAY[k]);
    END IF;

    -- Each task's origin, and the burst windows of the group's origins (BurstWindow.load).
    SELECT array_agg(array_position(p_order, u.origin) ORDER BY u.i) INTO v_oi
      FROM unnest(p_origin) WITH ORDINALITY AS u(origin, i);
    v_count := array_fill(0, ARRAY[k]);
    FOR i IN 1..n LOOP
        IF v_oi[i] IS NULL THEN
            RAISE EXCEPTION 'htm_submit: unknown origin %', p_origin[i];
        END IF;
        v_count[v_oi[i]] := v_count[v_oi[i]] + 1;
    END LOOP;
    v_off := array_fill(0, ARRAY[k]);
    v_size := array_fill(0, ARRAY[k]);
    FOR j IN 1..k LOOP
        IF v_count[j] > 0 AND p_bursts[j] > 0 THEN
            SELECT coalesce(array_agg(s.a ORDER BY s.a), '{}') INTO v_win
              FROM (SELECT t.admitted_at AS a FROM htm_tasks t
                     WHERE t.origin = p_order[j] AND t.admitted_at > p_now - interval '60 seconds'
                     ORDER BY t.admitted_at DESC LIMIT p_bursts[j]) s;
            v_off[j] := coalesce(array_length(v_heap, 1), 0);
            v_size[j] := coalesce(array_length(v_win, 1), 0);
            -- Ascending order is already a min-heap; room for what the group can add, up to the limit.
            v_heap := v_heap || v_win
                || array_fill('-infinity'::timestamptz, ARRAY[least(p_bursts[j] - v_size[j], v_count[j])]);
        END IF;
    END LOOP;

    -- Each task in order (grace.htm.routing.decide).
    FOR i IN 1..n LOOP
        j := v_oi[i];
        v_lim := p_bursts[j];
        v_o := v_off[j];
        v_slot := p_now;
        IF v_lim > 0 AND v_size[j] >= v_lim THEN
            v_slot := greatest(p_now, v_heap[v_o + 1] + interval '60 seconds');
        END IF;
        v_used[i] := v_running[j] || '/' || v_quota[j];
        v_starved := NULL;
        IF v_running[j] >= v_quota[j] AND v_full THEN
            FOR c IN 1..k LOOP
                IF c <> j AND v_waiting[c] AND v_running[c] < v_quota[c] THEN
                    v_starved := coalesce(v_starved || ', ', '') || p_order[c];
                END IF;
            END LOOP;
        END IF;
        IF v_slot > p_now THEN
            v_us := (extract(epoch FROM v_slot) - extract(epoch FROM p_now)) * 1000000;
            v_ms := (v_us + 500) / 1000;
            v_route[i] := 'delayed';
            v_reason[i] := 'Burst limit of ' || v_lim || ' ' || p_order[j] || ' tasks per minute reached; delayed '
                || (v_ms / 1000) || '.' || lpad((v_ms % 1000)::text, 3, '0') || 's until the window frees';
            v_at := v_slot;
            v_delay[i] := trim_scale(v_us::numeric / 1000000)::text;
            IF strpos(v_delay[i], '.') = 0 THEN
                v_delay[i] := v_delay[i] || '.0';
            END IF;
        ELSIF v_starved IS NOT NULL AND p_priority[i] <> 'critical' THEN
            v_route[i] := 'deferred';
            v_reason[i] := 'Deferred ' || p_defer_text || 's: ' || v_starved || ' starved while ' || p_order[j]
                || ' holds ' || v_used[i] || ' of its share';
            v_at := p_now + p_defer_us * interval '1 microsecond';
            v_delay[i] := p_defer_json;
        ELSE
            v_route[i] := 'accepted';
            v_reason[i] := 'Routed to ' || p_priority[i] || ' queue (' || p_order[j] || ' ' || v_used[i] || ' running)';
            v_at := p_now;
            v_delay[i] := '0.0';
            v_waiting[j] := true;
            v_any_queued := true;
        END IF;
        v_admitted[i] := v_at;
        -- Admit it to its origin's window: the heap keeps the limit latest admissions.
        IF v_lim > 0 THEN
            v_s := v_size[j];
            IF v_s < v_lim THEN
                v_s := v_s + 1;
                v_size[j] := v_s;
                c := v_s;
                v_heap[v_o + c] := v_at;
                WHILE c > 1 LOOP
                    p := c / 2;
                    EXIT WHEN v_heap[v_o + p] <= v_heap[v_o + c];
                    v_tmp := v_heap[v_o + p];
                    v_heap[v_o + p] := v_heap[v_o + c];
                    v_heap[v_o + c] := v_tmp;
                    c := p;
                END LOOP;
            ELSIF v_at > v_heap[v_o + 1] THEN
                v_heap[v_o + 1] := v_at;
                c := 1;
                LOOP
                    p := 2 * c;
                    EXIT WHEN p > v_s;
                    IF p + 1 <= v_s AND v_heap[v_o + p + 1] < v_heap[v_o + p] THEN
                        p := p + 1;
                    END IF;
                    EXIT WHEN v_heap[v_o + c] <= v_heap[v_o + p];
                    v_tmp := v_heap[v_o + p];
                    v_heap[v_o + p] := v_heap[v_o + c];
                    v_heap[v_o + c] := v_tmp;
                    c := p;
                END LOOP;
            END IF;
        END IF;
    END LOOP;

    INSERT INTO htm_tasks (task_id, task_type, priority, priority_rank, origin, origin_rule, payload,
                           data_size_bytes, created_by, created_by_name, intent_id, sla_ms, deadline, status,
                           route, route_reason, attempts, max_attempts, timeout_seconds, created_at,
                           admitted_at, queued_at, sla_level, sla_due_at)
    SELECT u.task_id, u.task_type, u.priority, u.priority_rank, u.origin, u.origin_rule, CAST(u.payload AS json),
           u.data_size_bytes, u.created_by, u.created_by_name, u.intent_id, u.sla_ms, u.deadline,
           CASE WHEN u.route = 'accepted' THEN 'queued' ELSE u.route END,
           u.route, left(u.reason, 400), 0, u.max_attempts, u.timeout_seconds, p_now,
           u.admitted, u.admitted, 0, u.sla_due_at
      FROM unnest(p_task_id, p_task_type, p_priority, p_priority_rank, p_origin, p_origin_rule, p_payload,
                  p_data_size_bytes, p_created_by, p_created_by_name, p_intent_id, p_sla_ms, p_deadline,
                  v_route, v_reason, p_max_attempts, p_timeout_seconds, v_admitted, p_sla_due_at)
           WITH ORDINALITY AS u(task_id, task_type, priority, priority_rank, origin, origin_rule, payload,
                                data_size_bytes, created_by, created_by_name, intent_id, sla_ms, deadline,
                                route, reason, max_attempts, timeout_seconds, admitted, sla_due_at, i)
     ORDER BY u.i;

    -- The created events (grace.htm.submission._created), in the tasks' order.
    IF p_event_topic IS NOT NULL THEN
        INSERT INTO htm_outbox (topic, payload)
        SELECT p_event_topic, CAST(json_build_object(
                   'task_id', u.task_id, 'task_type', u.task_type, 'priority', u.priority, 'origin', u.origin,
                   'origin_rule', u.origin_rule,
                   'status', CASE WHEN u.route = 'accepted' THEN 'queued' ELSE u.route END,
                   'route', u.route, 'delay_seconds', CAST(u.delay AS json), 'intent_id', u.intent_id,
                   'created_by', u.created_by_name, 'data_size_bytes', u.data_size_bytes, 'sla_ms', u.sla_ms
               ) AS text)
          FROM unnest(p_task_id, p_task_type, p_priority, p_origin, p_origin_rule, v_route, v_delay, p_intent_id,
                      p_created_by_name, p_data_size_bytes, p_sla_ms)
               WITH ORDINALITY AS u(task_id, task_type, priority, origin, origin_rule, route, delay, intent_id,
                                    created_by_name, data_size_bytes, sla_ms, i)
         ORDER BY u.i;
    END IF;

    IF v_any_queued THEN
        PERFORM pg_notify(p_wake_channel, '');
    END IF;
    RETURN QUERY SELECT * FROM unnest(v_route, v_used, v_reason, v_admitted);
END;
$fn$;
