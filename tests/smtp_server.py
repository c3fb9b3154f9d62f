"""A real SMTP server on loopback (aiosmtpd, in its own thread) that keeps what it is sent, or
refuses it with a chosen reply, for the e-mail tests."""

from __future__ import annotations

import email
import email.policy
import re
import socket
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiosmtpd.controller import Controller


@dataclass(frozen=True)
class DeliveredMail:
    recipients: list[str]
    sender: str
    subject: str
    body: str

    @property
    def link(self) -> str:
        found = re.search(r"https?://\S+", self.body)
        assert found is not None, f"no link in {self.body!r}"
        return found.group(0)

    @property
    def link_params(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.link).query).items()}

    @property
    def link_path_and_query(self) -> str:
        parts = urlsplit(self.link)
        return f"{parts.path}?{parts.query}"


class _Handler:
    def __init__(self, inbox: SmtpInbox) -> None:
        self._inbox = inbox

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return self._inbox.receive(envelope)


class SmtpInbox:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.mails: list[DeliveredMail] = []
        # When set, every message is answered with this SMTP reply (e.g. "550 ...").
        self.refuse_with: str | None = None
        self.port = free_port()
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def receive(self, envelope: Any) -> str:
        if self.refuse_with is not None:
            return self.refuse_with
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = message.get_body(("plain",))
        mail = DeliveredMail(
            recipients=list(envelope.rcpt_tos),
            sender=envelope.mail_from,
            subject=str(message["Subject"]),
            body=body.get_content() if body is not None else "",
        )
        with self._lock:
            self.mails.append(mail)
        return "250 Message accepted for delivery"

    def last(self) -> DeliveredMail:
        with self._lock:
            assert self.mails, "no mail was delivered"
            return self.mails[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
