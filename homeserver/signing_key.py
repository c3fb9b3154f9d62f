"""The server's ed25519 signing key, in the `ed25519 <version> <unpadded base64 seed>` format."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from signedjson.key import (
    decode_signing_key_base64,
    encode_signing_key_base64,
    generate_signing_key,
)

from homeserver.config import ConfigError


def write_new_signing_key(path: Path, version: str = "a_1") -> None:
    key = generate_signing_key(version)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created with mode 600 rather than chmod-ed afterwards: the key is never readable by
    # others, not even for a moment. (An existing file keeps its mode until the chmod.)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(f"ed25519 {version} {encode_signing_key_base64(key)}\n")
    path.chmod(0o600)


def load_signing_key(path: Path) -> Any:
    try:
        text = path.read_text(encoding="ascii")
    except OSError as e:
        raise ConfigError(f"cannot read signing key {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"signing key {path} is not in the 'ed25519 <version> <key>' format") from None
    parts = text.split()
    if len(parts) != 3 or parts[0] != "ed25519":
        raise ConfigError(f"signing key {path} is not in the 'ed25519 <version> <key>' format")
    try:
        return decode_signing_key_base64(parts[0], parts[1], parts[2])
    except Exception:
        raise ConfigError(f"signing key {path} does not hold a valid ed25519 key") from None
