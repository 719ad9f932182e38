-- outlast: expand
-- Runs by environment and status, without the COMPLETED ones (issue 18: throughput and
-- bytes per run that do not grow with history). Finished runs are nearly all COMPLETED;
-- a full (env, status, id) index kept an entry for each of them (about 68 bytes a run
-- after VACUUM on PostgreSQL, and more before: every status change adds one), and it was
-- the one index of runs that every claim and completion wrote into away from its right
-- edge. Lists of COMPLETED runs go by runs_env_id instead. The full index is dropped by
-- the contract migration drop_runs_env_status, once no older release runs.
CREATE INDEX runs_env_status_live ON runs (env, status, id) WHERE status <> 'COMPLETED';
