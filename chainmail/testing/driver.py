"""A session with no socket: the server's own session loop, fed through an in-memory stream.

The handler chain is built by the code ``chainmail run`` uses (``smtpserver.xml`` parsed,
entry points resolved, ``configure()`` called, pluggy validation), and each session is
served by :class:`chainmail.server.connection.SessionRunner`, the loop that serves real
connections: the replies a test reads are the bytes a client would get.
"""

from __future__ import annotations

import contextlib
import base64
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import trio
import trio.testing

from chainmail.protocol.replies import Reply

from ._loop import TrioThread
from .conf import server_xml
from .stores import LocalStores, Spooled

__all__ = ["SessionDriver", "SessionClosed", "parse_reply"]

_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})(?: |$)")


class SessionClosed(Exception):
    """The server closed the connection before answering."""


def parse_reply(lines: Sequence[str]) -> Reply:
    """A :class:`Reply` from its wire lines (without CRLF): ``code``, ``enhanced`` (taken
    from the first line, as the server writes it) and ``lines``."""
    code = int(lines[0][:3])
    texts = [line[4:] for line in lines]
    enhanced = None
    m = _ENHANCED.match(texts[0])
    if m:
        enhanced = m.group(1)
        texts[0] = texts[0][m.end():]
    return Reply(code, tuple(texts), enhanced)


