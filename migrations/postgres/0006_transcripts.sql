-- The transcript of a call: one row per turn (the caller's words or keys,
-- the agent's reply), with offsets from the answer, the barge-in mark and
-- the reply's latency; and the call's short summary, sent in call.ended.

ALTER TABLE calls ADD COLUMN summary TEXT;

CREATE TABLE call_turns (
    call_id TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    speaker TEXT NOT NULL,
    text TEXT NOT NULL,
    start_ms BIGINT NOT NULL,
    end_ms BIGINT NOT NULL,
    interrupted BOOLEAN NOT NULL,
    heard TEXT,
    stt_final_ms BIGINT,
    llm_first_token_ms BIGINT,
    tts_first_audio_ms BIGINT,
    first_rtp_ms BIGINT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (call_id, seq)
);
