-- Each local user's server notices room (spec: "Server Notices": exactly one per user).
CREATE TABLE server_notice_rooms (
    user_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL
);
CREATE INDEX server_notice_rooms_by_room ON server_notice_rooms (room_id);

-- The push actions still to be counted into the summary, by room: each read of a room's
-- counts reads the room's queued events.
CREATE INDEX event_push_rotation_queue_by_room ON event_push_rotation_queue (room_id, stream_ordering);
