"""Third-party identifiers bound at identity servers on a user's behalf (client-server
"Adding Account Administrative Contact Information": /account/3pid/bind and /unbind; the
unbinding that /account/3pid/delete and deactivation do).

Binding asks the identity server the client names to bind the address its validation
session proved, with the client's identity access token; the server it was bound at is then
recorded, so that unbinding later (without an `id_server`) knows where to go. Unbinding is
signed by this server (X-Matrix, with `destination_is` naming the identity server). When
`identity_servers.threepid_binding` is off no identity server is ever contacted: binding is
refused and nothing is ever unbound.
"""

from __future__ import annotations

import logging
from typing import Any

from signedjson.sign import sign_json

from homeserver.errors import Codes, MatrixError
from homeserver.threepids.identity_client import (
    IdentityServerClient,
    IdentityServerError,
    check_id_access_token,
    check_id_server,
)
from storage.stores.threepids import ThreepidStore

logger = logging.getLogger(__name__)

UNBIND_PATH = "/_matrix/identity/v2/3pid/unbind"
# Answers meaning the identity server does not know the binding or cannot unbind: the
# binding is forgotten and the result is "no-support" (as Synapse treats them).
_NOT_SUPPORTED_CODES = (400, 404, 501)


def binding_disabled() -> MatrixError:
    return MatrixError(
        400,
        Codes.SERVER_NOT_TRUSTED,
        "This server does not bind addresses at identity servers; add addresses with"
        " /account/3pid/add",
    )


def _failed(id_server: str, e: IdentityServerError) -> MatrixError:
    """The identity server's own 4xx error passed on (the identity spec asks for that), but
    a 401 as 403: to a client, a 401 from its homeserver means its own access token is bad.
    Anything else (unreachable, a 5xx, an answer that is not a Matrix error) is a 502."""
    if e.code is not None and 400 <= e.code < 500 and e.errcode is not None:
        message = e.error or f"Identity server {id_server} refused"
        return MatrixError(403 if e.code == 401 else e.code, e.errcode, message)
    return MatrixError(502, Codes.UNKNOWN, f"Could not ask identity server {id_server}: {e}")


class IdentityServerBindings:
    def __init__(
        self,
        server_name: str,
        signing_key: Any,
        client: IdentityServerClient | None,
        store: ThreepidStore,
    ) -> None:
        self._server_name = server_name
        self._signing_key = signing_key
        self._client = client
        self._store = store

    async def bind(
        self, user_id: str, id_server: str, id_access_token: str, sid: str, client_secret: str
    ) -> None:
        check_id_server(id_server)
        check_id_access_token(id_access_token)
        if self._client is None:
            raise binding_disabled()
        try:
            answer = await self._client.bind(id_server, id_access_token, sid, client_secret, user_id)
        except IdentityServerError as e:
            raise _failed(id_server, e) from None
        medium, address = answer.get("medium"), answer.get("address")
        if not isinstance(medium, str) or not isinstance(address, str) or not address:
            raise MatrixError(
                502, Codes.UNKNOWN, f"Identity server {id_server} answered without the address"
            )
        if answer.get("mxid") not in (None, user_id):
            raise MatrixError(
                502, Codes.UNKNOWN, f"Identity server {id_server} bound another Matrix ID"
            )
        await self._store.add_id_server_binding(user_id, medium, address, id_server)
        logger.info("%s bound a %s address at %s", user_id, medium, id_server)

    async def unbind(
        self, user_id: str, medium: str, address: str, id_server: str | None
    ) -> bool:
        """Unbind the address at `id_server`, or, without one, at every identity server it
        was recorded as bound at. True if each one unbound it; False if there was none, or
        one does not know the binding or cannot unbind."""
        if id_server is not None:
            check_id_server(id_server)
            id_servers = [id_server]
        else:
            id_servers = await self._store.get_id_servers(user_id, medium, address)
        if not id_servers or self._client is None:
            return False
        unbound = True
        for server in id_servers:
            unbound &= await self._unbind_at(self._client, user_id, medium, address, server)
        return unbound

    async def unbind_all(self, user_id: str, id_server: str | None = None) -> bool:
        """Unbind every address recorded for the user (deactivation), at `id_server` or
        else wherever each was bound: True if there was none, or each was unbound."""
        if id_server is not None:
            check_id_server(id_server)
        unbound = True
        for medium, address in await self._store.get_id_server_bound_threepids(user_id):
            unbound &= await self.unbind(user_id, medium, address, id_server)
        return unbound

    async def _unbind_at(
        self,
        client: IdentityServerClient,
        user_id: str,
        medium: str,
        address: str,
        id_server: str,
    ) -> bool:
        body = {"mxid": user_id, "threepid": {"medium": medium, "address": address}}
        try:
            await client.unbind(id_server, self._authorization(id_server, body), body)
            unbound = True
        except IdentityServerError as e:
            if e.code not in _NOT_SUPPORTED_CODES:
                raise _failed(id_server, e) from None
            logger.info("%s: identity server %s did not unbind (HTTP %s)", user_id,
                        id_server, e.code)
            unbound = False
        await self._store.remove_id_server_binding(user_id, medium, address, id_server)
        return unbound

    def _authorization(self, id_server: str, body: dict[str, Any]) -> str:
        """An X-Matrix header for an identity server: the signed object has the server in
        `destination_is` (not `destination`), and the header names no destination."""
        request = {
            "method": "POST",
            "uri": UNBIND_PATH,
            "origin": self._server_name,
            "destination_is": id_server,
            "content": body,
        }
        signed = sign_json(request, self._server_name, self._signing_key)
        key_id = f"{self._signing_key.alg}:{self._signing_key.version}"
        sig = signed["signatures"][self._server_name][key_id]
        return f'X-Matrix origin="{self._server_name}",key="{key_id}",sig="{sig}"'
