-- Every runtime query, by name. Parameters are :name; the PostgreSQL store rewrites them
-- to psycopg's %(name)s. A block named "x [postgres]" or "x [sqlite]" replaces "x" on that
-- backend. List parameters (:ids, :task_ids) are JSON text on SQLite (read with json_each)
-- and arrays on PostgreSQL (= ANY).

-- name: schema_version
SELECT version FROM outlast_schema;

-- name: set_schema_version
UPDATE outlast_schema SET version = :version;

-- name: insert_schema_version
INSERT INTO outlast_schema (version) VALUES (:version);

-- Triggering -------------------------------------------------------------------------------

-- name: insert_run
INSERT INTO runs (
    id, env, task_id, queue, status, payload, metadata, tags, attempt, max_attempts,
    priority, concurrency_key, idempotency_key, idempotency_expires_at, idempotency_active,
    created_at, updated_at, available_at, ready_at, delay_until, ttl_expires_at,
    max_duration, parent_id, root_id, depth, replayed_from, parent_waitpoint_id, version
) VALUES (
    :id, :env, :task_id, :queue, :status, :payload, :metadata, :tags, 1, :max_attempts,
    :priority, :concurrency_key, :idempotency_key, :idempotency_expires_at,
    :idempotency_active, :now, :now, :available_at, :ready_at, :delay_until,
    :ttl_expires_at, :max_duration, :parent_id, :root_id, :depth, :replayed_from,
    :parent_waitpoint_id, :version
);

-- insert_run, insert_tag for each of its tags and its wake-up in one statement, for a
-- single run committed on its own (autocommit): one round trip. A delayed run wakes
-- nobody. Keep the columns in sync with insert_run.
-- name: insert_run_alone [postgres]
WITH run AS (
    INSERT INTO runs (
        id, env, task_id, queue, status, payload, metadata, tags, attempt, max_attempts,
        priority, concurrency_key, idempotency_key, idempotency_expires_at,
        idempotency_active, created_at, updated_at, available_at, ready_at, delay_until,
        ttl_expires_at, max_duration, parent_id, root_id, depth, replayed_from,
        parent_waitpoint_id, version
    ) VALUES (
        :id, :env, :task_id, :queue, :status, :payload, :metadata, :tags, 1, :max_attempts,
        :priority, :concurrency_key, :idempotency_key, :idempotency_expires_at,
        :idempotency_active, :now, :now, :available_at, :ready_at, :delay_until,
        :ttl_expires_at, :max_duration, :parent_id, :root_id, :depth, :replayed_from,
        :parent_waitpoint_id, :version
    )
    RETURNING id, env, status, tags
), tagged AS (
    INSERT INTO run_tags (env, tag, run_id)
    SELECT run.env, t.tag, run.id FROM run, json_array_elements_text(run.tags::json) AS t(tag)
    ON CONFLICT DO NOTHING
)
SELECT (SELECT pg_notify(:channel, env) FROM run WHERE status = 'QUEUED') AS notified,
       -- whether the next single trigger should try insert_run_offered
       EXISTS (SELECT 1 FROM worker_offers o WHERE o.env = :env AND o.run_id IS NULL)
           AS offers;

-- name: insert_tag
INSERT INTO run_tags (env, tag, run_id) VALUES (:env, :tag, :run_id) ON CONFLICT DO NOTHING;

-- A batch's tags in one statement: a 1000-run batch with two tags each was 2000 INSERTs.
-- name: insert_tags [postgres]
INSERT INTO run_tags (env, tag, run_id)
SELECT * FROM unnest(CAST(:envs AS text[]), CAST(:tags AS text[]), CAST(:run_ids AS text[]))
ON CONFLICT DO NOTHING;

-- name: ensure_slot
INSERT INTO queue_slots (env, queue, ckey) VALUES (:env, :queue, :ckey) ON CONFLICT DO NOTHING;

-- name: ensure_queue
INSERT INTO queues (env, name, updated_at) VALUES (:env, :queue, :now) ON CONFLICT DO NOTHING;

-- Many runs without an idempotency key at once: COPY writes a page of rows per WAL record
-- where INSERT writes one per row, and they conflict with nothing (no ON CONFLICT needed).
-- The columns are insert_run's; each takes the trigger row's value of the same name
-- (created_at and updated_at take :now), typed as the table says.
-- name: copy_runs [postgres]
COPY runs (
    id, env, task_id, queue, status, payload, metadata, tags, max_attempts,
    priority, concurrency_key, idempotency_key, idempotency_expires_at, idempotency_active,
    created_at, updated_at, available_at, ready_at, delay_until, ttl_expires_at,
    max_duration, parent_id, root_id, depth, replayed_from, parent_waitpoint_id, version
) FROM STDIN (FORMAT BINARY);

-- name: run_column_types [postgres]
SELECT attname AS name, atttypid::integer AS oid FROM pg_attribute
WHERE attrelid = 'runs'::regclass AND attnum > 0 AND NOT attisdropped;

-- Reading ----------------------------------------------------------------------------------

-- name: get_run
SELECT * FROM runs WHERE env = :env AND id = :id;

-- name: get_runs
SELECT * FROM runs WHERE env = :env AND id IN (SELECT value FROM json_each(:ids));

-- name: get_runs [postgres]
SELECT * FROM runs WHERE env = :env AND id = ANY(:ids);

-- name: journal
SELECT key, kind, fingerprint, status, output, waitpoint_id, attempt, started_at, finished_at
FROM journal WHERE run_id = :run_id ORDER BY started_at, key;

-- The journals of claimed runs with the state of the waitpoints they wait on: one query
-- per claim batch, never one per replayed step.
-- name: journals_for_runs
SELECT j.run_id, j.key, j.kind, j.fingerprint, j.status, j.output, j.waitpoint_id,
       j.attempt, j.started_at, j.finished_at,
       w.kind AS wp_kind, w.status AS wp_status, w.output AS wp_output,
       w.is_error AS wp_is_error
FROM journal j LEFT JOIN waitpoints w ON w.id = j.waitpoint_id
WHERE j.run_id IN (SELECT value FROM json_each(:ids));

-- name: journals_for_runs [postgres]
SELECT j.run_id, j.key, j.kind, j.fingerprint, j.status, j.output, j.waitpoint_id,
       j.attempt, j.started_at, j.finished_at,
       w.kind AS wp_kind, w.status AS wp_status, w.output AS wp_output,
       w.is_error AS wp_is_error
FROM journal j LEFT JOIN waitpoints w ON w.id = j.waitpoint_id
WHERE j.run_id = ANY(:ids);

-- name: log_counts
SELECT run_id, COUNT(*) AS n FROM run_events
WHERE kind = 'log' AND run_id IN (SELECT value FROM json_each(:ids))
GROUP BY run_id;

-- name: log_counts [postgres]
SELECT run_id, COUNT(*) AS n FROM run_events
WHERE kind = 'log' AND run_id = ANY(:ids)
GROUP BY run_id;

-- name: events
SELECT id, run_id, ts, kind, attempt, level, message, data, active_seconds FROM run_events
WHERE run_id = :run_id AND id > :after_id ORDER BY id LIMIT 1000;

-- name: count_runs
SELECT task_id, status, COUNT(*) AS n FROM runs WHERE env = :env GROUP BY task_id, status;

-- Workers ----------------------------------------------------------------------------------

-- name: register_worker
INSERT INTO workers (id, env, host, pid, concurrency, tasks, status, lock_key, lock_path,
                     started_at, heartbeat_at, lease_expires_at, version, draining)
VALUES (:id, :env, :host, :pid, :concurrency, :tasks, 'alive', :lock_key, :lock_path,
        :now, :now, :lease_expires_at, :version, :draining);

-- name: heartbeat
UPDATE workers SET heartbeat_at = :now, lease_expires_at = :lease_expires_at
WHERE id = :id AND status = 'alive'
RETURNING id;

-- name: cancel_requested
SELECT id FROM runs
WHERE worker_id = :id AND status IN ('EXECUTING', 'DEQUEUED') AND cancel_requested = 1;

-- Paused queues in which a worker holds runs DEQUEUED (runs_executing serves the runs).
-- Every heartbeat asks. The status IN (...) is runs_executing's predicate word for word:
-- SQLite uses a partial index only then, and without it scanned every run of the history
-- on each heartbeat (issue 18: a drain 60x slower beside 10 million finished runs).
-- name: paused_holding
SELECT DISTINCT r.queue AS name FROM runs r
JOIN queues q ON q.env = r.env AND q.name = r.queue
WHERE r.worker_id = :id AND r.status IN ('EXECUTING', 'DEQUEUED') AND r.status = 'DEQUEUED'
  AND q.paused = 1;

-- name: stop_worker
UPDATE workers SET status = 'stopped', stopped_at = :now WHERE id = :id AND status = 'alive';

