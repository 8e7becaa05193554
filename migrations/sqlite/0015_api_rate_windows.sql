-- The per-key API rate limit shared by the daemons of one PostgreSQL
-- database (one row per key and minute). A SQLite store has one daemon,
-- which counts in memory: the table is here so both schemas stay alike.
CREATE TABLE api_rate_windows (
    key_id TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (key_id, window_start)
);
