-- The admin API's users part: moderation flags on accounts, per-user rate limit overrides,
-- and the audit log every admin action that changes something writes to.
-- The SQLite and PostgreSQL files differ only in how the audit log's IDs are generated.

-- Locked: every request but logout gets 401 M_USER_LOCKED (tokens are kept, so unlocking
-- restores the sessions). Suspended: may read, may not join, invite, send or edit the
-- profile (403 M_USER_SUSPENDED). Shadow-banned: what they send is answered with an event
-- ID and dropped. Erased: deactivated with `erase`, profile wiped.
ALTER TABLE users ADD COLUMN locked BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN suspended BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN shadow_banned BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN erased BOOLEAN NOT NULL DEFAULT FALSE;
-- NULL for ordinary users; 'bot', 'support' as in Synapse.
ALTER TABLE users ADD COLUMN user_type TEXT;
CREATE INDEX users_created_ts ON users (created_ts);

-- An admin's override of the per-user message rate limit; 0 messages per second means
-- no limit at all.
CREATE TABLE ratelimit_overrides (
    user_id TEXT PRIMARY KEY REFERENCES users (user_id),
    messages_per_second BIGINT NOT NULL,
    burst_count BIGINT NOT NULL
);

-- Who did what to whom, and when: one row per admin action that changed something (and
-- per login-as token issued). Never updated; read by operators (and tests).
CREATE TABLE admin_audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts BIGINT NOT NULL,
    admin_user_id TEXT NOT NULL,
    action TEXT NOT NULL,
    -- The user (or room, media, ...) acted on.
    target TEXT NOT NULL,
    -- JSON object: what was changed, never secrets (no passwords, no tokens).
    details TEXT NOT NULL
);
CREATE INDEX admin_audit_log_ts ON admin_audit_log (ts);
CREATE INDEX admin_audit_log_target ON admin_audit_log (target, ts);
