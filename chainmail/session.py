"""What a handler sees of one connection: :class:`Session` and its current :class:`Transaction`.

Plain data with a few derived properties.  The server owns the socket; handlers read and
update this state and return verdicts or replies.
"""

from __future__ import annotations

import contextvars
import itertools
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .protocol.grammar import Address

if TYPE_CHECKING:  # pragma: no cover
    from .server.context import ServerContext

__all__ = ["Session", "Transaction", "TLSInfo", "new_session_id"]

_counter = itertools.count(1)
_prefix = f"{os.getpid():x}"


def new_session_id() -> str:
    """Unique within this process and across restarts of it (pid + counter + time)."""
    return f"{_prefix}{int(time.time() * 1000) & 0xFFFFFF:06x}{next(_counter):x}"


@dataclass(slots=True)
class TLSInfo:
    protocol: str
    cipher: str
    sni: str | None = None


#: The SNI name of the TLS handshake running in the current task: set by the server's SNI
#: callback (``server/tls.py``), read into :attr:`TLSInfo.sni` once the handshake is done.
sni_name: contextvars.ContextVar[str | None] = contextvars.ContextVar("sni_name", default=None)


@dataclass(slots=True)
class Transaction:
    """One mail transaction (MAIL .. end of DATA or RSET)."""

    sender: Address | None = None
    has_sender: bool = False
    recipients: list[Address] = field(default_factory=list)
    mail_params: dict[str, str | None] = field(default_factory=dict)
    rcpt_params: list[dict[str, str | None]] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    """Handlers' own per-transaction data (cleared by RSET, HELO/EHLO and end of DATA)."""

    @property
    def sender_text(self) -> str:
        return "" if self.sender is None else str(self.sender)


class Session:
    """State of one SMTP/LMTP connection."""

    __slots__ = ("id", "server", "remote_ip", "remote_port", "local_ip", "local_port", "lmtp",
                 "helo_mode", "helo_name", "tls", "auth_user", "relaying_allowed",
                 "transaction", "state", "started", "messages", "data_receiver",
                 "tls_requested", "proxied_from", "line_handler")

    def __init__(self, server: "ServerContext", remote: tuple[str, int],
                 local: tuple[str, int], *, lmtp: bool = False):
        self.id = new_session_id()
        self.server = server
        self.remote_ip, self.remote_port = remote
        self.local_ip, self.local_port = local
        self.lmtp = lmtp
        self.helo_mode: str | None = None   # "HELO", "EHLO" or "LHLO" once greeted
        self.helo_name: str | None = None
        self.tls: TLSInfo | None = None
        self.auth_user: str | None = None
        # LMTP never relays (RFC 2033 §4: it is for final delivery).
        self.relaying_allowed = not lmtp and server.config.authorized_addresses.contains(self.remote_ip)
        self.transaction = Transaction()
        self.state: dict[str, Any] = {}
        """Handlers' own per-connection data."""
        self.started = time.time()
        self.messages = 0
        self.data_receiver = None
        self.tls_requested = False
        """Set by the STARTTLS handler with its 220 (informative: the server starts the
        handshake on a ``220`` to STARTTLS, :mod:`chainmail.protocol.states`)."""
        self.line_handler = None
        """When set (AUTH continuations), the next command line goes to this async
        ``handler(session, line) -> Reply`` instead of the command handlers."""
        self.proxied_from: tuple[str, int] | None = None
        """The TCP peer (the proxy) when the client address came from a PROXY header."""
        """Set by the DATA command handler together with its 354 reply: the object that
        takes the body (``write(bytes)``, ``async finish(end) -> Reply``, ``abort()``)."""

    @property
    def config(self):
        return self.server.config

    @property
    def hostname(self) -> str:
        return self.server.hostname

    @property
    def esmtp(self) -> bool:
        return self.helo_mode in ("EHLO", "LHLO")

    def reset_transaction(self) -> None:
        """End the transaction; a message being received in BDAT chunks is dropped."""
        receiver = self.data_receiver
        if receiver is not None:
            self.data_receiver = None
            receiver.abort()
        self.transaction = Transaction()

    def reset_for_tls(self, tls: TLSInfo) -> None:
        """RFC 3207 §4.2: forget everything learned from the client before the handshake."""
        self.tls = tls
        self.helo_mode = None
        self.helo_name = None
        self.auth_user = None
        self.line_handler = None
        self.reset_transaction()
        self.state.clear()
        self.relaying_allowed = not self.lmtp and \
            self.server.config.authorized_addresses.contains(self.remote_ip)

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.remote_ip}:{self.remote_port}>"
