-- Screening outbound calls, SQLite form. Never edit once released: add a migration.
-- Same columns as the PostgreSQL form.

-- What answered an outbound call that ran answering-machine detection:
-- 'human', 'machine' or 'unknown'; NULL when detection did not run.
ALTER TABLE calls ADD COLUMN answered_by TEXT
    CHECK (answered_by IN ('human', 'machine', 'unknown'));

-- The DTMF key that opts a callee out of every campaign (NULL: none), and
-- what answering-machine detection does on the campaign's calls.
ALTER TABLE campaigns ADD COLUMN opt_out_digit TEXT;
ALTER TABLE campaigns ADD COLUMN amd TEXT NOT NULL DEFAULT 'off'
    CHECK (amd IN ('off', 'hangup', 'message_after_beep'));
