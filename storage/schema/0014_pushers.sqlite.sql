-- Pushers (POST /pushers/set) and the notifications waiting to be pushed through each.
-- The SQLite and PostgreSQL files differ only in how the integer IDs are generated.

-- One row per (user, app_id, pushkey), as the spec identifies a pusher.
CREATE TABLE pushers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    -- The access token and device that created (or last updated) the pusher: deleting the
    -- device (logout included) deletes its pushers.
    access_token_id TEXT,
    device_id TEXT,
    -- 'http' or 'email'.
    kind TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    app_display_name TEXT NOT NULL,
    device_display_name TEXT NOT NULL,
    profile_tag TEXT,
    lang TEXT NOT NULL,
    -- The client's data object as JSON (url and format included).
    data TEXT NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    -- When the pusher was created or last set (ms); the gateway gets it as pushkey_ts.
    pushkey_ts BIGINT NOT NULL,
    UNIQUE (user_id, app_id, pushkey)
);
CREATE INDEX pushers_app_pushkey ON pushers (app_id, pushkey);
CREATE INDEX pushers_device ON pushers (user_id, device_id);

-- Notifications waiting to be posted to a pusher's gateway, oldest first, so that a gateway
-- that is down (or a restart) loses nothing. A row goes once the gateway has taken it.
CREATE TABLE pusher_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pusher_id BIGINT NOT NULL REFERENCES pushers (id) ON DELETE CASCADE,
    -- The gateway's notification object without devices (JSON); no event_id for a
    -- badge-only update.
    notification TEXT NOT NULL,
    -- The tweaks of the push rule's actions (JSON), sent in the pusher's device entry.
    tweaks TEXT NOT NULL,
    badge_only BOOLEAN NOT NULL,
    queued_ts BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ts BIGINT NOT NULL
);
CREATE INDEX pusher_queue_pusher ON pusher_queue (pusher_id, id);