-- (runs_executing's predicate word for word, for SQLite: see paused_holding)
-- name: list_workers
SELECT w.*, (SELECT COUNT(*) FROM runs r WHERE r.worker_id = w.id
             AND r.status IN ('EXECUTING', 'DEQUEUED') AND r.status = 'EXECUTING')
       AS executing
FROM workers w WHERE (CAST(:env AS TEXT) IS NULL OR w.env = :env)
ORDER BY w.status, w.started_at DESC LIMIT 200;

-- name: lapsed_workers
SELECT id FROM workers WHERE status = 'alive' AND lease_expires_at < :now;

-- name: alive_workers
SELECT id, lock_key, lock_path, host FROM workers WHERE status = 'alive';

-- name: mark_worker_dead
UPDATE workers SET status = 'dead', stopped_at = :now WHERE id = :id AND status = 'alive';

-- A dead worker's runs: those it executed and those it held DEQUEUED.
-- name: runs_of_worker
SELECT id, status FROM runs
WHERE worker_id = :id AND status IN ('EXECUTING', 'DEQUEUED') ORDER BY id;

-- Locked, in id order as a commit's fence locks them: a commit that fenced the worker's
-- runs before the reaper marked it dead may still end them. Read without the lock, a run
-- that commit completed would be taken for lost and queued again (ran twice; and stuck,
-- since a finished row keeps no claim order). The lock waits for that commit and the
-- status is read again under it.
-- name: runs_of_worker [postgres]
SELECT id, status FROM runs
WHERE worker_id = :id AND status IN ('EXECUTING', 'DEQUEUED') ORDER BY id
FOR NO KEY UPDATE;

-- Runs held by no live holder (C10): EXECUTING or DEQUEUED under a worker that is gone,
-- not 'alive' (declared dead, stopped) or past its lease on the database clock, whatever
-- its row says. The reaper requeues them as a lost worker's. Read through the partial
-- index runs_executing, so it costs the runs in flight, not the table (no ORDER BY on
-- SQLite: its planner would walk the whole table in id order instead).
-- name: orphaned_runs
SELECT r.id, r.status, r.env FROM runs r LEFT JOIN workers w ON w.id = r.worker_id
WHERE r.status IN ('EXECUTING', 'DEQUEUED')
  AND (w.id IS NULL OR w.status <> 'alive' OR w.lease_expires_at < :now)
LIMIT 1000;

-- Row locks, taken in id order (the order a commit's fence takes them): two reapers
-- never both count a lost attempt for one run; one busy elsewhere is left for the next
-- tick, and the status is read again under the lock.
-- name: orphaned_runs [postgres]
SELECT r.id, r.status, r.env FROM runs r LEFT JOIN workers w ON w.id = r.worker_id
WHERE r.status IN ('EXECUTING', 'DEQUEUED')
  AND (w.id IS NULL OR w.status <> 'alive' OR w.lease_expires_at < :now)
ORDER BY r.id LIMIT 1000
FOR UPDATE OF r SKIP LOCKED;

-- May this worker claim: alive, its lease current on the database clock (C10)? Asked
-- by a claim whose batch fenced no run (a fence that found one read the same). On
-- PostgreSQL the row is share-locked to the claim's commit, so a reaper marking it dead
-- waits for the claim and then finds the runs it took among the worker's.
-- name: worker_may_claim
SELECT id FROM workers WHERE id = :id AND status = 'alive' AND lease_expires_at >= :now;

-- name: worker_may_claim [postgres]
SELECT id FROM workers WHERE id = :id AND status = 'alive' AND lease_expires_at >= :now
FOR SHARE;

-- A run whose holder is gone (not alive or past its lease), for a cancel to finish now.
-- name: held_by_no_live_holder
SELECT r.id FROM runs r LEFT JOIN workers w ON w.id = r.worker_id
WHERE r.id = :id AND r.status IN ('EXECUTING', 'DEQUEUED')
  AND (w.id IS NULL OR w.status <> 'alive' OR w.lease_expires_at < :now);

-- Locked, so a reaper requeueing it at the same moment waits (or is waited for).
-- name: held_by_no_live_holder [postgres]
SELECT r.id FROM runs r LEFT JOIN workers w ON w.id = r.worker_id
WHERE r.id = :id AND r.status IN ('EXECUTING', 'DEQUEUED')
  AND (w.id IS NULL OR w.status <> 'alive' OR w.lease_expires_at < :now)
FOR UPDATE OF r;

-- A run its dead worker held DEQUEUED: back to its place in the queue, attempt unspent.
-- Its code may have started there (a hand-over not yet committed), so it is never held
-- DEQUEUED again: a run that kills its worker then starts only under a committed claim,
-- whose loss counts an attempt, and cannot loop.
-- name: requeue_lost_dequeued
UPDATE runs SET status = 'QUEUED', worker_id = NULL, no_handover = 1, updated_at = :now
WHERE id = :run_id AND status = 'DEQUEUED';

-- name: live_task_workers
SELECT tasks FROM workers WHERE env = :env AND status = 'alive' AND lease_expires_at >= :now;

-- Claiming ---------------------------------------------------------------------------------

-- The queue rows a claim reads; on PostgreSQL locked, so that concurrent claims on one
-- queue serialize and its limits hold across every worker (C5).
-- has_queued: a queue with no QUEUED run is skipped without reading its keys (a worker
-- serving many queues pays for the ones with work only). One probe of runs_ready each
-- (SQLite is told which index: left alone it scans every QUEUED run of the environment).
-- name: queues_for_claim
SELECT q.*, EXISTS (SELECT 1 FROM runs r INDEXED BY runs_ready
                    WHERE r.env = q.env AND r.queue = q.name
                    AND r.status = 'QUEUED') AS has_queued
FROM queues q WHERE q.env = :env AND q.name IN (SELECT value FROM json_each(:names))
ORDER BY q.name;

-- Only queues with a queued run are locked (see lock_queues_of_runs). The probe is
-- written as the first row in runs_ready's order: as an EXISTS, PostgreSQL may pick a
-- sequential scan of runs for it (9 ms at 20,000 runs, against 0.02 ms).
-- name: queues_for_claim [postgres]
SELECT q.*, TRUE AS has_queued
FROM queues q WHERE q.env = :env AND q.name = ANY(:names)
  AND (SELECT TRUE FROM runs r WHERE r.env = q.env AND r.queue = q.name
       AND r.status = 'QUEUED' ORDER BY r.concurrency_key, r.ready_at LIMIT 1)
ORDER BY q.name FOR UPDATE OF q;

-- Keys with room, least recently served first: round robin between tenants.
-- name: open_slots
SELECT ckey, executing, last_claim_at FROM queue_slots
WHERE env = :env AND queue = :queue
  AND (CAST(:key_limit AS INTEGER) IS NULL OR executing < :key_limit)
ORDER BY last_claim_at, ckey
LIMIT 1000;

-- Claim order is ready_at (available_at - priority: the head start); a run is never
-- claimed before its own available_at (a retry's backoff, however high its priority).
-- The statements that queue a run again read its priority through COALESCE: a finished
-- row stores NULL for 0 (0025), and a queued run without a claim order is never claimed.
-- Picked and taken in one statement: a run taken here is no longer QUEUED, so a second
-- pick for the same key in the same claim finds only runs it has not taken yet.
-- ORDER BY ready_at alone, which the runs_ready index yields as it is (ties in index
-- order, which is insertion order); adding id makes PostgreSQL sort every queued run
-- of the key whenever its statistics lag a burst of triggers (25 ms at 10,000 queued).
-- Versions (C11): a run locked to a version goes only to workers of it; an unlocked one
-- only to a worker that is current for its task (:new_task_ids; none for a draining
-- worker), and locks to that worker's version as it is taken. :version NULL (a claim
-- with no version scope, as tests make) takes any run. A row filter on what runs_ready
-- yields already: it reads no more rows when every queued run matches.
-- name: claim_ready
UPDATE runs SET status = 'EXECUTING', worker_id = :worker_id, lease_epoch = lease_epoch + 1,
    segment_started_at = :now, started_at = COALESCE(started_at, :now), updated_at = :now,
    holds_slot = 1, wait_reason = NULL, queued_seconds = queued_seconds + :now - available_at,
    version = COALESCE(version, :version)
WHERE id IN (
    SELECT id FROM runs
    WHERE env = :env AND queue = :queue AND concurrency_key = :ckey AND status = 'QUEUED'
      AND ready_at <= :now AND available_at <= :now
      AND task_id IN (SELECT value FROM json_each(:task_ids))
      AND (version = :version OR CAST(:version AS TEXT) IS NULL OR (version IS NULL AND task_id IN (SELECT value FROM json_each(:new_task_ids))))
    ORDER BY ready_at
    LIMIT :n)
RETURNING *;

-- name: claim_ready [postgres]
UPDATE runs r SET status = 'EXECUTING', worker_id = :worker_id,
    lease_epoch = r.lease_epoch + 1, segment_started_at = :now,
    started_at = COALESCE(r.started_at, :now), updated_at = :now, holds_slot = 1,
    wait_reason = NULL, queued_seconds = r.queued_seconds + :now - r.available_at,
    version = COALESCE(r.version, CAST(:version AS TEXT))
FROM (
    SELECT id FROM runs
    WHERE env = :env AND queue = :queue AND concurrency_key = :ckey AND status = 'QUEUED'
      AND ready_at <= :now AND available_at <= :now AND task_id = ANY(:task_ids)
      AND (version = :version OR CAST(:version AS TEXT) IS NULL OR (version IS NULL AND task_id = ANY(:new_task_ids)))
    ORDER BY ready_at
    LIMIT :n
    FOR UPDATE SKIP LOCKED) pick
WHERE r.id = pick.id
RETURNING r.*;

-- Runs claimed DEQUEUED: taken off the queue for this worker without a slot, only while
-- the key's slots are exactly full (a key over a lowered limit gets none, so it drains).
-- name: reserve_ready
UPDATE runs SET status = 'DEQUEUED', worker_id = :worker_id, lease_epoch = lease_epoch + 1,
    updated_at = :now, wait_reason = NULL, version = COALESCE(version, :version)
WHERE id IN (
    SELECT id FROM runs
    WHERE env = :env AND queue = :queue AND concurrency_key = :ckey AND status = 'QUEUED'
      AND ready_at <= :now AND available_at <= :now
      AND task_id IN (SELECT value FROM json_each(:task_ids)) AND no_handover = 0
      AND (version = :version OR CAST(:version AS TEXT) IS NULL OR (version IS NULL AND task_id IN (SELECT value FROM json_each(:new_task_ids))))
      AND (SELECT executing FROM queue_slots s
           WHERE s.env = :env AND s.queue = :queue AND s.ckey = :ckey) = :key_limit
    ORDER BY ready_at
    LIMIT :n)
RETURNING *;

-- name: reserve_ready [postgres]
UPDATE runs r SET status = 'DEQUEUED', worker_id = :worker_id,
    lease_epoch = r.lease_epoch + 1, updated_at = :now, wait_reason = NULL,
    version = COALESCE(r.version, CAST(:version AS TEXT))
FROM (
    SELECT id FROM runs
    WHERE env = :env AND queue = :queue AND concurrency_key = :ckey AND status = 'QUEUED'
      AND ready_at <= :now AND available_at <= :now AND task_id = ANY(:task_ids)
      AND no_handover = 0
      AND (version = :version OR CAST(:version AS TEXT) IS NULL OR (version IS NULL AND task_id = ANY(:new_task_ids)))
      AND (SELECT executing FROM queue_slots s
           WHERE s.env = :env AND s.queue = :queue AND s.ckey = :ckey) = :key_limit
    ORDER BY ready_at
    LIMIT :n
    FOR UPDATE SKIP LOCKED) pick
WHERE r.id = pick.id
RETURNING r.*;

-- A DEQUEUED run starts in the slot a run of its key gave back (in the same transaction):
-- it takes a slot without checking the limit, which the run it succeeds counted under.
-- name: start_dequeued
UPDATE runs SET status = 'EXECUTING', holds_slot = 1, segment_started_at = :now,
    started_at = COALESCE(started_at, :now), updated_at = :now,
    queued_seconds = queued_seconds + :now - available_at
WHERE id = :run_id AND status = 'DEQUEUED'
RETURNING env, queue, concurrency_key;

-- name: take_slot
UPDATE queue_slots SET executing = executing + 1
WHERE env = :env AND queue = :queue AND ckey = :ckey;

-- name: take_queue_slot
UPDATE queues SET executing = executing + 1 WHERE env = :env AND name = :queue;

-- A DEQUEUED run handed back unstarted keeps its place in the queue.
-- name: release_dequeued
UPDATE runs SET status = 'QUEUED', worker_id = NULL, updated_at = :now
WHERE id = :run_id AND status = 'DEQUEUED';

-- name: take_slots
UPDATE queue_slots SET executing = executing + :n, last_claim_at = :stamp
WHERE env = :env AND queue = :queue AND ckey = :ckey;

-- name: take_queue
UPDATE queues SET executing = executing + :n, rate_window = :rate_window
WHERE env = :env AND name = :queue;

-- What one queue's claim took, in one statement: each key's runs taken (0 for a key
-- visited and found idle: only its round-robin stamp moves), then the queue's total.
-- The queue row is locked already, so the slot rows' order cannot deadlock.
-- name: take_claimed [postgres]
WITH s AS (
    UPDATE queue_slots SET executing = queue_slots.executing + t.n, last_claim_at = t.stamp
    FROM unnest(CAST(:ckeys AS text[]), CAST(:ns AS integer[]),
                CAST(:stamps AS double precision[])) AS t(ckey, n, stamp)
    WHERE queue_slots.env = :env AND queue_slots.queue = :queue
      AND queue_slots.ckey = t.ckey)
UPDATE queues SET executing = executing + :n, rate_window = :rate_window
WHERE env = :env AND name = :queue AND CAST(:n AS integer) > 0;

-- name: give_slot
UPDATE queue_slots SET executing = executing - 1
WHERE env = :env AND queue = :queue AND ckey = :ckey AND executing > 0;

-- name: give_queue
UPDATE queues SET executing = executing - 1 WHERE env = :env AND name = :queue AND executing > 0;

-- Batched releases: a commit batch gives back all its slots of one key in one statement.
-- name: give_slots
UPDATE queue_slots
SET executing = CASE WHEN executing > :n THEN executing - :n ELSE 0 END
WHERE env = :env AND queue = :queue AND ckey = :ckey;

-- name: give_queue_slots
UPDATE queues SET executing = CASE WHEN executing > :n THEN executing - :n ELSE 0 END
WHERE env = :env AND name = :queue;

-- Each statement that finishes a run clears segment_started_at on a first attempt (issue
-- 18, bytes per finished run): it is then started_at or later, and nothing reads it of
-- a finished run but the timeline's start of the last attempt, which takes started_at
-- for attempt 1. A retried run keeps it: its last attempt started then. A completion's
-- JSON null output is stored as NULL (5 bytes fewer; every reader loads both as None).
-- They also clear ready_at (the claim order, read of QUEUED runs only) and store NULL
-- for an available_at equal to created_at and a priority or exec_seconds of 0, which
-- run_from_row reads back as those values (migration 0025_finished_row_nulls): four
-- 8-byte values, 29 -> 33 finished no-op rows a PostgreSQL page. Keep the six statements
-- that finish a run (complete_run(s), end_run, expire_runs, cancel_idle) alike.
-- name: complete_run
UPDATE runs SET status = 'COMPLETED', output = NULLIF(:output, 'null'), finished_at = :now,
    updated_at = :now, worker_id = NULL, holds_slot = 0, wait_reason = NULL, hooks_due = 0,
    segment_started_at = CASE WHEN attempt = 1 THEN NULL ELSE segment_started_at END,
    available_at = NULLIF(available_at, created_at), ready_at = NULL,
    priority = NULLIF(priority, 0), exec_seconds = NULLIF(exec_seconds, 0),
    active_seconds = active_seconds + CASE WHEN status = 'EXECUTING' AND segment_started_at < :now
        THEN :now - segment_started_at ELSE 0 END
WHERE id = :run_id;

-- A commit batch's completed runs in one statement (SQLite runs complete_run per row, in
-- process, which costs no round trips).
-- A batch of completed runs ended in one round trip: their slots given back (queue rows
-- locked already by lock_queues_of_runs, so slot rows cannot deadlock), the runs marked,
-- stray wait rows cleared, and each parent's pending-children count lowered; returns the
-- parents' counts (a parent at 0 has all its children done). The parts touch different
-- tables, so one snapshot for all is what running them one by one would see.
-- name: complete_runs [postgres]
WITH gq AS (
    UPDATE queues SET executing = CASE WHEN executing > g.n THEN executing - g.n ELSE 0 END
    FROM unnest(CAST(:q_envs AS text[]), CAST(:q_names AS text[]),
                CAST(:q_ns AS integer[])) AS g(env, name, n)
    WHERE queues.env = g.env AND queues.name = g.name),
gs AS (
    UPDATE queue_slots
    SET executing = CASE WHEN executing > g.n THEN executing - g.n ELSE 0 END
    FROM unnest(CAST(:s_envs AS text[]), CAST(:s_queues AS text[]), CAST(:s_keys AS text[]),
                CAST(:s_ns AS integer[])) AS g(env, queue, ckey, n)
    WHERE queue_slots.env = g.env AND queue_slots.queue = g.queue
      AND queue_slots.ckey = g.ckey),
done AS (
    UPDATE runs SET status = 'COMPLETED', output = NULLIF(u.output, 'null'), finished_at = :now,
        updated_at = :now, worker_id = NULL, holds_slot = 0, wait_reason = NULL,
        segment_started_at = CASE WHEN runs.attempt = 1 THEN NULL ELSE runs.segment_started_at END,
        available_at = NULLIF(runs.available_at, runs.created_at), ready_at = NULL,
        priority = NULLIF(runs.priority, 0), exec_seconds = NULLIF(runs.exec_seconds, 0),
        hooks_due = 0, active_seconds = runs.active_seconds + CASE WHEN runs.status = 'EXECUTING' AND runs.segment_started_at < :now
            THEN :now - runs.segment_started_at ELSE 0 END
    FROM unnest(CAST(:ids AS text[]), CAST(:outputs AS text[])) AS u(id, output)
    WHERE runs.id = u.id),
w AS (DELETE FROM run_waits WHERE run_id = ANY(:ids)),
o AS (INSERT INTO usage_outbox (run_ids) VALUES (CAST(to_json(CAST(:ids AS text[])) AS TEXT))),
parents AS (
    UPDATE waitpoints SET pending_children = pending_children - p.n
    FROM unnest(CAST(:p_ids AS text[]), CAST(:p_ns AS integer[])) AS p(id, n)
    WHERE waitpoints.id = p.id AND waitpoints.status = 'pending'
    RETURNING waitpoints.id, waitpoints.pending_children)
SELECT id, pending_children FROM parents ORDER BY id;

-- name: clear_runs_waits
DELETE FROM run_waits WHERE run_id IN (SELECT value FROM json_each(:ids));

-- name: clear_runs_waits [postgres]
DELETE FROM run_waits WHERE run_id = ANY(:ids);

-- name: children_done
UPDATE waitpoints SET pending_children = pending_children - :n
WHERE id = :id AND status = 'pending'
RETURNING pending_children;

-- The queue rows of runs about to give back their slots, and of the queues a claim in
-- the same transaction will take from, locked at once in the claim's order (by name)
-- before any slot is released: releases and claims never deadlock.
-- The rows of the queues claimed from come back (served), so the claim need not read
-- them again; has_queued as in queues_for_claim. A served queue with no queued run is
-- neither read nor locked: idle queues do not make concurrent claims take turns.
-- name: lock_queues_of_runs [postgres]
SELECT q.*, (q.env = :env AND q.name = ANY(:names)) AS served,
       (SELECT TRUE FROM runs r WHERE r.env = q.env AND r.queue = q.name
        AND r.status = 'QUEUED' ORDER BY r.concurrency_key, r.ready_at LIMIT 1) AS has_queued
FROM queues q
WHERE (q.env, q.name) IN (SELECT r.env, r.queue FROM runs r WHERE r.id = ANY(:ids))
   OR (q.env = :env AND q.name = ANY(:names)
       AND (SELECT TRUE FROM runs r WHERE r.env = q.env AND r.queue = q.name
            AND r.status = 'QUEUED' ORDER BY r.concurrency_key, r.ready_at LIMIT 1))
ORDER BY q.env, q.name
FOR UPDATE OF q;

-- Committing a worker's batch ----------------------------------------------------------------

-- The fencing read (C4): only runs still EXECUTING (or DEQUEUED, held to start) under this
-- worker at the epoch it claimed, while the worker's lease is live. On PostgreSQL the rows are locked until
-- commit, so a reaper or canceller cannot slip between this check and the writes.
-- name: fence
SELECT r.id, r.lease_epoch, r.env, r.queue, r.concurrency_key, r.holds_slot,
       r.parent_waitpoint_id, r.status
FROM runs r
WHERE r.id IN (SELECT value FROM json_each(:ids)) AND r.status IN ('EXECUTING', 'DEQUEUED')
  AND r.worker_id = :worker_id
  AND EXISTS (SELECT 1 FROM workers w WHERE w.id = :worker_id AND w.status = 'alive'
              AND w.lease_expires_at >= :now);

-- name: fence [postgres]
SELECT r.id, r.lease_epoch, r.env, r.queue, r.concurrency_key, r.holds_slot,
       r.parent_waitpoint_id, r.status
FROM runs r
WHERE r.id = ANY(:ids) AND r.status IN ('EXECUTING', 'DEQUEUED') AND r.worker_id = :worker_id
  AND EXISTS (SELECT 1 FROM workers w WHERE w.id = :worker_id AND w.status = 'alive'
              AND w.lease_expires_at >= :now)
ORDER BY r.id
FOR NO KEY UPDATE OF r;

-- name: insert_journal
INSERT INTO journal (run_id, key, kind, fingerprint, status, output, waitpoint_id, attempt,
                     started_at, finished_at)
VALUES (:run_id, :key, :kind, :fingerprint, :status, :output, :waitpoint_id, :attempt,
        :started_at, :finished_at)
ON CONFLICT (run_id, key) DO UPDATE SET
    kind = excluded.kind, fingerprint = excluded.fingerprint, status = excluded.status,
    output = excluded.output, waitpoint_id = excluded.waitpoint_id,
    attempt = excluded.attempt, started_at = excluded.started_at,
    finished_at = excluded.finished_at;

-- A batch's step results in one statement (a batch never holds one step twice).
-- name: insert_journal_rows [postgres]
INSERT INTO journal (run_id, key, kind, fingerprint, status, output, waitpoint_id, attempt,
                     started_at, finished_at)
SELECT * FROM unnest(CAST(:run_id AS text[]), CAST(:key AS text[]), CAST(:kind AS text[]),
                     CAST(:fingerprint AS text[]), CAST(:status AS text[]),
                     CAST(:output AS text[]), CAST(:waitpoint_id AS text[]),
                     CAST(:attempt AS integer[]), CAST(:started_at AS double precision[]),
                     CAST(:finished_at AS double precision[]))
ON CONFLICT (run_id, key) DO UPDATE SET
    kind = excluded.kind, fingerprint = excluded.fingerprint, status = excluded.status,
    output = excluded.output, waitpoint_id = excluded.waitpoint_id,
    attempt = excluded.attempt, started_at = excluded.started_at,
    finished_at = excluded.finished_at;

-- name: insert_event
INSERT INTO run_events (run_id, ts, kind, attempt, level, message, data)
VALUES (:run_id, :ts, :kind, :attempt, :level, :message, :data);

-- name: set_metadata
UPDATE runs SET metadata = :metadata, updated_at = :now WHERE id = :run_id;

-- name: end_run
UPDATE runs SET status = :status, output = :output, error = :error, finished_at = :now,
    updated_at = :now, worker_id = NULL, holds_slot = 0, wait_reason = NULL,
    segment_started_at = CASE WHEN attempt = 1 THEN NULL ELSE segment_started_at END,
    available_at = NULLIF(available_at, created_at), ready_at = NULL,
    priority = NULLIF(priority, 0), exec_seconds = NULLIF(exec_seconds, 0),
    hooks_due = :hooks_due, active_seconds = active_seconds + CASE WHEN status = 'EXECUTING' AND segment_started_at < :now
        THEN :now - segment_started_at ELSE 0 END
WHERE id = :run_id
RETURNING id;

-- The same, with the run's usage outbox row (SQLite adds it with usage_outbox_add).
-- name: end_run [postgres]
WITH u AS (
    UPDATE runs SET status = :status, output = :output, error = :error, finished_at = :now,
        updated_at = :now, worker_id = NULL, holds_slot = 0, wait_reason = NULL,
        segment_started_at = CASE WHEN attempt = 1 THEN NULL ELSE segment_started_at END,
        available_at = NULLIF(available_at, created_at), ready_at = NULL,
        priority = NULLIF(priority, 0), exec_seconds = NULLIF(exec_seconds, 0),
        hooks_due = :hooks_due, active_seconds = active_seconds + CASE WHEN status = 'EXECUTING' AND segment_started_at < :now
            THEN :now - segment_started_at ELSE 0 END
    WHERE id = :run_id
    RETURNING id),
o AS (INSERT INTO usage_outbox (run_ids) SELECT CAST(json_agg(id) AS TEXT) FROM u HAVING COUNT(*) > 0)
SELECT id FROM u;

-- name: retry_run
UPDATE runs SET status = 'QUEUED', attempt = attempt + 1, error = :error,
    available_at = :retry_at, ready_at = :retry_at - COALESCE(priority, 0), updated_at = :now,
    worker_id = NULL, holds_slot = 0, exec_seconds = 0, active_seconds = active_seconds + CASE WHEN status = 'EXECUTING' AND segment_started_at < :now
        THEN :now - segment_started_at ELSE 0 END
WHERE id = :run_id;

-- name: handback_run
UPDATE runs SET status = 'QUEUED', available_at = :now, ready_at = :now - COALESCE(priority, 0),
    updated_at = :now, worker_id = NULL, holds_slot = 0, exec_seconds = :exec_seconds,
    active_seconds = active_seconds + CASE WHEN status = 'EXECUTING' AND segment_started_at < :now
        THEN :now - segment_started_at ELSE 0 END
WHERE id = :run_id;

-- name: suspend_run
UPDATE runs SET status = 'WAITING', updated_at = :now, worker_id = NULL, holds_slot = 0,
    exec_seconds = :exec_seconds, wait_reason = :wait_reason, active_seconds = active_seconds + CASE WHEN status = 'EXECUTING' AND segment_started_at < :now
        THEN :now - segment_started_at ELSE 0 END
WHERE id = :run_id;

-- A commit batch's wait registrations (StartWait without children) in one statement: each
-- new waitpoint inserted (the run's env; a replay finds it there already), then the
-- journal entry, done if its waitpoint is already satisfied (a token completed before the
-- wait), else waiting. A waitpoint inserted here is pending, which is what the snapshot
-- (without it) says too. Rows come deduplicated: ON CONFLICT may touch a row only once.
-- Keep in sync with insert_waitpoint and insert_journal (SqlStore._start_wait).
-- name: start_waits [postgres]
WITH o AS (
    SELECT * FROM unnest(CAST(:run_ids AS text[]), CAST(:keys AS text[]),
                         CAST(:kinds AS text[]), CAST(:fingerprints AS text[]),
                         CAST(:wp_ids AS text[]), CAST(:wp_kinds AS text[]),
                         CAST(:timeouts AS double precision[]),
                         CAST(:attempts AS integer[]),
                         CAST(:started AS double precision[]))
        AS o(run_id, key, kind, fingerprint, wp_id, wp_kind, timeout_at, attempt, started_at)),
new AS (
    INSERT INTO waitpoints (id, env, kind, status, run_id, timeout_at, idempotency_key,
                            idempotency_expires_at, tags, pending_children, created_at)
    SELECT o.wp_id, r.env, o.wp_kind, 'pending', o.run_id, o.timeout_at, NULL, NULL, '[]', 0,
           :now
    FROM o JOIN runs r ON r.id = o.run_id
    WHERE o.wp_kind IS NOT NULL
    ON CONFLICT (id) DO NOTHING),
e AS (
    SELECT o.*, CASE WHEN EXISTS (SELECT 1 FROM waitpoints w
                                  WHERE w.id = o.wp_id AND w.status <> 'pending')
                     THEN 'done' ELSE 'waiting' END AS status
    FROM o)
INSERT INTO journal (run_id, key, kind, fingerprint, status, output, waitpoint_id, attempt,
                     started_at, finished_at)
SELECT run_id, key, kind, fingerprint, status, NULL, wp_id, attempt, started_at,
       CASE WHEN status = 'done' THEN CAST(:now AS double precision) END
FROM e
ON CONFLICT (run_id, key) DO UPDATE SET
    kind = excluded.kind, fingerprint = excluded.fingerprint, status = excluded.status,
    output = excluded.output, waitpoint_id = excluded.waitpoint_id,
    attempt = excluded.attempt, started_at = excluded.started_at,
    finished_at = excluded.finished_at;

-- A commit batch's suspends in one statement (SqlStore._end_segment's "suspend", once per
-- run there): slots given back (queue rows locked already by lock_queues_of_runs, so slot
-- rows cannot deadlock; the runs are locked by the fence), and each run either parked
-- WAITING on its waitpoints or, if one of them is satisfied already (completed between
-- registering and suspending), handed back to replay now, its waits cleared and its env
-- woken. One snapshot for all: run_waits rows inserted here are for parked runs only, and
-- the rows deleted are the handed-back runs' older ones, so no part needs another's
-- writes. Returns the number of envs woken.
-- The waitpoints are read FOR SHARE: a completion of one that has not committed yet
-- makes this wait for it and then read it completed (hand back); one that comes after
-- waits for this commit, then finds the run_waits rows written here and resumes the run
-- (fire_timers skips it until then). Read without the lock, a run parked as its
-- waitpoint completed would wait forever.
-- name: suspend_runs [postgres]
WITH s AS (
    SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:exec_seconds AS double precision[]),
                         CAST(:wait_reasons AS text[])) AS s(id, exec_seconds, wait_reason)),
