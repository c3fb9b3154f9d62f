"""Matrix events: canonical JSON, hashes and IDs, redaction, signing, auth rules and state
resolution, each parameterised by the room version (see `room_versions`)."""
