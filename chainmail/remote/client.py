"""A native trio SMTP client for outgoing mail.

It speaks ESMTP to one host: greeting, ``EHLO`` (``HELO`` when EHLO is refused), ``STARTTLS``
(opportunistic or required) or implicit TLS, ``AUTH PLAIN``/``LOGIN`` towards gateways, the
envelope pipelined in one write when the server offers ``PIPELINING`` (RFC 2920), ``SIZE``
(RFC 1870), ``BODY=8BITMIME`` (RFC 6152), ``SMTPUTF8`` (RFC 6531), per-recipient results,
the content with ``BDAT`` when the server offers ``CHUNKING`` (RFC 3030: no dot-stuffing,
1 MiB chunks, pipelined with ``PIPELINING``) or else ``DATA`` with dot-stuffing, ``RSET``
between mails on the same connection, and ``QUIT``.

What goes on ``MAIL`` and ``RCPT`` depends on what the server offers:

- 8-bit content to a server without ``8BITMIME`` is made 7-bit first
  (:mod:`chainmail.sevenbit`); 8-bit headers without ``SMTPUTF8`` are downgraded;
- ``BODY=BINARYMIME`` content (RFC 3030) goes byte for byte with ``BDAT`` to a server
  offering ``BINARYMIME`` and ``CHUNKING``; to any other server only when it is made of
  lines anyway (:func:`fits_in_lines`), as any other mail; else it is not sent
  (:class:`SmtpConversionError`, ``554 5.6.3``);
- non-ASCII addresses without ``SMTPUTF8``: domains go as A-labels (as James's
  ``SmtpUtf8Strategy``); a non-ASCII local part cannot be downgraded, so that address is
  refused locally with ``553 5.6.7`` (RFC 6531 §3.6);
- ``RET``/``ENVID`` and ``NOTIFY``/``ORCPT`` (RFC 3461) only when ``DSN`` is offered;
- ``MT-PRIORITY`` (RFC 6710) only when offered;
- ``REQUIRETLS`` (RFC 8689) only over TLS with a verified certificate to a server offering it;
  otherwise the mail is not sent (:class:`SmtpTlsRequiredError`).

Replies are :class:`chainmail.protocol.replies.Reply` values, the type the server side uses.

Failures are exceptions with the classification RemoteDelivery needs:

- :class:`SmtpConnectionError`: the connection could not be made or broke (refused, reset,
  timeout, TLS handshake failure): try the next address, then retry later;
- :class:`SmtpReplyError`: the server refused a command; ``permanent`` is true for ``5xx``;
- :class:`SmtpConversionError` (a reply error made locally): binary content for a server
  that cannot take it;
- :class:`SmtpTlsRequiredError`: STARTTLS is required and the server does not offer it;
- :class:`SmtpTlsPolicyError` (a handshake error): the certificate chain fails the check
  given as ``tls_check`` (DANE, :mod:`chainmail.remote.dane`).

Which TLS a host gets (the context, whether STARTTLS is required, the DANE check) is decided
by :mod:`chainmail.remote.tlspolicy`.

A refused recipient is not an exception: :meth:`SmtpClient.send` returns one
:class:`RecipientResult` per recipient.  See docs/remote-delivery.md.

With ``lmtp=True`` the same client speaks LMTP (RFC 2033) to a mail store: ``LHLO``
instead of ``EHLO`` (no ``HELO`` fallback), and after the content one reply per accepted
recipient (:attr:`SendResult.data_replies`), since each recipient's mailbox may take or
refuse the message on its own.  A host that starts with ``/`` is a Unix socket (a mail
store's usual listener); the port is then ignored.
"""

from __future__ import annotations

import base64
import re
import select
import ssl
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import trio

from ..protocol.lineends import canonical, is_canonical
from ..protocol.replies import Reply
from ..sevenbit import ConversionError, downgrade_headers, has_8bit, split_entity, to_seven_bit

import idna

__all__ = [
    "SmtpError", "SmtpConnectionError", "SmtpReplyError", "SmtpTlsRequiredError",
    "SmtpTlsHandshakeError", "SmtpTlsPolicyError", "SmtpConversionError", "RecipientResult",
    "SendResult", "SmtpClient", "client_tls_context", "dot_stuff", "fits_in_lines", "BDAT_CHUNK",
]

