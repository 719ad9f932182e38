-- outlast: expand
-- See the PostgreSQL file: priority, available_at, ready_at and exec_seconds lose NOT NULL.
-- SQLite has no ALTER COLUMN; this is the procedure its documentation gives for removing a
-- NOT NULL constraint (lang_altertable.html, "making other kinds of table schema
-- changes"): edit the table's text in sqlite_master, which changes nothing stored. The
-- four definitions are the same text in every schema outlast has shipped.
PRAGMA writable_schema = ON;
UPDATE sqlite_master SET sql = replace(replace(replace(replace(sql,
    'priority REAL NOT NULL DEFAULT 0', 'priority REAL DEFAULT 0'),
    'available_at REAL NOT NULL', 'available_at REAL'),
    'ready_at REAL NOT NULL', 'ready_at REAL'),
    'exec_seconds REAL NOT NULL DEFAULT 0', 'exec_seconds REAL DEFAULT 0')
WHERE type = 'table' AND name = 'runs';
-- RESET re-reads the schema on this connection; it does not bump the schema cookie, by
-- which every other connection learns to re-read it. Any DDL does: this pair.
PRAGMA writable_schema = RESET;
CREATE TABLE outlast_0025 (x INTEGER);
DROP TABLE outlast_0025;
-- A table whose text did not match stops the migration (json() of a non-JSON string
-- raises), rather than leaving runs that could not finish.
SELECT json(CASE WHEN EXISTS (SELECT 1 FROM pragma_table_info('runs')
    WHERE name IN ('priority', 'available_at', 'ready_at', 'exec_seconds') AND "notnull")
    THEN 'migration 0025: runs still has NOT NULL columns' ELSE '{}' END);
