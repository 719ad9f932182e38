-- outlast: expand
-- A server records where it listens and how its dashboard is guarded (password | open |
-- locked), so `outlast doctor` can name a dashboard open to the network without a
-- password. Both columns are NULL for processes of a release that did not record them.
ALTER TABLE processes ADD COLUMN listen TEXT;
ALTER TABLE processes ADD COLUMN dashboard TEXT;
