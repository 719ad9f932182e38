-- outlast: expand
-- A finished row keeps less (issue 18, bytes per finished run): the statements that finish
-- a run clear what only a live run needs, ready_at (the claim order), and store NULL for
-- available_at equal to created_at and for a priority or exec_seconds of 0, which every
-- reader takes back (outlast/store/_rows.py run_from_row). Four 8-byte values: a finished
-- no-op row 265 -> 233 bytes, 29 -> 33 rows a heap page. DROP NOT NULL changes the
-- catalog only (no rewrite, no scan); its ACCESS EXCLUSIVE lock is held for that alone.
-- A process of an older release reading a run finished by this code sees None for these
-- (a finished run's priority reads null in its API) until it is upgraded.
ALTER TABLE runs ALTER COLUMN priority DROP NOT NULL,
    ALTER COLUMN available_at DROP NOT NULL,
    ALTER COLUMN ready_at DROP NOT NULL,
    ALTER COLUMN exec_seconds DROP NOT NULL;
