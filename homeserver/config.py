"""Configuration: one schema, loaded from YAML, overridden by environment, validated at start-up.

Every option lives in `HomeserverConfig` below; `config/homeserver.sample.yaml` documents each
one. A bad config is reported as a single line (`ConfigError`) and the process exits non-zero.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from homeserver.events.room_versions import CREATABLE_ROOM_VERSIONS, DEFAULT_ROOM_VERSION
from homeserver.identifiers import is_valid_server_name


class ConfigError(Exception):
    """A configuration problem, worded for an operator in one line."""


class _Section(BaseModel):
    # Unknown keys are typos until proven otherwise: reject them.
    model_config = ConfigDict(extra="forbid", strict=True)


class ListenerConfig(_Section):
    # client: the client API; federation: /_matrix/federation and /_matrix/key (other
    # servers); metrics: /metrics and /health.
    type: Literal["client", "federation", "metrics"] = "client"
    bind_address: str = "127.0.0.1"
    port: int = Field(8008, ge=0, le=65535)
    tls: bool = False
    tls_certificate_path: str | None = None
    tls_private_key_path: str | None = None
    # Trust X-Forwarded-For from a reverse proxy for the client address (rate limits, logs).
    x_forwarded: bool = False


class DatabaseConfig(_Section):
    # sqlite:///relative/or/absolute/path.db, sqlite:///:memory:, or postgresql://user@host:port/db
    url: str = "sqlite:///homeserver.db"
    # Size of the PostgreSQL connection pool (thread pool). SQLite always uses one connection.
    max_connections: int = Field(10, ge=1, le=200)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if not (url.startswith("sqlite://") or url.startswith(("postgresql://", "postgres://"))):
            # Name the scheme only: the rest of a URL may hold a password.
            scheme = url.split("://", 1)[0] if "://" in url else ""
            given = f"{scheme}:// is not supported" if scheme else "is not a database URL"
            raise ValueError(
                f"{given}; Heddle supports SQLite (sqlite:///path/to/homeserver.db) and "
                "PostgreSQL (postgresql://user:password@host:5432/database)"
            )
        return url


class RegistrationConfig(_Section):
    # Anyone may create an account through /register (subject to `require_token`).
    enabled: bool = False
    # Registration needs one of `tokens` (the m.login.registration_token UIA stage).
    require_token: bool = False
    tokens: list[str] = Field(default_factory=list)
    # Secret for the shared-secret admin registration endpoint; unset disables it.
    shared_secret: str | None = None
    min_password_length: int = Field(8, ge=0, le=1024)
    # Anyone may get a guest account (POST /register?kind=guest), with the limited access the
    # spec's "Guest access" section gives guests.
    allow_guest_access: bool = False


# What config/homeserver.sample.yaml has for auth.jwt_secret: a server started with it
# unchanged would sign tokens with a secret anyone can read, so it is refused.
JWT_SECRET_PLACEHOLDER = "change me: a long random string, at least 32 characters"
GENERATE_SECRET_COMMAND = "python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"


class LoginViaExistingSessionConfig(_Section):
    # POST /login/get_token: a logged-in client gets a single-use m.login.token for another.
    enabled: bool = False
    # Ask for the user's password (user-interactive auth) before issuing each token.
    require_ui_auth: bool = True
    # How long an issued login token stays valid (Synapse's default, 5 minutes).
    token_timeout_ms: int = Field(5 * 60 * 1000, ge=1000)


class AuthConfig(_Section):
    # HMAC secret that signs access tokens (JWT, HS256). Generated with the config.
    jwt_secret: str = Field(min_length=32)
    # Lifetime of access tokens issued to clients that asked for a refresh token.
    access_token_lifetime_ms: int = Field(15 * 60 * 1000, ge=1000)
    refresh_token_lifetime_ms: int = Field(7 * 24 * 3600 * 1000, ge=1000)
    # bcrypt cost; tests lower it, production keeps the default.
    bcrypt_rounds: int = Field(12, ge=4, le=31)
    login_via_existing_session: LoginViaExistingSessionConfig = LoginViaExistingSessionConfig()

    @field_validator("jwt_secret")
    @classmethod
    def _not_a_placeholder(cls, secret: str) -> str:
        # The sample's text, or an edit of it that kept the "change me".
        if secret.strip().lower().startswith(("change me", "changeme")):
            raise ValueError(
                "is the sample config's placeholder; replace it with a random secret, e.g. "
                f"the output of {GENERATE_SECRET_COMMAND} (or set HEDDLE_JWT_SECRET)"
            )
        return secret


class RateLimit(_Section):
    per_second: float = Field(gt=0)
    burst_count: int = Field(ge=1)


class RateLimitsConfig(_Section):
    enabled: bool = True
    login_per_address: RateLimit = RateLimit(per_second=0.17, burst_count=5)
    login_per_account: RateLimit = RateLimit(per_second=0.17, burst_count=5)
    login_failures_per_account: RateLimit = RateLimit(per_second=0.17, burst_count=3)
    media_upload_per_user: RateLimit = RateLimit(per_second=1.0, burst_count=20)
    registration_per_address: RateLimit = RateLimit(per_second=0.17, burst_count=5)
    # /register requests without `auth`: each opens a user-interactive auth session (a row).
    registration_sessions_per_address: RateLimit = RateLimit(per_second=1.0, burst_count=20)
    # Events a user sends through /send, /state and /redact (server admins are exempt).
    message_per_user: RateLimit = RateLimit(per_second=0.2, burst_count=10)
    # Abuse reports a user files (events, rooms and users alike): Synapse's defaults.
    reports_per_user: RateLimit = RateLimit(per_second=1.0, burst_count=5)
    # POST /login/get_token per user: each token spawns a session (Synapse: 1 a minute).
    login_token_requests_per_user: RateLimit = RateLimit(per_second=1 / 60, burst_count=1)
    # E-mail validation requests (each may send a mail), per client address and per e-mail
    # address: Synapse's rc_3pid_validation defaults.
    threepid_validation_per_address: RateLimit = RateLimit(per_second=0.003, burst_count=5)
    threepid_validation_per_email: RateLimit = RateLimit(per_second=0.003, burst_count=5)

    @model_validator(mode="before")
    @classmethod
    def _merge_partial_limits(cls, raw: Any) -> Any:
        """Setting only `burst_count` (or `per_second`) of a limit keeps the other default."""
        if not isinstance(raw, dict):
            return raw
        merged = dict(raw)
        for name, field in cls.model_fields.items():
            value = raw.get(name)
            if isinstance(value, dict) and isinstance(field.default, RateLimit):
                merged[name] = {**field.default.model_dump(), **value}
        return merged


class RoomsConfig(_Section):
    # Room version of new rooms when /createRoom names none: one of CREATABLE_ROOM_VERSIONS.
    default_room_version: str = DEFAULT_ROOM_VERSION

    @field_validator("default_room_version", mode="before")
    @classmethod
    def _version_as_string(cls, value: Any) -> Any:
        # YAML reads `default_room_version: 11` as a number.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("default_room_version")
    @classmethod
    def _creatable(cls, version: str) -> str:
        if version not in CREATABLE_ROOM_VERSIONS:
            raise ValueError(f"must be one of {', '.join(CREATABLE_ROOM_VERSIONS)}")
        return version


class LimitsConfig(_Section):
    max_request_body_bytes: int = Field(1024 * 1024, ge=1024)


class TrustedKeyServer(_Section):
    server_name: str
    # key ID -> unpadded base64 verify key. Empty: the notary's own key is fetched from it.
    verify_keys: dict[str, str] = Field(default_factory=dict)


class OldSigningKey(_Section):
    # A signing key this server used before; published as old_verify_keys until forever
    # so events it signed stay verifiable.
    key_id: str
    # Unpadded base64 of the ed25519 verify key.
    verify_key: str
    expired_ts: int = Field(ge=0)


class FederationConfig(_Section):
    # Talk to other servers at all. When off, the federation listener answers 403 and no
    # outbound request is made (remote joins, aliases and profiles fail with a clear error).
    enabled: bool = True
    # Verify peers' TLS certificates (on by default). The exempt list names destinations
    # (server names) whose certificates are not checked: loopback test peers, say.
    verify_tls: bool = True
    verify_tls_exempt_destinations: list[str] = Field(default_factory=list)
    # IP ranges outbound federation requests may not reach (a server name resolving there is
    # refused), unless the address is also in the allow list.
    ip_range_blocklist: list[str] = Field(
        default_factory=lambda: [
            "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
            "100.64.0.0/10", "169.254.0.0/16", "::1/128", "fe80::/10", "fc00::/7",
        ]
    )
    ip_range_allowlist: list[str] = Field(default_factory=list)
    # Notary servers asked for other servers' keys before asking those servers directly.
    trusted_key_servers: list[TrustedKeyServer] = Field(default_factory=list)
    # Keys this server signed with before the current one.
    old_signing_keys: list[OldSigningKey] = Field(default_factory=list)
    # How long other servers may cache our key response (its valid_until_ts).
    key_validity_period_ms: int = Field(24 * 3600 * 1000, ge=60 * 1000)
    # Outbound requests give up after this long.
    request_timeout_ms: int = Field(60 * 1000, ge=1000)
    # Backoff after a failed delivery: starts here, doubles per failure, capped at the max.
    retry_min_interval_ms: int = Field(10 * 1000, ge=100)
    retry_max_interval_ms: int = Field(60 * 60 * 1000, ge=100)
    # Largest response accepted from a remote server (send_join of a big room is allowed more).
    max_response_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    max_join_response_bytes: int = Field(500 * 1024 * 1024, ge=1024)


class S3StorageConfig(_Section):
    bucket: str
    # An S3-compatible endpoint (MinIO, ...); unset means AWS.
    endpoint_url: str | None = None
    region: str | None = None
    # Unset: boto3 finds credentials in the environment (AWS_ACCESS_KEY_ID, ...).
    access_key_id: str | None = None
    secret_access_key: str | None = None
    key_prefix: str = ""
    timeout_ms: int = Field(30_000, ge=100)
    # Answer downloads with a 307 redirect to a presigned URL instead of proxying the bytes.
    redirect_downloads: bool = True
    presigned_url_lifetime_ms: int = Field(5 * 60 * 1000, ge=1000)
    # Offer clients a presigned PUT URL after POST /_matrix/media/v1/create (Heddle
    # extension); the upload is checked (size, type) before the media becomes available.
    direct_uploads: bool = False


class UrlPreviewConfig(_Section):
    enabled: bool = False
    # Addresses previews may never fetch from (private and loopback ranges by default).
    ip_range_blocklist: list[str] = Field(
        default_factory=lambda: [
            "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
            "100.64.0.0/10", "169.254.0.0/16", "::1/128", "fe80::/10", "fc00::/7",
        ]
    )
    ip_range_allowlist: list[str] = Field(default_factory=list)
    max_response_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    timeout_ms: int = Field(10_000, ge=100)
    # How long a preview is reused for the same URL.
    cache_ms: int = Field(3600 * 1000, ge=0)
    # Check the certificates of https pages (on by default; off only for test servers with
    # certificates from their own CA).
    verify_tls: bool = True


class MediaConfig(_Section):
    # Largest upload accepted, in bytes (413 M_TOO_LARGE beyond it). Advertised to clients
    # as m.upload.size.
    max_upload_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    # Where media files are kept (relative to data_dir) by the local storage provider.
    store_path: str = "media_store"
    # Content types that may not be uploaded (exact, or "type/*").
    blocked_content_types: list[str] = Field(default_factory=list)
    # When not empty, only these content types may be uploaded.
    allowed_content_types: list[str] = Field(default_factory=list)
    # Total bytes each user may have uploaded (0: no quota).
    max_bytes_per_user: int = Field(0, ge=0)
    # Serve the legacy unauthenticated /_matrix/media/v3/download and /thumbnail endpoints
    # (clients before spec v1.11 use them). Synapse's enable_authenticated_media turns them off.
    legacy_unauthenticated_downloads: bool = True
    # How long an ID from POST /_matrix/media/v1/create may wait for its upload (ms).
    unused_expires_after_ms: int = Field(24 * 3600 * 1000, ge=1000)
    # How many IDs a user may hold that were created and not uploaded yet.
    max_pending_uploads_per_user: int = Field(10, ge=1)
    # Local files (store_path) unless this is set.
    s3: S3StorageConfig | None = None
    url_preview: UrlPreviewConfig = UrlPreviewConfig()


class RedisConfig(_Section):
    # Several Heddle processes sharing one database tell each other about revoked tokens
    # (and, later, new events and cache invalidations) over Redis pub/sub.
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(6379, ge=1, le=65535)
    # Channels are named <channel_prefix>.<server_name>.<stream>.
    channel_prefix: str = "heddle"


class PresenceConfig(_Section):
    # Track and share presence (online / unavailable / offline). When off, PUT /presence is
    # accepted and ignored, GET answers "offline", and sync carries no presence.
    enabled: bool = True
    # An online user with no activity (sending, receipts, setting presence) for this long
    # becomes "unavailable" (idle).
    idle_timeout_ms: int = Field(5 * 60 * 1000, ge=1000)
    # A user with no /sync in flight and none for this long becomes "offline".
    sync_timeout_ms: int = Field(30 * 1000, ge=1000)


class WebSocketConfig(_Section):
    # Serve sync (and the frequent small requests) over a WebSocket on every client listener,
    # at /_matrix/client/unstable/org.heddle.ws/sync; see docs/websocket.md.
    enabled: bool = True
    # The largest message a client may send (after decompression); larger ones close the
    # socket with 1009. Pushed sync responses are not limited.
    max_message_bytes: int = Field(64 * 1024, ge=1024)
    # The server pings every this often; a pong not back within ping_timeout_ms closes.
    ping_interval_ms: int = Field(30 * 1000, ge=1000)
    ping_timeout_ms: int = Field(20 * 1000, ge=1000)
    # Nothing at all received (messages, pongs) for this long closes the socket.
    idle_timeout_ms: int = Field(120 * 1000, ge=1000)
    # A connection that has not authenticated within this long is closed.
    auth_timeout_ms: int = Field(10 * 1000, ge=100)
    # A client that reads nothing for this long while data waits for it is disconnected.
    slow_reader_timeout_ms: int = Field(60 * 1000, ge=100)
    # Browser origins allowed to connect ("*" wildcards allowed); clients that send no
    # Origin header (not browsers) are always allowed, since the token is what authenticates.
    allowed_origins: list[str] = Field(default_factory=lambda: ["*"])
    # Open sockets per process; further upgrades get 503.
    max_connections: int = Field(10_000, ge=1)
    # Offer permessage-deflate compression to clients that ask for it (each message on its
    # own: no compression state is kept between messages).
    compression: bool = True
    # Requests (send, typing, receipts, read markers) per connection.
    request_rate: RateLimit = RateLimit(per_second=10.0, burst_count=50)


class IdentityServersConfig(_Section):
    # Invites by e-mail address (third-party invites, spec: "Third-party invites"): the
    # inviting client names an identity server, which this server asks who the address
    # belongs to, and which stores the invite until the address is bound. Off: such
    # invites are refused (403), and no identity server is ever contacted.
    third_party_invites: bool = False
    # Binding users' addresses at identity servers (/account/3pid/bind, at the identity
    # server the client names, with its identity access token), and unbinding them there
    # when they are removed or the account is deactivated. Off: binding is refused (400
    # M_SERVER_NOT_TRUSTED) and nothing is ever unbound.
    threepid_binding: bool = False
    # How long an identity server has to answer one request.
    request_timeout_ms: int = Field(10_000, ge=100)
    # The identity server is the client's choice, so it may not be on these addresses
    # (private and loopback ranges by default), unless also in the allow list.
    ip_range_blocklist: list[str] = Field(
        default_factory=lambda: [
            "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
            "100.64.0.0/10", "169.254.0.0/16", "::1/128", "fe80::/10", "fc00::/7",
        ]
    )
    ip_range_allowlist: list[str] = Field(default_factory=list)
    # Check identity servers' TLS certificates (on by default; off only for test servers
    # with certificates from their own CA).
    verify_tls: bool = True


class PushersConfig(_Section):
    # Push notifications to the push gateways of clients' HTTP pushers. When off, pushers can
    # still be set and listed, but nothing is sent.
    enabled: bool = True
    # How long a gateway has to answer one notification before it counts as failed.
    gateway_timeout_ms: int = Field(10_000, ge=100)
    # After a failed attempt, wait this long before the next; the wait doubles with each
    # further failure, up to max_backoff_ms.
    initial_backoff_ms: int = Field(1000, ge=10)
    max_backoff_ms: int = Field(3600 * 1000, ge=10)
    # A notification its gateway has not taken within this long is dropped.
    max_notification_age_ms: int = Field(24 * 3600 * 1000, ge=1000)
    # Addresses gateways may not be on: a pusher's URL is any user's choice, and must not
    # reach internal services (private and loopback ranges by default).
    ip_range_blocklist: list[str] = Field(
        default_factory=lambda: [
            "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
            "100.64.0.0/10", "169.254.0.0/16", "::1/128", "fe80::/10", "fc00::/7",
        ]
    )
    # Exceptions to the block list, e.g. a gateway on the local network.
    ip_range_allowlist: list[str] = Field(default_factory=list)
    # Check the certificates of https gateways (on by default). Off only for test gateways
    # with certificates from their own CA.
    verify_tls: bool = True


class ServerNoticesConfig(_Section):
    # The local user server notices come from (spec: "Server Notices"), made when the first
    # notice is sent; unset, the admin API's send_server_notice is refused (as Synapse's).
    system_mxid_localpart: str | None = Field(None, min_length=1, max_length=64)
    system_mxid_display_name: str = Field("Server Notices", max_length=256)
    # The name of each user's server notices room.
    room_name: str = Field("Server Notices", max_length=256)


class SupportContact(_Section):
    # At least one of matrix_id and email_address (spec: GET /.well-known/matrix/support).
    matrix_id: str | None = Field(None, pattern=r"^@")
    email_address: str | None = None
    # "m.role.admin", "m.role.security" or a namespaced role of your own.
    role: str = Field(min_length=1)

    @model_validator(mode="after")
    def _reachable(self) -> SupportContact:
        if self.matrix_id is None and self.email_address is None:
            raise ValueError("a contact needs a matrix_id or an email_address")
        return self


class SupportConfig(_Section):
    # Served at /.well-known/matrix/support; with neither set, that endpoint answers 404.
    contacts: list[SupportContact] = Field(default_factory=list)
    support_page: str | None = None


class TurnConfig(_Section):
    # TURN servers handed to clients by GET /voip/turnServer; none: it answers {}.
    uris: list[str] = Field(default_factory=list)
    # coturn's static-auth-secret (its REST API): each user gets a username and password
    # valid for user_lifetime_ms. Takes precedence over username/password.
    shared_secret: str | None = None
    # A fixed username and password given to everyone instead.
    username: str | None = None
    password: str | None = None
    user_lifetime_ms: int = Field(3600 * 1000, ge=1000)
    # Whether guest accounts may have TURN credentials.
    allow_guests: bool = True

    @field_validator("uris")
    @classmethod
    def _turn_uris(cls, uris: list[str]) -> list[str]:
        for uri in uris:
            if not uri.startswith(("turn:", "turns:")):
                raise ValueError(f"{uri!r} is not a turn: or turns: URI")
        return uris

class EmailTemplate(_Section):
    # Plain text; {link} is replaced by the validation link, {server_name} by the server's
    # name, {app_name} by `app_name`.
    subject: str = Field(min_length=1, max_length=998)
    body: str = Field(min_length=1)

    @model_validator(mode="after")
    def _known_placeholders(self) -> EmailTemplate:
        for text in (self.subject, self.body):
            try:
                text.format(link="", server_name="", app_name="")
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(
                    f"templates may only use {{link}}, {{server_name}} and {{app_name}} ({e})"
                ) from None
        if "{link}" not in self.body:
            raise ValueError("the body must contain {link}, or the mail cannot be acted on")
        return self


class EmailConfig(_Section):
    # Send e-mail to validate addresses (registration, adding an address to an account,
    # password reset). Off: the e-mail endpoints answer M_THREEPID_MEDIUM_NOT_SUPPORTED.
    enabled: bool = False
    smtp_host: str = "localhost"
    # Unset: 465 for implicit TLS, otherwise 25.
    smtp_port: int | None = Field(None, ge=1, le=65535)
    # none: plain text; starttls: upgrade with STARTTLS and refuse a server that cannot;
    # implicit: TLS from the first byte (SMTPS).
    tls: Literal["none", "starttls", "implicit"] = "starttls"
    # Log in to the SMTP server with these when set.
    smtp_user: str | None = None
    smtp_password: str | None = None
    # The From: of every mail Heddle sends; required when enabled.
    notif_from: str | None = None
    # Named in subjects ({app_name}).
    app_name: str = "Matrix"
    # Where the validation links in mails point: this server's client API as users' browsers
    # reach it. Unset: public_baseurl (or the client listener's address).
    public_baseurl: str | None = None
    # How long the token in a validation mail may be used.
    validation_token_lifetime_ms: int = Field(3600 * 1000, ge=60 * 1000)
    # How long a validated address may then be used (to register, add, or reset a password).
    validated_session_lifetime_ms: int = Field(24 * 3600 * 1000, ge=60 * 1000)
    # An SMTP exchange taking longer than this fails.
    smtp_timeout_ms: int = Field(30 * 1000, ge=100)
    # m.login.email.identity at registration: off (not offered), optional (offered beside
    # the other flow), required (every account must validate an address).
    registration: Literal["off", "optional", "required"] = "off"
    # Answer /requestToken as if all went well when the address is in use (or, for password
    # resets, unknown), so the endpoint does not tell who has an account (Synapse's
    # request_token_inhibit_3pid_errors). No mail is sent then.
    inhibit_3pid_errors: bool = False
    # Only addresses in these domains may be validated (empty: any domain).
    allowed_domains: list[str] = Field(default_factory=list)
    registration_template: EmailTemplate = EmailTemplate(
        subject="[{server_name}] Confirm your e-mail address",
        body="Someone asked to register an account on {server_name} with this e-mail "
        "address. If it was you, follow this link to confirm it:\n\n{link}\n\n"
        "If it was not you, ignore this mail.\n",
    )
    add_threepid_template: EmailTemplate = EmailTemplate(
        subject="[{server_name}] Confirm your e-mail address",
        body="Someone asked to add this e-mail address to their account on {server_name}. "
        "If it was you, follow this link to confirm it:\n\n{link}\n\n"
        "If it was not you, ignore this mail.\n",
    )
    password_reset_template: EmailTemplate = EmailTemplate(
        subject="[{server_name}] Password reset",
        body="Someone asked to reset the password of your account on {server_name}. If it "
        "was you, follow this link to confirm it, then set the new password in your "
        "client:\n\n{link}\n\nIf it was not you, ignore this mail: your password stays "
        "as it is.\n",
    )

    @model_validator(mode="after")
    def _complete_when_enabled(self) -> EmailConfig:
        if self.enabled and not self.notif_from:
            raise ValueError("notif_from is required when e-mail is enabled")
        if self.registration != "off" and not self.enabled:
            raise ValueError("registration by e-mail needs enabled: true")
        if (self.smtp_user is None) != (self.smtp_password is None):
            raise ValueError("smtp_user and smtp_password go together")
        return self

    @property
    def port(self) -> int:
        if self.smtp_port is not None:
            return self.smtp_port
        return 465 if self.tls == "implicit" else 25


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Log file path; unset logs to stderr.
    file: str | None = None


class HomeserverConfig(_Section):
    server_name: str
    # Where clients reach this server; advertised in /.well-known/matrix/client.
    public_baseurl: str | None = None
    # Where other servers reach this server, advertised in /.well-known/matrix/server.
    serve_server_wellknown: bool = False
    federation_address: str | None = None
    data_dir: str = "."
    signing_key_path: str
    listeners: list[ListenerConfig] = Field(default_factory=lambda: [ListenerConfig()])
    database: DatabaseConfig = DatabaseConfig()
    registration: RegistrationConfig = RegistrationConfig()
    auth: AuthConfig
    rate_limits: RateLimitsConfig = RateLimitsConfig()
    rooms: RoomsConfig = RoomsConfig()
    limits: LimitsConfig = LimitsConfig()
    federation: FederationConfig = FederationConfig()
    media: MediaConfig = MediaConfig()
    redis: RedisConfig = RedisConfig()
    presence: PresenceConfig = PresenceConfig()
    websocket: WebSocketConfig = WebSocketConfig()
    pushers: PushersConfig = PushersConfig()
    identity_servers: IdentityServersConfig = IdentityServersConfig()
    server_notices: ServerNoticesConfig = ServerNoticesConfig()
    support: SupportConfig = SupportConfig()
    turn: TurnConfig = TurnConfig()

    email: EmailConfig = EmailConfig()
    logging: LoggingConfig = LoggingConfig()

    @field_validator("server_name")
    @classmethod
    def _valid_server_name(cls, name: str) -> str:
        if not is_valid_server_name(name):
            raise ValueError("is not a valid Matrix server name")
        return name

    @property
    def client_base_url(self) -> str:
        if self.public_baseurl:
            return self.public_baseurl.rstrip("/") + "/"
        client = next((lst for lst in self.listeners if lst.type == "client"), None)
        if client is None:
            return f"https://{self.server_name}/"
        scheme = "https" if client.tls else "http"
        host = client.bind_address if client.bind_address not in ("0.0.0.0", "::") else "localhost"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{client.port}/"

    def resolve_path(self, path: str) -> Path:
        """Relative paths in the config are relative to `data_dir`."""
        p = Path(path)
        return p if p.is_absolute() else Path(self.data_dir) / p

    @property
    def email_link_base_url(self) -> str:
        """Where the links in validation mails point (ends with a slash)."""
        if self.email.public_baseurl:
            return self.email.public_baseurl.rstrip("/") + "/"
        return self.client_base_url

    @property
    def database_url(self) -> str:
        url = self.database.url
        prefix = "sqlite:///"
        if url.startswith(prefix):
            path = url[len(prefix):]
            if path != ":memory:":
                return prefix + str(self.resolve_path(path))
        return url


# Environment variables with a name of their own; any other option can be reached with
# HEDDLE_<SECTION>__<KEY> (e.g. HEDDLE_RATE_LIMITS__ENABLED=false).
ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "HEDDLE_SERVER_NAME": ("server_name",),
    "HEDDLE_DATABASE_URL": ("database", "url"),
    "HEDDLE_PUBLIC_BASEURL": ("public_baseurl",),
    "HEDDLE_JWT_SECRET": ("auth", "jwt_secret"),
    "HEDDLE_REGISTRATION_SHARED_SECRET": ("registration", "shared_secret"),
    "HEDDLE_LOG_LEVEL": ("logging", "level"),
    "HEDDLE_REDIS_HOST": ("redis", "host"),
}


# Top-level options an environment variable may set directly (HEDDLE_DATA_DIR, ...).
_TOP_LEVEL_SCALARS = frozenset(
    {"data_dir", "signing_key_path", "serve_server_wellknown", "federation_address"}
)


def _apply_env_overrides(
    raw: dict[str, Any], environ: dict[str, str]
) -> dict[tuple[str, ...], str]:
    """Write the environment's overrides into `raw`; returns which variable set each option."""
    sources: dict[tuple[str, ...], str] = {}
    for name, value in environ.items():
        if name in ENV_ALIASES:
            path = ENV_ALIASES[name]
        elif name.startswith("HEDDLE_") and "__" in name:
            path = tuple(part.lower() for part in name[len("HEDDLE_"):].split("__"))
        elif name.startswith("HEDDLE_") and name[len("HEDDLE_"):].lower() in _TOP_LEVEL_SCALARS:
            path = (name[len("HEDDLE_"):].lower(),)
        else:
            continue
        target = raw
        for key in path[:-1]:
            child = target.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"environment variable {name}: {key} is not a section")
            target = child
        # Parse as a YAML scalar so "false" and "8008" get their natural types.
        try:
            target[path[-1]] = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            target[path[-1]] = value
        if path == ("database", "url") or path[-1] in (
            "jwt_secret",
            "shared_secret",
            "smtp_password",
        ):
            target[path[-1]] = value
        sources[path] = name
    return sources