MAX_REPLY_LINE = 4096
MAX_REPLY_LINES = 256
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")
DSN_MAIL_KEYS = ("RET", "ENVID")
DSN_RCPT_KEYS = ("NOTIFY", "ORCPT")
#: Octets per ``BDAT`` command: large enough that the command costs nothing, small enough
#: that a refusal stops the transfer early.
BDAT_CHUNK = 1024 * 1024
#: RFC 5322 §2.1.1: at most 998 octets per line, CRLF excluded.
MAX_LINE = 998
_LONG_LINE = re.compile(rb"[^\r\n]{%d}" % (MAX_LINE + 1))


class SmtpError(Exception):
    """Outgoing SMTP failed; ``permanent`` says whether retrying can help."""

    permanent = False
    reply: Reply | None = None


class SmtpConnectionError(SmtpError):
    """Connecting, reading or writing failed (or timed out): a temporary failure."""


class SmtpTlsRequiredError(SmtpError):
    """STARTTLS (or REQUIRETLS) is required but the server does not offer it (or refused it)."""


class SmtpTlsHandshakeError(SmtpConnectionError):
    """The TLS handshake failed (e.g. the certificate did not verify): the host offers no usable TLS."""


class SmtpTlsPolicyError(SmtpTlsHandshakeError):
    """The handshake completed but the certificate does not satisfy the domain's policy
    (a DANE TLSA mismatch): the connection is closed before anything is sent."""


#: A check of the server's certificate chain (DER, leaf first) after the handshake:
#: None when it passes, else why not.
ChainCheck = Callable[[list[bytes]], "str | None"]


def peer_chain(stream: trio.SSLStream) -> list[bytes]:
    """The certificates the server presented (DER, leaf first), verified or not.

    ``get_unverified_chain`` is public from Python 3.13 and private before; without it only
    the leaf is known."""
    obj = getattr(stream, "_ssl_object", None)
    for holder in (obj, getattr(obj, "_sslobj", None)):
        method = getattr(holder, "get_unverified_chain", None)
        if method is not None:
            chain = method() or []
            return [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
                    for c in chain]
    leaf = stream.getpeercert(binary_form=True)
    return [leaf] if leaf else []


class SmtpReplyError(SmtpError):
    """The server answered ``command`` with an error reply."""

    reply: Reply

    def __init__(self, command: str, reply: Reply) -> None:
        self.command = command
        self.reply = reply
        super().__init__(f"{command}: {reply}")

    @property
    def permanent(self) -> bool:  # type: ignore[override]
        return self.reply.code >= 500


class SmtpConversionError(SmtpReplyError):
    """Binary content (``BODY=BINARYMIME``) for a server without ``BINARYMIME`` and
    ``CHUNKING``: nothing was sent; another exchanger may still take it (``554 5.6.3``)."""


def fits_in_lines(content: bytes) -> bool:
    """Whether ``content`` can travel as lines (DATA, 8BITMIME or 7bit): no NUL, every CR
    and LF part of a CRLF, and no line over 998 octets (RFC 5322 §2.1.1)."""
    return is_canonical(content) and _LONG_LINE.search(content) is None


def _binary_refused(host: str, why: str) -> Reply:
    return Reply.of(554, f"Conversion required but not supported: the message is binary "
                         f"(BODY=BINARYMIME) and {host} {why}", "5.6.3")


@dataclass(frozen=True)
class RecipientResult:
    address: str
    reply: Reply

    @property
    def accepted(self) -> bool:
        return 200 <= self.reply.code < 300


