"""The WebSocket sync transport: `protocol.py` moves frames, `session.py` holds one
connection's conversation, `requests.py` answers requests as the HTTP servlets would."""

from __future__ import annotations

from homeserver.config import HomeserverConfig

# The experimental feature's name: in /versions `unstable_features` and /.well-known.
FEATURE = "org.heddle.ws"
WEBSOCKET_PATH = f"/_matrix/client/unstable/{FEATURE}/sync"


def websocket_url(config: HomeserverConfig) -> str:
    """Where clients connect: the client base URL with ws:// or wss://."""
    base = config.client_base_url.rstrip("/")
    scheme, _, rest = base.partition("://")
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}{WEBSOCKET_PATH}"