w AS (
    SELECT * FROM unnest(CAST(:w_runs AS text[]), CAST(:w_ids AS text[]))
        AS w(run_id, waitpoint_id)),
wps AS (
    SELECT p.id, p.status FROM waitpoints p WHERE p.id IN (SELECT waitpoint_id FROM w)
    ORDER BY p.id
    FOR SHARE),
ready AS (
    SELECT DISTINCT w.run_id AS id FROM w JOIN wps p ON p.id = w.waitpoint_id
    WHERE p.status <> 'pending'),
held AS (
    SELECT r.env, r.queue, r.concurrency_key FROM runs r JOIN s ON s.id = r.id
    WHERE r.holds_slot = 1),
gq AS (
    UPDATE queues SET executing = GREATEST(executing - g.n, 0)
    FROM (SELECT env, queue, COUNT(*) AS n FROM held GROUP BY env, queue) g
    WHERE queues.env = g.env AND queues.name = g.queue),
gs AS (
    UPDATE queue_slots SET executing = GREATEST(executing - g.n, 0)
    FROM (SELECT env, queue, concurrency_key, COUNT(*) AS n FROM held
          GROUP BY env, queue, concurrency_key) g
    WHERE queue_slots.env = g.env AND queue_slots.queue = g.queue
      AND queue_slots.ckey = g.concurrency_key),
waits AS (
    INSERT INTO run_waits (waitpoint_id, run_id)
    SELECT waitpoint_id, run_id FROM w WHERE run_id NOT IN (SELECT id FROM ready)
    ON CONFLICT DO NOTHING),
cleared AS (DELETE FROM run_waits WHERE run_id IN (SELECT id FROM ready)),
parked AS (
    UPDATE runs SET status = 'WAITING', updated_at = :now, worker_id = NULL, holds_slot = 0,
        exec_seconds = s.exec_seconds, wait_reason = s.wait_reason,
        active_seconds = runs.active_seconds + CASE WHEN runs.status = 'EXECUTING' AND runs.segment_started_at < :now
            THEN :now - runs.segment_started_at ELSE 0 END
    FROM s WHERE runs.id = s.id AND s.id NOT IN (SELECT id FROM ready)),
handed AS (
    UPDATE runs SET status = 'QUEUED', available_at = :now, ready_at = :now - COALESCE(runs.priority, 0),
        updated_at = :now, worker_id = NULL, holds_slot = 0, exec_seconds = s.exec_seconds,
        active_seconds = runs.active_seconds + CASE WHEN runs.status = 'EXECUTING' AND runs.segment_started_at < :now
            THEN :now - runs.segment_started_at ELSE 0 END
    FROM s WHERE runs.id = s.id AND s.id IN (SELECT id FROM ready)
    RETURNING runs.env),
woken AS (SELECT pg_notify(:channel, env) FROM (SELECT DISTINCT env FROM handed) h)
SELECT COUNT(*) AS n FROM woken;

-- name: slot_of_run
SELECT env, queue, concurrency_key, holds_slot, parent_waitpoint_id, attempt, max_attempts,
       priority
FROM runs WHERE id = :run_id;

-- Keys visited without a ready run move to the back of the round robin.
-- name: touch_slot
UPDATE queue_slots SET last_claim_at = :stamp
WHERE env = :env AND queue = :queue AND ckey = :ckey;

-- Runs that ended outside a worker (cancelled while idle, expired, worker lost): a worker
-- serving the task takes them to run their end hooks, once.
-- name: take_hooks_due
UPDATE runs SET hooks_due = 0
WHERE id IN (SELECT id FROM runs WHERE env = :env AND hooks_due = 1
             AND task_id IN (SELECT value FROM json_each(:task_ids)) LIMIT 100)
RETURNING *;

-- name: take_hooks_due [postgres]
UPDATE runs SET hooks_due = 0
WHERE id IN (SELECT id FROM runs WHERE env = :env AND hooks_due = 1
             AND task_id = ANY(:task_ids) LIMIT 100 FOR UPDATE SKIP LOCKED)
RETURNING *;

-- Waitpoints -------------------------------------------------------------------------------

-- Waitpoint ids made inside a run are derived from the run and journal key, so a replay
-- that creates the same token again finds the first one.
-- name: insert_waitpoint
INSERT INTO waitpoints (id, env, kind, status, run_id, timeout_at, idempotency_key,
                        idempotency_expires_at, tags, pending_children, created_at)
VALUES (:id, :env, :kind, 'pending', :run_id, :timeout_at, :idempotency_key,
        :idempotency_expires_at, :tags, :pending_children, :now)
ON CONFLICT (id) DO NOTHING;

-- name: release_waitpoint_key
UPDATE waitpoints SET idempotency_key = NULL
WHERE env = :env AND idempotency_key = :idempotency_key AND idempotency_expires_at <= :now;

-- name: find_waitpoint_by_key
SELECT * FROM waitpoints WHERE env = :env AND idempotency_key = :idempotency_key;

-- name: get_waitpoint
SELECT * FROM waitpoints WHERE env = :env AND id = :id;

-- name: waitpoint_state
SELECT id, kind, status, output, is_error FROM waitpoints WHERE id = :id;

-- Locked against a completion in flight: see suspend_runs.
-- name: waitpoint_state [postgres]
SELECT id, kind, status, output, is_error FROM waitpoints WHERE id = :id FOR SHARE;

-- name: list_waitpoints
SELECT * FROM waitpoints WHERE env = :env
  AND (CAST(:status AS TEXT) IS NULL OR status = :status)
ORDER BY id DESC LIMIT :limit;

-- name: waiting_runs
SELECT run_id FROM run_waits WHERE waitpoint_id = :id;

-- First completion wins (C7): only a pending waitpoint changes.
-- name: complete_waitpoint
UPDATE waitpoints SET status = :status, output = :output, is_error = :is_error,
    completed_at = :now
WHERE id = :id AND status = 'pending'
RETURNING id;

-- A completed wait shows as done in its runs' journals (replay reads the waitpoint).
-- name: finish_wait_entries
UPDATE journal SET status = 'done', finished_at = :now
WHERE waitpoint_id = :id AND status = 'waiting'
  AND run_id IN (SELECT run_id FROM run_waits WHERE waitpoint_id = :id
                 UNION SELECT run_id FROM waitpoints WHERE id = :id AND run_id IS NOT NULL);

-- name: insert_run_wait
INSERT INTO run_waits (waitpoint_id, run_id) VALUES (:waitpoint_id, :run_id)
ON CONFLICT DO NOTHING;

-- A waiting run whose waitpoint completed goes back to the queue and replays.
-- name: resume_runs
UPDATE runs SET status = 'QUEUED', available_at = :now, ready_at = :now - COALESCE(priority, 0),
    updated_at = :now, wait_reason = NULL,
    waited_seconds = waited_seconds + CASE WHEN updated_at < :now THEN :now - updated_at ELSE 0 END
WHERE status = 'WAITING' AND id IN (SELECT run_id FROM run_waits WHERE waitpoint_id = :id)
RETURNING id;

-- name: clear_run_waits
DELETE FROM run_waits WHERE run_id = :run_id;

-- name: get_waitpoint_env
SELECT env FROM waitpoints WHERE id = :id;

-- A child that already existed (same idempotency key) joins the new wait if still running.
-- name: adopt_child
UPDATE runs SET parent_waitpoint_id = :waitpoint_id
WHERE id = :id AND status NOT IN ('COMPLETED', 'FAILED', 'CANCELED', 'EXPIRED', 'TIMED_OUT');

-- name: child_done
UPDATE waitpoints SET pending_children = pending_children - 1
WHERE id = :id AND status = 'pending'
RETURNING pending_children;

-- name: due_timers
SELECT id, kind FROM waitpoints
WHERE status = 'pending' AND timeout_at IS NOT NULL AND timeout_at <= :now
ORDER BY timeout_at LIMIT 5000;

