-- OpenID tokens (POST /user/{userId}/openid/request_token): a short-lived token another
-- service exchanges over federation (GET /openid/userinfo) for the user's ID. Expired rows are
-- deleted as new tokens are made.
CREATE TABLE openid_tokens (
    -- SHA-256 of the token (hex): the token itself is not kept.
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    valid_until_ms BIGINT NOT NULL
);
CREATE INDEX openid_tokens_valid_until ON openid_tokens (valid_until_ms);

-- Profile fields other than displayname and avatar_url (which stay in `profiles`): any key a
-- user sets with PUT /profile/{userId}/{keyName}, its value as JSON.
CREATE TABLE profile_fields (
    user_id TEXT NOT NULL,
    field_name TEXT NOT NULL,
    value_json TEXT NOT NULL,
    PRIMARY KEY (user_id, field_name)
);

-- GET /rooms/{roomId}/timestamp_to_event (and its federation twin): the room's event sent
-- closest to a time, found without reading the whole room.
CREATE INDEX events_room_origin_ts ON events (room_id, origin_server_ts);
