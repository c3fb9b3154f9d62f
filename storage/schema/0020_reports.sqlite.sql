-- Abuse reports users file about an event, a room or a user (the client API's
-- /rooms/{roomId}/report/{eventId}, /rooms/{roomId}/report and /users/{userId}/report), for
-- server admins to read and delete through the admin API. A room's purge deletes its event
-- and room reports. The SQLite and PostgreSQL files differ only in how IDs are generated.
-- In every table `user_id` is the reporter and `received_ts` when the report arrived.

CREATE TABLE event_reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ts BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    -- The reported event's sender, as it was when reported: the report still names them
    -- after the event is purged from the room's history.
    event_sender TEXT NOT NULL,
    user_id TEXT NOT NULL,
    -- Optional for event reports.
    reason TEXT,
    -- -100 (most offensive) to 0; spec versions before 1.18 let clients send it.
    score INTEGER
);
CREATE INDEX event_reports_room ON event_reports (room_id);
CREATE INDEX event_reports_reporter ON event_reports (user_id);
CREATE INDEX event_reports_event_sender ON event_reports (event_sender);

CREATE TABLE room_reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ts BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX room_reports_room ON room_reports (room_id);
CREATE INDEX room_reports_reporter ON room_reports (user_id);

-- Only reports about this server's existing users are kept.
CREATE TABLE user_reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ts BIGINT NOT NULL,
    target_user_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX user_reports_target ON user_reports (target_user_id);
CREATE INDEX user_reports_reporter ON user_reports (user_id);