-- due_timers and SqlStore._complete for each, in two statements: this one locks and fires
-- up to 5000 due waitpoints, completed (a sleep) or timed out (a token's or children's
-- timeout), and returns them; resume_fired then resumes their waiting runs. First
-- completion wins (C7): rows another scheduler, a completion or a suspend holds are
-- skipped for the next tick, and the UPDATE re-checks pending after locking.
-- Not one statement: a statement reads run_waits in the snapshot it began with, so a
-- suspend that committed (and released its FOR SHARE lock) after that snapshot but before
-- this locked its waitpoint was invisible to it, and its run stayed WAITING on a fired
-- sleep forever (the 100,000-run soak's 50 stuck runs). resume_fired's snapshot is taken
-- after these locks: a suspend that committed before them is in it, one after them waits
-- for this commit and reads the waitpoint fired (suspend_runs hands the run back).
-- name: fire_timers [postgres]
WITH due AS (
    SELECT id FROM waitpoints
    WHERE status = 'pending' AND timeout_at IS NOT NULL AND timeout_at <= :now
    ORDER BY timeout_at LIMIT 5000
    FOR UPDATE SKIP LOCKED)
UPDATE waitpoints w
SET status = CASE WHEN w.kind = 'sleep' THEN 'completed' ELSE 'timed_out' END,
    output = NULL, is_error = CASE WHEN w.kind = 'sleep' THEN 0 ELSE 1 END,
    completed_at = :now
FROM due WHERE w.id = due.id AND w.status = 'pending'
RETURNING w.id;

-- Scheduling -------------------------------------------------------------------------------

-- name: promote_delayed
UPDATE runs SET status = 'QUEUED', updated_at = :now
WHERE status = 'DELAYED' AND delay_until <= :now
RETURNING env;

-- name: expire_runs
UPDATE runs SET status = 'EXPIRED', finished_at = :now, updated_at = :now, hooks_due = 1,
    available_at = NULLIF(available_at, created_at), ready_at = NULL,
    priority = NULLIF(priority, 0), exec_seconds = NULLIF(exec_seconds, 0),
    error = '{"code": "expired", "message": "the run did not start before its ttl"}'
WHERE status IN ('QUEUED', 'DELAYED') AND ttl_expires_at IS NOT NULL
  AND ttl_expires_at <= :now AND started_at IS NULL
RETURNING id, parent_waitpoint_id;

-- Cancelling -------------------------------------------------------------------------------

-- name: cancel_idle
UPDATE runs SET status = 'CANCELED', finished_at = :now, updated_at = :now, wait_reason = NULL,
    hooks_due = 1,
    available_at = NULLIF(available_at, created_at), ready_at = NULL,
    priority = NULLIF(priority, 0), exec_seconds = NULLIF(exec_seconds, 0),
    error = '{"code": "canceled", "message": "the run was canceled"}'
WHERE id = :id AND status IN ('QUEUED', 'DELAYED', 'WAITING')
RETURNING id, parent_waitpoint_id;

-- name: cancel_executing
UPDATE runs SET cancel_requested = 1, updated_at = :now
WHERE id = :id AND status IN ('EXECUTING', 'DEQUEUED');

-- name: children_to_cancel
SELECT id FROM runs
WHERE parent_id = :id AND status IN ('QUEUED', 'DELAYED', 'WAITING', 'DEQUEUED', 'EXECUTING');

-- Queues -----------------------------------------------------------------------------------

-- name: declare_queue
INSERT INTO queues (env, name, concurrency_limit, global_limit, rate_limit_count,
                    rate_limit_period, updated_at)
VALUES (:env, :name, :concurrency_limit, :global_limit, :rate_limit_count,
        :rate_limit_period, :now)
ON CONFLICT (env, name) DO UPDATE SET
    concurrency_limit = CASE WHEN queues.limit_overridden = 1 THEN queues.concurrency_limit
                             ELSE excluded.concurrency_limit END,
    global_limit = excluded.global_limit,
    rate_limit_count = excluded.rate_limit_count,
    rate_limit_period = excluded.rate_limit_period,
    updated_at = excluded.updated_at;

-- name: get_queue
SELECT * FROM queues WHERE env = :env AND name = :name;

-- name: list_queues
SELECT q.*,
  (SELECT COUNT(*) FROM runs r WHERE r.env = q.env AND r.queue = q.name AND r.status = 'QUEUED')
      AS queued
FROM queues q WHERE q.env = :env ORDER BY q.name;

-- name: queue_state
SELECT q.*, COALESCE(s.executing, 0) AS key_executing
FROM queues q LEFT JOIN queue_slots s
  ON s.env = q.env AND s.queue = q.name AND s.ckey = :ckey
WHERE q.env = :env AND q.name = :queue;

-- name: queue_keys
SELECT ckey, executing FROM queue_slots WHERE env = :env AND queue = :queue AND executing > 0
ORDER BY executing DESC LIMIT 50;

-- Tasks ------------------------------------------------------------------------------------

-- name: upsert_task
INSERT INTO tasks (env, id, queue, payload_schema, spec, updated_at)
VALUES (:env, :id, :queue, :payload_schema, :spec, :now)
ON CONFLICT (env, id) DO UPDATE SET queue = excluded.queue,
    payload_schema = excluded.payload_schema, spec = excluded.spec,
    updated_at = excluded.updated_at;

-- name: get_task
SELECT * FROM tasks WHERE env = :env AND id = :id;

-- name: list_tasks
SELECT * FROM tasks WHERE env = :env ORDER BY id;

-- API keys and request idempotency ----------------------------------------------------------

-- name: insert_api_key
INSERT INTO api_keys (id, env, prefix, key_hash, created_at)
VALUES (:id, :env, :prefix, :key_hash, :now);

-- name: find_api_key
SELECT id, env, key_hash, revoked_at FROM api_keys WHERE key_hash = :key_hash;

-- name: list_api_keys
SELECT id, env, prefix, created_at, revoked_at FROM api_keys
WHERE CAST(:env AS TEXT) IS NULL OR env = :env
ORDER BY created_at;

-- name: revoke_api_key
UPDATE api_keys SET revoked_at = :now
WHERE (id = :id OR prefix = :id) AND revoked_at IS NULL;

-- name: claim_request_key
INSERT INTO api_requests (env, key, created_at) VALUES (:env, :key, :now)
ON CONFLICT DO NOTHING
RETURNING key;

-- name: request_response
SELECT response FROM api_requests WHERE env = :env AND key = :key;

-- name: set_request_response
UPDATE api_requests SET response = :response WHERE env = :env AND key = :key;

-- name: forget_old_requests
DELETE FROM api_requests WHERE created_at < :before;

-- Settings ---------------------------------------------------------------------------------

-- name: get_setting
SELECT value FROM settings WHERE key = :key;

-- name: insert_setting
INSERT INTO settings (key, value) VALUES (:key, :value) ON CONFLICT DO NOTHING;

-- Dashboard sessions ------------------------------------------------------------------------

-- name: insert_dashboard_session
INSERT INTO dashboard_sessions (id_hash, created_at, expires_at)
VALUES (:id_hash, :now, :expires_at);

-- name: find_dashboard_session
SELECT id_hash FROM dashboard_sessions WHERE id_hash = :id_hash AND expires_at > :now;

-- name: delete_dashboard_session
DELETE FROM dashboard_sessions WHERE id_hash = :id_hash;

-- name: delete_expired_dashboard_sessions
DELETE FROM dashboard_sessions WHERE expires_at <= :now;

-- Trigger.dev SDK compatibility -----------------------------------------------------------

-- name: reset_idempotency_key
UPDATE runs SET idempotency_active = 0
WHERE env = :env AND task_id = :task_id AND idempotency_key = :idempotency_key
  AND idempotency_active = 1
RETURNING id;

-- name: put_packet
INSERT INTO packets (env, path, content_type, data, created_at)
VALUES (:env, :path, :content_type, :data, :now)
ON CONFLICT (env, path) DO UPDATE SET content_type = excluded.content_type,
    data = excluded.data, created_at = excluded.created_at;

-- name: get_packet
SELECT content_type, data FROM packets WHERE env = :env AND path = :path;

-- name: forget_old_packets
DELETE FROM packets WHERE created_at < :before;

-- Schedules ---------------------------------------------------------------------------------
-- Slots are computed in Python (outlast/cron.py); these statements keep them. A fire is a
-- compare and set on next_run_at plus a (schedule_id, slot) primary key, both in the
-- transaction that inserts the run, so a slot fires once however many schedulers run (C6).

-- name: insert_schedule
INSERT INTO schedules (
    id, env, task_id, type, cron, timezone, external_id, deduplication_key, active, in_code,
    next_run_at, created_at, updated_at
) VALUES (
    :id, :env, :task_id, :type, :cron, :timezone, :external_id, :deduplication_key, :active,
    :in_code, :next_run_at, :now, :now
)
ON CONFLICT DO NOTHING
RETURNING id;

-- name: save_schedule
UPDATE schedules SET task_id = :task_id, cron = :cron, timezone = :timezone,
    external_id = :external_id, active = :active, next_run_at = :next_run_at,
    updated_at = :now
WHERE env = :env AND id = :id
RETURNING *;

-- The code declares this schedule again: a schedule it had dropped comes back active; one
-- paused by hand stays paused.
-- name: declare_schedule
UPDATE schedules SET cron = :cron, timezone = :timezone, active = :active, in_code = 1,
    next_run_at = :next_run_at, updated_at = :now
WHERE env = :env AND id = :id;

-- name: undeclare_schedule
UPDATE schedules SET active = 0, in_code = 0, next_run_at = NULL, updated_at = :now
WHERE env = :env AND task_id = :task_id AND type = 'DECLARATIVE' AND in_code = 1;

-- name: declarative_schedules
SELECT * FROM schedules WHERE env = :env AND type = 'DECLARATIVE';

-- name: get_schedule
SELECT * FROM schedules WHERE env = :env AND id = :id;

-- name: get_schedule_by_key
SELECT * FROM schedules WHERE env = :env AND deduplication_key = :deduplication_key;

-- name: list_schedules
SELECT * FROM schedules
WHERE env = :env
  AND (CAST(:task_id AS TEXT) IS NULL OR task_id = :task_id)
  AND (CAST(:external_id AS TEXT) IS NULL OR external_id = :external_id)
  AND (CAST(:type AS TEXT) IS NULL OR type = :type)
  AND (CAST(:active AS INTEGER) IS NULL OR active = :active)
ORDER BY created_at, id
LIMIT :limit OFFSET :offset;

-- name: count_schedules
SELECT COUNT(*) AS n FROM schedules
WHERE env = :env
  AND (CAST(:task_id AS TEXT) IS NULL OR task_id = :task_id)
  AND (CAST(:external_id AS TEXT) IS NULL OR external_id = :external_id)
  AND (CAST(:type AS TEXT) IS NULL OR type = :type)
  AND (CAST(:active AS INTEGER) IS NULL OR active = :active);

-- name: delete_schedule
DELETE FROM schedules WHERE env = :env AND id = :id RETURNING id;

-- name: delete_schedule_slots
DELETE FROM schedule_slots WHERE schedule_id = :id;

-- name: due_schedules
SELECT * FROM schedules
WHERE active = 1 AND next_run_at IS NOT NULL AND next_run_at <= :now
ORDER BY next_run_at
LIMIT :limit;

-- Compare and set: only the scheduler that read this next slot moves the schedule on.
-- name: advance_schedule
UPDATE schedules SET next_run_at = :next_run_at
WHERE id = :id AND active = 1 AND next_run_at = :expected
RETURNING id;

-- The slot's key; a second insert of the same slot does nothing (C6).
-- name: insert_schedule_slot
INSERT INTO schedule_slots (schedule_id, slot, run_id, fired_at)
VALUES (:schedule_id, :slot, :run_id, :now)
ON CONFLICT DO NOTHING
RETURNING slot;

-- name: schedule_fired
UPDATE schedules SET last_run_at = :slot, last_run_id = :run_id WHERE id = :id;

-- name: schedule_slots
SELECT slot, run_id, fired_at FROM schedule_slots WHERE schedule_id = :id
ORDER BY slot DESC LIMIT :limit;

-- name: prune_schedule_slots
DELETE FROM schedule_slots WHERE fired_at < :before;

-- Bulk actions ---------------------------------------------------------------------------
-- (see _sql_bulk.py; the filter's clauses are built there, one bound parameter each)

-- The newest run of the environment: a bulk action's set ends here.
-- name: insert_bulk_action
INSERT INTO bulk_actions (id, env, action, filter, bound_id, cursor, status, total,
                          created_at, updated_at)
VALUES (:id, :env, :action, :filter, :bound_id, '', 'running', :total, :now, :now);

-- name: get_bulk_action
SELECT * FROM bulk_actions WHERE env = :env AND id = :id;

-- name: list_bulk_actions
SELECT * FROM bulk_actions WHERE env = :env ORDER BY id DESC LIMIT :limit;

-- Compare and set on the cursor: only the runner that read this cursor commits the next
-- batch, in the same transaction as the batch's cancels or replays (exactly once).
-- name: advance_bulk_action
UPDATE bulk_actions
SET cursor = :cursor, processed = processed + :covered, updated_at = :now
WHERE env = :env AND id = :id AND cursor = :expected AND status = 'running'
RETURNING id;

-- name: count_bulk_batch
UPDATE bulk_actions
SET succeeded = succeeded + :succeeded, requested = requested + :requested,
    skipped = skipped + :skipped, last_error = COALESCE(:last_error, last_error)
WHERE env = :env AND id = :id;

-- name: finish_bulk_action
UPDATE bulk_actions SET status = :status, updated_at = :now, finished_at = :now
WHERE env = :env AND id = :id AND status = 'running';

-- Token buttons (see migrations/0004) ---------------------------------------------------

-- name: set_waitpoint_buttons
UPDATE waitpoints SET buttons = :buttons WHERE env = :env AND id = :id;

-- Schema upgrades: expand then contract --------------------------------------------------

-- name: applied_migrations
SELECT name, number, kind FROM outlast_migrations ORDER BY number, name;

-- name: record_migration
INSERT INTO outlast_migrations (name, number, kind, applied_at, release)
VALUES (:name, :number, :kind, :now, :release)
ON CONFLICT (name) DO NOTHING;

-- name: register_process
INSERT INTO processes (id, kind, env, host, pid, release, schema_version, migrations,
                       started_at, seen_at, listen, dashboard)
VALUES (:id, :kind, :env, :host, :pid, :release, :schema_version, :migrations, :now, :now,
        :listen, :dashboard);

-- name: touch_process
UPDATE processes SET seen_at = :now WHERE id = :id AND stopped_at IS NULL;

-- name: stop_process
UPDATE processes SET stopped_at = :now WHERE id = :id AND stopped_at IS NULL;

-- Live processes with the release they run: a worker by its row in workers (alive, lease
-- current on the database clock), any other kind by a recent seen_at.
-- name: live_processes
SELECT p.*
FROM processes p LEFT JOIN workers w ON w.id = p.id
WHERE p.stopped_at IS NULL
  AND ((p.kind = 'worker' AND w.status = 'alive' AND w.lease_expires_at >= :now)
       OR (p.kind <> 'worker' AND p.seen_at >= :since))
ORDER BY p.kind, p.started_at;

-- Live workers of a release from before processes registered (no row in processes): their
-- release is unknown, so they hold back every contract step.
-- name: live_unregistered_workers
SELECT w.id, w.env, w.host, w.pid, w.started_at FROM workers w
LEFT JOIN processes p ON p.id = w.id
WHERE w.status = 'alive' AND w.lease_expires_at >= :now AND p.id IS NULL
ORDER BY w.started_at;

-- name: table_exists
SELECT name FROM sqlite_master WHERE type = 'table' AND name = :name;

-- name: table_exists [postgres]
SELECT :name AS name WHERE to_regclass(:name) IS NOT NULL;

-- Doctor ---------------------------------------------------------------------------------

-- The database's connection limit and use, and its clock (PostgreSQL only).
-- name: doctor_database
SELECT NULL AS max_connections, NULL AS reserved, NULL AS connections, NULL AS db_now;

-- name: doctor_database [postgres]
SELECT current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS reserved,
       (SELECT COUNT(*) FROM pg_stat_activity) AS connections,
       extract(epoch FROM clock_timestamp()) AS db_now;

-- Workers still marked alive whose lease lapsed before :before: nothing reaps them.
-- name: doctor_stale_workers
SELECT id, host, pid, heartbeat_at, lease_expires_at FROM workers
WHERE env = :env AND status = 'alive' AND lease_expires_at < :before
ORDER BY lease_expires_at LIMIT 100;

-- Runs held (EXECUTING or DEQUEUED) by no live holder since before :before: the reaper
-- should have queued them again (C10) and has not.
-- name: doctor_stuck_runs
SELECT r.id, r.task_id, r.status, r.worker_id FROM runs r
LEFT JOIN workers w ON w.id = r.worker_id
WHERE r.env = :env AND r.status IN ('EXECUTING', 'DEQUEUED')
  AND ((w.id IS NULL AND r.updated_at < :before)
       OR (w.status <> 'alive' AND COALESCE(w.stopped_at, 0) < :before)
       OR w.lease_expires_at < :before)
ORDER BY r.id LIMIT 100;

-- name: doctor_paused_backlog
SELECT q.name, COUNT(r.id) AS queued FROM queues q
JOIN runs r ON r.env = q.env AND r.queue = q.name AND r.status = 'QUEUED'
WHERE q.env = :env AND q.paused = 1
GROUP BY q.name ORDER BY q.name;

-- name: doctor_queued_tasks
SELECT task_id, COUNT(*) AS queued, MIN(created_at) AS oldest FROM runs
WHERE env = :env AND status = 'QUEUED'
GROUP BY task_id ORDER BY task_id;

-- Rows of processes long gone: not seen for :before and not a live worker's.
-- name: prune_processes
DELETE FROM processes WHERE seen_at < :before
  AND id NOT IN (SELECT id FROM workers WHERE status = 'alive');

-- Observability ------------------------------------------------------------------------------

-- name: insert_run_trace
INSERT INTO run_traces (run_id, env, traceparent) VALUES (:run_id, :env, :traceparent)
ON CONFLICT DO NOTHING;

-- name: run_traces
SELECT run_id, traceparent FROM run_traces
WHERE env = :env AND run_id IN (SELECT value FROM json_each(:ids));

-- name: run_traces [postgres]
SELECT run_id, traceparent FROM run_traces WHERE env = :env AND run_id = ANY(:ids);

-- Per queue, read at scrape time: its ready runs (the partial index runs_ready covers
-- them) and the ready time of the oldest, and the slots held against its limit.
-- name: queue_gauges
SELECT q.env, q.name, q.executing, q.concurrency_limit, q.global_limit,
       COALESCE(r.depth, 0) AS depth, r.oldest_ready_at
FROM queues q LEFT JOIN (
    SELECT env, queue, COUNT(*) AS depth, MIN(available_at) AS oldest_ready_at
    FROM runs WHERE status = 'QUEUED' GROUP BY env, queue
) r ON r.env = q.env AND r.queue = q.name;

-- Live workers per environment. Workers carry no version yet: when they do, group by it
-- here and in ObservabilityStore.live_workers.
-- name: live_worker_counts
SELECT env, COUNT(*) AS n FROM workers
WHERE status = 'alive' AND lease_expires_at >= :now GROUP BY env;

-- Alerts and errors ----------------------------------------------------------------------

-- name: insert_alert_rule
INSERT INTO alert_rules (id, env, event, task_id, queue, older_than, webhook_url, format,
                         secret, created_at)
VALUES (:id, :env, :event, :task_id, :queue, :older_than, :webhook_url, :format, :secret,
        :created_at);

-- Never the secret: it was shown once, at creation.
-- name: list_alert_rules
SELECT id, env, event, task_id, queue, older_than, webhook_url, format, created_at
FROM alert_rules WHERE env = :env ORDER BY created_at, id;

-- name: delete_alert_rule
DELETE FROM alert_rules WHERE env = :env AND id = :id;

-- name: delete_rule_deliveries
DELETE FROM alert_deliveries WHERE rule_id = :id AND status = 'pending';

-- The rules an event goes to, locked: the storm counters change in this transaction.
-- name: matching_alert_rules
SELECT id, window_start, window_sent FROM alert_rules
WHERE env = :env AND event = :event
  AND (task_id IS NULL OR task_id = :task_id)
  AND (queue IS NULL OR queue = :queue)
ORDER BY id;

-- name: matching_alert_rules [postgres]
SELECT id, window_start, window_sent FROM alert_rules
WHERE env = :env AND event = :event
  AND (task_id IS NULL OR task_id = :task_id)
  AND (queue IS NULL OR queue = :queue)
ORDER BY id
FOR UPDATE;

-- name: set_alert_window
UPDATE alert_rules SET window_start = :window_start, window_sent = :window_sent
WHERE id = :id;

-- name: insert_alert_delivery
INSERT INTO alert_deliveries (id, env, rule_id, event, payload, status, created_at, next_at,
                              summary_of)
VALUES (:id, :env, :rule_id, :event, :payload, 'pending', :now, :next_at, :summary_of);

-- The storm summary of a rule's current window not yet sent, if one was started.
-- name: open_alert_summary
SELECT id, payload, summary_of FROM alert_deliveries
WHERE rule_id = :rule_id AND summary_of > 0 AND status = 'pending' AND attempts = 0
  AND claimed_until < :now AND created_at >= :window_start;

-- name: grow_alert_summary
UPDATE alert_deliveries SET payload = :payload, summary_of = :summary_of
WHERE id = :id AND attempts = 0;

-- name: due_alert_deliveries
SELECT d.id FROM alert_deliveries d
WHERE d.status = 'pending' AND d.next_at <= :now AND d.claimed_until < :now
ORDER BY d.next_at LIMIT :limit;

-- Claim one for a lease; a concurrent sender's claim of the same row updates nothing.
-- name: claim_alert_delivery
UPDATE alert_deliveries SET claimed_until = :until
WHERE id = :id AND status = 'pending' AND claimed_until < :now
RETURNING id, rule_id, event, payload, attempts;

-- name: alert_rule_target
SELECT webhook_url, format, secret FROM alert_rules WHERE id = :id;

-- name: finish_alert_attempt
UPDATE alert_deliveries
SET attempts = attempts + 1, status = :status, next_at = :next_at, claimed_until = 0,
    delivered_at = :delivered_at
WHERE id = :id AND status = 'pending'
RETURNING attempts;

-- name: insert_alert_attempt
INSERT INTO alert_attempts (delivery_id, n, at, status_code, error, duration)
VALUES (:delivery_id, :n, :at, :status_code, :error, :duration);

-- name: list_alert_deliveries
SELECT * FROM alert_deliveries
WHERE env = :env AND (:rule_id IS NULL OR rule_id = :rule_id)
ORDER BY created_at DESC, id DESC LIMIT :limit;

-- name: list_alert_deliveries [postgres]
SELECT * FROM alert_deliveries
WHERE env = :env AND (CAST(:rule_id AS TEXT) IS NULL OR rule_id = :rule_id)
ORDER BY created_at DESC, id DESC LIMIT :limit;

-- name: alert_attempts
SELECT n, at, status_code, error, duration FROM alert_attempts
WHERE delivery_id = :id ORDER BY n;

-- The scan's watermark, locked: two schedulers never count the same failure twice.
-- name: lock_failure_scan
UPDATE failure_scan SET watermark = watermark WHERE id = 1 RETURNING watermark;

-- Another scheduler scanning now holds it: skip this tick rather than queue behind it.
-- name: lock_failure_scan [postgres]
SELECT watermark FROM failure_scan WHERE id = 1 FOR UPDATE SKIP LOCKED;

-- name: set_failure_watermark
UPDATE failure_scan SET watermark = :watermark WHERE id = 1;

-- Failed runs not yet grouped, from a short lag behind the watermark (partial index
-- runs_failed; the anti-join is a primary-key probe per run in the lag window).
-- name: new_failures
SELECT r.id, r.env, r.task_id, r.queue, r.status, r.error, r.finished_at, r.version
FROM runs r
WHERE r.status IN ('FAILED', 'TIMED_OUT') AND r.finished_at > :since
  AND NOT EXISTS (SELECT 1 FROM error_occurrences o WHERE o.run_id = r.id)
ORDER BY r.finished_at LIMIT :limit;

-- name: insert_error_occurrence
INSERT INTO error_occurrences (run_id, env, fingerprint, task_id, at, version)
VALUES (:run_id, :env, :fingerprint, :task_id, :at, :version);

-- name: get_error_group_status
SELECT status FROM error_groups WHERE env = :env AND fingerprint = :fingerprint;

-- name: insert_error_group
INSERT INTO error_groups (env, fingerprint, exc_type, message, frame, status, count,
                          first_seen, last_seen, sample_run_id)
VALUES (:env, :fingerprint, :exc_type, :message, :frame, 'open', :n, :first_seen,
        :last_seen, :sample_run_id);

-- A resolved group that recurs reopens; an ignored one stays ignored.
-- name: grow_error_group
UPDATE error_groups
SET count = count + :n, last_seen = :last_seen, sample_run_id = :sample_run_id,
    reopened = reopened + CASE WHEN status = 'resolved' THEN 1 ELSE 0 END,
    resolved_at = CASE WHEN status = 'resolved' THEN NULL ELSE resolved_at END,
    status = CASE WHEN status = 'resolved' THEN 'open' ELSE status END
WHERE env = :env AND fingerprint = :fingerprint;

-- name: list_error_groups
SELECT * FROM error_groups
WHERE env = :env AND (:status IS NULL OR status = :status)
ORDER BY last_seen DESC LIMIT :limit;

-- name: list_error_groups [postgres]
SELECT * FROM error_groups
WHERE env = :env AND (CAST(:status AS TEXT) IS NULL OR status = :status)
ORDER BY last_seen DESC LIMIT :limit;

-- name: get_error_group
SELECT * FROM error_groups WHERE env = :env AND fingerprint = :fingerprint;

-- name: error_group_tasks
SELECT task_id, COUNT(*) AS n FROM error_occurrences
WHERE env = :env AND fingerprint = :fingerprint GROUP BY task_id ORDER BY n DESC;

-- Failures per bucket of :bucket seconds; bucket k starts at k * :bucket.
-- name: error_group_histogram
SELECT CAST(at / :bucket AS INTEGER) AS k, COUNT(*) AS n FROM error_occurrences
WHERE env = :env AND fingerprint = :fingerprint
GROUP BY CAST(at / :bucket AS INTEGER) ORDER BY k;

-- name: error_group_histogram [postgres]
SELECT CAST(FLOOR(at / :bucket) AS BIGINT) AS k, COUNT(*) AS n FROM error_occurrences
WHERE env = :env AND fingerprint = :fingerprint
GROUP BY CAST(FLOOR(at / :bucket) AS BIGINT) ORDER BY k;

-- name: set_error_group_status
UPDATE error_groups
SET status = :status, resolved_at = CASE WHEN :status = 'resolved' THEN :now ELSE NULL END
WHERE env = :env AND fingerprint = :fingerprint;

-- name: set_error_group_status [postgres]
UPDATE error_groups
SET status = :status,
    resolved_at = CASE WHEN CAST(:status AS TEXT) = 'resolved' THEN :now ELSE NULL END
WHERE env = :env AND fingerprint = :fingerprint;

-- The rules watching conditions (backlog, no worker), locked for their firing sets.
-- name: condition_alert_rules
SELECT id, env, event, task_id, queue, older_than, firing FROM alert_rules
WHERE event IN ('queue.backlog', 'no_worker') ORDER BY id;

-- name: condition_alert_rules [postgres]
SELECT id, env, event, task_id, queue, older_than, firing FROM alert_rules
WHERE event IN ('queue.backlog', 'no_worker') ORDER BY id FOR UPDATE;

-- name: set_alert_firing
UPDATE alert_rules SET firing = :firing WHERE id = :id;

-- Queued runs per (task, queue) with the oldest one's time: the partial index on QUEUED.
-- name: queued_backlog
SELECT task_id, queue, MIN(available_at) AS oldest, COUNT(*) AS n FROM runs
WHERE env = :env AND status = 'QUEUED' GROUP BY task_id, queue;

-- name: alive_worker_tasks
SELECT tasks FROM workers WHERE env = :env AND status = 'alive' AND lease_expires_at > :now;

-- Sent or given-up deliveries and failure occurrences past the retention: groups keep
-- their totals; the scan never looks back further than its lag.
-- name: prune_alert_attempts
DELETE FROM alert_attempts WHERE delivery_id IN (
    SELECT id FROM alert_deliveries WHERE status <> 'pending' AND next_at < :before);

-- name: prune_alert_deliveries
DELETE FROM alert_deliveries WHERE status <> 'pending' AND next_at < :before;

-- name: prune_error_occurrences
DELETE FROM error_occurrences WHERE at < :before;

-- Events ----------------------------------------------------------------------------------
-- (outlast/store/_sql_events.py; the model is in _events_base.py)

-- Taken first in a publish (names in order) and by a wait registering on the name: the
-- row lock orders the two, so an event either sees the wait or the wait sees the event.
-- name: ev_lock_name
INSERT INTO event_names (env, name, last_at, version) VALUES (:env, :name, :now, 1)
ON CONFLICT (env, name) DO UPDATE SET last_at = excluded.last_at,
    version = event_names.version + 1;

-- name: ev_subscribers
SELECT * FROM tasks WHERE env = :env ORDER BY id;

-- The runs a retained delivery added to an event (its publish's are in events.fanout).
-- name: ev_first_runs
SELECT task_id, run_id FROM event_deliveries
WHERE event_seq = :seq AND replay = 0 AND run_id IS NOT NULL;

-- At most one fan-out delivery per (event, task): a retained replay that runs twice, or
-- beside a publish, inserts nothing the second time (and then creates no run).
-- name: ev_insert_delivery
INSERT INTO event_deliveries (event_seq, task_id, replay, run_id, outcome, reason, created_at)
VALUES (:seq, :task_id, 0, :run_id, :outcome, :reason, :now)
ON CONFLICT (event_seq, task_id) WHERE replay = 0 DO NOTHING
RETURNING event_seq;

-- name: ev_insert_replay
INSERT INTO event_deliveries (event_seq, task_id, replay, run_id, outcome, reason, created_at)
VALUES (:seq, :task_id, 1, :run_id, :outcome, :reason, :now);

-- name: ev_unfinished_runs
SELECT id, payload FROM runs
WHERE env = :env AND task_id = :task_id
  AND status IN ('DELAYED', 'QUEUED', 'DEQUEUED', 'EXECUTING', 'WAITING')
ORDER BY id;

-- name: ev_waits
SELECT w.waitpoint_id, w.name, w.match_path, w.match_value, w.expr FROM event_waits w
JOIN waitpoints p ON p.id = w.waitpoint_id
WHERE w.env = :env AND w.name = :name AND p.status = 'pending'
ORDER BY w.created_at, w.waitpoint_id;

-- name: ev_insert_wait
INSERT INTO event_waits (waitpoint_id, env, name, match_path, match_value, expr, created_at)
VALUES (:waitpoint_id, :env, :name, :match_path, :match_value, :expr, :now)
ON CONFLICT (waitpoint_id) DO NOTHING;

-- name: ev_since
SELECT * FROM events WHERE env = :env AND name = :name AND created_at >= :since
ORDER BY seq LIMIT 1000;

-- name: ev_list
SELECT * FROM events WHERE env = :env AND (CAST(:name AS TEXT) IS NULL OR name = :name)
ORDER BY seq DESC LIMIT :limit;

-- The newest event of an id: its deduplicating row (events_dedup) if it has one, which is
-- newer than any released one, else the newest released (events_released). Each arm names
-- its index's predicate, so both are index lookups (0026_events_released).
-- name: ev_get
SELECT * FROM (
    SELECT * FROM events WHERE env = :env AND id = :id AND dedup_active = 1
    UNION ALL
    SELECT * FROM (SELECT * FROM events WHERE env = :env AND id = :id AND dedup_active = 0
                   ORDER BY seq DESC LIMIT 1) AS released
) AS found ORDER BY seq DESC LIMIT 1;

-- name: ev_deliveries
SELECT * FROM event_deliveries
WHERE event_seq IN (SELECT value FROM json_each(:seqs))
ORDER BY event_seq, created_at, task_id;

-- name: ev_deliveries [postgres]
SELECT * FROM event_deliveries WHERE event_seq = ANY(CAST(:seqs AS bigint[]))
ORDER BY event_seq, created_at, task_id;

-- Retained events a task has had no fan-out delivery of, oldest first, a page at a time.
-- name: ev_retained
SELECT * FROM events e
WHERE e.env = :env AND e.expires_at > :now AND e.seq > :after
  AND NOT EXISTS (SELECT 1 FROM event_deliveries d
                  WHERE d.event_seq = e.seq AND d.task_id = :task_id AND d.replay = 0)
  AND NOT EXISTS (SELECT 1 FROM json_each(COALESCE(e.fanout, '[]')) f
                  WHERE json_extract(f.value, '$[0]') = :task_id)
ORDER BY e.seq LIMIT 500;

-- name: ev_retained [postgres]
SELECT * FROM events e
WHERE e.env = :env AND e.expires_at > :now AND e.seq > :after
  AND NOT EXISTS (SELECT 1 FROM event_deliveries d
                  WHERE d.event_seq = e.seq AND d.task_id = :task_id AND d.replay = 0)
  AND NOT (CAST(COALESCE(e.fanout, '[]') AS jsonb)
           @> jsonb_build_array(jsonb_build_array(CAST(:task_id AS text))))
ORDER BY e.seq LIMIT 500;

-- name: ev_prune_deliveries
DELETE FROM event_deliveries
WHERE event_seq IN (SELECT seq FROM events WHERE expires_at <= :now);

-- name: ev_prune
DELETE FROM events WHERE expires_at <= :now;

-- name: ev_prune_waits
DELETE FROM event_waits
WHERE waitpoint_id IN (SELECT id FROM waitpoints WHERE status <> 'pending');

-- An id past its deduplication window stops deduplicating (its row stays in the log).
-- name: ev_release_keys
UPDATE events SET dedup_active = 0
WHERE env = :env AND dedup_active = 1 AND dedup_until <= :now
  AND id IN (SELECT value FROM json_each(:ids));

-- name: ev_release_keys [postgres]
UPDATE events SET dedup_active = 0
WHERE env = :env AND dedup_active = 1 AND dedup_until <= :now AND id = ANY(:ids);

-- waiting: whether any run waits for an event of this name (else the publish need not
-- read the waits: most names have none).
-- name: ev_insert_one
INSERT INTO events (env, id, name, data, created_at, dedup_until, dedup_active, expires_at,
                    fanout)
VALUES (:env, :id, :name, :data, :now, :dedup_until, 1, :expires_at, :fanout)
ON CONFLICT (env, id) WHERE dedup_active = 1 DO NOTHING
RETURNING seq, EXISTS (SELECT 1 FROM event_waits w
                       WHERE w.env = :env AND w.name = :name) AS waiting;

-- PostgreSQL, a single publish: the event (no row if its id is taken) and the pending
-- waits for its name in one round trip. It runs after the name's lock was granted, so
-- its snapshot holds every wait registered before (see ev_lock_name).
-- name: ev_insert_one_and_waits [postgres]
WITH ins AS (
    INSERT INTO events (env, id, name, data, created_at, dedup_until, dedup_active,
                        expires_at, fanout)
    VALUES (:env, :id, :name, :data, :now, :dedup_until, 1, :expires_at, :fanout)
    ON CONFLICT (env, id) WHERE dedup_active = 1 DO NOTHING
    RETURNING seq
)
SELECT ins.seq, w.waitpoint_id, w.name, w.match_path, w.match_value, w.expr
FROM ins LEFT JOIN (
    SELECT ew.* FROM event_waits ew JOIN waitpoints p ON p.id = ew.waitpoint_id
    WHERE ew.env = :env AND ew.name = :event_name AND p.status = 'pending'
) w ON true
ORDER BY w.created_at, w.waitpoint_id;

-- Usage ---------------------------------------------------------------------------------------

-- The rollup's position: runs finished before (finished_at, run_id) are in usage_daily.
-- A missing row is made in outbox mode (a schema from 0019_drop_runs_finished on has no
-- index for the other).
-- name: usage_state_ensure
INSERT INTO usage_state (name, finished_at, run_id, sampled_at, outbox)
VALUES ('rollup', 0, '', 0, 1)
ON CONFLICT (name) DO NOTHING;

-- name: usage_state_lock
SELECT finished_at, run_id, sampled_at, outbox FROM usage_state WHERE name = 'rollup';

-- Locked: schedulers in several processes fold each finished run once.
-- name: usage_state_lock [postgres]
SELECT finished_at, run_id, sampled_at, outbox FROM usage_state WHERE name = 'rollup' FOR UPDATE;

-- A reader shares the lock, so the rollup cannot move between its reads of the rollups
-- and of the runs finished after them (a run would be counted twice or not at all).
-- name: usage_state_read
SELECT finished_at, run_id, sampled_at, outbox FROM usage_state WHERE name = 'rollup';

-- name: usage_state_read [postgres]
SELECT finished_at, run_id, sampled_at, outbox FROM usage_state WHERE name = 'rollup' FOR SHARE;

-- name: usage_state_set
UPDATE usage_state SET finished_at = :finished_at, run_id = :run_id, sampled_at = :sampled_at
WHERE name = 'rollup';

-- Finished runs after a position, in (finished_at, id) order (the runs_finished index:
-- the plain range on finished_at is what lets the planner use it), up to :upto (older than any commit still in flight) and :limit rows.
-- name: usage_finished_runs
SELECT id, env, task_id, status, attempt, created_at, started_at, finished_at,
       active_seconds, queued_seconds, waited_seconds
FROM runs
WHERE finished_at IS NOT NULL AND finished_at >= :after_at AND finished_at < :upto
  AND (finished_at > :after_at OR (finished_at = :after_at AND id > :after_id))
ORDER BY finished_at, id
LIMIT :limit;

-- The journal of the same runs (lower, upper]: entries per kind, and the steps finished
-- in an earlier attempt than the run's last one (a retry replayed them).
-- name: usage_finished_journal
SELECT j.run_id, j.kind, COUNT(*) AS n,
       SUM(CASE WHEN j.kind = 'step' AND j.attempt < r.attempt THEN 1 ELSE 0 END) AS replayed
FROM runs r JOIN journal j ON j.run_id = r.id
WHERE r.finished_at IS NOT NULL AND r.finished_at BETWEEN :after_at AND :last_at
  AND (r.finished_at > :after_at OR (r.finished_at = :after_at AND r.id > :after_id))
  AND (r.finished_at < :last_at OR (r.finished_at = :last_at AND r.id <= :last_id))
GROUP BY j.run_id, j.kind;

-- name: usage_finished_children
SELECT c.parent_id AS run_id, c.task_id, COUNT(*) AS n
FROM runs r JOIN runs c ON c.parent_id = r.id
WHERE r.finished_at IS NOT NULL AND r.finished_at BETWEEN :after_at AND :last_at
  AND (r.finished_at > :after_at OR (r.finished_at = :after_at AND r.id > :after_id))
  AND (r.finished_at < :last_at OR (r.finished_at = :last_at AND r.id <= :last_id))
GROUP BY c.parent_id, c.task_id;

-- name: usage_daily_get
SELECT * FROM usage_daily WHERE env = :env AND task_id = :task_id AND day = :day;

-- name: usage_daily_put
INSERT INTO usage_daily (env, task_id, day, runs, completed, failed, attempts, retried,
                         recovered, active_seconds, queued_seconds, waited_seconds,
                         max_active, max_duration, peak_concurrency, child_runs,
                         steps_executed, steps_replayed, durations, actives, waits, children)
VALUES (:env, :task_id, :day, :runs, :completed, :failed, :attempts, :retried, :recovered,
        :active_seconds, :queued_seconds, :waited_seconds, :max_active, :max_duration,
        :peak_concurrency, :child_runs, :steps_executed, :steps_replayed, :durations,
        :actives, :waits, :children)
ON CONFLICT (env, task_id, day) DO UPDATE SET
    runs = excluded.runs, completed = excluded.completed, failed = excluded.failed,
    attempts = excluded.attempts, retried = excluded.retried, recovered = excluded.recovered,
    active_seconds = excluded.active_seconds, queued_seconds = excluded.queued_seconds,
    waited_seconds = excluded.waited_seconds, max_active = excluded.max_active,
    max_duration = excluded.max_duration, peak_concurrency = excluded.peak_concurrency,
    child_runs = excluded.child_runs, steps_executed = excluded.steps_executed,
    steps_replayed = excluded.steps_replayed, durations = excluded.durations,
    actives = excluded.actives, waits = excluded.waits, children = excluded.children;

-- name: usage_daily_range
SELECT * FROM usage_daily
WHERE env = :env AND day >= :since_day AND (CAST(:task_id AS TEXT) IS NULL OR task_id = :task_id)
ORDER BY day, task_id;

-- Runs executing now, per task: a sample of concurrency (the partial index runs_executing).
-- runs_executing's predicate word for word, and materialized before the grouping, so
-- SQLite reads that partial index (the runs in flight) rather than all of runs_env_task
-- in group order: the scheduler samples in a write transaction.
-- name: usage_executing
WITH flight AS MATERIALIZED (
    SELECT env, task_id FROM runs
    WHERE status IN ('EXECUTING', 'DEQUEUED') AND status = 'EXECUTING')
SELECT env, task_id, COUNT(*) AS n FROM flight GROUP BY env, task_id;

-- Queues with a limit and a ready run: candidates for "sat at its limit" (judged in Python).
-- name: usage_limited_queues
SELECT q.env, q.name, q.concurrency_limit, q.global_limit, q.rate_limit_count,
       q.rate_limit_period, q.rate_window, q.executing,
       (SELECT MAX(s.executing) FROM queue_slots s
        WHERE s.env = q.env AND s.queue = q.name) AS top_key
FROM queues q
WHERE (q.concurrency_limit IS NOT NULL OR q.global_limit IS NOT NULL
       OR q.rate_limit_count IS NOT NULL)
  AND EXISTS (SELECT 1 FROM runs r WHERE r.env = q.env AND r.queue = q.name
              AND r.status = 'QUEUED' AND r.available_at <= :now);

-- name: usage_queue_add
INSERT INTO usage_queue_daily (env, queue, day, saturated_seconds)
VALUES (:env, :queue, :day, :seconds)
ON CONFLICT (env, queue, day) DO UPDATE SET
    saturated_seconds = usage_queue_daily.saturated_seconds + excluded.saturated_seconds;

-- name: usage_queue_range
SELECT queue, SUM(saturated_seconds) AS seconds FROM usage_queue_daily
WHERE env = :env AND day >= :since_day GROUP BY queue;

-- Evidence for a spike, from the runs of one task created in [since, until).
-- name: usage_payload_repeats
SELECT COUNT(*) AS runs,
       SUM(CASE WHEN idempotency_key IS NULL THEN 1 ELSE 0 END) AS no_key,
       COUNT(DISTINCT CASE WHEN idempotency_key IS NULL THEN payload END) AS distinct_no_key
FROM runs WHERE env = :env AND task_id = :task_id AND created_at >= :since
  AND created_at < :until;

-- name: usage_key_shares
SELECT concurrency_key AS ckey, COUNT(*) AS n FROM runs
WHERE env = :env AND task_id = :task_id AND created_at >= :since AND created_at < :until
GROUP BY concurrency_key ORDER BY n DESC LIMIT 5;

-- name: usage_failed_attempts
SELECT e.data FROM runs r JOIN run_events e ON e.run_id = r.id
WHERE r.env = :env AND r.task_id = :task_id AND r.created_at >= :since
  AND r.created_at < :until AND e.kind = 'attempt_failed'
LIMIT 2000;

-- name: usage_schedule_fires
SELECT COUNT(*) AS n FROM schedule_slots s JOIN schedules c ON c.id = s.schedule_id
WHERE c.env = :env AND c.task_id = :task_id AND s.fired_at >= :since AND s.fired_at < :until;

-- name: usage_scheduled_tasks
SELECT DISTINCT task_id FROM schedules WHERE env = :env AND active = 1;

-- Retention ------------------------------------------------------------------------------
-- (see outlast/_retention.py and _sql_retention.py: the candidate SELECT is built there,
-- one clause per rule; these statements delete one batch of chosen runs in one short
-- transaction, children tables first. Nothing here touches a run that is not final.)

-- name: retention_policies
SELECT env, task_id, days, updated_at FROM retention_policies WHERE env = :env
ORDER BY task_id;

-- name: set_retention_policy
INSERT INTO retention_policies (env, task_id, days, updated_at)
VALUES (:env, :task_id, :days, :now)
ON CONFLICT (env, task_id) DO UPDATE SET days = excluded.days, updated_at = excluded.updated_at;

-- name: delete_retention_policy
DELETE FROM retention_policies WHERE env = :env AND task_id = :task_id;

-- Every environment that has runs has a queue row (triggers ensure it).
-- name: retention_envs
SELECT DISTINCT env FROM queues
UNION SELECT DISTINCT env FROM retention_policies;

-- name: prune_journal
DELETE FROM journal WHERE run_id IN (SELECT value FROM json_each(:ids));

-- name: prune_journal [postgres]
DELETE FROM journal WHERE run_id = ANY(:ids);

-- name: prune_run_events
DELETE FROM run_events WHERE run_id IN (SELECT value FROM json_each(:ids));

-- name: prune_run_events [postgres]
DELETE FROM run_events WHERE run_id = ANY(:ids);

-- name: prune_run_waits
DELETE FROM run_waits WHERE run_id IN (SELECT value FROM json_each(:ids));

-- name: prune_run_waits [postgres]
DELETE FROM run_waits WHERE run_id = ANY(:ids);

-- The waitpoints the pruned runs created, unless a run still waits on one (a token handed
-- to another run).
-- name: prune_waitpoints
DELETE FROM waitpoints
WHERE run_id IN (SELECT value FROM json_each(:ids))
  AND NOT EXISTS (SELECT 1 FROM run_waits w WHERE w.waitpoint_id = waitpoints.id);

-- name: prune_waitpoints [postgres]
DELETE FROM waitpoints
WHERE run_id = ANY(:ids)
  AND NOT EXISTS (SELECT 1 FROM run_waits w WHERE w.waitpoint_id = waitpoints.id);

-- name: prune_run_tag
DELETE FROM run_tags WHERE env = :env AND tag = :tag AND run_id = :run_id;

-- name: prune_runs
DELETE FROM runs WHERE id IN (SELECT value FROM json_each(:ids));

-- name: prune_runs [postgres]
DELETE FROM runs WHERE id = ANY(:ids);

-- Ended bulk actions past the environment's retention.
-- name: prune_bulk_actions
DELETE FROM bulk_actions WHERE env = :env AND status <> 'running' AND finished_at < :before;

-- name: prune_run_traces
DELETE FROM run_traces WHERE run_id IN (SELECT value FROM json_each(:ids));

-- name: prune_run_traces [postgres]
DELETE FROM run_traces WHERE run_id = ANY(:ids);

-- A pruned failed run's entry in the errors page's memory (its group and counts stay;
-- the scan reads far ahead of any retention, so the run is never counted again).
-- name: prune_run_error_occurrences
DELETE FROM error_occurrences WHERE run_id IN (SELECT value FROM json_each(:ids));

-- name: prune_run_error_occurrences [postgres]
DELETE FROM error_occurrences WHERE run_id = ANY(:ids);

-- Versions ---------------------------------------------------------------------------------

-- A serving worker's version, the first time it is seen: the newest registered is the
-- environment's current version unless one is pinned (a restart of an old version does
-- not make it newer again).
-- name: register_version
INSERT INTO versions (env, version, registered_at) VALUES (:env, :version, :now)
ON CONFLICT DO NOTHING
RETURNING version;

-- name: registered_versions
SELECT version, registered_at FROM versions WHERE env = :env;

-- name: version_live_workers
SELECT id, version, tasks, draining, started_at FROM workers
WHERE env = :env AND status = 'alive' AND lease_expires_at >= :now;

-- name: pinned_version
SELECT version FROM version_pins WHERE env = :env;

-- name: pin_version
INSERT INTO version_pins (env, version, pinned_at) VALUES (:env, :version, :now)
ON CONFLICT (env) DO UPDATE SET version = excluded.version, pinned_at = excluded.pinned_at;

-- name: unpin_version
DELETE FROM version_pins WHERE env = :env;

-- Unfinished runs locked to a version, per status: through runs_env_status_live, one
-- range per unfinished status, so it costs the environment's live runs, not its history
-- (SQLite uses a partial index only when the query says its predicate word for word).
-- name: locked_runs
SELECT version, status, COUNT(*) AS n FROM runs
WHERE env = :env AND status IN ('DELAYED', 'QUEUED', 'DEQUEUED', 'EXECUTING', 'WAITING')
  AND status <> 'COMPLETED'
  AND version IS NOT NULL AND (CAST(:version AS TEXT) IS NULL OR version = :version)
GROUP BY version, status;

-- outlast runs migrate: re-lock unfinished runs to another version, on purpose.
-- name: migrate_runs
UPDATE runs SET version = :to_version, updated_at = :now
WHERE env = :env AND version = :from_version
  AND status IN ('DELAYED', 'QUEUED', 'DEQUEUED', 'EXECUTING', 'WAITING')
  AND status <> 'COMPLETED'
  AND (CAST(:task_id AS TEXT) IS NULL OR task_id = :task_id)
RETURNING id;

-- Error versions (issue 21) ------------------------------------------------------------
-- Versions affected: failures of runs with no version (grouped before 0013) are left out.
-- name: error_group_versions
SELECT version, COUNT(*) AS n FROM error_occurrences
WHERE env = :env AND fingerprint = :fingerprint AND version IS NOT NULL
GROUP BY version ORDER BY n DESC, version;

-- Incoming webhooks (issue 20, part 6) ---------------------------------------------------
-- name: wh_insert
INSERT INTO webhook_endpoints (
    id, env, name, scheme, event, options, secret, fingerprint, created_at
) VALUES (:id, :env, :name, :scheme, :event, :options, :secret, :fingerprint, :now)
ON CONFLICT DO NOTHING;

-- name: wh_list
SELECT * FROM webhook_endpoints WHERE env = :env ORDER BY name;

-- name: wh_get
SELECT * FROM webhook_endpoints WHERE env = :env AND (id = :key OR name = :key)
ORDER BY CASE WHEN id = :key THEN 0 ELSE 1 END LIMIT 1;

-- The /hooks/<id> route's look-up: the unguessable id is the capability that names the
-- environment, so this one query is by id alone; everything after it is scoped to env.
-- name: wh_find
SELECT * FROM webhook_endpoints WHERE id = :id;

-- A rotation: the current secret becomes the previous one, valid until :until.
-- name: wh_rotate
UPDATE webhook_endpoints
SET previous_secret = secret, previous_fingerprint = fingerprint, previous_until = :until,
    secret = :secret, fingerprint = :fingerprint, rotated_at = :now
WHERE env = :env AND id = :id;

-- name: wh_delete_deliveries
DELETE FROM webhook_deliveries WHERE env = :env AND endpoint_id = :id;

-- name: wh_delete
DELETE FROM webhook_endpoints WHERE env = :env AND id = :id;

-- name: wh_insert_delivery
INSERT INTO webhook_deliveries (
    env, endpoint_id, delivery_id, event_id, event_name, duplicate, run_ids, received_at
) VALUES (:env, :endpoint_id, :delivery_id, :event_id, :event_name, :duplicate, :run_ids,
          :now);

-- name: wh_prune_deliveries
DELETE FROM webhook_deliveries
WHERE env = :env AND endpoint_id = :endpoint_id AND received_at < :before;

-- name: wh_deliveries
SELECT * FROM webhook_deliveries
WHERE env = :env AND (CAST(:endpoint_id AS TEXT) IS NULL OR endpoint_id = :endpoint_id)
ORDER BY seq DESC LIMIT :limit;
-- Usage, second part ------------------------------------------------------------------------

-- The outbox of finished runs (migrations/0015_usage_outbox): one row per statement that
-- finished runs, written in its transaction; the fold deletes the rows it folds.
-- name: usage_outbox_add
INSERT INTO usage_outbox (run_ids) VALUES (:ids);

-- name: usage_outbox_add [postgres]
INSERT INTO usage_outbox (run_ids) VALUES (CAST(to_json(CAST(:ids AS text[])) AS TEXT));

-- name: usage_outbox_page
SELECT seq, run_ids FROM usage_outbox WHERE seq > :after ORDER BY seq LIMIT :limit;

-- name: usage_outbox_delete
DELETE FROM usage_outbox WHERE seq IN (SELECT value FROM json_each(:seqs));

-- name: usage_outbox_delete [postgres]
DELETE FROM usage_outbox WHERE seq = ANY(:seqs);

-- Before the hand-over (usage_state.outbox = 0) the fold reads runs_finished; the outbox
-- is emptied, since 0019_drop_runs_finished fills it afresh from the watermark.
-- name: usage_outbox_trim
DELETE FROM usage_outbox;

-- The finished runs an outbox page names (usage_finished_runs' columns).
-- name: usage_runs_by_id
SELECT id, env, task_id, status, attempt, created_at, started_at, finished_at,
       active_seconds, queued_seconds, waited_seconds
FROM runs WHERE id IN (SELECT value FROM json_each(:ids)) AND finished_at IS NOT NULL;

-- name: usage_runs_by_id [postgres]
SELECT id, env, task_id, status, attempt, created_at, started_at, finished_at,
       active_seconds, queued_seconds, waited_seconds
FROM runs WHERE id = ANY(:ids) AND finished_at IS NOT NULL;

-- name: usage_journal_by_id
SELECT j.run_id, j.kind, COUNT(*) AS n,
       SUM(CASE WHEN j.kind = 'step' AND j.attempt < r.attempt THEN 1 ELSE 0 END) AS replayed
FROM runs r JOIN journal j ON j.run_id = r.id
WHERE r.id IN (SELECT value FROM json_each(:ids))
GROUP BY j.run_id, j.kind;

-- name: usage_journal_by_id [postgres]
SELECT j.run_id, j.kind, COUNT(*) AS n,
       SUM(CASE WHEN j.kind = 'step' AND j.attempt < r.attempt THEN 1 ELSE 0 END) AS replayed
FROM runs r JOIN journal j ON j.run_id = r.id
WHERE r.id = ANY(:ids)
GROUP BY j.run_id, j.kind;

-- name: usage_children_by_id
SELECT c.parent_id AS run_id, c.task_id, COUNT(*) AS n
FROM runs c WHERE c.parent_id IN (SELECT value FROM json_each(:ids))
GROUP BY c.parent_id, c.task_id;

-- name: usage_children_by_id [postgres]
SELECT c.parent_id AS run_id, c.task_id, COUNT(*) AS n
FROM runs c WHERE c.parent_id = ANY(:ids)
GROUP BY c.parent_id, c.task_id;

-- The active time of the attempt a failure, retry, timeout, cancel or lost worker ends:
-- the run's active time with the segment now ending, less what its earlier attempts'
-- ending events recorded. Read before the run's row changes, on the failure paths only.
-- name: attempt_active
SELECT r.attempt,
       r.active_seconds + CASE WHEN r.status = 'EXECUTING' AND r.segment_started_at < :now
           THEN :now - r.segment_started_at ELSE 0 END
       - COALESCE((SELECT SUM(e.active_seconds) FROM run_events e
                   WHERE e.run_id = r.id AND e.kind = 'attempt_failed'
                     AND e.attempt < r.attempt), 0) AS active
FROM runs r WHERE r.id = :run_id;

-- name: insert_attempt_event
INSERT INTO run_events (run_id, ts, kind, attempt, level, message, data, active_seconds)
VALUES (:run_id, :ts, :kind, :attempt, :level, :message, :data, :active_seconds);

-- Alerts raised once per key: the first raise inserts the key, later ones find it.
-- name: alert_once_claim
INSERT INTO alert_once (env, event, key, created_at) VALUES (:env, :event, :key, :now)
ON CONFLICT (env, event, key) DO NOTHING;

-- name: alert_once_prune
DELETE FROM alert_once WHERE created_at < :before;

-- name: alert_rule_envs
SELECT DISTINCT env FROM alert_rules WHERE event = :event ORDER BY env;

-- Events, fast paths (issue 20's benchmark; outlast/store/_sql_events.py) ---------------------

-- A fingerprint of an environment's task definitions: a publisher keeps the subscribers it
-- read and reads them again only when this changed, whoever wrote them. SQLite: the
-- counter the task rows' triggers bump (0022_task_versions; keep the text the same as
-- ev_insert_alone's); PostgreSQL: a hash of every row.
-- name: ev_tasks_version
SELECT 'v' || COALESCE((SELECT version FROM task_versions WHERE env = :env), 0) AS v;

-- name: ev_tasks_version [postgres]
SELECT COUNT(*) || ':' || COALESCE(SUM(hashtextextended(t::text, 0)), 0) AS v
FROM tasks t WHERE t.env = :env;

-- PostgreSQL, a publish of one name: its lock and the task fingerprint in one round trip
-- (then ev_subscribers when the fingerprint changed).
-- name: ev_lock_and_version [postgres]
WITH locked AS (
    INSERT INTO event_names (env, name, last_at, version) VALUES (:env, :name, :now, 1)
    ON CONFLICT (env, name) DO UPDATE SET last_at = excluded.last_at,
        version = event_names.version + 1
    RETURNING 1 AS one
)
SELECT (SELECT COUNT(*) || ':' || COALESCE(SUM(hashtextextended(t::text, 0)), 0)
        FROM tasks t WHERE t.env = :env) AS v
FROM locked;

-- PostgreSQL, a single publish in one statement, committed on its own (autocommit), as a
-- single trigger is: the name's lock, the event with its fan-out (nothing if its id is
-- taken), its runs, and the wake-up. The statement's snapshot may predate the lock
-- (taken while it waited): it writes the event only if no other lock holder committed
-- in between (the version it bumped is the one it read plus one), the subscribers it was
-- planned with are current (the fingerprint) and no wait for the name is pending. A NULL
-- seq sends the publisher down the transaction (duplicates, waits, cancels, ...).
-- Runs come as JSON rows named like the runs columns; keep the columns with insert_run.
-- name: ev_publish_alone [postgres]
WITH seen AS (
    SELECT version FROM event_names WHERE env = :env AND name = :name
), locked AS (
    INSERT INTO event_names (env, name, last_at, version) VALUES (:env, :name, :now, 1)
    ON CONFLICT (env, name) DO UPDATE SET last_at = excluded.last_at,
        version = event_names.version + 1
    RETURNING version
), ok AS (
    SELECT 1 AS one FROM locked
    WHERE locked.version = COALESCE((SELECT version FROM seen), 0) + 1
      AND (SELECT COUNT(*) || ':' || COALESCE(SUM(hashtextextended(t::text, 0)), 0)
           FROM tasks t WHERE t.env = :env) = :tasks_version
      AND NOT EXISTS (SELECT 1 FROM event_waits ew JOIN waitpoints p ON p.id = ew.waitpoint_id
                      WHERE ew.env = :env AND ew.name = :name AND p.status = 'pending')
), ins AS (
    INSERT INTO events (env, id, name, data, created_at, dedup_until, dedup_active,
                        expires_at, fanout)
    SELECT :env, :id, :name, :data, :now, :dedup_until, 1, :expires_at, :fanout FROM ok
    ON CONFLICT (env, id) WHERE dedup_active = 1 DO NOTHING
    RETURNING seq
), created AS (
    INSERT INTO runs (
        id, env, task_id, queue, status, payload, metadata, tags, attempt, max_attempts,
        priority, concurrency_key, idempotency_key, idempotency_expires_at,
        idempotency_active, created_at, updated_at, available_at, ready_at, delay_until,
        ttl_expires_at, max_duration, parent_id, root_id, depth, replayed_from,
        parent_waitpoint_id, version
    )
    SELECT r.id, r.env, r.task_id, r.queue, r.status, r.payload, r.metadata, r.tags, 1,
           r.max_attempts, r.priority, r.concurrency_key, r.idempotency_key,
           r.idempotency_expires_at, r.idempotency_active, :now, :now, r.available_at,
           r.ready_at, r.delay_until, r.ttl_expires_at, r.max_duration, r.parent_id,
           r.root_id, r.depth, r.replayed_from, r.parent_waitpoint_id, r.version
    FROM ins, jsonb_populate_recordset(CAST(NULL AS runs), CAST(:runs AS jsonb)) AS r
    RETURNING status
)
SELECT (SELECT seq FROM ins) AS seq,
       (SELECT pg_notify(:channel, :env) FROM created WHERE status = 'QUEUED' LIMIT 1)
           AS notified;

-- A run's cancel_on match keys (outlast/_match.py), written with the run.
-- name: insert_run_cancel_key
INSERT INTO run_cancel_keys (env, task_id, path, value, run_id)
VALUES (:env, :task_id, :path, :value, :run_id);

-- The unfinished runs of a task whose payload has this value at a cancel_on match path:
-- an index lookup (run_cancel_keys_match), then each run by its primary key.
-- name: ev_cancel_keyed
SELECT k.run_id AS id FROM run_cancel_keys k JOIN runs r ON r.id = k.run_id
WHERE k.env = :env AND k.task_id = :task_id AND k.path = :path AND k.value = :value
  AND r.status IN ('DELAYED', 'QUEUED', 'DEQUEUED', 'EXECUTING', 'WAITING')
ORDER BY k.run_id;

-- name: prune_run_cancel_keys
DELETE FROM run_cancel_keys WHERE run_id IN (SELECT value FROM json_each(:ids));

-- name: prune_run_cancel_keys [postgres]
DELETE FROM run_cancel_keys WHERE run_id = ANY(:ids);

-- PostgreSQL, a publish of several names: their locks (in name order, as ev_lock_name one
-- by one) and the task fingerprint in one round trip.
-- name: ev_lock_names_and_version [postgres]
WITH locked AS (
    INSERT INTO event_names (env, name, last_at, version)
    SELECT :env, n.name, :now, 1 FROM unnest(CAST(:names AS text[])) AS n(name)
    ORDER BY n.name
    ON CONFLICT (env, name) DO UPDATE SET last_at = excluded.last_at,
        version = event_names.version + 1
    RETURNING 1 AS one
)
SELECT (SELECT COUNT(*) || ':' || COALESCE(SUM(hashtextextended(t::text, 0)), 0)
        FROM tasks t WHERE t.env = :env) AS v
FROM (SELECT COUNT(*) FROM locked) AS l;

-- PostgreSQL, a batch's events (distinct ids) and the pending waits for their names in one
-- round trip, after the names' locks (so the snapshot holds every wait registered before,
-- as ev_insert_one_and_waits). An id still deduplicating inserts nothing: the publisher
-- releases the ids past their window and inserts those again (ev_insert_rows); what is
-- still taken is a duplicate. Event rows have a seq, wait rows a waitpoint_id.
-- name: ev_insert_batch_and_waits [postgres]
WITH ins AS (
    INSERT INTO events (env, id, name, data, created_at, dedup_until, dedup_active,
                        expires_at, fanout)
    SELECT :env, e->>0, e->>1, e->>2, :now, CAST(e->>4 AS double precision), 1,
           CAST(e->>5 AS double precision), e->>3
    FROM json_array_elements(CAST(:rows AS json)) AS e
    ON CONFLICT (env, id) WHERE dedup_active = 1 DO NOTHING
    RETURNING seq, id
)
SELECT seq, id, NULL AS waitpoint_id, NULL AS name, NULL AS match_path,
       NULL AS match_value, NULL AS expr, NULL AS created_at
FROM ins
UNION ALL
SELECT NULL, NULL, w.waitpoint_id, w.name, w.match_path, w.match_value, w.expr,
       w.created_at
FROM event_waits w JOIN waitpoints p ON p.id = w.waitpoint_id
WHERE w.env = :env AND w.name = ANY(CAST(:names AS text[])) AND p.status = 'pending'
ORDER BY created_at, waitpoint_id;

-- Events of a batch (distinct ids) in one statement, from a JSON array of
-- [id, name, data, fanout, dedup_until, expires_at] arrays (env and now are the batch's); an id
-- still deduplicating inserts nothing (the publisher releases ids past their window and
-- tries those again). RETURNING says which went in.
-- name: ev_insert_rows
INSERT INTO events (env, id, name, data, created_at, dedup_until, dedup_active, expires_at,
                    fanout)
SELECT :env, json_extract(value, '$[0]'), json_extract(value, '$[1]'),
       json_extract(value, '$[2]'), :now, json_extract(value, '$[4]'), 1,
       json_extract(value, '$[5]'), json_extract(value, '$[3]')
FROM json_each(:rows) WHERE true
ON CONFLICT (env, id) WHERE dedup_active = 1 DO NOTHING
RETURNING seq, id;

-- name: ev_insert_rows [postgres]
INSERT INTO events (env, id, name, data, created_at, dedup_until, dedup_active, expires_at,
                    fanout)
SELECT :env, e->>0, e->>1, e->>2, :now, CAST(e->>4 AS double precision), 1,
       CAST(e->>5 AS double precision), e->>3
FROM json_array_elements(CAST(:rows AS json)) AS e
ON CONFLICT (env, id) WHERE dedup_active = 1 DO NOTHING
RETURNING seq, id;

-- The still-deduplicating event of an id, with its fan-out (a retry's answer).
-- name: ev_first
SELECT seq, fanout, created_at FROM events WHERE env = :env AND id = :id AND dedup_active = 1;

-- Many runs without idempotency keys (their queue and slot rows known to exist), their tags
-- and one wake-up per environment, in one statement committed on its own (autocommit): a
-- group of HTTP triggers in one round trip, where BEGIN, COPY, NOTIFY and COMMIT took five.
-- :rows is a JSON array of the runs' rows (one orjson call, where psycopg dumping one array
-- per column cost twice the Python time, and unnest of 22 arrays more server time). Keep
-- the columns in sync with insert_run.
-- name: insert_runs_alone [postgres]
WITH run AS (
    INSERT INTO runs (
        id, env, task_id, queue, status, payload, metadata, tags, attempt, max_attempts,
        priority, concurrency_key, idempotency_key, idempotency_expires_at,
        idempotency_active, created_at, updated_at, available_at, ready_at, delay_until,
        ttl_expires_at, max_duration, parent_id, root_id, depth, replayed_from,
        parent_waitpoint_id, version
    )
    SELECT r.id, r.env, r.task_id, r.queue, r.status, r.payload, r.metadata, r.tags, 1,
           r.max_attempts, r.priority, r.concurrency_key, NULL, NULL, 0, :now, :now,
           r.available_at, r.ready_at, r.delay_until, r.ttl_expires_at, r.max_duration,
           r.parent_id, r.root_id, r.depth, r.replayed_from, r.parent_waitpoint_id, r.version
    FROM json_to_recordset(:rows::json) AS r(
        id text, env text, task_id text, queue text, status text, payload text,
        metadata text, tags text, max_attempts integer, priority double precision,
        concurrency_key text, available_at double precision, ready_at double precision,
        delay_until double precision, ttl_expires_at double precision,
        max_duration double precision, parent_id text, root_id text, depth integer,
        replayed_from text, parent_waitpoint_id text, version text)
    RETURNING id, env, status, tags
), tagged AS (
    INSERT INTO run_tags (env, tag, run_id)
    SELECT run.env, t.tag, run.id FROM run, json_array_elements_text(run.tags::json) AS t(tag)
    ON CONFLICT DO NOTHING
)
SELECT pg_notify(:channel, q.env) FROM (SELECT DISTINCT env FROM run WHERE status = 'QUEUED') AS q;

-- Start latency (issue 18) -----------------------------------------------------------------
-- open_slots of the queues in :names with a queued run (the first :ahead of them by name),
-- sent by an idle claim in the same round trip as (right behind) lock_queues_of_runs: it
-- runs after the queue rows are locked, so it reads the counts as open_slots would there;
-- each queue's limit is read from its row. Every queue read has a row (ckey NULL when no
-- key has room), so the caller tells "no open slot" from "not read ahead".
-- name: open_slots_of_queues [postgres]
SELECT q.name AS queue, s.ckey, s.executing, s.last_claim_at
FROM (SELECT env, name, concurrency_limit FROM queues q
      WHERE q.env = :env AND q.name = ANY(:names)
        AND (SELECT TRUE FROM runs r WHERE r.env = q.env AND r.queue = q.name
             AND r.status = 'QUEUED' ORDER BY r.concurrency_key, r.ready_at LIMIT 1)
      ORDER BY q.name LIMIT :ahead) q
LEFT JOIN LATERAL (
    SELECT ckey, executing, last_claim_at FROM queue_slots
    WHERE env = q.env AND queue = q.name
      AND (q.concurrency_limit IS NULL OR executing < q.concurrency_limit)
    ORDER BY last_claim_at, ckey
    LIMIT 1000) s ON TRUE
ORDER BY q.name, s.last_claim_at, s.ckey;
-- Debounce and batch (issue 20, part 5; store/_sql_groups.py) ------------------------------

-- Lock a group's row, making it if it is new (pointing at :run_id, the run about to be
-- inserted). A concurrent trigger for the same group waits here until this transaction
-- ends, then sees the run it left. size: what the pending run has taken, this one counted.
-- name: group_lock
INSERT INTO run_groups (env, task_id, kind, key, run_id, first_at, size)
VALUES (:env, :task_id, :kind, :key, :run_id, :now, 1)
ON CONFLICT (env, task_id, kind, key) DO UPDATE SET size = run_groups.size + 1
RETURNING run_id, first_at, size;

-- The group's run was not pending any more: a new burst or batch, in a new run.
-- name: group_restart
UPDATE run_groups SET run_id = :run_id, first_at = :now, size = 1
WHERE env = :env AND task_id = :task_id AND kind = :kind AND key = :key;

-- The metadata of a group's run while it is pending (DELAYED, its start still ahead).
-- name: group_pending_metadata
SELECT metadata FROM runs WHERE id = :id AND status = 'DELAYED' AND delay_until > :now;

-- Debounce: the pending run takes a new trigger's payload (NULL: it keeps its own, the
-- leading mode) and its new start. Only while it is DELAYED and its start is ahead: the
-- tick's promote_delayed and this are ordered by the run's row lock, and a run whose
-- quiet period is over is no longer pending even if no tick promoted it yet.
-- name: group_debounce_run
UPDATE runs SET payload = COALESCE(:payload, payload), metadata = :metadata,
    max_attempts = COALESCE(:max_attempts, max_attempts), updated_at = :now,
    available_at = :start, ready_at = :start - COALESCE(priority, 0), delay_until = :start,
    ttl_expires_at = COALESCE(:ttl_expires_at, ttl_expires_at)
