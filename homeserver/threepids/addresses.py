"""The spec's grammar for client secrets and its canonical form of e-mail addresses: pure
functions, no I/O."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from homeserver.errors import Codes, MatrixError

EMAIL = "email"
MSISDN = "msisdn"

# Spec (RequestEmailValidation): "[0-9a-zA-Z.=_-]", 1 to 255 characters. Session IDs we
# issue follow the same grammar.
_CLIENT_SECRET = re.compile(r"^[0-9a-zA-Z.=_-]{1,255}$")
# One "@", no white space, control characters or the punctuation that would let a value
# carry a display name, a second address or a header (RFC 5321's practical subset). ASCII
# only: mail servers need SMTPUTF8 for more, which not all have.
_EMAIL = re.compile(r"^[!#$%&'*+/0-9=?A-Z^_`a-z{|}~.-]+@[0-9A-Za-z.-]+$")
# RFC 5321's limit on a path, less the angle brackets.
MAX_EMAIL_LENGTH = 254
MAX_NEXT_LINK_LENGTH = 2048


def check_client_secret(client_secret: str) -> str:
    if not _CLIENT_SECRET.fullmatch(client_secret):
        raise MatrixError(
            400, Codes.INVALID_PARAM, "client_secret must be 1-255 characters of [0-9a-zA-Z.=_-]"
        )
    return client_secret


def canonical_email(address: str) -> str:
    """The address as stored and compared: the spec's canonical form (domain lowercased, the
    whole address case-folded, as Synapse does), or 400 M_INVALID_PARAM."""
    address = address.strip()
    local, at, domain = address.rpartition("@")
    if (
        len(address) > MAX_EMAIL_LENGTH
        or not at
        or not local
        or not domain
        or not _EMAIL.fullmatch(address)
        or domain.startswith(".")
        or domain.endswith(".")
        or ".." in domain
    ):
        raise MatrixError(400, Codes.INVALID_PARAM, "Not a valid e-mail address")
    return f"{local.casefold()}@{domain.lower()}"


def check_next_link(next_link: str) -> str:
    """A next_link must be an http(s) URL (Synapse refuses others, file: above all): the
    validation page redirects the user's browser there."""
    parts = urlsplit(next_link)
    if (
        len(next_link) > MAX_NEXT_LINK_LENGTH
        or parts.scheme not in ("http", "https")
        or not (parts.netloc)
    ):
        raise MatrixError(400, Codes.INVALID_PARAM, "next_link must be an http(s) URL")
    return next_link


def domain_allowed(address: str, allowed_domains: list[str]) -> bool:
    if not allowed_domains:
        return True
    domain = address.rpartition("@")[2]
    return domain in {d.lower() for d in allowed_domains}
