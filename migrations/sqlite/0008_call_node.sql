-- The daemon that runs each call, so that the calls a crash left unended
-- are ended by the daemon of that name when it starts again.
ALTER TABLE calls ADD COLUMN node TEXT;
CREATE INDEX calls_unended ON calls (node) WHERE ended_at IS NULL;
