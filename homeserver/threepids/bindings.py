"""The e-mail addresses bound to accounts: listing, adding a validated one, removing, and
finding the account an address belongs to (login, password reset)."""

from __future__ import annotations

from typing import Any

from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError
from homeserver.threepids.addresses import EMAIL, MSISDN, canonical_email
from homeserver.threepids.validation import ADD_THREEPID, ThreepidValidation
from storage.stores.threepids import ThreepidInUseError, ThreepidStore

MEDIA = (EMAIL, MSISDN)


def threepid_in_use() -> MatrixError:
    return MatrixError(400, Codes.THREEPID_IN_USE, "E-mail address is already in use")


def check_medium(medium: str) -> str:
    if medium not in MEDIA:
        raise MatrixError(400, Codes.INVALID_PARAM, "medium must be 'email' or 'msisdn'")
    return medium


class ThreepidBindings:
    def __init__(self, clock: Clock, store: ThreepidStore, validation: ThreepidValidation) -> None:
        self._clock = clock
        self._store = store
        self._validation = validation

    async def list_for_user(self, user_id: str) -> list[dict[str, Any]]:
        return [
            {
                "medium": t.medium,
                "address": t.address,
                "validated_at": t.validated_at,
                "added_at": t.added_at,
            }
            for t in await self._store.get_threepids(user_id)
        ]

    async def add_validated(self, user_id: str, session_id: str, client_secret: str) -> None:
        """Bind the address an /account/3pid/email/requestToken session validated."""
        validated = await self._validation.take_validated(session_id, client_secret, ADD_THREEPID)
        if validated is None:
            raise MatrixError(400, Codes.THREEPID_AUTH_FAILED, "No validated e-mail session found")
        await self.bind(user_id, validated.medium, validated.address, validated.validated_at)

    async def bind(self, user_id: str, medium: str, address: str, validated_at: int) -> None:
        try:
            await self._store.add_threepid(
                user_id, medium, address, validated_at, self._clock.time_msec()
            )
        except ThreepidInUseError:
            raise threepid_in_use() from None

    async def delete(self, user_id: str, medium: str, address: str) -> None:
        """Unbind one of the user's addresses. One they do not have is left alone (another
        account's stays theirs), with success, as Synapse answers."""
        check_medium(medium)
        if medium == EMAIL:
            try:
                address = canonical_email(address)
            except MatrixError:
                return  # never stored, so not theirs
        await self._store.delete_threepid(user_id, medium, address)

    async def user_for_email(self, address: str) -> str | None:
        return await self._store.get_user_id(EMAIL, canonical_email(address))

    async def check_replacement(
        self, user_id: str, threepids: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """The admin API's PUT, checked before anything changes: the addresses in canonical
        form; 400 for another medium, a malformed address or one another account has."""
        canonical = []
        for medium, address in threepids:
            if medium != EMAIL:
                raise MatrixError(
                    400, Codes.INVALID_PARAM, "Only e-mail addresses can be bound on this server"
                )
            address = canonical_email(address)
            owner = await self._store.get_user_id(medium, address)
            if owner is not None and owner != user_id:
                raise threepid_in_use()
            canonical.append((medium, address))
        return canonical

    async def replace(self, user_id: str, canonical: list[tuple[str, str]]) -> None:
        """The account's addresses become exactly these (from `check_replacement`), in one
        transaction."""
        try:
            await self._store.replace_threepids(user_id, canonical, self._clock.time_msec())
        except ThreepidInUseError:
            raise threepid_in_use() from None

    async def forget_user(self, user_id: str) -> None:
        await self._store.delete_all_for_user(user_id)
