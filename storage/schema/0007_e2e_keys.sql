-- End-to-end encryption keys: device identity keys, one-time and fallback keys,
-- cross-signing keys and the signatures users upload for each other's keys.
-- Every key_json is canonical JSON text, exactly as the client uploaded it (minus
-- `unsigned`); signatures uploaded later with /keys/signatures/upload live in their own table
-- and are merged in when keys are read.

-- A device's identity keys. They never change once uploaded (a different ed25519/curve25519
-- key for the same device is refused); a device deletion deletes the row.
CREATE TABLE e2e_device_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    ts_added_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Unclaimed one-time keys; a claim deletes the row it hands out. `upload_seq` numbers the
-- uploads of one device (all keys of one upload share it): keys are claimed oldest first.
CREATE TABLE e2e_one_time_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    upload_seq BIGINT NOT NULL,
    ts_added_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
);
CREATE INDEX e2e_one_time_keys_claim
    ON e2e_one_time_keys (user_id, device_id, algorithm, upload_seq, key_id);

-- At most one fallback key per device and algorithm, handed out (and marked used) when the
-- one-time keys run out; a new upload replaces it and makes it unused again.
CREATE TABLE e2e_fallback_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    used BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- A user's current cross-signing keys: key_type is master, self_signing or user_signing;
-- key_id is `ed25519:<public key>`.
CREATE TABLE e2e_cross_signing_keys (
    user_id TEXT NOT NULL,
    key_type TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    ts_added_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures uploaded with /keys/signatures/upload: `user_id` signed with its key `key_id`
-- the key of `target_user_id` named `target_device_id` (a device ID, or the public key of
-- a master key). Self-signing signatures of devices and devices' signatures of their
-- user's master key are public; a user-signing signature of another user's master key is
-- shown to the signer only.
CREATE TABLE e2e_cross_signing_signatures (
    user_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    target_user_id TEXT NOT NULL,
    target_device_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (user_id, key_id, target_user_id, target_device_id)
);
CREATE INDEX e2e_cross_signing_signatures_target
    ON e2e_cross_signing_signatures (target_user_id, target_device_id);
