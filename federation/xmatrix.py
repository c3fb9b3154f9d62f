"""The `X-Matrix` Authorization scheme of server-server requests (spec: "Request
Authentication"). Pure functions: building the signed JSON, signing a request, and parsing
the header. Verifying needs the sender's key and lives in `federation/transport/auth.py`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from signedjson.sign import sign_json

# RFC 9110 `tchar`; for compatibility the spec also allows ':' unquoted, and we accept the
# other base64 characters ('/', '=') unquoted too, since some senders do not quote signatures.
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ:/="
)
_SPACE = " \t"


@dataclass(frozen=True)
class XMatrixAuth:
    origin: str
    destination: str | None
    key_id: str
    signature: str


def request_json(
    method: str, uri: str, origin: str, destination: str | None, content: Any | None
) -> dict[str, Any]:
    """The object whose signature authenticates a request. `uri` is the path and query string
    exactly as sent; `content` is the parsed JSON body, or None when there is none. A missing
    `destination` (older senders) is left out of the object."""
    obj: dict[str, Any] = {"method": method, "uri": uri, "origin": origin}
    if destination is not None:
        obj["destination"] = destination
    if content is not None:
        obj["content"] = content
    return obj


def sign_request(
    signing_key: Any,
    origin: str,
    destination: str,
    method: str,
    uri: str,
    content: Any | None,
) -> str:
    """The full `Authorization` header value for one request, in the most compatible form
    (lower-case names, quoted values, no spaces around commas)."""
    signed = sign_json(request_json(method, uri, origin, destination, content), origin, signing_key)
    key_id = f"{signing_key.alg}:{signing_key.version}"
    sig = signed["signatures"][origin][key_id]
    return (
        f'X-Matrix origin="{_escape(origin)}",destination="{_escape(destination)}",'
        f'key="{_escape(key_id)}",sig="{_escape(sig)}"'
    )


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def parse_authorization(value: str) -> XMatrixAuth:
    """Parse one `Authorization: X-Matrix ...` value. Raises ValueError when the scheme is not
    X-Matrix or the parameters are malformed, duplicated, or lack origin, key or sig."""
    scheme, sep, rest = value.strip(_SPACE).partition(" ")
    if scheme.lower() != "x-matrix" or not sep:
        raise ValueError("not an X-Matrix authorization header")
    params = _parse_params(rest)
    try:
        origin, key_id, sig = params["origin"], params["key"], params["sig"]
    except KeyError as e:
        raise ValueError(f"X-Matrix header lacks the {e.args[0]!r} parameter") from None
    if not origin or not sig or ":" not in key_id:
        raise ValueError("X-Matrix header has an empty origin, sig or key")
    return XMatrixAuth(origin=origin, destination=params.get("destination"), key_id=key_id, signature=sig)


def _parse_params(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    pos, end = 0, len(text)

    def skip_space(p: int) -> int:
        while p < end and text[p] in _SPACE:
            p += 1
        return p

    pos = skip_space(pos)
    if pos == end:
        raise ValueError("X-Matrix header has no parameters")
    while True:
        # name
        start = pos
        while pos < end and text[pos] in _TOKEN_CHARS and text[pos] != "=":
            pos += 1
        name = text[start:pos].lower()
        if not name:
            raise ValueError("X-Matrix header has a parameter without a name")
        pos = skip_space(pos)
        if pos >= end or text[pos] != "=":
            raise ValueError(f"X-Matrix parameter {name!r} has no value")
        pos = skip_space(pos + 1)
        # value
        if pos < end and text[pos] == '"':
            pos += 1
            chars: list[str] = []
            while True:
                if pos >= end:
                    raise ValueError("unterminated quoted string in X-Matrix header")
                c = text[pos]
                if c == "\\":
                    if pos + 1 >= end:
                        raise ValueError("dangling backslash in X-Matrix header")
                    chars.append(text[pos + 1])
                    pos += 2
                elif c == '"':
                    pos += 1
                    break
                else:
                    chars.append(c)
                    pos += 1
            param_value = "".join(chars)
        else:
            start = pos
            while pos < end and text[pos] in _TOKEN_CHARS:
                pos += 1
            param_value = text[start:pos]
            if not param_value:
                raise ValueError(f"X-Matrix parameter {name!r} has an empty value")
        if name in params:
            raise ValueError(f"X-Matrix parameter {name!r} is given twice")
        params[name] = param_value
        pos = skip_space(pos)
        if pos == end:
            return params
        if text[pos] != ",":
            raise ValueError("X-Matrix parameters must be separated by commas")
        pos = skip_space(pos + 1)
        if pos == end:
            raise ValueError("trailing comma in X-Matrix header")
