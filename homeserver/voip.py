"""TURN credentials for voice and video calls (spec: "Voice over IP", GET /voip/turnServer)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from homeserver.config import TurnConfig


def turn_credentials(config: TurnConfig, user_id: str, now_ms: int) -> dict[str, Any]:
    """The TURN servers and credentials for `user_id`, or {} when none are configured (as
    Synapse answers).

    With a shared secret the credentials are those of coturn's REST API (its
    `use-auth-secret`): the username is "<expiry in seconds>:<user id>" and the password the
    standard padded base64 of HMAC-SHA1(secret, username), so coturn can check them without
    asking us, and they stop working at the expiry.
    """
    lifetime_ms = config.user_lifetime_ms
    if not config.uris:
        return {}
    if config.shared_secret is not None:
        expiry = (now_ms + lifetime_ms) // 1000
        username = f"{expiry}:{user_id}"
        mac = hmac.new(config.shared_secret.encode(), username.encode(), hashlib.sha1)
        password = base64.b64encode(mac.digest()).decode("ascii")
    elif config.username is not None and config.password is not None:
        username, password = config.username, config.password
    else:
        return {}
    return {
        "username": username,
        "password": password,
        "ttl": lifetime_ms // 1000,
        "uris": list(config.uris),
    }
