-- The transcript of a call: one row per turn (the caller's words or keys,
-- the agent's reply), with offsets from the answer, the barge-in mark and
-- the reply's latency; and the call's short summary, sent in call.ended.

ALTER TABLE calls ADD COLUMN summary TEXT;

CREATE TABLE call_turns (
    call_id TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    speaker TEXT NOT NULL,
    text TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    interrupted BOOLEAN NOT NULL,
    heard TEXT,
    stt_final_ms INTEGER,
    llm_first_token_ms INTEGER,
    tts_first_audio_ms INTEGER,
    first_rtp_ms INTEGER,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (call_id, seq)
);
