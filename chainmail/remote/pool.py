"""Idle SMTP connections kept for the next mail to the same host.

Opening a connection costs a TCP handshake, a greeting, ``EHLO``, often STARTTLS and a second
``EHLO``: several round trips that a queue sending many mails to one exchanger pays again and
again.  :class:`ConnectionPool` keeps the connections a delivery has finished with, keyed by
everything that shaped the session (address, port, TLS mode and verification, host name,
AUTH user, HELO name, local address), so a connection is only reused where a new one would
have been the same.

A connection carries at most ``max_messages`` mails and idles at most ``idle_timeout``
seconds (servers drop idle clients after a while; RFC 5321 §4.5.3.2.7 lets them wait 5
minutes, many wait far less).  Taking one checks that the server has not meanwhile closed it
or sent ``421``; the caller still replaces a connection that dies before the first reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import trio

from .client import SmtpClient

__all__ = ["PoolKey", "ConnectionPool"]


@dataclass(frozen=True)
class PoolKey:
    """What a reused session must have in common with a fresh one."""

    address: str
    port: int
    implicit_tls: bool
    host: str
    starttls: str = "never"
    verify: tuple = ()
    auth_user: str | None = None
    helo_name: str = "localhost"
    bind: str | None = None


class ConnectionPool:
    """Idle :class:`SmtpClient` connections by :class:`PoolKey`; see the module docstring."""

    def __init__(self, idle_timeout: float = 10.0, max_messages: int = 100, *,
                 clock: Callable[[], float] | None = None) -> None:
        self.idle_timeout = idle_timeout
        self.max_messages = max_messages
        self.clock = clock or trio.current_time
        self._idle: dict[PoolKey, list[tuple[float, SmtpClient]]] = {}
        self.closed = False

    def __len__(self) -> int:
        return sum(len(v) for v in self._idle.values())

    async def take(self, key: PoolKey) -> SmtpClient | None:
        """The most recently used live idle connection for ``key``, or None."""
        entries = self._idle.get(key, [])
        while entries:
            since, client = entries.pop()
            if self.clock() - since > self.idle_timeout:
                await client.quit()
            elif not client.idle_ok():
                await client.aclose()
            else:
                self._drop_empty(key)
                return client
        self._drop_empty(key)
        return None

    async def give_back(self, key: PoolKey, client: SmtpClient) -> None:
        """Keep ``client`` for the next mail, or QUIT it when it has carried enough."""
        if self.closed or client.messages >= self.max_messages:
            await client.quit()
            return
        self._idle.setdefault(key, []).append((self.clock(), client))

    async def expire(self) -> int:
        """QUIT the connections idle past ``idle_timeout``; returns how many."""
        now = self.clock()
        stale: list[SmtpClient] = []
        for key, entries in list(self._idle.items()):
            stale += [c for since, c in entries if now - since > self.idle_timeout]
            entries[:] = [(since, c) for since, c in entries if now - since <= self.idle_timeout]
            self._drop_empty(key)
        await _quit_all(stale)
        return len(stale)

    async def aclose(self) -> None:
        """QUIT every idle connection; later give-backs are QUIT at once."""
        self.closed = True
        clients = [c for entries in self._idle.values() for _, c in entries]
        self._idle.clear()
        await _quit_all(clients)

    def _drop_empty(self, key: PoolKey) -> None:
        if key in self._idle and not self._idle[key]:
            del self._idle[key]


async def _quit_all(clients: list[SmtpClient]) -> None:
    """QUIT in parallel: one silent server must not hold up the others."""
    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(client.quit)
