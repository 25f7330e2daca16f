"""The message being received, as ``on_message`` hooks see it."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:  # pragma: no cover
    from .session import Session, Transaction

__all__ = ["IncomingMessage", "header_field"]


class IncomingMessage:
    """Envelope, size and spool writer of a fully received message.

    ``commit()`` hands it to the durable spool (the core ``SendMailHandler`` does this);
    when it returns the message is on disk.  A message nobody commits is discarded after
    the DATA reply.
    """

    __slots__ = ("session", "transaction", "writer", "size", "queue_id", "attributes", "head",
                 "body_file", "_added")

    def __init__(self, session: "Session", transaction: "Transaction", writer: Any, size: int):
        self.session = session
        self.transaction = transaction
        self.writer = writer
        self.size = size
        self.queue_id: str | None = None
        self.attributes: dict[str, Any] = {}
        self.head = b""
        """The client's header section (up to 64 KiB), for header checks."""
        self.body_file = None
        """LMTP: the received message (prepended headers included), readable from the start."""
        self._added: list[bytes] = []   # header fields added by filters, newest first

    def read(self) -> bytes:
        """The whole message as it will be stored: the fields filters added
        (:meth:`add_header`), the prepended trace fields and what the client sent.  Bounded by
        ``maxmessagesize``; a filter that needs the body (a spam or DKIM check) reads it here."""
        added = b"".join(self._added)
        if self.body_file is not None:
            self.body_file.seek(0)
            return added + self.body_file.read()
        if self.writer is None:
            raise RuntimeError("this message has no stored content")
        return added + self.writer.contents()

    def add_header(self, name: str, value: str) -> None:
        """Add the header field ``name: value`` on top of the message (trace and result
        fields such as ``Authentication-Results`` or ``X-Spam-Status``; newer fields go above
        older ones, as RFC 5321 §4.4 has trace fields).  ``value`` may be folded with CRLF
        followed by a space or tab; any other CR or LF, or a malformed name, is refused with
        ``ValueError`` so that no filter can smuggle a line into the message."""
        self._added.insert(0, header_field(name, value))

    @property
    def added_headers(self) -> bytes:
        """The header fields added so far, as they will be stored (CRLF-terminated)."""
        return b"".join(self._added)

    @property
    def sender(self):
        return self.transaction.sender

    @property
    def recipients(self):
        return self.transaction.recipients

    def envelope(self):
        from .store.spool import Envelope
        s, t = self.session, self.transaction
        attributes = {
            "session_id": s.id,
            "remote_addr": s.remote_ip,
            "remote_port": s.remote_port,
            "helo": s.helo_name,
            "helo_mode": s.helo_mode,
            "server_name": s.config.name,
            "relaying_allowed": s.relaying_allowed,
        }
        if s.tls is not None:
            attributes["tls_protocol"] = s.tls.protocol
            attributes["tls_cipher"] = s.tls.cipher
        if s.auth_user:
            attributes["auth_user"] = s.auth_user
        attributes.update(self.attributes)
        return Envelope(
            sender=t.sender_text,
            recipients=[str(r) for r in t.recipients],
            mail_params=dict(t.mail_params),
            rcpt_params=[dict(p) for p in t.rcpt_params],
            attributes=attributes,
        )

    async def commit(self) -> str:
        if self._added:
            added, self._added = b"".join(self._added), []
            if self.writer.spilled:
                await trio.to_thread.run_sync(self.writer.prepend, added)
            else:
                self.writer.prepend(added)
        self.queue_id = await self.writer.commit(self.envelope())
        return self.queue_id

    @property
    def committed(self) -> bool:
        return self.queue_id is not None


_FIELD_NAME = re.compile(r"[!-9;-~]+")   # RFC 5322 §3.6.8 ftext
_FOLD = re.compile(r"\r\n(?=[ \t])")


def header_field(name: str, value: str) -> bytes:
    """``name: value`` CRLF as bytes (UTF-8), checked as :meth:`IncomingMessage.add_header`
    says."""
    if not _FIELD_NAME.fullmatch(name):
        raise ValueError(f"not a header field name: {name!r}")
    unfolded = _FOLD.sub("", value)
    if "\r" in unfolded or "\n" in unfolded or "\0" in unfolded:
        raise ValueError(f"header field {name}: a CR, LF or NUL outside folding")
    return f"{name}: {value}\r\n".encode("utf-8")
