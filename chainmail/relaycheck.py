"""``chainmail relaycheck HOST:PORT``: an open-relay self-test against any SMTP server.

A battery of classic relay tricks (percent hack, bang paths, source routes, quoted local
parts, address literals, sender variants...).  Each trick is an envelope only: EHLO (HELO as
fallback), ``MAIL FROM``, one ``RCPT TO`` line, then ``RSET``; no message body is ever sent.
Every recipient of the battery has a final destination outside the server (or hides one in
its local part), so a 2xx reply to the ``RCPT`` line makes the trick ``ACCEPTED``.  Any other
reply, to ``RCPT`` or already to ``MAIL``, is ``refused``; a lost connection is an ``error``.

The check never resolves a name: the target must be an IP address or ``localhost``
(127.0.0.1), so it runs anywhere, including a network namespace without a resolver, and
contacts nothing but the address it is given.

Exit codes: 0 every trick refused, 1 at least one trick accepted, 2 usage or connection
error (no trick accepted, but the battery could not be run or completed).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import smtplib
import socket
import ssl
import sys
from dataclasses import asdict, dataclass, field

__all__ = ["Trick", "Result", "battery", "parse_target", "run_battery", "main"]

FOREIGN = "relay-test.invalid"
DEFAULT_HELO = "relaycheck.invalid"
DEFAULT_SENDER = "relaycheck@relay-check.invalid"
DEFAULT_TIMEOUT = 10.0

REFUSED, ACCEPTED, ERROR = "refused", "ACCEPTED", "error"

ROUTING_NOTE = "local part contains %/!, check your delivery does not route on it"
QUOTED_NOTE = "quoted local part hides an address, check your delivery does not route on it"
LITERAL_NOTE = "address literal of the server itself, check it is delivered locally"


class UsageError(Exception):
    """A bad command line: exit code 2."""


class ConnectionProblem(Exception):
    """The server could not be reached or would not talk: exit code 2."""


@dataclass(frozen=True)
class Trick:
    id: str
    description: str
    rcpt: str                       # the exact RCPT line, without CRLF
    sender: str | None = None       # the MAIL FROM path; None = the --from address
    note: str | None = None         # shown when the trick is accepted (gray area)


@dataclass
class Result:
    id: str
    description: str
    mail: str                       # the exact MAIL line
    rcpt: str                       # the exact RCPT line
    status: str                     # refused | ACCEPTED | error
    stage: str                      # MAIL, RCPT or CONNECT: which command got the deciding reply
    code: int | None
    reply: str
    note: str | None = None
    attempts: int = field(default=1)


# -- target --------------------------------------------------------------------------------

def parse_target(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (ip, port).  HOST is an IPv4 address, ``[IPv6]``, or ``localhost``
    (127.0.0.1); any other name is refused, because the check never asks DNS.  The port
    defaults to 25."""
    text = text.strip()
    if not text:
        raise UsageError("no target given; expected HOST:PORT")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise UsageError(f"{text!r}: unterminated [IPv6] address")
        host, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise UsageError(f"{text!r}: expected [IPv6]:PORT")
        port_text = rest[1:] if rest else ""
    elif text.count(":") > 1:
        host, port_text = text, ""          # a bare IPv6 address, default port
    else:
        host, _, port_text = text.partition(":")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise UsageError(f"{text!r}: {port_text!r} is not a port (1-65535)")
        port = int(port_text)
    else:
        port = 25
    if host.lower() == "localhost":
        return "127.0.0.1", port
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(
            f"{host!r} is not an IP address: relaycheck never resolves names (it must work "
            f"without DNS and contact only the address it is given); use an IP address such "
            f"as 127.0.0.1 or [::1], or localhost") from None
    return str(address), port


def address_literal(ip: str) -> str:
    """The RFC 5321 address literal of ``ip``: ``[192.0.2.1]`` or ``[IPv6:2001:db8::1]``."""
    address = ipaddress.ip_address(ip)
    return f"[IPv6:{address}]" if address.version == 6 else f"[{address}]"


# -- the battery ---------------------------------------------------------------------------

