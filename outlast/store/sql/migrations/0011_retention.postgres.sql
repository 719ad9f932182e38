-- outlast: expand
-- Retention: how long finished runs are kept, per environment (task_id '') and per task
-- (an override). days NULL keeps them for ever; no row means the default (30 days, or
-- what `outlast dev` passes). Pruning deletes a finished run with its journal, events,
-- tags, waits and the waitpoints it created (outlast/_retention.py).
CREATE TABLE retention_policies (
    env TEXT NOT NULL,
    task_id TEXT NOT NULL,                 -- '' for the environment's policy
    days DOUBLE PRECISION,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (env, task_id)
);
-- Pruning finds the waitpoints a run created by this index (runs own few of them).
CREATE INDEX waitpoints_run ON waitpoints (run_id) WHERE run_id IS NOT NULL;
