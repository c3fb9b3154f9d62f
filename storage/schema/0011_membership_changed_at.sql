-- The stream position at which a user's membership of a room last took another value
-- (join -> leave, invite -> join, ...). `stream_ordering` moves with every m.room.member
-- event, including a joined member changing their display name or avatar; device-list
-- tracking asks whom a user started or stopped sharing rooms with, which only this answers.
ALTER TABLE room_memberships ADD COLUMN membership_stream_ordering BIGINT NOT NULL DEFAULT 0;
UPDATE room_memberships SET membership_stream_ordering = stream_ordering;
CREATE INDEX room_memberships_room_membership_stream
    ON room_memberships (room_id, membership_stream_ordering);
