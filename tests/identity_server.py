"""An identity server for tests: a twisted.web server on loopback, over https with a
self-signed certificate, serving the parts of the Identity Service API v2 that third-party
invites use (hash_details, lookup, store-invite) and that homeservers bind and unbind
addresses with (3pid/bind, 3pid/unbind), and signing what it tells homeservers
with its own ed25519 key, as a real one does."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json
from twisted.internet import reactor, ssl
from twisted.web import resource, server

from homeserver.events.hashing import unpadded_base64
from homeserver.tls import generate_self_signed_certificate

ACCESS_TOKEN = "id-token-1"
PEPPER = "matrixrocks"


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None
    body: Any


@dataclass
class StoredInvite:
    medium: str
    address: str
    room_id: str
    sender: str
    token: str


@dataclass
class IdentityServer:
    requests: list[Request] = field(default_factory=list)
    bindings: dict[tuple[str, str], str] = field(default_factory=dict)
    invites: list[StoredInvite] = field(default_factory=list)
    # Public keys the server no longer vouches for (pubkey/isvalid answers false).
    revoked: set[str] = field(default_factory=set)
    # Validated sessions: sid -> (medium, address, client_secret).
    sessions: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    # When set, 3pid/bind or 3pid/unbind answers this (status, JSON body) instead.
    bind_failure: tuple[int, Any] | None = None
    unbind_failure: tuple[int, Any] | None = None
    signing_key: Any = field(default_factory=lambda: generate_signing_key("0"))
    _port: Any = None

    @classmethod
    def start(cls, test: Any) -> IdentityServer:
        ids = cls()
        folder = Path(test.mktemp())
        folder.mkdir()
        cert, key = folder / "is.crt", folder / "is.key"
        generate_self_signed_certificate(cert, key, "127.0.0.1")
        options = ssl.PrivateCertificate.loadPEM(cert.read_text() + key.read_text()).options()
        listener: Any = reactor
        ids._port = listener.listenSSL(0, server.Site(_Resource(ids)), options, interface="127.0.0.1")
        test.addCleanup(ids._port.stopListening)
        return ids

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self._port.getHost().port}"

    @property
    def public_key(self) -> str:
        return encode_verify_key_base64(get_verify_key(self.signing_key))

    def sign(self, value: dict[str, Any], signing_key: Any = None) -> dict[str, Any]:
        return sign_json(value, self.name, signing_key or self.signing_key)

    def bind(self, medium: str, address: str, mxid: str) -> dict[str, Any]:
        """Bind the address; the body of the onbind call the homeserver should get, with
        every stored invite for the address signed."""
        self.bindings[(medium, address)] = mxid
        invites = [
            {
                "medium": i.medium, "address": i.address, "mxid": mxid, "room_id": i.room_id,
                "sender": i.sender,
                "signed": self.sign({"mxid": mxid, "token": i.token}),
            }
            for i in self.invites
            if (i.medium, i.address) == (medium, address)
        ]
        return self.sign({"medium": medium, "address": address, "mxid": mxid, "invites": invites})

    def validated_session(self, medium: str, address: str, client_secret: str) -> str:
        """A session that proved the address, as after the user followed its link: its sid."""
        sid = f"sid{len(self.sessions) + 1}"
        self.sessions[sid] = (medium, address, client_secret)
        return sid

    def _bind(self, body: Any) -> tuple[int, Any]:
        session = self.sessions.get(body.get("sid"))
        if session is None or session[2] != body.get("client_secret"):
            return 400, {"errcode": "M_NO_VALID_SESSION", "error": "No valid session"}
        medium, address, _ = session
        self.bindings[(medium, address)] = body["mxid"]
        answer = {"medium": medium, "address": address, "mxid": body["mxid"],
                  "not_before": 0, "not_after": 4582425849161, "ts": 0}
        return 200, self.sign(answer)

    def _unbind(self, body: Any) -> tuple[int, Any]:
        # The homeserver's X-Matrix signature is checked by the tests, from `requests`.
        threepid = (body["threepid"]["medium"], body["threepid"]["address"])
        if self.bindings.get(threepid) != body["mxid"]:
            return 404, {"errcode": "M_NOT_FOUND", "error": "No such binding"}
        del self.bindings[threepid]
        return 200, {}

    def handle(self, request: server.Request) -> bytes:
        assert request.content is not None
        raw = request.content.read()
        body: Any = json.loads(raw) if raw else {}
        path = request.path.decode()
        header = request.getHeader(b"Authorization")
        auth = header.decode() if isinstance(header, bytes) else header
        self.requests.append(Request(request.method.decode(), path, auth, body))
        request.setHeader(b"Content-Type", b"application/json")
        if path == "/_matrix/identity/v2/pubkey/isvalid":
            public_key = request.args[b"public_key"][0].decode()
            valid = public_key == self.public_key and public_key not in self.revoked
            return json.dumps({"valid": valid}).encode()
        if path == "/_matrix/identity/v2/3pid/unbind":
            code, answer = self.unbind_failure or self._unbind(body)
            request.setResponseCode(code)
            return json.dumps(answer).encode()
        if auth != f"Bearer {ACCESS_TOKEN}":
            request.setResponseCode(401)
            return b'{"errcode": "M_UNAUTHORIZED"}'
        if path == "/_matrix/identity/v2/hash_details":
            answer: Any = {"lookup_pepper": PEPPER, "algorithms": ["none", "sha256"]}
        elif path == "/_matrix/identity/v2/lookup":
            mappings = {}
            for (medium, address), mxid in self.bindings.items():
                hashed = unpadded_base64(
                    hashlib.sha256(f"{address} {medium} {PEPPER}".encode()).digest(), urlsafe=True
                )
                if hashed in body["addresses"]:
                    mappings[hashed] = mxid
            answer = {"mappings": mappings}
        elif path == "/_matrix/identity/v2/3pid/bind":
            code, answer = self.bind_failure or self._bind(body)
            request.setResponseCode(code)
        elif path == "/_matrix/identity/v2/store-invite":
            token = f"token{len(self.invites) + 1}"
            self.invites.append(
                StoredInvite(body["medium"], body["address"], body["room_id"], body["sender"], token)
            )
            url = f"https://{self.name}/_matrix/identity/v2/pubkey/isvalid"
            answer = {
                "token": token,
                "display_name": "b...@example.org",
                "public_keys": [{"public_key": self.public_key, "key_validity_url": url}],
            }
        else:
            request.setResponseCode(404)
            answer = {"errcode": "M_UNRECOGNIZED"}
        return json.dumps(answer).encode()


class _Resource(resource.Resource):
    isLeaf = True

    def __init__(self, ids: IdentityServer) -> None:
        super().__init__()
        self._ids = ids

    def render_GET(self, request: server.Request) -> bytes:
        return self._ids.handle(request)

    def render_POST(self, request: server.Request) -> bytes:
        return self._ids.handle(request)