def _as_bytes(content: bytes | str) -> bytes:
    data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
    # Line ends as smtplib sends them: every LF with its CR.
    data = re.sub(rb"\r?\n", b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def _stuff(data: bytes) -> bytes:
    """RFC 5321 §4.5.2 dot-stuffing and the end-of-data line."""
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def _check_parameters(cls: type, params: Mapping[str, Any], name: str) -> None:
    """A parameter the class does not declare (``parameters``) is a mistake in the test."""
    declared = getattr(cls, "parameters", None)
    if declared is None:
        return
    declared = (declared,) if isinstance(declared, str) else tuple(declared)
    unknown = [key for key in params if key not in declared]
    if unknown:
        raise ValueError(f"handler {name}: unknown parameter(s) {', '.join(map(repr, unknown))}; "
                         f"it declares {', '.join(declared) or 'none'}")


class SessionDriver:
    """One SMTP (or LMTP) session against a handler chain, with no socket.

    ``handlers`` is either XML (``<handler>`` elements, put before the core package, or a
    whole ``<handlerchain>``) or a list of handlers put before the core package: a class,
    ``(cls, {"param": "value"})`` (made and configured as a ``<handler>`` element with those
    parameters would be; a parameter the class does not declare in ``parameters`` is a
    ``ValueError``), or an instance, used as it is (to share one between sessions).

    The session's client settings: ``remote_ip``; ``helo`` (sent as EHLO at once);
    ``authorized_addresses`` (the block's ``authorizedAddresses``, which decides
    ``relaying_allowed``; ``relaying_allowed=True/False`` overrides it); ``auth_user`` (as
    if AUTH had succeeded); ``tls`` (as if TLS were up).  Server side: ``local_domains``,
    ``users`` (``{"bob@local.test": "password"}``), ``options`` (more elements of the
    server block, e.g. ``<maxmessagesize>1k</maxmessagesize>``), ``lmtp``.

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, handlers: str | Sequence[Any] = "", *, remote_ip: str = "127.0.0.1",
                 remote_port: int = 40000, helo: str | None = None,
                 authorized_addresses: str | None = "127.0.0.0/8",
                 relaying_allowed: bool | None = None, auth_user: str | None = None,
                 tls: bool = False, local_domains: Iterable[str] = ("local.test",),
                 users: Mapping[str, str] | None = None, options: str = "",
                 hello_name: str = "mx.test", lmtp: bool = False, core: str | None = None,
                 var: str | Path | None = None, timeout: float = 60.0) -> None:
        self._tmp = None
        if var is None:
            self._tmp = tempfile.mkdtemp(prefix="chainmail-session-")
            var = Path(self._tmp) / "var"
        self.var = Path(var)
        self.timeout = timeout
        domains = list(local_domains)
        self.stores = LocalStores(self.var, default_domain=domains[0] if domains else "localhost",
                                  domains=domains, users=users)
        self._loop: TrioThread | None = None
        try:
            self.context = self._build_context(handlers, lmtp=lmtp, options=options, core=core,
                                               hello_name=hello_name,
                                               authorized_addresses=authorized_addresses)
            self._loop = TrioThread(asyncio_bridge=self.context.chain.needs_asyncio)
            self._buffer = b""
            self._eof = False
            self._accepted = 0
            self._runner_error: BaseException | None = None
            self._done: trio.Event | None = None
            self._client: Any = None   # the test's end of an in-memory stream pair
            self.session = self._running().call(self._connect, remote_ip, remote_port, tls,
                                                auth_user, relaying_allowed)
            #: the server's first reply (220, or what an ``on_connect`` hook answered)
            self.greeting = self._read_reply()
            if helo is not None:
                self.ehlo(helo)
        except BaseException:
            self.close()
            raise

    # -- building --------------------------------------------------------------------------
    def _build_context(self, handlers, *, lmtp, options, core, hello_name, authorized_addresses):
        from chainmail.chain import Chain, ChainEntry, HandlerConfig
        from chainmail.config.server import load_servers
        from chainmail.server.app import make_context

        kind = "lmtp" if lmtp else "smtp"
        conf = self.var.parent / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        xml_handlers = handlers if isinstance(handlers, str) else ""
        path = conf / f"{kind}server.xml"
        path.write_text(server_xml(xml_handlers, kind=kind, options=options,
                                   hello_name=hello_name, core=core,
                                   authorized_addresses=authorized_addresses))
        servers, _ = load_servers(path, kind, conf)
        s = self.stores
        ctx = make_context(servers[0], domains=s.domains, spool=s.spool, users=s.users, rrt=s.rrt)
        ctx.mailboxes = s.mailboxes
        if not isinstance(handlers, str) and handlers:
            entries = []
            for item in handlers:
                cls, params = item if isinstance(item, tuple) else (item, {})
                name = getattr(cls, "__name__", type(cls).__name__)
                config = HandlerConfig(name, {k: str(v) for k, v in params.items()}, None, ctx,
                                       str(path), None)
                if isinstance(cls, type):
                    _check_parameters(cls, params, name)
                    handler = cls()
                    configure = getattr(handler, "configure", None)
                    if configure is not None:
                        configure(config)
                else:
                    handler = cls   # an instance is used as it is (shared between sessions)
                entries.append(ChainEntry(name, handler, f"{getattr(cls, '__module__', '?')}:{name}"))
            ctx.chain = Chain([*entries, *ctx.chain.entries], timeout=ctx.chain.timeout,
                              limiter=ctx.limiter)
        return ctx

    async def _connect(self, remote_ip, remote_port, tls, auth_user, relaying_allowed):
        from chainmail.server.connection import SessionRunner
        from chainmail.session import Session, TLSInfo

        client, server = trio.testing.memory_stream_pair()
        self._client = client
        session = Session(self.context, (remote_ip, remote_port), ("127.0.0.1", 25),
                          lmtp=self.context.lmtp)
        if tls:
            session.tls = TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384")
        if auth_user is not None:
            session.auth_user = auth_user
        if relaying_allowed is not None:
            session.relaying_allowed = relaying_allowed
        runner = SessionRunner(self.context, server, session)
        done = self._done = trio.Event()

        async def serve() -> None:
            try:
                await runner.run()
            except Exception as exc:   # reported to the test by the next read and by close()
                self._runner_error = exc
            finally:
                await server.aclose()
                done.set()

        self._running().start_soon(serve)
        return session

    # -- talking ---------------------------------------------------------------------------
    async def _send(self, data: bytes) -> None:
        # The server may have closed: reading tells the test.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._client.send_all(data)

    async def _receive(self) -> bytes:
        return await self._client.receive_some(65536)

    def _read_line(self) -> str:
        while b"\r\n" not in self._buffer:
            if self._eof:
                raise SessionClosed(self._closed_reason())
            chunk = self._running().call(self._receive, timeout=self.timeout)
            if not chunk:
                self._eof = True
                continue
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line.decode("utf-8", "surrogateescape")

    def _closed_reason(self) -> str:
        if self._runner_error is not None:
            return f"the session failed: {self._runner_error!r}"
        return "the server closed the connection"

    def _read_reply(self) -> Reply:
        lines = [self._read_line()]
        while lines[-1][3:4] == "-":
            lines.append(self._read_line())
        return parse_reply(lines)

    def _read_until_closed(self) -> list[Reply]:
        """Every reply up to the server's hang-up, which must come between two replies."""
        replies: list[Reply] = []
        while True:
            try:
                first = self._read_line()
            except SessionClosed:
                if self._runner_error is not None:
                    raise
                return replies
            lines = [first]
            while lines[-1][3:4] == "-":
                lines.append(self._read_line())
            replies.append(parse_reply(lines))

    def raw(self, data: bytes, replies: int | None = 1) -> list[Reply]:
        """Send ``data`` exactly as given (pipelined commands, bare line ends) and read
        ``replies`` replies; ``None`` reads every reply until the server closes the
        connection (after a QUIT, or a refusal that ends the session)."""
        self._running().call(self._send, bytes(data), timeout=self.timeout)
        if replies is None:
            return self._read_until_closed()
        return [self._read_reply() for _ in range(replies)]

    def command(self, line: str) -> Reply:
        """Send one command line and return the server's reply."""
        reply = self.raw(line.encode("utf-8", "surrogateescape") + b"\r\n")[0]
        verb = line.split(" ", 1)[0].upper()
        if verb in ("MAIL", "RSET", "HELO", "EHLO", "LHLO"):
            self._accepted = 0
        elif verb == "RCPT" and reply.code < 400:
            self._accepted += 1
        return reply

    def ehlo(self, name: str = "client.test") -> Reply:
        return self.command(f"{'LHLO' if self.context.lmtp else 'EHLO'} {name}")

    def helo(self, name: str = "client.test") -> Reply:
        return self.command(f"HELO {name}")

    def mail(self, sender: str, params: str = "") -> Reply:
        return self.command(f"MAIL FROM:<{sender}>" + (f" {params}" if params else ""))

    def rcpt(self, recipient: str, params: str = "") -> Reply:
        return self.command(f"RCPT TO:<{recipient}>" + (f" {params}" if params else ""))

    def data(self, content: bytes | str) -> Reply | list[Reply]:
        """DATA, then ``content`` (LF made CRLF, dot-stuffed, ended).  Returns the final reply,
        or the ``354``-less refusal; over LMTP, one reply per accepted recipient."""
        reply = self.command("DATA")
        if reply.code != 354:
            return reply
        count = self._accepted if self.context.lmtp else 1
        self._accepted = 0
        replies = self.raw(_stuff(_as_bytes(content)), replies=max(count, 1))
        return replies if self.context.lmtp else replies[0]

    def bdat(self, content: bytes | str, chunk_size: int | None = None) -> Reply | list[Reply]:
        """``content`` (LF made CRLF) in pipelined BDAT chunks (RFC 3030) of at most
        ``chunk_size`` octets, the last one ``LAST``.  Returns the first refused chunk's
        reply, else the LAST chunk's; over LMTP, one reply per accepted recipient."""
        data = _as_bytes(content)
        size = chunk_size or max(len(data), 1)
        pieces = [data[i:i + size] for i in range(0, len(data), size)] or [b""]
        stream = b"".join(b"BDAT %d%s\r\n" % (len(p), b" LAST" if i == len(pieces) - 1 else b"")
                          + p for i, p in enumerate(pieces))
        count = self._accepted if self.context.lmtp else 1
        self._accepted = 0
        replies = self.raw(stream, replies=len(pieces) - 1)
        refused = next((r for r in replies if r.code >= 400), None)
        # after a refused chunk the transaction is over: the LAST one gets a single reply
        last = self.raw(b"", replies=1 if refused else max(count, 1))
        if refused is not None:
            return refused
        return last if self.context.lmtp else last[0]

    def rset(self) -> Reply:
        return self.command("RSET")

    def login(self, username: str, password: str) -> Reply:
        """``AUTH PLAIN`` with the credentials as initial response (what ``smtplib``'s
        ``login`` sends); the server must offer AUTH (a core package with it, and ``tls=True``
        unless ``<auth><requireSSL>`` is false)."""
        token = base64.b64encode(f"\0{username}\0{password}".encode("utf-8")).decode("ascii")
        return self.command(f"AUTH PLAIN {token}")

    def noop(self) -> Reply:
        return self.command("NOOP")

    def quit(self) -> Reply:
        return self.command("QUIT")

    def send_message(self, sender: str, recipients: Iterable[str], content: bytes | str,
                     ) -> list[Reply]:
        """MAIL, each RCPT and (if a recipient was accepted) DATA; every reply, in order.
        Greets first with EHLO if the session has not been greeted."""
        replies = []
        if self.session.helo_mode is None:
            replies.append(self.ehlo())
        replies.append(self.mail(sender))
        if replies[-1].code >= 400:
            return replies
        accepted = 0
        for rcpt in recipients:
            replies.append(self.rcpt(rcpt))
            accepted += replies[-1].code < 400
        if accepted:
            result = self.data(content)
            replies.extend(result if isinstance(result, list) else [result])
        return replies

    # -- results ---------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Whether the server has ended the session."""
        return self._done is not None and self._done.is_set()

    def spooled(self) -> list[Spooled]:
        """The messages the session put in the spool (envelope and content)."""
        return self.stores.spooled()

    def mailbox(self, user: str) -> list[bytes]:
        """What LMTP delivered into ``user``'s Maildir."""
        return self.stores.mailbox(user)

    # -- ending ----------------------------------------------------------------------------
    async def _hang_up(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self._done is not None:
            with trio.move_on_after(self.timeout):
                await self._done.wait()
        await self.context.spool.aclose()

    def _running(self) -> TrioThread:
        if self._loop is None:
            raise SessionClosed("the driver is closed")
        return self._loop

    def close(self) -> None:
        """Hang up (``on_disconnect`` hooks run), stop the loop, close the stores."""
        loop, self._loop = self._loop, None
        try:
            if loop is not None:
                try:
                    loop.call(self._hang_up, timeout=self.timeout)
                finally:
                    loop.stop()
        finally:
            self.stores.close()
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None
        error = getattr(self, "_runner_error", None)
        if error is not None and not isinstance(error, trio.Cancelled):
            raise error

    def __enter__(self) -> "SessionDriver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
