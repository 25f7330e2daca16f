"""A client of SpamAssassin's daemon ``spamd`` (the SPAMC/1.2 protocol): one ``CHECK`` per
message, as James's ``SpamAssassinInvoker`` sends it, over a fresh connection bounded by a
timeout.  Shared by the ``SpamAssassinHandler`` (at DATA) and the ``SpamAssassin`` mailet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import trio

from .spam_net import FilterUnavailable, resolve_host

__all__ = ["SpamdResult", "check", "parse_reply", "FLAG_ATTRIBUTE", "STATUS_ATTRIBUTE"]

#: James's mail attribute names (``SpamAssassinResult``), also the matcher's default.
STATUS_ATTRIBUTE = "org.apache.james.spamassassin.status"
FLAG_ATTRIBUTE = "org.apache.james.spamassassin.flag"

#: An answer larger than this is not spamd speaking.
MAX_ANSWER = 64 * 1024


@dataclass(frozen=True)
class SpamdResult:
    """spamd's verdict: ``hits`` and ``required`` as spamd wrote them (``?`` when it said
    nothing, as James's empty result)."""

    spam: bool
    hits: str
    required: str

    @property
    def flag(self) -> str:
        """The ``X-Spam-Flag`` value: ``YES`` or ``NO``."""
        return "YES" if self.spam else "NO"

    @property
    def status(self) -> str:
        """The ``X-Spam-Status`` value: ``Yes, hits=7.5 required=5.0``."""
        return f"{'Yes' if self.spam else 'No'}, hits={self.hits} required={self.required}"

    def hits_number(self) -> float | None:
        try:
            return float(self.hits)
        except ValueError:
            return None


EMPTY = SpamdResult(False, "?", "?")


def parse_reply(answer: bytes) -> SpamdResult:
    """The result in spamd's answer: its ``Spam: True ; 7.5 / 5.0`` line.  An answer
    without one is James's empty result (ham, hits ``?``); a status line other than
    ``SPAMD/x.y 0 EX_OK`` raises :class:`FilterUnavailable`."""
    lines = answer.decode("latin-1").split("\r\n")
    status = lines[0].split()
    if len(status) < 2 or not status[0].startswith("SPAMD/"):
        raise FilterUnavailable(f"not a spamd answer: {lines[0][:80]!r}")
    if status[1] != "0":
        raise FilterUnavailable(f"spamd refused the check: {lines[0][:120]}")
    for line in lines[1:]:
        if not line:
            break
        if line.startswith("Spam:"):
            # "Spam: True ; 7.5 / 5.0" (James splits on single spaces: fields 1, 3 and 5)
            fields = line.split(" ")
            if len(fields) < 6:
                raise FilterUnavailable(f"malformed spamd result: {line[:80]!r}")
            return SpamdResult(fields[1].lower() == "true", fields[3], fields[5])
    return EMPTY


async def check(host: str, port: int, content: bytes, *, timeout: float,
                user: str | None = None, dns: Callable[[], Any] | None = None) -> SpamdResult:
    """Ask spamd at ``host:port`` whether ``content`` is spam.  Raises
    :class:`FilterUnavailable` when spamd cannot be asked within ``timeout`` seconds."""
    request = [b"CHECK SPAMC/1.2", b"Content-length: %d" % len(content)]
    if user:
        request.append(f"User: {user}".encode("utf-8", "replace"))
    head = b"\r\n".join(request) + b"\r\n\r\n"
    try:
        with trio.fail_after(timeout):
            address = await resolve_host(host, dns)
            stream = await trio.open_tcp_stream(address, port)
            async with stream:
                await stream.send_all(head + content)
                await stream.send_eof()   # spamd reads to the end, as James shuts output
                answer = bytearray()
                while len(answer) <= MAX_ANSWER:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    answer += chunk
    except trio.TooSlowError:
        raise FilterUnavailable(f"spamd at {host}:{port} did not answer within {timeout:g} s") from None
    except (OSError, trio.BrokenResourceError) as exc:
        raise FilterUnavailable(f"spamd at {host}:{port}: {exc}") from None
    return parse_reply(bytes(answer))

