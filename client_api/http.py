"""HTTP core: request class with a body limit, the route table dispatcher, JSON in and out.

Servlets are plain classes with `PATTERNS` (regexes over the full path) and `async def
on_GET(self, request, **path_args)` style methods returning `(status, json_body)`. Every
response goes through `JsonResource`, which is the only place errors become HTTP.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from re import _constants as sre_constants  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any, overload
from urllib.parse import unquote

import orjson
from twisted.internet import defer
from twisted.web import http, resource, server

from homeserver import metrics
from homeserver.errors import Codes, InteractiveAuthIncomplete, MatrixError
from homeserver.events.canonical import load_json
from storage.database import InvalidTextError


def encode_json(body: Any) -> bytes:
    """A response body as compact UTF-8 JSON. orjson encodes a large body (an initial sync)
    an order of magnitude faster than the standard library; what it refuses (integers
    beyond 64 bits, lone surrogates, types it does not know) is encoded as before."""
    try:
        return orjson.dumps(body)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

logger = logging.getLogger(__name__)

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
_request_counter = itertools.count(1)

CORS_HEADERS = {
    b"Access-Control-Allow-Origin": b"*",
    b"Access-Control-Allow-Methods": b"GET, HEAD, POST, PUT, DELETE, OPTIONS",
    b"Access-Control-Allow-Headers": b"X-Requested-With, Content-Type, Authorization, Date",
    b"Access-Control-Expose-Headers": b"Retry-After",
}

# A body this many times over the limit is not worth reading to the end: drop the connection.
_ABORT_FACTOR = 8


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every log record (`-` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


@dataclass(frozen=True)
class RawBody:
    """A non-JSON response body (media), with the headers describing it."""

    data: bytes
    headers: dict[str, str]


def _is_media_upload(path: bytes) -> bool:
    return path.startswith(b"/_matrix/media/") and b"/upload" in path


class HeddleRequest(server.Request):
    """A request that refuses bodies over the configured size without buffering them.
    Media uploads have their own, larger limit."""

    max_body_bytes = 1024 * 1024
    max_upload_bytes = 50 * 1024 * 1024

    def _body_limit(self) -> int:
        # Called before the request line is parsed into `self.path`: the channel has it.
        path = getattr(self.channel, "_path", None) or getattr(self, "path", b"") or b""
        return self.max_upload_bytes if _is_media_upload(path) else self.max_body_bytes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_id = f"{next(_request_counter)}"
        self.body_too_large = False
        self._body_bytes = 0
        self.start_time = time.monotonic()
        self.endpoint_name = "unknown"
        # Set for servlets with CANCEL_ON_DISCONNECT = True (read-only long-polls).
        self.cancel_on_disconnect = False

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        limit = self._body_limit()
        if length is not None and length > limit:
            self.body_too_large = True
            if length > limit * _ABORT_FACTOR:
                self._refuse_early()

    def handleContentChunk(self, data: bytes) -> None:
        self._body_bytes += len(data)
        limit = self._body_limit()
        if self._body_bytes > limit:
            self.body_too_large = True
            if self._body_bytes > limit * _ABORT_FACTOR:
                self._refuse_early()
            return
        super().handleContentChunk(data)

    def _refuse_early(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            logger.warning("request %s: body far over the limit; closing connection", self.request_id)
            transport.loseConnection()

    def client_ip(self, trust_forwarded: bool = False) -> str:
        if trust_forwarded:
            forwarded = self.getHeader(b"x-forwarded-for")
            if forwarded:
                return forwarded.split(b",")[0].strip().decode("ascii", "replace")
        addr = self.getClientAddress()
        return getattr(addr, "host", "unknown")


def make_request_factory(
    max_body_bytes: int, max_upload_bytes: int = HeddleRequest.max_upload_bytes
) -> type[HeddleRequest]:
    return type(
        "ConfiguredHeddleRequest",
        (HeddleRequest,),
        {"max_body_bytes": max_body_bytes, "max_upload_bytes": max_upload_bytes},
    )


# ----- parsing helpers --------------------------------------------------------------------


def parse_json_object(request: HeddleRequest) -> dict[str, Any]:
    """The request body as a JSON object, or 400 M_NOT_JSON / M_BAD_JSON."""
    assert request.content is not None
    raw = request.content.read()
    if not raw.strip():
        # Several endpoints (logout, refresh for some clients) are sent without a body.
        return {}
    return parse_json_bytes(raw)


def parse_json_bytes(raw: bytes) -> dict[str, Any]:
    """`raw` as a JSON object, or 400 M_NOT_JSON / M_BAD_JSON: the rules of a request body,
    shared with WebSocket messages."""
    try:
        body = load_json(raw.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError included
        raise MatrixError(400, Codes.NOT_JSON, "Content not JSON.") from None
    if not isinstance(body, dict):
        raise MatrixError(400, Codes.BAD_JSON, "Content must be a JSON object.")
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(body):
        raise MatrixError(400, Codes.BAD_JSON, "Content contains an unpaired UTF-16 surrogate.")
    return body


# `\ud800`-`\udfff` escapes: legal JSON text, but alone they are not Unicode and could
# never be stored or sent on as UTF-8. Pairs (emoji) are fine; only lone ones are refused.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _has_lone_surrogate(body: Any) -> bool:
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def query_string(request: HeddleRequest, name: str) -> str | None:
    assert request.args is not None
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise MatrixError(400, Codes.INVALID_PARAM, f"Query parameter {name!r} is not UTF-8") from None


def require_query_string(request: HeddleRequest, name: str) -> str:
    value = query_string(request, name)
    if value is None:
        raise MatrixError(400, Codes.MISSING_PARAM, f"Missing query parameter {name!r}")
    return value


# A decimal integer of at most 18 digits: any such fits in 64 bits.
_INTEGER = re.compile(r"-?[0-9]{1,18}")


@overload
def parse_int_query(
    request: HeddleRequest,
    name: str,
    default: int,
    min_value: int | None = None,
    max_value: int | None = None,
) -> int: ...


@overload
def parse_int_query(
    request: HeddleRequest,
    name: str,
    default: None = None,
    min_value: int | None = None,
    max_value: int | None = None,
) -> int | None: ...


def parse_int_query(
    request: HeddleRequest,
    name: str,
    default: int | None = None,
    min_value: int | None = None,
    max_value: int | None = None,
) -> int | None:
    """The integer query parameter `name`, or `default` when it is absent (or empty).

    400 M_INVALID_PARAM unless it is a decimal integer (an optional `-` and at most 18
    ASCII digits) of at least `min_value`. Above `max_value` it is cut to `max_value`:
    a client asking for more than the server gives gets what the server gives.
    """
    raw = query_string(request, name)
    if not raw:
        return default
    if not _INTEGER.fullmatch(raw):
        raise MatrixError(400, Codes.INVALID_PARAM, f"Query parameter {name!r} must be an integer")
    value = int(raw)
    if min_value is not None and value < min_value:
        raise MatrixError(
            400, Codes.INVALID_PARAM, f"Query parameter {name!r} must be at least {min_value}"
        )
    if max_value is not None:
        value = min(value, max_value)
    return value


def parse_bool_query(request: HeddleRequest, name: str) -> bool | None:
    """The boolean query parameter `name` (`true` or `false`), None when it is absent;
    400 M_INVALID_PARAM for anything else."""
    raw = query_string(request, name)
    if raw is None or raw == "":
        return None
    if raw not in ("true", "false"):
        raise MatrixError(
            400, Codes.INVALID_PARAM, f"Query parameter {name!r} must be 'true' or 'false'"
        )
    return raw == "true"


def parse_timestamp_lookup(request: HeddleRequest) -> tuple[int, bool]:
    """(`ts`, whether `dir` is forwards) of a timestamp_to_event request, client or
    federation: both required (400 M_MISSING_PARAM), `ts` a non-negative integer and `dir`
    `f` or `b` (400 M_INVALID_PARAM)."""
    require_query_string(request, "ts")
    ts = parse_int_query(request, "ts", 0, min_value=0)
    direction = require_query_string(request, "dir")
    if direction not in ("f", "b"):
        raise MatrixError(400, Codes.INVALID_PARAM, "'dir' must be 'f' or 'b'")
    return ts, direction == "f"


# ----- routing ----------------------------------------------------------------------------

Handler = Callable[..., Awaitable[tuple[int, Any]]]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    name: str
    # Text every path the pattern matches contains, tested before the pattern: most routes
    # are ruled out by a substring search.
    literal: str = ""


def required_literal(pattern: re.Pattern[str]) -> str:
    """The longest run of literal characters in `pattern` outside any group, repeat or
    alternative (a substring of whatever it matches), leaving out the first run (the
    "/_matrix/..." prefix every route shares) when there are others; "" when none."""
    if pattern.flags & re.IGNORECASE:
        return ""
    try:
        parsed = sre_parse.parse(pattern.pattern, pattern.flags)
    except Exception:
        return ""
    runs, run = [], ""
    for op, value in parsed:
        if op is sre_constants.LITERAL:
            run += chr(value)
            continue
        if op is sre_constants.AT:
            continue
        if run:
            runs.append(run)
        run = ""
    if run:
        runs.append(run)
    return max(runs[1:] or runs or [""], key=len)


def client_path(path: str, versions: str = "r0|v3") -> re.Pattern[str]:
    """A pattern for `/_matrix/client/{versions}{path}`; `path` may use (?P<name>[^/]+)."""
    return re.compile(f"^/_matrix/client/(?:{versions}){path}$")


# Distinct (method, path) pairs whose match `Router` remembers; past this many, it starts
# over (paths with transaction IDs in them come once each, /sync's again and again).
ROUTE_MATCHES_HELD = 4096


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []
        # (method, path) -> what `match` found for it. Matching tries each route's pattern
        # in turn, a few hundred of them: every long-poll paid that, until remembered.
        self._matched: dict[
            tuple[str, str], tuple[Route | None, dict[str, str], list[str]]
        ] = {}

    def register_servlet(self, servlet: Any) -> None:
        self._matched.clear()
        for pattern in servlet.PATTERNS:
            for method in ("GET", "PUT", "POST", "DELETE"):
                handler = getattr(servlet, f"on_{method}", None)
                if handler is not None:
                    self.routes.append(
                        Route(method, pattern, handler, f"{type(servlet).__name__}",
                              required_literal(pattern))
                    )

    def serves(self, method: str, path: str) -> bool:
        """Whether a route answers `method` on `path`."""
        return self.match(method, path)[0] is not None

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], list[str]]:
        """(route, path args, methods the path allows). No route but some allowed methods
        means the method is wrong for a known path. The args are the caller's to change."""
        key = (method, path)
        found = self._matched.get(key)
        if found is None:
            found = self._match(method, path)
            if len(self._matched) >= ROUTE_MATCHES_HELD:
                self._matched.clear()
            self._matched[key] = found
        route, args, allowed = found
        return route, dict(args), list(allowed)

    def _match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], list[str]]:
        allowed: list[str] = []
        for route in self.routes:
            if route.literal not in path:
                continue
            m = route.pattern.match(path)
            if m is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                args = {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
                return route, args, [route.method]
            allowed.append(route.method)
        return None, {}, allowed


def error_response(e: Exception, what: str) -> tuple[int, Any, dict[str, str]]:
    """The status, JSON body and headers that answer a request which raised `e`; `what`
    names the request in the log. Shared by HTTP and WebSocket requests."""
    if isinstance(e, MatrixError):
        if e.http_code >= 500:
            logger.error("%s failed: %s", what, e)
        return e.http_code, e.to_json(), e.headers
    if isinstance(e, InteractiveAuthIncomplete):
        return 401, e.body, {}
    if isinstance(e, InvalidTextError):
        # A NUL character in a path parameter or a field that reached the database.
        return 400, {"errcode": Codes.INVALID_PARAM, "error": str(e)}, {}
    # Logged with its traceback, never sent: the client only learns it was our fault.
    logger.error("%s raised", what, exc_info=e)
    return 500, {"errcode": Codes.UNKNOWN, "error": "Internal server error"}, {}


class JsonResource(resource.Resource):
    """The one resource every listener serves: dispatch, render JSON, turn errors into HTTP."""

    isLeaf = True

    def __init__(
        self,
        router: Router,
        cors_prefixes: Iterable[bytes] = (b"/_matrix/client", b"/_matrix/media", b"/.well-known"),
    ) -> None:
        super().__init__()
        self._router = router
        self._cors_prefixes = tuple(cors_prefixes)

    def render(self, request: server.Request) -> Any:
        assert isinstance(request, HeddleRequest)
        rendering = defer.ensureDeferred(self._render_async(request))

        def client_gone(_: Any) -> None:
            # Only handlers that opted in are cancelled (long-polls): cancelling a write
            # halfway would skip what follows its commit, such as waking other clients.
            if request.cancel_on_disconnect and not rendering.called:
                rendering.cancel()

        request.notifyFinish().addErrback(client_gone)
        return server.NOT_DONE_YET

    async def _render_async(self, request: HeddleRequest) -> None:
        request_id_var.set(request.request_id)
        metrics.HTTP_REQUESTS_IN_FLIGHT.inc()
        method = request.method.decode("ascii", "replace")
        raw_path = request.path.decode("utf-8", "replace")
        code: int = 500
        body: Any = None
        headers: dict[str, str] = {}
        try:
            code, body, headers = await self._dispatch(request, method, raw_path)
        except defer.CancelledError:
            # The client went away and the handler was cancelled: nobody to answer.
            code, body = 499, {"errcode": Codes.UNKNOWN, "error": "Client closed the request"}
        except Exception as e:
            code, body, headers = error_response(e, f"{method} {_loggable(request)}")
        finally:
            metrics.HTTP_REQUESTS_IN_FLIGHT.dec()
        self._respond(request, method, code, body, headers)

    async def _dispatch(
        self, request: HeddleRequest, method: str, path: str
    ) -> tuple[int, Any, dict[str, str]]:
        if method == "OPTIONS":
            # CORS preflight: answer for any path; the headers are added by `_respond`.
            request.endpoint_name = "options"
            return 200, {}, {}
        route, args, allowed = self._router.match(method, path)
        if route is None:
            request.endpoint_name = "unrecognized"
            if allowed:
                # RFC 9110: a 405 says which methods the resource does support.
                allow = ", ".join(sorted(set(allowed) | {"OPTIONS"}))
                raise MatrixError(
                    405, Codes.UNRECOGNIZED, "Unrecognized request", headers={"Allow": allow}
                )
            raise MatrixError(404, Codes.UNRECOGNIZED, "Unrecognized request")
        request.endpoint_name = route.name
        request.cancel_on_disconnect = getattr(
            getattr(route.handler, "__self__", None), "CANCEL_ON_DISCONNECT", False
        )
        if request.body_too_large:
            raise MatrixError(413, Codes.TOO_LARGE, "Request body too large")
        code, body = await route.handler(request, **args)
        return code, body, {}

    def _respond(
        self, request: HeddleRequest, method: str, code: int, body: Any, headers: dict[str, str]
    ) -> None:
        duration = time.monotonic() - request.start_time
        metrics.HTTP_REQUESTS.labels(method, request.endpoint_name, str(code)).inc()
        metrics.HTTP_REQUEST_SECONDS.labels(method, request.endpoint_name).observe(duration)
        logger.info(
            "%s %s %s %d %.3fs",
            request.client_ip(),
            method,
            _loggable(request),
            code,
            duration,
        )
        if request._disconnected or request.finished:
            return
        request.setResponseCode(code)
        if isinstance(body, RawBody):
            payload = body.data
            headers = {**body.headers, **headers}
        elif isinstance(body, bytes):
            payload = body
        else:
            payload = encode_json(body)
            request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-cache, no-store, must-revalidate")
        if request.path.startswith(self._cors_prefixes):
            for cors_name, cors_value in CORS_HEADERS.items():
                request.setHeader(cors_name, cors_value)
        for name, value in headers.items():
            request.setHeader(name.encode("ascii"), value.encode("ascii"))
        request.setHeader(b"Content-Length", str(len(payload)).encode("ascii"))
        if method != "HEAD":
            request.write(payload)
        request.finish()


# Query parameters that are secrets: access tokens, and the token and client secret in the
# link of an e-mail validation mail (which a registration-token check also has as `token`).
_SECRET_QUERY_PARAMS = re.compile(r"([?&](?:access_token|token|client_secret)=)[^&]*")


def _loggable(request: server.Request) -> str:
    """The URI with any secret query parameter removed, for logs."""
    return _SECRET_QUERY_PARAMS.sub(r"\1<redacted>", request.uri.decode("utf-8", "replace"))


class HeddleSite(server.Site):
    """A site whose requests carry a body limit; access logging is done by `JsonResource`."""

    def __init__(
        self,
        root: resource.Resource,
        max_body_bytes: int,
        max_upload_bytes: int = HeddleRequest.max_upload_bytes,
    ) -> None:
        super().__init__(root)
        self.requestFactory = make_request_factory(  # type: ignore[assignment]
            max_body_bytes, max_upload_bytes
        )

    def log(self, request: http.Request) -> None:
        pass
