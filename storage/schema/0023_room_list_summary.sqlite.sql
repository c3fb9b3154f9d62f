-- What the admin room list shows, sorts and searches by: one row per row of `rooms`,
-- written with it and kept by the persister as the room's current state changes, so a
-- page of the list is one indexed query, not a read of every room. Values are the current
-- state's as clients see it (redacted content pruned); `*_folded` are lower-cased by the
-- server (Python's str.lower), for search. Rooms held before this migration are filled in
-- at start-up (`RoomAdminStore.fill_room_list_summaries`).
-- The SQLite and PostgreSQL files differ only in PostgreSQL's "C" collation, which sorts
-- text by code point, as SQLite's default does.
CREATE TABLE room_list_summary (
    room_id TEXT PRIMARY KEY,
    name TEXT,
    name_folded TEXT,
    canonical_alias TEXT,
    alias_localpart_folded TEXT,
    join_rules TEXT,
    guest_access TEXT,
    history_visibility TEXT,
    encryption TEXT,
    federatable BOOLEAN NOT NULL DEFAULT TRUE,
    room_type TEXT,
    joined_members BIGINT NOT NULL DEFAULT 0,
    joined_local_members BIGINT NOT NULL DEFAULT 0,
    state_events BIGINT NOT NULL DEFAULT 0
);
-- The list's default order (by name, rooms without one last, ties by room ID) and its
-- order by size, read in index order.
CREATE INDEX room_list_by_name ON room_list_summary ((name IS NULL), name, room_id);
CREATE INDEX room_list_by_size ON room_list_summary (joined_members DESC, room_id);

-- Purging a room deletes its transaction IDs a batch at a time, found by room.
CREATE INDEX event_txn_ids_room ON event_txn_ids (room_id);
-- Purging a room finds its state groups a batch at a time, by room.
CREATE INDEX state_groups_room ON state_groups (room_id);
-- The admin user list by creation time: a page is found from this index alone (user ID
-- breaks ties), replacing 0016's index on created_ts.
DROP INDEX users_created_ts;
CREATE INDEX users_created_ts_user ON users (created_ts, user_id);
