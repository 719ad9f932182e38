-- outlast: contract
-- The usage fold switches from the runs_finished index to the outbox (0015_usage_outbox),
-- and the index goes: it cost an entry per finished run on the hot path. The hand-over
-- is exact: in the migration's write transaction (SQLite has one writer), the outbox is
-- made to hold exactly the finished runs past the watermark, which the index fold has
-- not counted, and the fold reads the outbox from then on.
INSERT INTO usage_state (name, finished_at, run_id, sampled_at) VALUES ('rollup', 0, '', 0)
ON CONFLICT (name) DO NOTHING;
DELETE FROM usage_outbox;
INSERT INTO usage_outbox (run_ids)
SELECT json_group_array(id) FROM (
    SELECT r.id, (row_number() OVER (ORDER BY r.finished_at, r.id) - 1) / 1000 AS chunk
    FROM runs r JOIN usage_state s ON s.name = 'rollup'
    WHERE r.finished_at IS NOT NULL AND r.finished_at >= s.finished_at
      AND (r.finished_at > s.finished_at OR r.id > s.run_id))
GROUP BY chunk;
UPDATE usage_state SET outbox = 1 WHERE name = 'rollup';
DROP INDEX runs_finished;
