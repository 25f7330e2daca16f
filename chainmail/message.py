"""The message being received, as ``on_message`` hooks see it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .session import Session, Transaction

__all__ = ["IncomingMessage"]


class IncomingMessage:
    """Envelope, size and spool writer of a fully received message.

    ``commit()`` hands it to the durable spool (the core ``SendMailHandler`` does this);
    when it returns the message is on disk.  A message nobody commits is discarded after
    the DATA reply.
    """

    __slots__ = ("session", "transaction", "writer", "size", "queue_id", "attributes", "head",
                 "body_file")

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

    def read(self) -> bytes:
        """The whole message (LMTP delivery hooks)."""
        if self.body_file is None:
            raise RuntimeError("the message body is only readable during LMTP delivery")
        self.body_file.seek(0)
        return self.body_file.read()

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
        self.queue_id = await self.writer.commit(self.envelope())
        return self.queue_id

    @property
    def committed(self) -> bool:
        return self.queue_id is not None