@dataclass
class SendResult:
    """The outcome of one mail on one connection."""

    mail_reply: Reply
    recipients: list[RecipientResult] = field(default_factory=list)
    data_reply: Reply | None = None
    #: LMTP: the reply after the content for each accepted recipient (empty over SMTP, and
    #: when the content itself was refused: ``data_reply`` then speaks for everyone)
    data_replies: dict[str, Reply] = field(default_factory=dict)

    @property
    def accepted(self) -> list[str]:
        return [r.address for r in self.recipients if r.accepted]

    @property
    def refused(self) -> list[RecipientResult]:
        return [r for r in self.recipients if not r.accepted]

    @property
    def delivered(self) -> list[str]:
        """The recipients the server took responsibility for (``250`` after DATA)."""
        if self.data_replies:
            return [r for r in self.accepted
                    if r in self.data_replies and 200 <= self.data_replies[r].code < 300]
        if self.data_reply is None or not 200 <= self.data_reply.code < 300:
            return []
        return self.accepted

    def final_reply(self, address: str) -> Reply | None:
        """The reply that decided ``address``: its refused ``RCPT``, its own LMTP reply, or
        the reply to the content; None when the content was never sent."""
        for result in self.recipients:
            if result.address == address and not result.accepted:
                return result.reply
        return self.data_replies.get(address) or self.data_reply


def client_tls_context(*, verify_identity: bool = True, trust_all: bool = False,
                       cafile: str | None = None) -> ssl.SSLContext:
    """The context for STARTTLS and implicit TLS (``verifyServerIdentity``, ``sslTrustAllCerts``)."""
    ctx = ssl.create_default_context(cafile=cafile)
    if trust_all:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif not verify_identity:
        ctx.check_hostname = False
    return ctx


def dot_stuff(content: bytes) -> bytes:
    """The DATA payload: the canonical form of ``content`` (CRLF line ends only, no bare CR,
    no NUL: :mod:`chainmail.protocol.lineends`), leading dots doubled, ending ``CRLF.CRLF``.
    Whatever reached the queue, no receiver can find another end of data in it."""
    data = canonical(content).replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def _is_ascii(addr: str) -> bool:
    return addr.isascii()


def _a_label(domain: str) -> str:
    """The ASCII form of an internationalised domain (``xn--``, IDNA 2008 with UTS #46
    mapping, as browsers and current MTAs use); ``ValueError`` if invalid."""
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ValueError(str(exc)) from exc


def ascii_address(address: str) -> str | None:
    """``address`` as it may go to a server without SMTPUTF8, or None when it cannot."""
    if address.isascii():
        return address
    local, at, domain = address.rpartition("@")
    if not at or not local.isascii():
        return None
    try:
        return f"{local}@{_a_label(domain)}"
    except (ValueError, UnicodeError):
        return None


def _param_value_ok(value: object, utf8: bool) -> bool:
    """A value that cannot break the command line (xtext is passed through as received)."""
    return (isinstance(value, str) and bool(value) and value.isprintable() and " " not in value
            and (utf8 or value.isascii()))


def esmtp_params(params: Mapping[str, object] | None, keys: Sequence[str], *,
                 utf8: bool = False) -> list[str]:
    """``KEY=value`` for the ``keys`` present in ``params`` (names case-insensitive)."""
    upper = {str(k).upper(): v for k, v in (params or {}).items()}
    return [f"{k}={upper[k]}" for k in keys if k in upper and _param_value_ok(upper[k], utf8)]


def _refused_utf8(address: str, host: str) -> Reply:
    return Reply.of(553, f"Non-ASCII address <{address}> needs SMTPUTF8, which {host} "
                         f"does not offer", "5.6.7")


