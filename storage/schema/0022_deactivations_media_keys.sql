-- Deactivated accounts whose sessions and rooms are still being cleaned up (devices,
-- pushers, leaving rooms, declining invites and knocks). Written in the transaction that
-- marks the account deactivated and deleted once all of it is done, so a process that
-- dies in between finishes the work when it starts again.
CREATE TABLE pending_deactivations (
    user_id TEXT PRIMARY KEY
);

-- Stored objects (media contents and thumbnails, keyed by their SHA-256) that a media
-- deletion has decided to remove or removed: `deleting` while the object is being
-- removed from storage, `generation` counting the deletions. Whoever points a new row at
-- an existing object reads the generation before trusting that the object exists, and
-- writes this row in the transaction that adds its reference, so a deletion that overlaps
-- is seen (and the object stored again) rather than leaving the new row pointing at
-- nothing. Both sides write the row, so PostgreSQL serialises them.
CREATE TABLE media_storage_keys (
    storage_key TEXT PRIMARY KEY,
    generation BIGINT NOT NULL,
    deleting BOOLEAN NOT NULL
);
