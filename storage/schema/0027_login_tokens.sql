-- Single-use, short-lived m.login.token tokens (POST /login/get_token), kept as SHA-256
-- hashes. `used_ts` is set by the one login that consumes a token.
CREATE TABLE login_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    expires_ts BIGINT NOT NULL,
    used_ts BIGINT
);
CREATE INDEX login_tokens_expires ON login_tokens (expires_ts);
