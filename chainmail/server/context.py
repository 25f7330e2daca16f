"""Everything one ``<smtpserver>``/``<lmtpserver>`` block shares across its connections."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import trio

from .limits import LocalLimits

if TYPE_CHECKING:  # pragma: no cover - types only: these modules import the server's
    from ..chain import Chain
    from ..config.server import ServerConfig
    from ..mailet.engine import MailetEngine
    from ..remote.dns import DnsService
    from ..store.domains import DomainStore
    from ..store.mailbox import MailboxStore
    from ..store.rrt import RecipientRewriteTable
    from ..store.spool import DirectorySpool
    from ..store.users import UsersRepository
    from .connection import SessionRunner
    from .limits import SharedLimits
    from .tls import TLSManager

__all__ = ["ServerContext", "ProcessLoad"]


class ProcessLoad:
    """The sessions open in the whole process, across every server block.  A lone session
    has the event loop to itself: it may busy-poll its client and fdatasync on the loop."""

    __slots__ = ("sessions",)

    def __init__(self) -> None:
        self.sessions = 0

    @property
    def lone(self) -> bool:
        return self.sessions <= 1


class ServerContext:
    """Configuration, stores, the compiled handler chain and the connection counters.

    ``limits`` counts connections for ``connectionLimit`` and ``connectionLimitPerIP``:
    plain integers in one process (all its connections share one trio loop), a shared
    table when several worker processes serve the block (``limits.py``).

    A reload (:mod:`.reload`) never changes a context in place: it builds new ones for new
    connections, and a session keeps the context it was accepted with to its end.

    ``domains`` and ``spool`` are ``None`` only where no session is ever served
    (``check-config`` builds a context just to compile and show the chain).
    """

    def __init__(self, config: ServerConfig, *, domains: DomainStore | None,
                 spool: DirectorySpool | None, users: UsersRepository | None = None,
                 rrt: RecipientRewriteTable | None = None, hostname: str | None = None):
        self.config = config
        self.hostname = hostname or config.hello_name
        self.domains = domains
        self.spool = spool
        self.users = users
        self.rrt = rrt
        self.limiter = trio.CapacityLimiter(max(1, config.max_executor_count))
        self.chain: Chain = None  # type: ignore[assignment]  # set by make_context at once
        self.tls: TLSManager | None = None   # when <tls> enables socketTLS or startTLS
        self.mailboxes: MailboxStore | None = None   # the mailbox store (LMTP delivers into it)
        self.mailet_engine: MailetEngine | None = None   # when a mailet container is configured
        self.limits: LocalLimits | SharedLimits = LocalLimits(config.connection_limit,
                                                              config.connection_limit_per_ip)
        self.load = ProcessLoad()   # shared by every context of a process (run_servers)
        self.sessions: set[SessionRunner] = set()   # the open connections
        self.draining = False
        # Connections accepted for this context and not yet closed: after a reload, the
        # configuration this context belongs to is closed only once it is back to 0.
        self.connections = 0
        self.bound: list[tuple[str, int]] = []
        self._dns: DnsService | None = None

    @property
    def conf_dir(self) -> str:
        """The directory of the block's configuration file (where ``dnsservice.xml`` is)."""
        return os.path.dirname(os.path.abspath(self.config.file)) if self.config.file else "conf"

    @property
    def var_dir(self) -> str:
        """The state directory (the one holding the spool), where handlers keep their state."""
        if self.spool is None:
            raise RuntimeError("this server has no state directory (no spool)")
        return os.path.dirname(self.spool.root)

    @property
    def dns(self) -> DnsService:
        """The resolver of ``dnsservice.xml`` beside the configuration, shared by every handler
        of the block: asynchronous, cached (``maxcachesize``) and bounded by ``timeout``.
        Opened at the first question, so a chain that asks none never reads the file."""
        if self._dns is None:
            from ..remote.dns import DnsService, load_dnsservice
            self._dns = DnsService(load_dnsservice(os.path.join(self.conf_dir, "dnsservice.xml")))
        return self._dns

    def is_local_domain(self, domain: str) -> bool:
        """A domain of the domain list, directly or through a domain alias."""
        domains = self.domains
        if domains is None:
            return False
        if domains.contains(domain):
            return True
        rrt = self.rrt
        if rrt is not None:
            canonical = rrt.canonical_domain(domain)
            return canonical != domain and domains.contains(canonical)
        return False

    @property
    def lmtp(self) -> bool:
        return self.config.kind == "lmtp"