# Options whose values never appear in an error message: an operator's terminal, or the log
# collecting a service's output, is no place for secrets (a database URL may hold a password).
_SECRET_OPTIONS: tuple[tuple[str, ...], ...] = (
    ("auth", "jwt_secret"),
    ("registration", "shared_secret"),
    ("registration", "tokens"),
    ("database", "url"),
    ("email", "smtp_password"),
    ("media", "s3", "access_key_id"),
    ("media", "s3", "secret_access_key"),
)


def _is_within(path: tuple[str, ...], prefix: tuple[str, ...]) -> bool:
    return path[: len(prefix)] == prefix


def _format_validation_error(
    source: str, err: ValidationError, env_sources: dict[tuple[str, ...], str] | None = None
) -> str:
    first = err.errors()[0]
    loc = tuple(str(part) for part in first["loc"])
    location = ".".join(loc) or "(top level)"
    if first["type"] == "extra_forbidden":
        message = "unknown option"
    elif first["type"] == "missing":
        message = "required option is missing"
    else:
        # A validator's own ValueError reads as written, without pydantic's "Value error, ".
        error = first.get("ctx", {}).get("error")
        message = str(error) if first["type"] == "value_error" and error else first["msg"]
        secret = any(_is_within(loc, option) for option in _SECRET_OPTIONS)
        if "input" in first and not isinstance(first["input"], dict | list) and not secret:
            message += f" (got {first['input']!r})"
    # An option set (or an unknown one invented) by an environment variable is that
    # variable's fault, not the file's.
    for path, variable in (env_sources or {}).items():
        if loc and (_is_within(loc, path) or _is_within(path, loc)):
            source = f"environment variable {variable}"
            break
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: {location}: {message}{more}"


