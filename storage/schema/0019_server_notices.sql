-- Each local user's server notices room (spec: "Server Notices": exactly one per user).
CREATE TABLE server_notice_rooms (
    user_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL
);
CREATE INDEX server_notice_rooms_by_room ON server_notice_rooms (room_id);
