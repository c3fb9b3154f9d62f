-- The admin API's registration tokens and media parts.

-- Registration tokens made through the admin API (those in the config are not here, and
-- have no limits). `pending` counts sessions that passed the token stage and have not
-- registered yet, so a token with `uses_allowed` cannot be shared by more registrations
-- than it allows; `completed` counts registrations done with it.
CREATE TABLE registration_tokens (
    token TEXT PRIMARY KEY,
    uses_allowed INTEGER,
    pending INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    expiry_time BIGINT
);

-- Which admin quarantined the media (set with `quarantined`, which is what downloads read).
ALTER TABLE media ADD COLUMN quarantined_by TEXT;
-- Media an admin protected: quarantining passes it by.
ALTER TABLE media ADD COLUMN safe_from_quarantine BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX media_created_ts ON media (server_name, created_ts);
