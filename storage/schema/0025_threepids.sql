-- Third-party identifiers (e-mail addresses) bound to local accounts: for logging in with
-- one, password resets, and the admin API. An address belongs to one account at most.
CREATE TABLE user_threepids (
    user_id TEXT NOT NULL,
    -- Only "email" for now.
    medium TEXT NOT NULL,
    -- Canonical form: the domain lowercased and the whole address case-folded, so lookups
    -- match what people type.
    address TEXT NOT NULL,
    validated_at BIGINT NOT NULL,
    added_at BIGINT NOT NULL,
    PRIMARY KEY (medium, address)
);
CREATE INDEX user_threepids_user ON user_threepids (user_id);

-- E-mail validation sessions (/requestToken, then the link in the mail). A row exists only
-- once its mail has gone out; the token is kept as a SHA-256 hash and cleared when used.
CREATE TABLE threepid_validation_sessions (
    session_id TEXT PRIMARY KEY,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    client_secret TEXT NOT NULL,
    -- Why the address is being validated: registration, add_threepid, password_reset (a
    -- session validated for one cannot be used for another).
    purpose TEXT NOT NULL,
    -- The highest send_attempt a mail went out for.
    send_attempt BIGINT NOT NULL,
    next_link TEXT,
    token_hash TEXT,
    token_expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    validated_at BIGINT
);
CREATE INDEX threepid_validation_sessions_lookup
    ON threepid_validation_sessions (client_secret, medium, address, purpose);
CREATE INDEX threepid_validation_sessions_created ON threepid_validation_sessions (created_at);