def battery(local: str = "localhost", server_ip: str = "127.0.0.1", foreign: str = FOREIGN) -> list[Trick]:
    """The tricks, in the order they are run.  ``local`` is a domain the server accepts mail
    for, ``server_ip`` the address being tested (for address-literal tricks), ``foreign`` a
    domain that is not local to it."""
    L, R, S = local, foreign, address_literal(server_ip)
    mixed = ".".join(label.upper() if i % 2 else label.title() for i, label in enumerate(R.split(".")))
    return [
        Trick("plain", "plain foreign recipient", f"RCPT TO:<user@{R}>"),
        Trick("case-dot", "upper/mixed case with trailing dot", f"RCPT TO:<USER@{mixed}.>"),
        Trick("postmaster", "postmaster of the foreign domain", f"RCPT TO:<postmaster@{R}>"),
        Trick("percent", "percent hack", f"RCPT TO:<user%{R}@{L}>", note=ROUTING_NOTE),
        Trick("bang", "bang path", f"RCPT TO:<{R}!user>", note=ROUTING_NOTE),
        Trick("bang-local", "bang path at a local domain", f"RCPT TO:<{R}!user@{L}>",
              note=ROUTING_NOTE),
        Trick("route", "source route through a local domain", f"RCPT TO:<@{L}:user@{R}>"),
        Trick("route-2", "two-hop source route", f"RCPT TO:<@{L},@{R}:user@{R}>"),
        Trick("route-literal", "source route through the server literal",
              f"RCPT TO:<@{S}:user@{R}>"),
        Trick("quoted", "quoted local part hiding an address", f'RCPT TO:<"user@{R}">',
              note=QUOTED_NOTE),
        Trick("quoted-local", "quoted address at a local domain", f'RCPT TO:<"user@{R}"@{L}>',
              note=QUOTED_NOTE),
        Trick("literal", "address literal of the server", f"RCPT TO:<user@{S}>",
              note=LITERAL_NOTE),
        Trick("quoted-literal", "quoted address at the server literal",
              f'RCPT TO:<"user@{R}"@{S}>', note=QUOTED_NOTE),
        Trick("double-at", "two @ signs", f"RCPT TO:<user@{R}@{L}>"),
        Trick("percent-literal", "percent hack at the server literal",
              f"RCPT TO:<user%{R}@{S}>", note=ROUTING_NOTE),
        Trick("space", "space after the colon", f"RCPT TO: <user@{R}>"),
        Trick("trailing-space", "trailing space", f"RCPT TO:<user@{R}> "),
        Trick("no-brackets", "missing angle brackets", f"RCPT TO:user@{R}"),
        Trick("null-sender", "null sender", f"RCPT TO:<user@{R}>",
              sender=""),
        Trick("local-sender", "sender in the local domain",
              f"RCPT TO:<user@{R}>", sender=f"postmaster@{L}"),
        Trick("foreign-sender", "sender in the foreign domain", f"RCPT TO:<user@{R}>",
              sender=f"relaycheck@{R}"),
    ]


# -- the SMTP client -----------------------------------------------------------------------

def _lines(message: bytes | str) -> list[str]:
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return [line.strip() for line in message.splitlines()]


def _text(message: bytes | str) -> str:
    """A reply's text on one line (the lines of a multi-line reply joined by " / ")."""
    return " / ".join(line for line in _lines(message) if line)