WHERE id = :id AND status = 'DELAYED' AND delay_until > :now
RETURNING id;

-- Batch: one more event's data appended to the pending run's payload (a JSON array).
-- name: group_append_run
UPDATE runs SET payload = substr(payload, 1, length(payload) - 1) || ',' || :item || ']',
    metadata = :metadata, updated_at = :now
WHERE id = :id AND status = 'DELAYED' AND delay_until > :now
RETURNING id;

-- Batch: the event that fills the batch appends itself and starts the run now.
-- name: group_append_full
UPDATE runs SET payload = substr(payload, 1, length(payload) - 1) || ',' || :item || ']',
    metadata = :metadata, updated_at = :now, status = 'QUEUED',
    available_at = :now, ready_at = :now - priority, delay_until = NULL
WHERE id = :id AND status = 'DELAYED' AND delay_until > :now
RETURNING id;

-- Groups whose run is no longer pending (the next trigger would start a new one anyway).
-- name: group_prune
DELETE FROM run_groups
WHERE NOT EXISTS (SELECT 1 FROM runs WHERE runs.id = run_groups.run_id
                  AND runs.status = 'DELAYED');

-- A replayed or retained event's run joined a debounce or batch group's pending run: its
-- delivery names that run instead of the one planned.
-- name: ev_delivery_moved
UPDATE event_deliveries SET run_id = :run_id
WHERE event_seq = :seq AND run_id = :planned;

