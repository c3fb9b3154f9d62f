"""Sending mail through the configured SMTP server with Twisted's ESMTP client: no thread,
no blocking I/O on the reactor."""

from __future__ import annotations

import logging
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from io import BytesIO
from typing import Any

from twisted.internet import defer
from twisted.internet.ssl import optionsForClientTLS
from twisted.mail.smtp import ESMTPSenderFactory
from twisted.protocols.tls import TLSMemoryBIOFactory

from homeserver.config import EmailConfig

logger = logging.getLogger(__name__)


class MailError(Exception):
    """The mail could not be handed to the SMTP server."""


def build_message(
    from_header: str, to: str, subject: str, body: str, message_id_domain: str
) -> bytes:
    message = EmailMessage()
    message["From"] = from_header
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=message_id_domain)
    message.set_content(body)
    return message.as_bytes()


class SmtpMailer:
    def __init__(self, config: EmailConfig, server_name: str, reactor: Any) -> None:
        self._config = config
        self._server_name = server_name
        self._reactor = reactor

    async def send(self, to: str, subject: str, body: str) -> None:
        """Deliver one plain-text mail to the SMTP server, or raise MailError."""
        config = self._config
        assert config.notif_from is not None  # the config refuses e-mail without it
        message = build_message(
            config.notif_from, to, subject, body, self._server_name.split(":")[0]
        )
        done: defer.Deferred[Any] = defer.Deferred()
        tls_options = optionsForClientTLS(config.smtp_host)
        timeout_s = config.smtp_timeout_ms / 1000
        factory: Any = ESMTPSenderFactory(
            config.smtp_user.encode() if config.smtp_user is not None else None,
            config.smtp_password.encode() if config.smtp_password is not None else None,
            parseaddr(config.notif_from)[1],
            to,
            BytesIO(message),
            done,
            # One attempt: the client is waiting, and can ask again with a higher
            # send_attempt.
            retries=0,
            timeout=timeout_s,
            # STARTTLS only when asked for; implicit TLS wraps the whole connection below.
            contextFactory=tls_options if config.tls == "starttls" else None,
            heloFallback=True,
            requireAuthentication=config.smtp_user is not None,
            requireTransportSecurity=config.tls == "starttls",
        )
        if config.tls == "implicit":
            factory = TLSMemoryBIOFactory(tls_options, True, factory)
        self._reactor.connectTCP(config.smtp_host, config.port, factory, timeout=timeout_s)
        try:
            await done
        except Exception as e:
            # The SMTP server's answer (or the connection error) goes to the log, never to
            # the client.
            logger.warning("could not send mail via %s:%s: %s", config.smtp_host, config.port, e)
            raise MailError(str(e)) from e