class _Client:
    """One SMTP connection at a time; reconnects on demand.  Built on smtplib, with the
    client name always given so that smtplib never calls ``getfqdn()``."""

    def __init__(self, ip: str, port: int, helo: str, timeout: float, starttls: bool):
        self.ip, self.port, self.helo = ip, port, helo
        self.timeout, self.starttls = timeout, starttls
        self.smtp: smtplib.SMTP | None = None
        self.greeting = ""
        self.connections = 0

    def connect(self) -> None:
        self.close()
        smtp = smtplib.SMTP(local_hostname=self.helo, timeout=self.timeout)
        try:
            code, msg = smtp.connect(self.ip, self.port)
        except (OSError, smtplib.SMTPException) as exc:
            smtp.close()
            raise ConnectionProblem(f"cannot connect to {_show(self.ip, self.port)}: {_reason(exc)}") from None
        self.connections += 1
        self.greeting = f"{code} {_text(msg)}"
        try:
            if code != 220:
                raise ConnectionProblem(f"{_show(self.ip, self.port)} greeted with {self.greeting}")
            keywords = self._hello(smtp)
            if self.starttls:
                if "STARTTLS" not in keywords:
                    raise ConnectionProblem(f"{_show(self.ip, self.port)} does not offer STARTTLS")
                code, msg = smtp.docmd("STARTTLS")
                if code != 220:
                    raise ConnectionProblem(f"STARTTLS refused: {code} {_text(msg)}")
                # A self-test of one's own server: self-signed certificates are the norm and
                # no message is sent, so the certificate is not verified.
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                assert smtp.sock is not None   # connected above
                smtp.sock = context.wrap_socket(smtp.sock, server_hostname=None)
                smtp.file = None   # smtplib reads replies through a file made on demand
                self._hello(smtp)
        except ConnectionProblem:
            _close(smtp)
            raise
        except (OSError, ValueError, smtplib.SMTPException) as exc:
            _close(smtp)
            raise ConnectionProblem(f"{_show(self.ip, self.port)}: {_reason(exc)}") from None
        self.smtp = smtp

    def _hello(self, smtp: smtplib.SMTP) -> set[str]:
        """EHLO, or HELO when EHLO is refused; returns the EHLO keywords."""
        code, msg = smtp.docmd("EHLO", self.helo)
        if 200 <= code < 300:
            return {line.split(" ", 1)[0].upper() for line in _lines(msg)[1:] if line}
        code, msg = smtp.docmd("HELO", self.helo)
        if not 200 <= code < 300:
            raise ConnectionProblem(f"EHLO and HELO refused: {code} {_text(msg)}")
        return set()

    def command(self, line: str) -> tuple[int, str]:
        """Send ``line`` exactly as given (plus CRLF) and read the reply.  Raises
        ``smtplib.SMTPServerDisconnected`` or ``OSError`` when the connection is lost."""
        assert self.smtp is not None
        self.smtp.send(line + "\r\n")
        code, msg = self.smtp.getreply()
        if code == 421 or code == -1:
            self.drop()
        return code, _text(msg)

    def drop(self) -> None:
        if self.smtp is not None:
            self.smtp.close()
            self.smtp = None

    def close(self) -> None:
        """QUIT politely, then close."""
        if self.smtp is not None:
            _close(self.smtp)
            self.smtp = None