-- A debounced or batched run of a publish joined its group's pending run: the event's
-- fan-out (written with the event, before its runs) names that run instead of the one
-- planned. Run ids are unique, so the planned id is replaced where it stands.
-- name: ev_fanout_moved
UPDATE events SET fanout = replace(fanout, :planned, :run_id) WHERE seq = :seq;
-- fire_timers' second statement, in the same transaction, its snapshot taken after that
-- one locked the waitpoints :ids: their waiting journal entries done, their WAITING runs
-- queued again with their waits cleared, and those runs' envs woken. A run waiting on
-- several of them resumes once (one UPDATE touches a row once).
-- name: resume_fired [postgres]
WITH fired AS (SELECT id, run_id FROM waitpoints WHERE id = ANY(CAST(:ids AS text[]))),
waits AS (
    SELECT rw.waitpoint_id, rw.run_id FROM run_waits rw JOIN fired f ON f.id = rw.waitpoint_id),
entries AS (
    UPDATE journal j SET status = 'done', finished_at = :now
    FROM (SELECT waitpoint_id, run_id FROM waits
          UNION SELECT id, run_id FROM fired WHERE run_id IS NOT NULL) e
    WHERE j.run_id = e.run_id AND j.waitpoint_id = e.waitpoint_id AND j.status = 'waiting'),
