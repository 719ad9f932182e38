-- outlast: expand
-- An event looked up by id (ev_get) is found by events_dedup while its id deduplicates,
-- and by this index once released (a publish of the id past its window releases it):
-- so events_env_id (env, id, seq), one more index entry written by every publish, can go
-- (contract migration events_lean). Only released rows are in it.
CREATE INDEX events_released ON events (env, id, seq) WHERE dedup_active = 0;
