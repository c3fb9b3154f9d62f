"""Signed JSON objects of end-to-end encryption (appendices: "Signing JSON"; client-server
API: "Key algorithms", "Cross-signing"): device keys signed by the device's own ed25519
key, signed one-time keys, cross-signing keys signed by the master key, and the signatures
users add to each other's keys. Pure functions, no I/O.
"""

from __future__ import annotations

from typing import Any

from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json

from homeserver.events.hashing import decode_unpadded_base64

ED25519 = "ed25519"
# Public keys of ed25519 and curve25519 are 32 bytes.
PUBLIC_KEY_BYTES = 32


class InvalidKey(ValueError):
    """A public key that is not what its key ID says it is."""


def decode_public_key(encoded: object) -> bytes:
    """The 32 bytes of an unpadded base64 public key, or InvalidKey."""
    if not isinstance(encoded, str):
        raise InvalidKey("a public key must be a string")
    if encoded.endswith("="):
        raise InvalidKey("a public key must be unpadded base64")
    try:
        raw = decode_unpadded_base64(encoded)
    except ValueError:
        raise InvalidKey("a public key must be unpadded base64") from None
    if len(raw) != PUBLIC_KEY_BYTES:
        raise InvalidKey(f"a public key must be {PUBLIC_KEY_BYTES} bytes")
    return raw


def verify_key(key_id: str, public_key: object) -> Any:
    """A signedjson VerifyKey for an `ed25519:<name>` key ID and its unpadded base64 public
    key, or InvalidKey."""
    algorithm, _, name = key_id.partition(":")
    if algorithm != ED25519 or not name:
        raise InvalidKey(f"{key_id!r} is not an ed25519 key ID")
    return decode_verify_key_bytes(key_id, decode_public_key(public_key))


def is_signed_by(obj: dict[str, Any], user_id: str, key_id: str, public_key: object) -> bool:
    """Whether `obj` carries a valid signature of `user_id` by the ed25519 key `key_id`
    (whose public key is `public_key`). `signatures` and `unsigned` are not covered, as the
    appendix says; a missing signature, a malformed key or signature is False."""
    signatures = obj.get("signatures")
    if not isinstance(signatures, dict):
        return False
    by_user = signatures.get(user_id)
    if not isinstance(by_user, dict) or not isinstance(by_user.get(key_id), str):
        return False
    try:
        key = verify_key(key_id, public_key)
        verify_signed_json(obj, user_id, key)
    except (InvalidKey, SignatureVerifyException, ValueError, TypeError):
        return False
    return True


def without_signatures(obj: dict[str, Any]) -> dict[str, Any]:
    """What a signature covers: the object without `signatures` and `unsigned`."""
    return {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}


def cross_signing_public_key(key: dict[str, Any]) -> tuple[str, str]:
    """(key ID, public key) of a cross-signing key: its `keys` must hold exactly one
    `ed25519:<public key>` entry whose value is that public key. Else InvalidKey."""
    keys = key.get("keys")
    if not isinstance(keys, dict) or len(keys) != 1:
        raise InvalidKey("a cross-signing key must have exactly one public key")
    ((key_id, public_key),) = keys.items()
    algorithm, _, name = key_id.partition(":")
    if algorithm != ED25519 or name != public_key:
        raise InvalidKey("a cross-signing key must be named ed25519:<its public key>")
    decode_public_key(public_key)
    return key_id, public_key


def signatures_of(obj: dict[str, Any], user_id: str) -> dict[str, str]:
    """The string signatures `user_id` put on `obj`, by key ID (malformed entries left out)."""
    signatures = obj.get("signatures")
    by_user = signatures.get(user_id) if isinstance(signatures, dict) else None
    if not isinstance(by_user, dict):
        return {}
    return {k: v for k, v in by_user.items() if isinstance(k, str) and isinstance(v, str)}


def add_signatures(obj: dict[str, Any], signatures: list[tuple[str, str, str]]) -> dict[str, Any]:
    """A copy of `obj` with (signer user ID, key ID, signature) entries added to its
    `signatures`."""
    if not signatures:
        return obj
    merged = dict(obj)
    existing = obj.get("signatures")
    if not isinstance(existing, dict):
        # A remote server's key with garbage for signatures: ours replace it.
        existing = {}
    all_signatures: dict[str, dict[str, str]] = {
        user: dict(by_key) for user, by_key in existing.items() if isinstance(by_key, dict)
    }
    for user_id, key_id, signature in signatures:
        all_signatures.setdefault(user_id, {})[key_id] = signature
    merged["signatures"] = all_signatures
    return merged