resumed AS (
    UPDATE runs SET status = 'QUEUED', available_at = :now, ready_at = :now - COALESCE(runs.priority, 0),
        updated_at = :now, wait_reason = NULL,
        waited_seconds = runs.waited_seconds
            + CASE WHEN runs.updated_at < :now THEN :now - runs.updated_at ELSE 0 END
    WHERE runs.status = 'WAITING' AND runs.id IN (SELECT run_id FROM waits)
    RETURNING runs.id, runs.env),
cleared AS (DELETE FROM run_waits WHERE run_id IN (SELECT id FROM resumed)),
woken AS (SELECT pg_notify(:channel, env) FROM (SELECT DISTINCT env FROM resumed) r)
SELECT COUNT(*) AS woken FROM woken;

-- Alert rules whose signing secret is still plaintext: created before secrets were sealed
-- (a sealed one is a Fernet token, gAAAAA…; a plaintext one is whsec_…).
-- name: plaintext_alert_secrets
SELECT id, secret FROM alert_rules WHERE substr(secret, 1, 6) = 'whsec_';

-- Only if it is still the plaintext: two processes sealing at once write one token.
-- name: seal_alert_secret
UPDATE alert_rules SET secret = :sealed WHERE id = :id AND secret = :plaintext;

-- Runs of tasks without end hooks that ended outside a worker, taken once by a worker of
-- their version (C11) so that its metrics and traces see them end; NULL: never started.
-- name: take_ended_elsewhere
UPDATE runs SET hooks_due = 0
WHERE id IN (SELECT id FROM runs WHERE env = :env AND hooks_due = 1
             AND task_id IN (SELECT value FROM json_each(:task_ids))
             AND (version = :version OR version IS NULL) LIMIT 100)
RETURNING *;

-- name: take_ended_elsewhere [postgres]
UPDATE runs SET hooks_due = 0
WHERE id IN (SELECT id FROM runs WHERE env = :env AND hooks_due = 1
             AND task_id = ANY(:task_ids) AND (version = :version OR version IS NULL)
             LIMIT 100 FOR UPDATE SKIP LOCKED)
RETURNING *;

-- For the rest of this transaction only: how long the session may idle in it before the
-- server ends it (a publish with much to plan, _sql_events_pg). :ms is text.
-- name: allow_idle_in_transaction [postgres]
SELECT set_config('idle_in_transaction_session_timeout', :ms, true) AS ms;

-- A keyed trigger (_insert_keyed): insert, or take the active run holding the key through
-- the unique index itself (the arbiter), releasing it if its TTL passed or it ended
-- without success (RETURNING idempotency_active 0: the next call inserts). An idempotency
-- key is held by at most one active run; a concurrent trigger with the same key waits for
-- the first, then takes its run. Holding it rewrites the row with the same values: on
-- PostgreSQL a HOT update, on the retried-trigger path only.
-- name: upsert_run_idempotent
INSERT INTO runs (
    id, env, task_id, queue, status, payload, metadata, tags, attempt, max_attempts,
    priority, concurrency_key, idempotency_key, idempotency_expires_at, idempotency_active,
    created_at, updated_at, available_at, ready_at, delay_until, ttl_expires_at,
    max_duration, parent_id, root_id, depth, replayed_from, parent_waitpoint_id, version
) VALUES (
    :id, :env, :task_id, :queue, :status, :payload, :metadata, :tags, 1, :max_attempts,
    :priority, :concurrency_key, :idempotency_key, :idempotency_expires_at, 1,
    :now, :now, :available_at, :ready_at, :delay_until, :ttl_expires_at, :max_duration,
    :parent_id, :root_id, :depth, :replayed_from, :parent_waitpoint_id, :version
)
ON CONFLICT (env, task_id, idempotency_key) WHERE idempotency_active = 1
DO UPDATE SET idempotency_active = CASE
    WHEN runs.idempotency_expires_at <= :now
         OR runs.status IN ('FAILED', 'CANCELED', 'EXPIRED', 'TIMED_OUT') THEN 0 ELSE 1 END
