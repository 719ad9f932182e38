-- outlast: expand
-- Expand-then-contract upgrades (docs/how-to/upgrading-outlast.md). Every migration
-- applied is recorded by its name with its kind, so a process of an older release can
-- tell whether a newer schema only added things (expand: it keeps working) or took away
-- something it may use (contract: it refuses). Processes register the release they run
-- and the migrations their code knows, so a contract step waits until no live process
-- predates it. Names, not numbers, identify migrations.
CREATE TABLE outlast_migrations (
    name TEXT PRIMARY KEY,
    number INTEGER NOT NULL,
    kind TEXT NOT NULL,                    -- expand | contract
    applied_at DOUBLE PRECISION NOT NULL,
    release TEXT NOT NULL                  -- the outlast release that applied it
);
CREATE TABLE processes (
    id TEXT PRIMARY KEY,                   -- a worker's id, or server_<random>
    kind TEXT NOT NULL,                    -- worker | server
    env TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    release TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    migrations TEXT NOT NULL,              -- JSON list of the migration names its code knows
    started_at DOUBLE PRECISION NOT NULL,
    seen_at DOUBLE PRECISION NOT NULL,                   -- servers: refreshed while they run
    stopped_at DOUBLE PRECISION
);
CREATE INDEX processes_live ON processes (seen_at) WHERE stopped_at IS NULL;
