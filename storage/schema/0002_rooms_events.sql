-- Rooms, events, the room DAG, state (current and at every event), and the per-user data
-- that sync streams.

CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY,
    room_version TEXT NOT NULL,
    creator TEXT,
    -- Published in the public room directory.
    is_public BOOLEAN NOT NULL DEFAULT FALSE,
    created_ts BIGINT NOT NULL,
    -- The state group of the room's current state (the state after all forward extremities).
    current_state_group BIGINT
);

-- Every event we have. `stream_ordering` is its position in the events stream (the order this
-- server learned of it, used by sync); `topological_ordering` (= depth) orders history.
CREATE TABLE events (
    stream_ordering BIGINT PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT,
    sender TEXT NOT NULL,
    topological_ordering BIGINT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    -- The PDU exactly as signed (canonical JSON), never modified; redaction is applied on read.
    json TEXT NOT NULL,
    -- Local bookkeeping (transaction ID and device of the sender, for echoes).
    internal_metadata TEXT NOT NULL DEFAULT '{}',
    rejected_reason TEXT,
    -- Outliers are events we hold without knowing the state at them (e.g. auth events fetched
    -- over federation); they are not part of the timeline.
    outlier BOOLEAN NOT NULL DEFAULT FALSE,
    state_group_before BIGINT,
    state_group_after BIGINT
);
CREATE INDEX events_room_stream ON events (room_id, stream_ordering);
CREATE INDEX events_room_topological ON events (room_id, topological_ordering, stream_ordering);

CREATE TABLE event_edges (
    event_id TEXT NOT NULL,
    prev_event_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (event_id, prev_event_id)
);
CREATE INDEX event_edges_prev ON event_edges (prev_event_id);

CREATE TABLE event_auth (
    event_id TEXT NOT NULL,
    auth_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (event_id, auth_id)
);

-- The events with no children yet: the prev_events of the next event we send.
CREATE TABLE event_forward_extremities (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

-- State at every event, as groups stored as deltas against a parent group. A group with no
-- parent holds the full state; chains are cut at a bounded length so reads stay cheap.
CREATE TABLE state_groups (
    id BIGINT PRIMARY KEY,
    room_id TEXT NOT NULL,
    prev_group BIGINT,
    chain_length INTEGER NOT NULL
);

CREATE TABLE state_group_entries (
    state_group BIGINT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    -- NULL: the key is absent in this group though present in the parent.
    event_id TEXT,
    PRIMARY KEY (state_group, type, state_key)
);

CREATE TABLE current_state_events (
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    -- For m.room.member: the membership, so member lists need no JSON parsing.
    membership TEXT,
    PRIMARY KEY (room_id, type, state_key)
);
CREATE INDEX current_state_members ON current_state_events (room_id, membership);

-- Membership of every user in every room as of now, with the stream position of the change:
-- what sync and /joined_rooms read.
CREATE TABLE room_memberships (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    membership TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    forgotten BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_memberships_user ON room_memberships (user_id, membership);

-- Redaction events and what they redact; events are pruned when served if redacted.
CREATE TABLE redactions (
    event_id TEXT PRIMARY KEY,
    redacts TEXT NOT NULL
);
CREATE INDEX redactions_redacts ON redactions (redacts);

-- Idempotency of PUT /send and /redact: one event per device and request path (which
-- includes the client's transaction ID).
CREATE TABLE event_txn_ids (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    inserted_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

CREATE TABLE room_aliases (
    room_alias TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

CREATE TABLE user_filters (
    user_id TEXT NOT NULL,
    filter_id BIGINT NOT NULL,
    filter_json TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);

CREATE TABLE account_data (
    user_id TEXT NOT NULL,
    -- '' for global account data.
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    content TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);
CREATE INDEX account_data_stream ON account_data (user_id, stream_id);

CREATE TABLE receipts (
    room_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    -- '' for unthreaded receipts.
    thread_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    stream_id BIGINT NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX receipts_stream ON receipts (stream_id);

CREATE TABLE presence (
    user_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    status_msg TEXT,
    last_active_ts BIGINT NOT NULL,
    last_user_sync_ts BIGINT NOT NULL,
    currently_active BOOLEAN NOT NULL,
    stream_id BIGINT NOT NULL
);