RETURNING id, idempotency_active;

-- Events by COPY (issue 20's bulk publish; store/_sql_events_pg.py) --------------------------

-- PostgreSQL, a batch of :n events about to be copied: their sequence numbers, drawn from
-- the events' identity sequence as an INSERT would draw them, and the pending waits for
-- their names. Read after the names' locks (so the snapshot holds every wait registered
-- before, as ev_insert_batch_and_waits). Seq rows have a seq, wait rows a waitpoint_id.
-- The sequence is looked up once (OFFSET 0 keeps the subquery from being pulled up):
-- pg_get_serial_sequence per row searched the catalog each time, about 10 us a number
-- against 1.5 us for nextval alone (ev_lock_seqs_and_waits likewise).
-- name: ev_seqs_and_waits [postgres]
SELECT nextval(s.r) AS seq, NULL AS waitpoint_id,
       NULL AS name, NULL AS match_path, NULL AS match_value, NULL AS expr,
       NULL AS created_at
FROM (SELECT CAST(pg_get_serial_sequence('events', 'seq') AS regclass) AS r OFFSET 0) s,
     generate_series(1, :n)
UNION ALL
SELECT NULL, w.waitpoint_id, w.name, w.match_path, w.match_value, w.expr, w.created_at
FROM event_waits w JOIN waitpoints p ON p.id = w.waitpoint_id
WHERE w.env = :env AND w.name = ANY(CAST(:names AS text[])) AND p.status = 'pending'
ORDER BY created_at, waitpoint_id;

-- PostgreSQL, a batch's events (distinct ids, their seqs drawn by ev_seqs_and_waits). No
-- ON CONFLICT: an id still deduplicating (events_dedup) fails the COPY and the publish's
-- transaction, and the publisher publishes the batch again by INSERT
-- (ev_insert_batch_and_waits). Keep the column order with _sql_events_pg._EVENT_TYPES.
-- name: ev_copy [postgres]
COPY events (seq, env, id, name, data, created_at, dedup_until, dedup_active, expires_at,
             fanout) FROM STDIN (FORMAT BINARY);

-- SQLite, a single publish planned with the subscribers this process read last: the event
-- (no row if its id is taken), whether any run waits on its name (as ev_insert_one) and
-- the task fingerprint to check that plan against (keep it the same text as
-- ev_tasks_version), in one statement of the publish's transaction.
-- name: ev_insert_alone [sqlite]
INSERT INTO events (env, id, name, data, created_at, dedup_until, dedup_active, expires_at,
                    fanout)
VALUES (:env, :id, :name, :data, :now, :dedup_until, 1, :expires_at, :fanout)
ON CONFLICT (env, id) WHERE dedup_active = 1 DO NOTHING
RETURNING seq,
    EXISTS (SELECT 1 FROM event_waits w WHERE w.env = :env AND w.name = :name) AS waiting,
    'v' || COALESCE((SELECT version FROM task_versions WHERE env = :env), 0) AS v;

-- SQLite, runs that need nothing but their rows (no tags, keys, delay, parent or group:
-- see _sql_events_sqlite.lean), a publish's fan-out or a batch trigger's,, in one statement from a JSON array of
-- [id, task_id, queue, payload, metadata, max_attempts, priority, concurrency_key, ttl,
-- max_duration, depth, version] arrays: the columns every such run leaves NULL are not
-- bound one by one, as insert_run's 28 named parameters are per run. Keep the columns and
-- their values in sync with insert_run and SqlCore._run_row.
-- name: insert_lean_runs [sqlite]
INSERT INTO runs (
    id, env, task_id, queue, status, payload, metadata, tags, attempt, max_attempts,
    priority, concurrency_key, idempotency_active, created_at, updated_at, available_at,
    ready_at, ttl_expires_at, max_duration, depth, version
)
SELECT json_extract(value, '$[0]'), :env, json_extract(value, '$[1]'),
       json_extract(value, '$[2]'), 'QUEUED', json_extract(value, '$[3]'),
       json_extract(value, '$[4]'), '[]', 1, json_extract(value, '$[5]'),
       json_extract(value, '$[6]'), json_extract(value, '$[7]'), 0, :now, :now, :now,
       :now - json_extract(value, '$[6]'), :now + json_extract(value, '$[8]'),
       json_extract(value, '$[9]'), json_extract(value, '$[10]'),
       json_extract(value, '$[11]')
FROM json_each(:rows);

-- Start latency (issue 18): a trigger hands its run to an idle worker -----------------------

-- insert_run_alone, which also hands the run to a worker that offered to take one
-- (worker_offers), when nothing else could take it first: the run is QUEUED and due, the
-- worker alive with its lease current (C10) and serving the task at its version (C11),
-- the queue not paused, without a rate limit, below its global limit and with no other
-- run queued (so no run waiting longer is passed over), the key below its limit (C5).
-- Then the run is written claimed (EXECUTING under that worker, lease epoch 1, its slots
-- taken, as claim_ready and take_claimed would), the offer is spent, and the NOTIFY tells
-- that worker, carrying the run's row when it fits: the worker starts the body when the
-- notification comes, which PostgreSQL sends only once the commit is flushed, so the
-- claim was committed first (C3, C4), in the trigger's own commit: one WAL flush from
-- the trigger call to the body instead of two. Rows are locked offer, queue, slot, each
-- SKIP LOCKED: a claim holding one (it locks queue rows first) makes the trigger queue
-- its run as before, and the trigger never waits, so it cannot deadlock with a claim.
-- Otherwise the run is queued and announced as insert_run_alone does. Each CTE costs
-- executor time even with no offer to read (0.15 ms a trigger here, and 0.7 ms more to
-- plan where statements are not prepared, behind a pooler), so a store sends this only
-- while the last single trigger of the environment saw an offer (offers, here and in
-- insert_run_alone).
-- name: insert_run_offered [postgres]
WITH offer AS (
    SELECT o.worker_id, o.version
    FROM worker_offers o JOIN workers w ON w.id = o.worker_id
    WHERE o.env = :env AND o.run_id IS NULL AND CAST(:status AS text) = 'QUEUED'
      AND CAST(:available_at AS double precision) <= :now
      AND CAST(:ready_at AS double precision) <= :now
      AND (CAST(o.serves AS jsonb) -> CAST(:queue AS text)) ? CAST(:task_id AS text)
      AND (o.version = :version OR o.version IS NULL
           OR (CAST(:version AS text) IS NULL
               AND CAST(o.new_task_ids AS jsonb) ? CAST(:task_id AS text)))
      AND w.status = 'alive' AND w.lease_expires_at >= :now
    LIMIT 1
    FOR UPDATE OF o SKIP LOCKED
), queue AS (
    SELECT q.concurrency_limit FROM queues q
    WHERE q.env = :env AND q.name = :queue AND EXISTS (SELECT 1 FROM offer)
      AND q.paused = 0 AND COALESCE(q.rate_limit_count, 0) = 0
      AND (q.global_limit IS NULL OR q.executing < q.global_limit)
      AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.env = q.env AND r.queue = q.name
                      AND r.status = 'QUEUED')
    FOR UPDATE OF q SKIP LOCKED
), slot AS (
    SELECT s.ckey FROM queue_slots s, queue
    WHERE s.env = :env AND s.queue = :queue AND s.ckey = :concurrency_key
      AND (queue.concurrency_limit IS NULL OR s.executing < queue.concurrency_limit)
    FOR UPDATE OF s SKIP LOCKED
), spent AS (
    UPDATE worker_offers o SET run_id = :id FROM offer, slot
    WHERE o.worker_id = offer.worker_id
    RETURNING o.worker_id, offer.version
), took_slot AS (
    UPDATE queue_slots s SET executing = s.executing + 1,
        last_claim_at = GREATEST(s.last_claim_at + 0.000001, :now)
    FROM spent WHERE s.env = :env AND s.queue = :queue AND s.ckey = :concurrency_key
), took_queue AS (
    UPDATE queues q SET executing = q.executing + 1
    FROM spent WHERE q.env = :env AND q.name = :queue
), run AS (
    INSERT INTO runs (
        id, env, task_id, queue, status, payload, metadata, tags, attempt, max_attempts,
        priority, concurrency_key, idempotency_key, idempotency_expires_at,
        idempotency_active, created_at, updated_at, available_at, ready_at, delay_until,
        ttl_expires_at, max_duration, parent_id, root_id, depth, replayed_from,
        parent_waitpoint_id, version, worker_id, lease_epoch, segment_started_at,
        started_at, holds_slot, queued_seconds
    ) VALUES (
        :id, :env, :task_id, :queue, COALESCE((SELECT 'EXECUTING' FROM spent), :status),
        :payload, :metadata, :tags, 1, :max_attempts, :priority, :concurrency_key,
        :idempotency_key, :idempotency_expires_at, :idempotency_active, :now, :now,
        :available_at, :ready_at, :delay_until, :ttl_expires_at, :max_duration, :parent_id,
        :root_id, :depth, :replayed_from, :parent_waitpoint_id,
        COALESCE(:version, (SELECT version FROM spent)), (SELECT worker_id FROM spent),
        COALESCE((SELECT 1 FROM spent), 0), (SELECT :now FROM spent),
        (SELECT :now FROM spent), COALESCE((SELECT 1 FROM spent), 0),
        COALESCE((SELECT :now - :available_at FROM spent), 0)
    )
    RETURNING *
), tagged AS (
    INSERT INTO run_tags (env, tag, run_id)
    SELECT run.env, t.tag, run.id FROM run, json_array_elements_text(run.tags::json) AS t(tag)
    ON CONFLICT DO NOTHING
)
SELECT (SELECT pg_notify(:channel, CASE
            WHEN run.worker_id IS NULL THEN run.env
            WHEN octet_length(row_to_json(run)::text) < 7000
                THEN json_build_object('push', run.worker_id, 'run', row_to_json(run))::text
            ELSE json_build_object('push', run.worker_id, 'id', run.id)::text END)
        FROM run WHERE status IN ('QUEUED', 'EXECUTING')) AS notified,
       EXISTS (SELECT 1 FROM offer) AS offers;

-- A worker's claim takes back its offer, and with it the run a trigger handed over on
-- it, if the run is still held under this worker at its first epoch (the worker may not
-- have heard: its notification can be lost). Waits for a trigger spending the offer now.
-- name: take_offer [postgres]
DELETE FROM worker_offers o WHERE o.worker_id = :worker_id
RETURNING o.run_id,
    (SELECT row_to_json(r) FROM runs r
     WHERE r.id = o.run_id AND r.worker_id = o.worker_id AND r.status = 'EXECUTING'
       AND r.lease_epoch = 1) AS run;

-- A claim that came back short offers to take one run from a trigger (insert_run_offered);
-- the same transaction took back any offer before (take_offer), so there is no row.
-- name: post_offer [postgres]
INSERT INTO worker_offers (worker_id, env, serves, version, new_task_ids)
VALUES (:worker_id, :env, :serves, :version, :new_task_ids);

-- A worker stopped or declared dead offers nothing more (its row would only be read and
-- passed over by every trigger). Never waits: a trigger or a claim holding the row has
-- spent or taken it back (a dead worker's row left spent is passed over too).
-- name: withdraw_offer
DELETE FROM worker_offers WHERE worker_id = :worker_id;

-- name: withdraw_offer [postgres]
DELETE FROM worker_offers WHERE worker_id IN (
    SELECT worker_id FROM worker_offers WHERE worker_id = :worker_id FOR UPDATE SKIP LOCKED);

-- PostgreSQL, a batch of :n events about to be copied (store/_sql_events_pg.py), in one
-- round trip: the names' locks (as ev_lock_names_and_version), the task fingerprint, the
-- idle bound for this transaction when :ms is given (as allow_idle_in_transaction), :n
-- sequence numbers (as ev_seqs_and_waits) and the pending waits for the names. The
-- statement's snapshot may predate the locks (taken while it waited): its waits count
-- only if no other holder of these locks committed in between, each version it bumped
-- being the one it read plus one (versions only grow; a new name's is 1), which "ok"
-- says; else the publisher reads the waits again (ev_seqs_and_waits, :n = 0). The head
-- row has v, ok and the seqs (one array: a row each cost the client a dict each), the
-- rows after it a wait each.
-- name: ev_lock_seqs_and_waits [postgres]
WITH seen AS (
    SELECT COALESCE(SUM(version), 0) AS v FROM event_names
    WHERE env = :env AND name = ANY(CAST(:names AS text[]))
), locked AS (
    INSERT INTO event_names (env, name, last_at, version)
    SELECT :env, n.name, :now, 1 FROM unnest(CAST(:names AS text[])) AS n(name)
    ORDER BY n.name
    ON CONFLICT (env, name) DO UPDATE SET last_at = excluded.last_at,
        version = event_names.version + 1
    RETURNING version
), bound AS (
    SELECT set_config('idle_in_transaction_session_timeout', CAST(:ms AS text), true) AS ms
    WHERE CAST(:ms AS text) IS NOT NULL
)
SELECT (SELECT COUNT(*) || ':' || COALESCE(SUM(hashtextextended(t::text, 0)), 0)
        FROM tasks t WHERE t.env = :env) AS v,
       (SELECT COALESCE(SUM(version), 0) FROM locked)
           = (SELECT v FROM seen) + cardinality(CAST(:names AS text[])) AS ok,
       (SELECT COUNT(*) FROM bound) AS bounded,
       (SELECT array_agg(nextval(s.r))
        FROM (SELECT CAST(pg_get_serial_sequence('events', 'seq') AS regclass) AS r
              OFFSET 0) s,
             generate_series(1, :n)) AS seqs,
       NULL AS waitpoint_id, NULL AS name, NULL AS match_path, NULL AS match_value,
       NULL AS expr, CAST(NULL AS double precision) AS created_at, 0 AS part
UNION ALL
SELECT NULL, NULL, NULL, NULL, w.waitpoint_id, w.name, w.match_path, w.match_value,
       w.expr, w.created_at, 1
FROM event_waits w JOIN waitpoints p ON p.id = w.waitpoint_id
WHERE w.env = :env AND w.name = ANY(CAST(:names AS text[])) AND p.status = 'pending'
ORDER BY part, created_at, waitpoint_id;

-- SQLite, one run that needs nothing but its row (see insert_lean_runs, whose columns and
-- values these are), its parameters by position: ?1 id, ?2 env, ?3 task_id, ?4 queue,
-- ?5 payload, ?6 metadata, ?7 max_attempts, ?8 priority, ?9 concurrency_key, ?10 ttl,
-- ?11 max_duration, ?12 depth, ?13 version, ?14 now. A single publish's few runs go so,
-- where parsing JSON rows, or binding named parameters, cost more than the insert.
-- name: insert_lean_run [sqlite]
INSERT INTO runs (
    id, env, task_id, queue, status, payload, metadata, tags, attempt, max_attempts,
    priority, concurrency_key, idempotency_active, created_at, updated_at, available_at,
    ready_at, ttl_expires_at, max_duration, depth, version
)
VALUES (?1, ?2, ?3, ?4, 'QUEUED', ?5, ?6, '[]', 1, ?7, ?8, ?9, 0, ?14, ?14, ?14, ?14 - ?8,
        ?14 + ?10, ?11, ?12, ?13);

-- The environment's newest run (a bulk action's bound) by runs_env_idp, in id order (see
-- outlast/store/_rows.py ID_KEY); MAX(id) would read every run of the environment once
-- runs_env_id is gone (migration 0024_drop_runs_list_ids).
-- name: newest_run_id_by_key
SELECT r.id FROM runs r WHERE r.env = :env ORDER BY substr(r.id, 5, 12) DESC, r.id DESC
LIMIT 1;

-- SQLite: events.seq is a plain rowid, which would reuse the highest seq once its row is
-- gone (0027_events_lean), so the newest row stays, emptied into a tombstone (environment
-- and name '', which no reader asks for and no publish writes), and goes once a newer
-- event exists. Tombstones are not counted as pruned events.
-- name: ev_prune [sqlite]
DELETE FROM events WHERE expires_at <= :now AND seq < (SELECT MAX(seq) FROM events)
  AND NOT (env = '' AND name = '');

-- name: ev_prune_newest [sqlite]
UPDATE events SET env = '', id = '', name = '', data = 'null', fanout = NULL,
    dedup_active = 0
WHERE seq = (SELECT MAX(seq) FROM events) AND expires_at <= :now
  AND NOT (env = '' AND name = '');

-- name: ev_prune_tombstones [sqlite]
DELETE FROM events WHERE env = '' AND name = '' AND seq < (SELECT MAX(seq) FROM events);

-- SQLite, a batch's events (distinct ids; no RETURNING: their sequence numbers are not
-- needed, SQLite's plain batch), their values by position: ?1 env, ?2 now, and per event
-- ?3 id, ?4 name, ?5 data, ?6 dedup_until, ?7 expires_at, ?8 fanout. _sql_events_sqlite
-- repeats the VALUES row for up to 128 events in one statement, the next event's numbered
-- from ?9 on: less than half the instructions of json_each's rows. An id still
-- deduplicating inserts nothing (the statement's count of changes says so).
-- name: ev_insert_values [sqlite]
INSERT INTO events (env, id, name, data, created_at, dedup_until, dedup_active, expires_at,
                    fanout)
VALUES (?1, ?3, ?4, ?5, ?2, ?6, 1, ?7, ?8)
ON CONFLICT (env, id) WHERE dedup_active = 1 DO NOTHING;
