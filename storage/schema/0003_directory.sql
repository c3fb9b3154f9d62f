-- The user directory reads the join rules and history visibility of every room (for
-- directory search). Indexing room-level state (empty state key) by type keeps that to one
-- index entry per room, instead of a scan of all current state, which is mostly members.
CREATE INDEX current_state_room_level ON current_state_events (type, room_id) WHERE state_key = '';
