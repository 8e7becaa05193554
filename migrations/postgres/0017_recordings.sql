-- One row per recorded call: where its WAV file stands (the audio itself
-- is a file under [recordings] dir, never in the database). The file name
-- is derived from the call id; the row stays after the file is deleted
-- (status 'deleted', deleted_at set).
CREATE TABLE recordings (
    call_id TEXT PRIMARY KEY REFERENCES calls (id) ON DELETE CASCADE,
    status TEXT NOT NULL,
    channels TEXT NOT NULL,
    node TEXT NOT NULL,
    duration_ms BIGINT NOT NULL DEFAULT 0,
    size_bytes BIGINT NOT NULL DEFAULT 0,
    paused_ms BIGINT NOT NULL DEFAULT 0,
    started_at TIMESTAMPTZ NOT NULL,
    completed_at TIMESTAMPTZ,
    deleted_at TIMESTAMPTZ
);
CREATE INDEX recordings_by_status_completed ON recordings (status, completed_at);