def parse_config(
    raw: Any, source: str = "config", environ: dict[str, str] | None = None
) -> HomeserverConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of options")
    env_sources = _apply_env_overrides(raw, dict(os.environ) if environ is None else environ)
    try:
        return HomeserverConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(source, e, env_sources)) from None


def load_config(path: str, environ: dict[str, str] | None = None) -> HomeserverConfig:
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    config = parse_config(raw, source=path, environ=environ)
    if not Path(config.data_dir).is_absolute():
        # data_dir in a config file is relative to the file, not to wherever heddle was started.
        config.data_dir = str((Path(path).parent / config.data_dir).resolve())
    return config


def generate_config_text(server_name: str, data_dir: str, port: int = 8008) -> str:
    """The YAML written by `heddle generate-config`: a working single-process SQLite server."""
    if not is_valid_server_name(server_name):
        raise ConfigError(f"--server-name: {server_name!r} is not a valid Matrix server name")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port: {port} is not a TCP port (0-65535)")
    # The metrics listener sits 1000 above the client port, or below it near the top of the range
    # (port 0, "any free port", stays 0).
    metrics_port = 0 if port == 0 else port + 1000 if port <= 64535 else port - 1000

    def scalar(value: str) -> str:
        # Quoted where YAML needs it (e.g. IPv6 literals: "[::1]" would be a flow sequence),
        # and never folded onto a second line (long paths with spaces would be).
        return yaml.safe_dump(value, width=float("inf")).splitlines()[0]

    return f"""\
# Heddle homeserver configuration, generated by `heddle generate-config`.
# Every option is described in config/homeserver.sample.yaml.
server_name: {scalar(server_name)}
# Relative paths below are relative to data_dir.
data_dir: {scalar(str(Path(data_dir).resolve()))}
signing_key_path: {scalar(server_name.replace(":", "_") + ".signing.key")}
listeners:
  - type: client
    bind_address: 127.0.0.1
    port: {port}
  - type: metrics
    bind_address: 127.0.0.1
    port: {metrics_port}
database:
  url: sqlite:///homeserver.db
registration:
  # Open registration is safe here because the listener only binds to loopback.
  # Before exposing the server, turn it off or set require_token with tokens.
  enabled: true
  require_token: false
  tokens: []
  shared_secret: {secrets.token_urlsafe(32)}
auth:
  jwt_secret: {secrets.token_urlsafe(48)}
"""
