-- Deactivated accounts whose sessions and rooms are still being cleaned up (devices,
-- pushers, leaving rooms, declining invites and knocks). Written in the transaction that
-- marks the account deactivated and deleted once all of it is done, so a process that
-- dies in between finishes the work when it starts again.
CREATE TABLE pending_deactivations (
    user_id TEXT PRIMARY KEY
);
