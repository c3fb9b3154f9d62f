-- Device lists: the stream clients learn device-list changes from, and the device
-- lists of remote users, kept up to date by their servers' m.device_list_update EDUs.

-- The device-list stream: each user's latest change of devices, device keys or
-- cross-signing keys (local users, and remote users our users share rooms with). A newer
-- change replaces the row; sync asks which users changed after its token.
-- `edu_stream_id` (local users only) is the position of their last device change, which
-- other servers see: the `stream_id` of the last m.device_list_update sent for them (the
-- next one's `prev_id`) and of the user/devices answer. Cross-signing key changes travel
-- in m.signing_key_update EDUs, outside that sequence.
CREATE TABLE device_lists_stream (
    user_id TEXT PRIMARY KEY,
    stream_id BIGINT NOT NULL,
    edu_stream_id BIGINT
);
CREATE INDEX device_lists_stream_id ON device_lists_stream (stream_id);

-- Remote users whose device lists we hold: `stream_id` is their server's numbering of the
-- last update applied (from an EDU or a user/devices answer); `stale` means an update was
-- missed and the list must be fetched again before it is trusted. Cross-signing keys are
-- canonical JSON text (NULL: none).
CREATE TABLE device_lists_remote_users (
    user_id TEXT PRIMARY KEY,
    stream_id BIGINT NOT NULL,
    stale BOOLEAN NOT NULL DEFAULT FALSE,
    master_key TEXT,
    self_signing_key TEXT
);

-- The devices of those users; `keys_json` is the device's signed keys (NULL: none uploaded).
CREATE TABLE device_lists_remote_devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    display_name TEXT,
    keys_json TEXT,
    PRIMARY KEY (user_id, device_id)
);

-- Sync asks which memberships of a room changed after a position (who started or stopped
-- sharing a room with the syncing user).
CREATE INDEX room_memberships_room_stream ON room_memberships (room_id, stream_ordering);
