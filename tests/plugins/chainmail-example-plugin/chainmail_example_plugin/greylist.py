"""Greylisting: a client's first attempt to send from one sender to one recipient is
deferred; the same triplet retried after ``<delay>`` seconds is let through."""

from __future__ import annotations

import ipaddress
import time

from chainmail.chain import HandlerConfig
from chainmail.verdict import HookResult


class Greylist:
    """``<handler class="Greylist"><delay>300</delay></handler>``

    Clients that may relay (``authorizedAddresses``) and authenticated clients are never
    greylisted.  A triplet that passed stays known for ``<lifetime>`` seconds.  A passed
    retry returns no opinion, so the next handlers (and the core relay check) still decide.
    Triplets are kept in memory: per process, so with ``ioWorkerCount`` above 1 a retry
    that reaches another worker process is greylisted again.
    """

    parameters = ("delay", "lifetime")

    def configure(self, config: HandlerConfig) -> None:
        self.delay = config.get_int("delay", 300)
        self.lifetime = config.get_int("lifetime", 36 * 24 * 3600, minimum=1)
        self.first_seen: dict[tuple[str, str, str], float] = {}
        self.clock = time.monotonic

    @staticmethod
    def _network(ip: str) -> str:
        """Clients retry from another address of the same pool: greylist the /24 (or /64)."""
        prefix = 24 if ipaddress.ip_address(ip).version == 4 else 64
        return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))

    def on_rcpt(self, session, sender, recipient):
        if session.relaying_allowed or session.auth_user:
            return None
        key = (self._network(session.remote_ip), str(sender or "").lower(), str(recipient).lower())
        now = self.clock()
        first = self.first_seen.get(key)
        if first is None or now - first > self.lifetime:
            self.first_seen[key] = now
            return HookResult.denysoft(451, f"Greylisted, please try again in {self.delay} seconds",
                                       "4.7.1")
        if now - first < self.delay:
            return HookResult.denysoft(451, f"Greylisted, please try again in "
                                            f"{int(self.delay - (now - first)) + 1} seconds", "4.7.1")
        # Per transaction: how long this message was held back, for the header below.
        waited = session.transaction.state.get("greylist_waited", 0)
        session.transaction.state["greylist_waited"] = max(waited, int(now - first))
        return None

    def prepend_headers(self, session):
        waited = session.transaction.state.get("greylist_waited")
        if waited is None:
            return None
        return f"X-Greylist: delayed {waited} seconds by {session.hostname}\r\n".encode()
