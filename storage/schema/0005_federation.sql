-- Federation: remote servers' signing keys, the outbound queue per destination,
-- inbound transaction deduplication, and backward extremities for backfill.

-- Verify keys of remote servers (and our own old ones), as learned from key responses.
CREATE TABLE server_signing_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    -- Unpadded base64 of the ed25519 verify key.
    verify_key TEXT NOT NULL,
    -- Signatures made at or before this time are trusted (the response's valid_until_ts, or
    -- an old key's expired_ts).
    valid_until_ts BIGINT NOT NULL,
    -- Set when the key was listed under old_verify_keys.
    expired_ts BIGINT,
    fetched_ts BIGINT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);

-- Key responses exactly as received (signed by their server), so the notary endpoints can
-- serve them on, co-signed.
CREATE TABLE server_key_responses (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    -- The server we got the response from (the origin itself, or a notary).
    from_server TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    response_json TEXT NOT NULL,
    fetched_ts BIGINT NOT NULL,
    PRIMARY KEY (server_name, key_id, from_server)
);

-- Delivery state of each remote server we send to.
CREATE TABLE destinations (
    destination TEXT PRIMARY KEY,
    -- When the last attempt failed, and how long to wait after it (0: not backing off).
    retry_last_ts BIGINT NOT NULL DEFAULT 0,
    retry_interval_ms BIGINT NOT NULL DEFAULT 0,
    -- When the current run of failures began (NULL while the destination is healthy).
    failure_ts BIGINT
);

-- PDUs waiting to be sent to a destination, written in the transaction that persists the
-- event (or right after), so a restart loses nothing.
CREATE TABLE federation_outbound_pdus (
    destination TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (destination, stream_ordering)
);

-- EDUs waiting to be sent: those that must arrive (to-device messages, device list updates).
-- dedupe_key is no longer written: EDUs of which only the latest counts (typing, receipts,
-- presence) are held in memory by the sender; rows an older version left are sent once.
CREATE TABLE federation_outbound_edus (
    destination TEXT NOT NULL,
    edu_id BIGINT NOT NULL,
    edu_type TEXT NOT NULL,
    content TEXT NOT NULL,
    dedupe_key TEXT,
    PRIMARY KEY (destination, edu_id)
);
CREATE UNIQUE INDEX federation_outbound_edus_dedupe
    ON federation_outbound_edus (destination, dedupe_key);

-- Inbound transactions already processed, with the response we gave, so a retried
-- transaction gets the same answer without being processed twice.
CREATE TABLE received_transactions (
    origin TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    response_json TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, transaction_id)
);

-- Events we know of (as prev_events) but do not have: where backfill starts.
CREATE TABLE event_backward_extremities (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);