def _close(smtp: smtplib.SMTP) -> None:
    try:
        smtp.docmd("QUIT")
    except (OSError, smtplib.SMTPException):
        pass
    smtp.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _show(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _run_trick(client: _Client, trick: Trick, sender: str) -> Result:
    mail = f"MAIL FROM:<{sender if trick.sender is None else trick.sender}>"
    result = Result(trick.id, trick.description, mail, trick.rcpt, ERROR, "CONNECT", None, "")
    for attempt in (1, 2):   # one retry on a fresh connection if the server hangs up
        result.attempts = attempt
        try:
            if client.smtp is None:
                client.connect()
        except ConnectionProblem as exc:
            result.stage, result.reply = "CONNECT", str(exc)
            return result
        stage = "MAIL"
        try:
            code, text = client.command(mail)
            if code == -1:
                raise smtplib.SMTPException(f"unreadable reply {text!r}")
            if not 200 <= code < 300:
                result.status, result.stage = REFUSED, "MAIL"
                result.code, result.reply = code, f"{code} {text}"
                _reset(client)
                return result
            stage = "RCPT"
            code, text = client.command(trick.rcpt)
            if code == -1:
                raise smtplib.SMTPException(f"unreadable reply {text!r}")
            result.stage, result.code, result.reply = "RCPT", code, f"{code} {text}"
            if 200 <= code < 300:
                result.status, result.note = ACCEPTED, trick.note
            else:
                result.status = REFUSED
            _reset(client)
            return result
        except (OSError, smtplib.SMTPException) as exc:
            client.drop()
            result.stage = stage
            result.reply = f"connection lost after {stage}: {_reason(exc)}"
    return result


def _reset(client: _Client) -> None:
    """RSET after a trick; a connection that does not answer 250 is dropped."""
    if client.smtp is None:
        return
    try:
        code, _ = client.command("RSET")
    except (OSError, smtplib.SMTPException):
        client.drop()
        return
    if code != 250:
        client.drop()


def run_battery(ip: str, port: int, *, local: str = "localhost", sender: str = DEFAULT_SENDER,
                helo: str = DEFAULT_HELO, timeout: float = DEFAULT_TIMEOUT, starttls: bool = False,
                tricks: list[Trick] | None = None) -> tuple[list[Result], _Client]:
    """Run every trick against ``ip``:``port``.  Raises :class:`ConnectionProblem` when the
    first connection cannot be made; later connection problems become ``error`` results."""
    client = _Client(ip, port, helo, timeout, starttls)
    client.connect()
    results = []
    try:
        for trick in tricks if tricks is not None else battery(local, ip):
            results.append(_run_trick(client, trick, sender))
    finally:
        client.close()
    return results, client


# -- command line --------------------------------------------------------------------------

def _summary(results: list[Result]) -> dict[str, int]:
    count = {s: sum(1 for r in results if r.status == s) for s in (REFUSED, ACCEPTED, ERROR)}
    return {"tricks": len(results), "refused": count[REFUSED], "accepted": count[ACCEPTED],
            "errors": count[ERROR]}


def exit_code(results: list[Result]) -> int:
    if any(r.status == ACCEPTED for r in results):
        return 1
    if any(r.status == ERROR for r in results):
        return 2
    return 0


def _print_text(target: str, local: str, sender: str, client: _Client, results: list[Result],
                out) -> None:
    print(f"relaycheck {target}: local domain {local}, foreign domain {FOREIGN}, "
          f"MAIL FROM:<{sender}>", file=out)
    print(f"greeting: {client.greeting}", file=out)
    width = min(60, max((len(r.reply) for r in results), default=0))
    dwidth = max((len(r.description) for r in results), default=0)
    for r in results:
        reply = r.reply if len(r.reply) <= width else r.reply[: width - 3] + "..."
        line = f"{r.status:<8} {reply:<{width}}  {r.description:<{dwidth}}  {r.rcpt}"
        extras = []
        if r.mail != f"MAIL FROM:<{sender}>" or r.stage == "MAIL":
            extras.append(f"after {r.mail}" if r.stage != "MAIL" else f"refused at {r.mail}")
        if r.status == ACCEPTED and r.note:
            extras.append(r.note)
        if extras:
            line += "  (" + "; ".join(extras) + ")"
        print(line, file=out)
    s = _summary(results)
    line = f"{s['tricks']} tricks: {s['refused']} refused, {s['accepted']} accepted"
    if s["errors"]:
        line += f", {s['errors']} error{'s' if s['errors'] != 1 else ''}"
    print(line, file=out)


def main(args: argparse.Namespace) -> int:
    out = sys.stdout
    try:
        ip, port = parse_target(args.target)
        if args.timeout <= 0:
            raise UsageError("--timeout must be positive")
        sender = args.sender.strip()
        if sender.startswith("<") and sender.endswith(">"):
            sender = sender[1:-1]
        given = sender + args.local_domain + args.helo
        if not given.isascii() or any(c in given for c in "\r\n<> "):
            raise UsageError("--from, --local-domain and --helo must be ASCII without spaces, "
                             "<, > or line breaks")
    except UsageError as exc:
        print(f"chainmail relaycheck: {exc}", file=sys.stderr)
        return 2
    target = _show(ip, port)
    try:
        results, client = run_battery(ip, port, local=args.local_domain, sender=sender,
                                      helo=args.helo, timeout=args.timeout, starttls=args.starttls)
    except ConnectionProblem as exc:
        if args.json:
            json.dump({"target": target, "error": str(exc), "exit": 2}, out, indent=2)
            out.write("\n")
        print(f"chainmail relaycheck: {exc}", file=sys.stderr)
        return 2
    code = exit_code(results)
    if args.json:
        json.dump({"target": target, "local_domain": args.local_domain, "foreign_domain": FOREIGN,
                   "sender": sender, "greeting": client.greeting, "connections": client.connections,
                   "tricks": [asdict(r) for r in results], "summary": _summary(results),
                   "exit": code}, out, indent=2)
        out.write("\n")
    else:
        _print_text(target, args.local_domain, sender, client, results, out)
    return code
