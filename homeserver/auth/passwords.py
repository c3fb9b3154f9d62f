from __future__ import annotations

import base64
import hashlib

import bcrypt
from twisted.internet import threads


def _prehash(password: str) -> bytes:
    # bcrypt reads at most 72 bytes (and bcrypt>=5 refuses more). Hashing with SHA-256 first
    # lets every byte of a long passphrase count; base64 keeps NUL bytes out of bcrypt's input.
    return base64.b64encode(hashlib.sha256(password.encode("utf-8")).digest())


class PasswordHasher:
    """bcrypt, run on a thread: hashing takes ~0.25 s at cost 12 and must not block the reactor."""

    def __init__(self, rounds: int) -> None:
        self._rounds = rounds
        # Checked against when there is no real hash, so failures take the usual time.
        self.dummy_hash = bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds)).decode("ascii")

    async def hash(self, password: str) -> str:
        def do_hash() -> str:
            return bcrypt.hashpw(_prehash(password), bcrypt.gensalt(self._rounds)).decode("ascii")

        return await threads.deferToThread(do_hash)

    async def check(self, password: str, stored_hash: str | None) -> bool:
        if not stored_hash:
            return False
        return await threads.deferToThread(
            bcrypt.checkpw, _prehash(password), stored_hash.encode("ascii")
        )