class SmtpClient:
    """One SMTP session.  Make it with :meth:`connect`; close it with :meth:`quit` or :meth:`aclose`."""

    chunk_size = BDAT_CHUNK

    def __init__(self, stream: trio.abc.Stream, *, host: str, helo_name: str,
                 timeout: float, lmtp: bool = False) -> None:
        self.stream = stream
        self.lmtp = lmtp
        self.host = host
        self.helo_name = helo_name
        self.timeout = timeout
        self.buffer = bytearray()
        self.greeting: Reply | None = None
        self.ehlo_reply: Reply | None = None
        self.esmtp = False
        self.extensions: dict[str, str] = {}
        self.tls = isinstance(stream, trio.SSLStream)
        self.verified = False
        self.authenticated = False
        self.messages = 0        # transactions started on this connection
        self.replies = 0         # replies read on this connection
        self.tls_check: ChainCheck | None = None

    # ------------------------------------------------------------------ connecting

    @classmethod
    async def connect(cls, host: str, port: int = 25, *, helo_name: str = "localhost",
                      timeout: float = 180.0, connect_timeout: float = 60.0,
                      tls_context: ssl.SSLContext | None = None,
                      server_hostname: str | None = None, implicit_tls: bool = False,
                      starttls: str = "opportunistic", bind: str | None = None,
                      tls_check: ChainCheck | None = None, lmtp: bool = False) -> "SmtpClient":
        """Connect, read the greeting, ``EHLO`` (``LHLO`` with ``lmtp``) and (when asked
        and offered) ``STARTTLS``.  A ``host`` starting with ``/`` is a Unix socket.

        ``starttls`` is ``"never"``, ``"opportunistic"`` or ``"required"``.
        ``server_hostname`` is the name checked against the certificate (default: ``host``).
        ``tls_check`` judges the presented chain after the handshake (DANE); when it passes
        the connection counts as verified, when it fails :class:`SmtpTlsPolicyError` is raised.
        """
        if starttls not in ("never", "opportunistic", "required"):
            raise ValueError(f"starttls={starttls!r}; expected never, opportunistic or required")
        ctx = tls_context or client_tls_context()
        where = host if host.startswith("/") else f"{host}:{port}"
        try:
            with trio.fail_after(connect_timeout):
                stream: trio.abc.Stream
                if host.startswith("/"):
                    stream = await trio.open_unix_socket(host)
                else:
                    stream = await trio.open_tcp_stream(host, port, local_address=bind)
        except trio.TooSlowError:
            raise SmtpConnectionError(f"connection to {where} timed out") from None
        except OSError as exc:
            raise SmtpConnectionError(f"cannot connect to {where}: {exc}") from exc
        client = cls(stream, host=host, helo_name=helo_name, timeout=timeout, lmtp=lmtp)
        client.tls_check = tls_check
        try:
            if implicit_tls:
                await client._wrap_tls(ctx, server_hostname or host)
            greeting = await client.read_reply()
            client.greeting = greeting
            if greeting.code != 220:
                raise SmtpReplyError("connect", greeting)
            await client.hello()
            if starttls != "never" and not client.tls:
                if "STARTTLS" in client.extensions:
                    await client.starttls(ctx, server_hostname or host,
                                          required=starttls == "required")
                elif starttls == "required":
                    raise SmtpTlsRequiredError(f"{host} does not offer STARTTLS, which is required")
        except BaseException:
            await client.aclose()
            raise
        return client

    async def _wrap_tls(self, ctx: ssl.SSLContext, server_hostname: str) -> None:
        tls = trio.SSLStream(self.stream, ctx, server_hostname=server_hostname)
        try:
            with trio.fail_after(self.timeout):
                await tls.do_handshake()
        except trio.TooSlowError:
            raise SmtpConnectionError(f"TLS handshake with {self.host} timed out") from None
        except (trio.BrokenResourceError, ssl.SSLError) as exc:
            cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
            error = SmtpTlsHandshakeError if isinstance(cause, ssl.SSLError) else SmtpConnectionError
            raise error(f"TLS handshake with {self.host} failed: {cause or exc}") from exc
        except OSError as exc:
            raise SmtpConnectionError(f"TLS handshake with {self.host} failed: {exc}") from exc
        self.stream = tls
        self.tls = True
        self.verified = ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        self.buffer.clear()
        if self.tls_check is not None:
            problem = self.tls_check(peer_chain(tls))
            if problem is not None:
                raise SmtpTlsPolicyError(f"TLS with {self.host} refused: {problem}")
            self.verified = True

    async def hello(self) -> Reply:
        """``EHLO``, or ``HELO`` when the server refuses EHLO; records the extensions.
        LMTP: ``LHLO``, whose refusal is final (RFC 2033 has no fallback)."""
        verb = "LHLO" if self.lmtp else "EHLO"
        reply = await self.command(f"{verb} {self.helo_name}")
        if reply.code != 250 and self.lmtp:
            raise SmtpReplyError(verb, reply)
        if reply.code == 250:
            self.esmtp = True
            self.ehlo_reply = reply
            self.extensions = {}
            for line in reply.lines[1:]:
                keyword, _, param = line.strip().partition(" ")
                if keyword:
                    self.extensions[keyword.upper()] = param.strip()
            return reply
        if reply.code in (421,):
            raise SmtpReplyError("EHLO", reply)
        reply = await self.command(f"HELO {self.helo_name}")
        if reply.code != 250:
            raise SmtpReplyError("HELO", reply)
        self.esmtp = False
        self.extensions = {}
        return reply

    async def starttls(self, ctx: ssl.SSLContext, server_hostname: str, *, required: bool) -> bool:
        """``STARTTLS`` then a new ``EHLO``.  A refusal is an error only when ``required``."""
        reply = await self.command("STARTTLS")
        if reply.code != 220:
            if required:
                raise SmtpTlsRequiredError(f"{self.host} refused STARTTLS: {reply}")
            return False
        if self.buffer:
            raise SmtpConnectionError(f"{self.host} sent data after 220 to STARTTLS")
        await self._wrap_tls(ctx, server_hostname)
        await self.hello()
        return True

    async def login(self, username: str, password: str) -> Reply:
        """``AUTH PLAIN`` (or ``AUTH LOGIN`` when only that is offered)."""
        mechanisms = self.extensions.get("AUTH", "").upper().split()
        if "PLAIN" in mechanisms or "LOGIN" not in mechanisms:
            token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
            reply = await self.command(f"AUTH PLAIN {token}")
        else:
            reply = await self.command("AUTH LOGIN")
            for value in (username, password):
                if reply.code != 334:
                    break
                reply = await self.command(base64.b64encode(value.encode()).decode())
        if reply.code != 235:
            raise SmtpReplyError("AUTH", reply)
        self.authenticated = True
        return reply

    # ------------------------------------------------------------------ sending

    async def send(self, sender: str, recipients: Sequence[str], content: bytes, *,
                   send_partial: bool = False, mail_params: Iterable[str] = (),
                   dsn: Mapping[str, object] | None = None,
                   rcpt_dsn: Mapping[str, Mapping[str, object]] | None = None,
                   priority: int | None = None, require_tls: bool = False,
                   chunking: bool = True, binarymime: bool = False) -> SendResult:
        """One mail: ``MAIL``, ``RCPT`` per recipient, then ``BDAT`` (when the server offers
        ``CHUNKING`` and ``chunking`` is true) or ``DATA``.

        A refused ``MAIL`` raises :class:`SmtpReplyError`.  Refused recipients are in the
        result; with some refused, DATA is sent only when ``send_partial``; with none
        accepted it is never sent (the session is reset in both cases).  The mail is
        delivered to :attr:`SendResult.delivered` when the reply to DATA is ``2xx``; a
        refused DATA is in :attr:`SendResult.data_reply`.

        ``dsn`` (``RET``, ``ENVID``) and ``rcpt_dsn`` (recipient -> ``NOTIFY``, ``ORCPT``)
        go out only when the server offers ``DSN``; ``priority`` only with ``MT-PRIORITY``.
        ``require_tls`` refuses to send unless ``REQUIRETLS`` can be asked for.
        ``binarymime``: the content was received with ``BODY=BINARYMIME`` (RFC 3030); it
        goes as it is to a server offering ``BINARYMIME`` and ``CHUNKING``, else as lines
        when it is made of lines, else not at all (:class:`SmtpConversionError`).
        """
        if require_tls:
            self._check_requiretls()
        use_bdat = chunking and "CHUNKING" in self.extensions
        binary = binarymime and "BINARYMIME" in self.extensions and use_bdat
        if binarymime and not binary and not fits_in_lines(content):
            why = ("does not offer BINARYMIME and CHUNKING" if chunking
                   else "may not be sent BDAT (chunking is off)")
            raise SmtpConversionError("MAIL", _binary_refused(self.host, why))
        utf8 = self._wants_smtputf8(sender, recipients, content)
        if binary:
            content, params = self._prepare_binary(content, utf8)
        else:
            content, params = self._prepare_content(content, utf8)
        params += self._mail_params(utf8, dsn, priority, require_tls)
        params += list(mail_params)
        wire_sender = sender if utf8 else ascii_address(sender)
        if wire_sender is None:
            raise SmtpReplyError("MAIL", _refused_utf8(sender, self.host))
        wire = {r: (r if utf8 else ascii_address(r)) for r in recipients}
        sendable = [r for r in recipients if wire[r] is not None]
        if not sendable:
            raise SmtpReplyError("RCPT", _refused_utf8(recipients[0], self.host))
        self.messages += 1
        mail_cmd = " ".join([f"MAIL FROM:<{wire_sender}>", *params])
        rcpt_cmds = [" ".join([f"RCPT TO:<{wire[r]}>", *self._rcpt_params(r, utf8, rcpt_dsn)])
                     for r in sendable]
        mail_reply, rcpt_replies = await self._envelope(mail_cmd, rcpt_cmds)
        replies = dict(zip(sendable, rcpt_replies))
        result = SendResult(mail_reply, [
            RecipientResult(r, replies[r] if r in replies else _refused_utf8(r, self.host))
            for r in recipients])
        if not result.accepted or (result.refused and not send_partial):
            await self.rset()
            return result
        if use_bdat:
            if not binary and content and not content.endswith(b"\r\n"):
                content += b"\r\n"     # what DATA sends, unstuffed
            if self.lmtp:
                return await self._lmtp_bdat(result, content)
            result.data_reply = await self._bdat(content)
            return result
        reply = await self.command("DATA")
        if reply.code != 354:
            result.data_reply = reply
            return result
        await self.write(dot_stuff(content))
        if self.lmtp:
            await self._lmtp_replies(result)
            return result
        result.data_reply = await self.read_reply()
        return result

    async def _lmtp_bdat(self, result: SendResult, content: bytes) -> SendResult:
        """RFC 2033 with RFC 3030: every chunk but the last has one reply, read before the
        next is sent (a refusal then stops the transfer for everyone); the ``LAST`` chunk
        has one per accepted recipient."""
        view = memoryview(content)
        size = self.chunk_size
        starts = range(0, len(content), size) if content else range(1)
        for start in starts[:-1]:
            await self.write(f"BDAT {size}\r\n".encode() + view[start:start + size])
            reply = await self.read_reply()
            if not 200 <= reply.code < 300:
                result.data_reply = reply
                if reply.code != 421:
                    await self.rset()
                return result
        last = view[starts[-1]:]
        await self.write(f"BDAT {len(last)} LAST\r\n".encode() + last)
        await self._lmtp_replies(result)
        return result

    async def _lmtp_replies(self, result: SendResult) -> None:
        """One reply per accepted recipient, in ``RCPT`` order.  A connection lost on the
        way leaves the recipients not yet answered with a temporary failure of their own,
        so that those already answered are neither retried nor lost."""
        lost: Reply | None = None
        for address in result.accepted:
            if lost is None:
                try:
                    reply = await self.read_reply()
                except SmtpConnectionError as exc:
                    lost = Reply.of(421, f"no reply for this recipient: {exc}", "4.4.2")
            result.data_replies[address] = lost or reply
            result.data_reply = lost or reply

    def _check_requiretls(self) -> None:
        if not (self.tls and self.verified):
            raise SmtpTlsRequiredError(f"{self.host}: REQUIRETLS needs TLS with a verified certificate")
        if "REQUIRETLS" not in self.extensions:
            raise SmtpTlsRequiredError(f"{self.host} does not offer REQUIRETLS")

    def _wants_smtputf8(self, sender: str, recipients: Sequence[str], content: bytes) -> bool:
        """SMTPUTF8 goes on MAIL when offered and the envelope or the headers need it."""
        if "SMTPUTF8" not in self.extensions:
            return False
        if not all(_is_ascii(a) for a in (sender, *recipients)):
            return True
        return has_8bit(split_entity(content)[0])

    def _prepare_content(self, content: bytes, utf8: bool) -> tuple[bytes, list[str]]:
        """The content as this server can take it, with its ``SIZE`` and ``BODY`` parameters.

        It is always sent in canonical form (no bare CR or LF, no NUL).  8-bit content that
        is not canonical (a ``binary`` part, say) has its 8-bit parts re-encoded even for a
        server with ``8BITMIME``, so that what they hold survives in base64."""
        if not has_8bit(content):
            content = canonical(content)
            return content, self._size_params(content)
        try:
            if not utf8:
                header, sep, body = split_entity(content)
                content = downgrade_headers(header) + sep + body
            if has_8bit(content) and ("8BITMIME" not in self.extensions
                                      or not is_canonical(content)):
                content = to_seven_bit(content, by=self.helo_name)
        except ConversionError as exc:
            raise SmtpReplyError("MAIL", Reply.of(exc.code, str(exc), exc.enhanced)) from None
        content = canonical(content)
        params = self._size_params(content)
        if has_8bit(content) and "8BITMIME" in self.extensions:
            params.append("BODY=8BITMIME")
        return content, params

    def _prepare_binary(self, content: bytes, utf8: bool) -> tuple[bytes, list[str]]:
        """Binary content as stored: only an 8-bit header section may change (downgraded
        for a server without ``SMTPUTF8``), never a byte of the body."""
        if not utf8:
            header, sep, body = split_entity(content)
            if has_8bit(header):
                try:
                    content = downgrade_headers(header) + sep + body
                except ConversionError as exc:
                    raise SmtpReplyError("MAIL", Reply.of(exc.code, str(exc), exc.enhanced)) from None
        return content, self._size_params(content) + ["BODY=BINARYMIME"]

    async def _bdat(self, data: bytes) -> Reply:
        """The content in ``BDAT`` chunks, the last one ``LAST``; returns the reply that
        decides the transaction: the last chunk's, or the first refusal.

        With ``PIPELINING`` the next chunk is sent before the reply to the previous one is
        read (RFC 3030 with PIPELINING), so the wire stays busy.  After a refusal no other chunk is
        sent, the replies still owed are read, and the transaction is reset."""
        chunk_size = self.chunk_size
        view = memoryview(data)
        offsets = range(0, len(data), chunk_size) if data else range(1)
        window = 2 if "PIPELINING" in self.extensions else 1
        owed = 0
        refused: Reply | None = None
        reply: Reply | None = None
        for n, start in enumerate(offsets):
            chunk = view[start:start + chunk_size]
            last = n == len(offsets) - 1
            await self.write(f"BDAT {len(chunk)}{' LAST' if last else ''}\r\n".encode() + chunk)
            owed += 1
            while owed >= window or (last and owed):
                reply = await self.read_reply()
                owed -= 1
                if not 200 <= reply.code < 300 and refused is None:
                    refused = reply
            if refused is not None:
                break
        try:
            for _ in range(owed):
                await self.read_reply()
        except SmtpConnectionError:
            if refused is None:
                raise
            return refused            # e.g. 421 then close: the refusal says why
        if refused is not None:
            if refused.code != 421:
                await self.rset()
            return refused
        assert reply is not None
        return reply

    def _size_params(self, content: bytes) -> list[str]:
        """``SIZE=<n>``; larger than the advertised limit is refused here (``552 5.3.4``)."""
        if "SIZE" not in self.extensions:
            return []
        size_limit = self.extensions["SIZE"]
        if size_limit and size_limit.isdigit() and 0 < int(size_limit) < len(content):
            raise SmtpReplyError("MAIL", Reply.of(
                552, f"Message size {len(content)} exceeds fixed maximum message size "
                     f"{size_limit} of {self.host}", "5.3.4"))
        return [f"SIZE={len(content)}"]

    def _mail_params(self, utf8: bool, dsn: Mapping[str, object] | None, priority: int | None,
                     require_tls: bool) -> list[str]:
        params = ["SMTPUTF8"] if utf8 else []
        if "DSN" in self.extensions:
            params += esmtp_params(dsn, DSN_MAIL_KEYS, utf8=utf8)
        if priority is not None and "MT-PRIORITY" in self.extensions:
            params.append(f"MT-PRIORITY={priority}")
        if require_tls:
            params.append("REQUIRETLS")
        return params

    def _rcpt_params(self, recipient: str, utf8: bool,
                     rcpt_dsn: Mapping[str, Mapping[str, object]] | None) -> list[str]:
        if "DSN" not in self.extensions or not rcpt_dsn:
            return []
        return esmtp_params(rcpt_dsn.get(recipient), DSN_RCPT_KEYS, utf8=utf8)

    async def _envelope(self, mail_cmd: str, rcpt_cmds: list[str]) -> tuple[Reply, list[Reply]]:
        """``MAIL`` and the ``RCPT``s, in one write with ``PIPELINING``."""
        if "PIPELINING" in self.extensions:
            await self.write(b"".join(f"{c}\r\n".encode("utf-8") for c in (mail_cmd, *rcpt_cmds)))
            mail_reply = await self.read_reply()
            try:
                rcpt_replies = [await self.read_reply() for _ in rcpt_cmds]
            except SmtpConnectionError:
                if mail_reply.code != 250:   # e.g. 421 then close: the MAIL reply says why
                    raise SmtpReplyError("MAIL", mail_reply) from None
                raise
            if mail_reply.code != 250:
                raise SmtpReplyError("MAIL", mail_reply)
            return mail_reply, rcpt_replies
        mail_reply = await self.command(mail_cmd)
        if mail_reply.code != 250:
            raise SmtpReplyError("MAIL", mail_reply)
        return mail_reply, [await self.command(c) for c in rcpt_cmds]

    def idle_ok(self) -> bool:
        """True when an idle connection has nothing unread: no reply, no close, no TLS alert.

        A server that timed the connection out has sent ``421`` or closed it; either makes
        the socket readable, so the connection is not worth a new transaction.
        """
        if self.buffer:
            return False
        stream = self.stream.transport_stream if isinstance(self.stream, trio.SSLStream) else self.stream
        sock = getattr(stream, "socket", None)
        if sock is None:
            return True
        try:
            readable, _, _ = select.select([sock.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    async def rset(self) -> Reply | None:
        """``RSET``; errors are ignored (the caller closes the connection on failure)."""
        try:
            return await self.command("RSET")
        except SmtpError:
            return None

    async def quit(self) -> None:
        """``QUIT`` and close; a failure here changes nothing (the mail is delivered)."""
        try:
            await self.command("QUIT")
        except SmtpError:
            pass
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            try:
                await self.stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    # ------------------------------------------------------------------ wire

    async def command(self, line: str) -> Reply:
        await self.write(line.encode("utf-8") + b"\r\n")
        return await self.read_reply()

    async def write(self, data: bytes) -> None:
        try:
            with trio.fail_after(self.timeout):
                await self.stream.send_all(data)
        except trio.TooSlowError:
            raise SmtpConnectionError(f"writing to {self.host} timed out") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise SmtpConnectionError(f"connection to {self.host} lost: {exc}") from exc

    async def _line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end + 1])
                del self.buffer[:end + 1]
                return line.rstrip(b"\r\n")
            if len(self.buffer) > MAX_REPLY_LINE:
                raise SmtpConnectionError(f"{self.host} sent a reply line over {MAX_REPLY_LINE} bytes")
            try:
                chunk = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise SmtpConnectionError(f"connection to {self.host} lost: {exc}") from exc
            if not chunk:
                raise SmtpConnectionError(f"{self.host} closed the connection")
            self.buffer += chunk

    async def read_reply(self) -> Reply:
        """One complete (possibly multi-line) reply."""
        lines: list[str] = []
        code = None
        try:
            with trio.fail_after(self.timeout):
                while True:
                    raw = await self._line()
                    text = raw.decode("utf-8", "replace")
                    if len(text) < 3 or not text[:3].isdigit() or (len(text) > 3 and text[3] not in " -"):
                        raise SmtpConnectionError(f"{self.host} sent a malformed reply: {text[:80]!r}")
                    this = int(text[:3])
                    if code is None:
                        code = this
                    elif this != code:
                        raise SmtpConnectionError(f"{self.host} mixed reply codes {code} and {this}")
                    lines.append(text[4:])
                    if len(text) == 3 or text[3] == " ":
                        break
                    if len(lines) > MAX_REPLY_LINES:
                        raise SmtpConnectionError(f"{self.host} sent a reply of over {MAX_REPLY_LINES} lines")
        except trio.TooSlowError:
            raise SmtpConnectionError(f"{self.host} did not answer within {self.timeout:g} s") from None
        self.replies += 1
        enhanced = None
        m = _ENHANCED.match(lines[0])
        if m and m.group(1) == str(code)[0]:
            enhanced = m.group(0).strip()
            lines[0] = lines[0][m.end():]
        return Reply(code, tuple(lines), enhanced)
