-- The statements the task queue sends on its hot path, per backend (names start with the backend).
-- Everything else the queue does goes through SQLAlchemy Core (grace/htm/queue.py, leases.py).
--
-- Blocks are named `-- name: <name>`; the comment lines right after a name describe the block.
-- `{placeholders}` are filled once from the package's constants (origins, column names), never
-- from input. Loaded by grace.htm.sql; used by grace.htm.postgres_queue and grace.htm.sqlite_queue.


-- PostgreSQL ---------------------------------------------------------------------------------------
-- Fixed SQL with positional parameters, sent on the asyncpg connection itself (prepared once per
-- connection) unless a block says otherwise.

-- name: pg_claim
-- A claim on its own: htm_claim (schema.sql) with p_async_commit, so it commits without waiting
-- for the log flush (migration 0006_htm_lean_claim says why that loses no task). Parameters: worker,
-- n, now, lease seconds, configured capacity (0: the live workers'), fallback capacity, live after.
SELECT * FROM htm_claim($1, $2, $3, $4, $5, $6, $7, true);

-- name: pg_finish_claim
-- Outcomes (one array per field, in the same order), then a claim with the parameters of pg_claim.
SELECT * FROM htm_finish_claim($1, $2::text[], $3::integer[], $4::text[], $5::timestamptz[],
    $6::timestamptz[], $7::text[], $8::text[], $9::integer[], $10, $11, $12, $13, $14, $15);

-- name: pg_with_events
-- A claim or an exchange ({call}: pg_claim's or pg_finish_claim's function call) that writes its
-- task events into htm_outbox in the same statement, so in the same transaction: a process killed
-- right after it returns loses no event (the relay, grace/htm/outbox.py, publishes them). One row
-- per returned task, in the function's order: a claimed task (running) gets Recorder.claimed's
-- htm.task.update, an outcome Finished.event()'s payload under its topic (grace/htm/outcomes.py);
-- tests/integration/test_htm_outbox.py checks both against the Python. Times to milliseconds exact
-- to the microsecond, queued_at in Python's isoformat (no fraction when it is zero).
WITH r AS MATERIALIZED (SELECT * FROM {call} WITH ORDINALITY AS c),
written AS (
    INSERT INTO htm_outbox (topic, payload)
    SELECT CASE WHEN r.status = 'completed' THEN 'htm.task.completed'
                WHEN r.status IN ('failed', 'timed_out') THEN 'htm.task.failed'
                ELSE 'htm.task.update' END,
           -- JSON text put together rather than built as jsonb: three times cheaper per row, and
           -- this runs for every claimed and finished task. json_build_object gives the fixed keys;
           -- the optional ones are appended before its closing brace.
           left(CAST(json_build_object(
               'task_id', r.task_id, 'task_type', r.task_type, 'origin', r.origin, 'priority', r.priority,
               'intent_id', r.intent_id, 'status', r.status, 'attempts', r.attempts,
               'max_attempts', r.max_attempts) AS text), -1)
           || CASE WHEN r.status = 'running' THEN ', "worker_id" : ' || to_json(r.worker_id)
              ELSE coalesce(', "duration_ms" : ' || round(extract(epoch FROM r.finished_at - r.started_at) * 1000, 3), '')
                || coalesce(', "total_ms" : ' || round(extract(epoch FROM r.finished_at - r.created_at) * 1000, 3), '')
                || coalesce(', "sla_met" : ' || (r.finished_at <= r.deadline), '')
                || CASE WHEN r.status IN ('delayed', 'queued') THEN ', "queued_at" : "'
                       || to_char(r.queued_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
                       || CASE WHEN extract(microseconds FROM r.queued_at) % 1000000 = 0 THEN ''
                               ELSE to_char(r.queued_at AT TIME ZONE 'UTC', '.US') END
                       || '+00:00"' ELSE '' END
                || CASE WHEN r.error <> '' THEN ', "error" : ' || to_json(r.error) ELSE '' END
              END || '}'
      FROM r
     ORDER BY r.ordinality
)
SELECT * FROM r;

-- name: pg_insert_tasks
-- A batch of new tasks in one statement, each column sent as one array (an executemany would run
-- the insert once per row). {columns}: the columns given; {arrays}: `$i::<type>[]` per column,
-- text for text and JSON (checked against the column's length on insert, where a cast to
-- varchar(n)[] would cut it short); {values}: `u.<column>`, cast to json for JSON columns.
INSERT INTO htm_tasks ({columns}) SELECT {values} FROM unnest({arrays}) AS u({columns});

-- name: pg_submit
-- Route and insert a group of new tasks: htm_submit (schema.sql), one array per task field.
-- Parameters in the function's order; sent on its own it is its own transaction (one round trip),
-- or inside the caller's transaction (an idempotency key's record, an intent, a rescue).
SELECT * FROM htm_submit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
    $20, $21, $22, $23, $24, $25, $26, $27, $28, $29);

-- name: pg_wake
-- Wake idle workers in every process; NOTIFY is delivered on commit, so none looks too early.
-- Sent through SQLAlchemy inside the submit's transaction.
SELECT pg_notify(:channel, '');

-- name: pg_tidy
-- Vacuum the two tiny tables every claim rewrites, and the outbox every claim and outcome writes
-- and the relay empties; SKIP_LOCKED lets one worker do it at a time. TRUNCATE false: the relay
-- empties the outbox, so its last pages are empty at every vacuum, and giving them back to the file
-- system needs the table's exclusive lock: the vacuum waited for it (up to 5 s) and, once it had
-- it, held up every claim, outcome and submission writing an event.
VACUUM (SKIP_LOCKED, TRUNCATE false) htm_origins, htm_scheduler, htm_outbox;


