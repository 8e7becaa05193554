-- The per-key API rate limit shared by every daemon of one database: one
-- row per key and minute, counting the requests of that minute (a fixed
-- window). UNLOGGED: a counter needs no crash safety (after a crash of the
-- server the table is empty, which forgives one minute of requests), and it
-- is written on every API request, so it should cost no WAL flush.
CREATE UNLOGGED TABLE api_rate_windows (
    key_id TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (key_id, window_start)
);
