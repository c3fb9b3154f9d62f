-- Accounts, devices, tokens, user-interactive auth sessions and profiles.

CREATE TABLE users (
    user_id TEXT PRIMARY KEY,
    password_hash TEXT,
    created_ts BIGINT NOT NULL,
    is_admin BOOLEAN NOT NULL DEFAULT FALSE,
    is_guest BOOLEAN NOT NULL DEFAULT FALSE,
    deactivated BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE devices (
    user_id TEXT NOT NULL REFERENCES users (user_id),
    device_id TEXT NOT NULL,
    display_name TEXT,
    created_ts BIGINT NOT NULL,
    last_seen_ts BIGINT,
    last_seen_ip TEXT,
    last_seen_user_agent TEXT,
    PRIMARY KEY (user_id, device_id)
);

-- One row per refresh token. A refresh token stays usable until its successor (`next_token_id`)
-- or the successor's access token is used; then it is marked `revoked`, and presenting it again
-- means it leaked: the whole device session is revoked.
CREATE TABLE refresh_tokens (
    token_id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    expires_ts BIGINT NOT NULL,
    next_token_id TEXT,
    revoked BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX refresh_tokens_device ON refresh_tokens (user_id, device_id);

-- Access tokens are JWTs; this row is what makes one valid (`jti` = token_id). Deleting the row
-- revokes the token.
CREATE TABLE access_tokens (
    token_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    expires_ts BIGINT,
    refresh_token_id TEXT,
    used BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX access_tokens_device ON access_tokens (user_id, device_id);

CREATE TABLE ui_auth_sessions (
    session_id TEXT PRIMARY KEY,
    created_ts BIGINT NOT NULL,
    method TEXT NOT NULL,
    uri TEXT NOT NULL,
    -- The user the session authenticates (NULL while registering).
    user_id TEXT,
    -- JSON object: stage type -> result (e.g. the registration token that was accepted).
    completed TEXT NOT NULL
);

CREATE TABLE profiles (
    user_id TEXT PRIMARY KEY REFERENCES users (user_id),
    displayname TEXT,
    avatar_url TEXT
);
