"""The message being received, as ``on_message`` hooks see it."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import trio

from .store.spool.writer import header_length

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
                 "body_file", "_added", "_removed")

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
        self._removed: set[bytes] = set()   # lower-case names of fields filters removed

    def read(self) -> bytes:
        """The whole message as it will be stored: the fields filters added
        (:meth:`add_header`), the prepended trace fields and what the client sent.  Bounded by
        ``maxmessagesize``; a filter that needs the body (a spam or DKIM check) reads it here."""
        if self.body_file is not None:
            self.body_file.seek(0)
            content = self.body_file.read()
        elif self.writer is None:
            raise RuntimeError("this message has no stored content")
        else:
            content = self.writer.contents()
        if self._removed:
            head_len = header_length(content)
            content = self._edit_head(content[:head_len]) + content[head_len:]
        else:
            content = b"".join(self._added) + content
        return content

    def add_header(self, name: str, value: str) -> None:
        """Add the header field ``name: value`` on top of the message (trace and result
        fields such as ``Authentication-Results`` or ``X-Spam-Status``; newer fields go above
        older ones, as RFC 5321 §4.4 has trace fields).  ``value`` may be folded with CRLF
        followed by a space or tab; any other CR or LF, or a malformed name, is refused with
        ``ValueError`` so that no filter can smuggle a line into the message."""
        self._added.insert(0, header_field(name, value))

    def remove_header(self, name: str) -> None:
        """Remove every ``name`` field the message has so far (the client's, the trace fields'
        and those added before), e.g. a ``Subject`` a spam filter rewrites or an
        ``X-Spam-*`` field a client forged.  Applied when the message is stored."""
        key = name.encode("ascii", "replace").lower()
        self._removed.add(key)
        self._added = [f for f in self._added if _field_name(f) != key]

    def set_header(self, name: str, value: str) -> None:
        """Replace every ``name`` field by one ``name: value`` on top."""
        self.remove_header(name)
        self.add_header(name, value)

    def _edit_head(self, head: bytes) -> bytes:
        """``head`` with the removed fields dropped and the added ones on top."""
        kept = drop_fields(head, self._removed) if self._removed else head
        return b"".join(self._added) + kept

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
        if self._added or self._removed:
            if self.writer.spilled:
                await trio.to_thread.run_sync(self.writer.rewrite_head, self._edit_head)
            else:
                self.writer.rewrite_head(self._edit_head)
            self._added, self._removed = [], set()
        self.queue_id = await self.writer.commit(self.envelope())
        return self.queue_id

    @property
    def committed(self) -> bool:
        return self.queue_id is not None


_FIELD_NAME = re.compile(r"[!-9;-~]+")   # RFC 5322 §3.6.8 ftext
_FIELD_START = re.compile(rb"(?m)^(?=[^ \t])")   # a line that does not continue a field


def _field_name(field: bytes) -> bytes:
    return field.split(b":", 1)[0].strip().lower()


def drop_fields(head: bytes, names: set[bytes]) -> bytes:
    """The header section ``head`` without the fields (continuation lines included) whose
    lower-case names are in ``names``."""
    fields = [f for f in _FIELD_START.split(head) if f]
    return b"".join(f for f in fields if _field_name(f) not in names)
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