-- SQLite -------------------------------------------------------------------------------------------
-- Run by grace/htm/sqlite_claims.py on SQLite's own thread inside one BEGIN IMMEDIATE transaction,
-- and prepared once by sqlite3. Times are text in SQLAlchemy's form (SQLite compares them as text).

-- name: sqlite_insert_tasks
-- New tasks, one row each, through the driver's executemany.
INSERT INTO htm_tasks ({columns}) VALUES ({marks});

-- name: sqlite_dispatched
-- The dispatch counter (SQLite has one writer, so the transaction already holds it).
SELECT dispatched FROM htm_scheduler WHERE id = 1;

-- name: sqlite_release_waiting
-- Waiting tasks that are due join the queue: only those, through the waiting index (its predicate
-- matched), not every waiting task through ix_htm_tasks_status_seq, which SQLite picked without it.
UPDATE htm_tasks INDEXED BY ix_htm_tasks_waiting SET status = 'queued'
 WHERE status IN ('delayed', 'deferred') AND queued_at <= ?;

-- name: sqlite_live_capacity
-- The concurrency of the workers that heartbeat since the given time.
SELECT coalesce(sum(concurrency), 0) FROM htm_workers WHERE heartbeat_at >= ? AND stopping = 0;

-- name: sqlite_origins
SELECT origin, weight, credit, since FROM htm_origins;

-- name: sqlite_running
-- Counted off the running index alone (it holds the origin), not through ix_htm_tasks_status_seq and
-- every running row.
SELECT origin, count(*) FROM htm_tasks INDEXED BY ix_htm_tasks_running WHERE status = 'running' GROUP BY origin;

-- name: sqlite_ready_origin
-- How many claimable tasks one origin has, capped at the batch; the claim reads every origin's in
-- one statement (`SELECT <this for each origin, in their order>`). The claim index is named:
-- without statistics SQLite may pick the (origin, admitted_at) index instead and walk every task
-- the origin ever had.
(SELECT count(*) FROM (SELECT 1 FROM htm_tasks INDEXED BY ix_htm_tasks_claim WHERE status = 'queued' AND origin = '{origin}' LIMIT ?));

-- name: sqlite_next
-- An origin's next tasks by priority, then deadline (tasks with one first, earliest first), then age.
SELECT seq FROM htm_tasks INDEXED BY ix_htm_tasks_claim
 WHERE status = 'queued' AND origin = ? ORDER BY priority_rank, (deadline IS NULL), deadline, seq LIMIT ?;

-- name: sqlite_take
-- Every picked task in one statement: ?5 is a JSON array of their seqs in dispatch order, and a
-- task's dispatch number is the base (?4) plus its place in that array. Joined from the array
-- (UPDATE ... FROM), so the array is read once, not searched again for every row taken.
-- {columns}: every column of htm_tasks, qualified with the table's name.
-- `+htm_tasks.status` keeps SQLite from reading the rows through ix_htm_tasks_status_seq: without
-- statistics it took that index (status = 'queued') as the outer loop and read every queued task
-- against the array at each claim, so a claim cost the whole backlog. Each task is read by its seq.
UPDATE htm_tasks SET status = 'running', worker_id = ?1, attempts = attempts + 1, started_at = ?2,
       lease_expires_at = ?3, dispatch_seq = ?4 + j.key
  FROM json_each(?5) AS j
 WHERE htm_tasks.seq = j.value AND +htm_tasks.status = 'queued'
RETURNING {columns};

-- name: sqlite_save_origin
UPDATE htm_origins SET credit = ?, since = ?, dispatched = dispatched + ? WHERE origin = ?;

-- name: sqlite_save_dispatched
UPDATE htm_scheduler SET dispatched = ? WHERE id = 1;

-- name: sqlite_finish
-- A batch of outcomes in one statement, guarded by worker (?1), status and attempt: ?2 is a JSON
-- array of [task_id, attempt, status, finished_at, queued_at, result, error, give_back].
-- {columns}: the summary columns handed back (grace.htm.tables.SUMMARY_COLUMNS), qualified.
-- Each task is read by its task id (`+htm_tasks.status`: not every running task through
-- ix_htm_tasks_status_seq against the array, as sqlite_take explains).
UPDATE htm_tasks
   SET status = v.status,
       finished_at = coalesce(v.finished_at, htm_tasks.finished_at),
       queued_at = coalesce(v.queued_at, htm_tasks.queued_at),
       result = v.result,
       error = v.error,
       lease_expires_at = NULL,
       attempts = htm_tasks.attempts - v.give_back,
       worker_id = CASE WHEN v.status IN ('delayed', 'queued') THEN NULL ELSE htm_tasks.worker_id END
  FROM (SELECT json_extract(value, '$[0]') AS task_id, json_extract(value, '$[1]') AS attempt,
               json_extract(value, '$[2]') AS status, json_extract(value, '$[3]') AS finished_at,
               json_extract(value, '$[4]') AS queued_at, json_extract(value, '$[5]') AS result,
               json_extract(value, '$[6]') AS error, json_extract(value, '$[7]') AS give_back
          FROM json_each(?2)) AS v
 WHERE htm_tasks.task_id = v.task_id AND htm_tasks.attempts = v.attempt AND +htm_tasks.status = 'running'
   AND htm_tasks.worker_id = ?1
RETURNING {columns};
