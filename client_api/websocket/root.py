"""The client listener's root resource, which sends the WebSocket path to the WebSocket
transport. Kept apart from `protocol.py`: autobahn, which that imports, costs a server
8 MB of memory from the start, and is imported only once a client asks for a WebSocket."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.web import resource, server

from client_api.websocket import WEBSOCKET_PATH


class ClientRootResource(resource.Resource):
    """The client listener's root: the WebSocket path goes to the resource `build_websocket`
    makes (on the first request for it), every other path to `json` (which routes and
    renders it)."""

    def __init__(self, json: resource.Resource, build_websocket: Callable[[], Any]) -> None:
        super().__init__()
        self._json = json
        self._build_websocket: Callable[[], Any] | None = build_websocket
        self._websocket: Any = None
        self._path = WEBSOCKET_PATH.encode("ascii")

    def getChildWithDefault(self, path: bytes, request: server.Request) -> Any:
        if request.path == self._path:
            if self._build_websocket is not None:
                self._websocket, self._build_websocket = self._build_websocket(), None
            return self._websocket
        return self._json

    def render(self, request: server.Request) -> Any:
        return self._json.render(request)
