-- Uploaded audio prompts and stored credentials, SQLite form. Never edit
-- once released: add a migration. Same columns as the PostgreSQL form.

-- Audio uploaded through POST /v1/audio, validated and decoded once: the
-- samples are 8 kHz mono 16-bit PCM, little-endian, ready to play.
CREATE TABLE audio_prompts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    -- What was uploaded: 'wav', 'pcmu' or 'pcma'.
    format TEXT NOT NULL CHECK (format IN ('wav', 'pcmu', 'pcma')),
    duration_ms INTEGER NOT NULL,
    samples BLOB NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- Provider keys stored through POST /v1/credentials. The value is sealed
-- (AES-256-GCM, `enc:v1:...`) with the operator's key and never shown;
-- `hosts` (a JSON array) are where it may be sent, empty for anywhere the
-- agent points.
CREATE TABLE credentials (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hosts TEXT NOT NULL,
    sealed TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
