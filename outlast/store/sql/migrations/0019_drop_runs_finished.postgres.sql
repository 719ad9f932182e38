-- outlast: contract
-- The usage fold switches from the runs_finished index to the outbox (0015_usage_outbox),
-- and the index goes: it cost an entry per finished run on the hot path. The hand-over
-- is exact: with the fold's row and runs locked (no fold, no finish in flight), the
-- outbox is made to hold exactly the finished runs past the watermark, which the index
-- fold has not counted, and the fold reads the outbox from then on.
LOCK TABLE usage_state IN EXCLUSIVE MODE;
LOCK TABLE runs IN SHARE ROW EXCLUSIVE MODE;
INSERT INTO usage_state (name, finished_at, run_id, sampled_at) VALUES ('rollup', 0, '', 0)
ON CONFLICT (name) DO NOTHING;
DELETE FROM usage_outbox;
INSERT INTO usage_outbox (run_ids)
SELECT CAST(json_agg(id) AS TEXT) FROM (
    SELECT r.id, (row_number() OVER (ORDER BY r.finished_at, r.id) - 1) / 1000 AS chunk
    FROM runs r JOIN usage_state s ON s.name = 'rollup'
    WHERE r.finished_at IS NOT NULL AND r.finished_at >= s.finished_at
      AND (r.finished_at > s.finished_at OR r.id > s.run_id)) pending
GROUP BY chunk;
UPDATE usage_state SET outbox = 1 WHERE name = 'rollup';
DROP INDEX runs_finished;
