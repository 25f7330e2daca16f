"""A client of rspamd's scanning protocol (``POST /checkv2``, rspamd.com/doc/developers/
protocol.html): the message as the body, the SMTP envelope as HTTP request headers, a JSON
verdict back.  Shared by the ``RspamdHandler`` (at DATA) and the ``RspamdScanner`` mailet;
httpx runs on trio, so a slow rspamd delays only the message it is scanning."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import trio

from .spam_net import FilterUnavailable, resolve_host, split_http_url

__all__ = ["RspamdResult", "checkv2", "parse_result", "ACTIONS", "SPAM_ACTIONS",
           "FLAG_ATTRIBUTE", "STATUS_ATTRIBUTE"]

#: The actions rspamd answers with (its ``action`` field).
ACTIONS = ("no action", "greylist", "add header", "rewrite subject", "soft reject", "reject")
#: The actions after which James's ``RspamdScanner`` flags the mail as spam.
SPAM_ACTIONS = ("reject", "add header", "rewrite subject")

#: James's mail attribute names (``RspamdScanner``).
FLAG_ATTRIBUTE = "org.apache.james.rspamd.flag"
STATUS_ATTRIBUTE = "org.apache.james.rspamd.status"

#: An answer larger than this is refused (a verdict is a few kilobytes).
MAX_RESPONSE = 1024 * 1024


@dataclass(frozen=True)
class RspamdResult:
    """rspamd's verdict on one message."""

    action: str
    score: float
    required_score: float
    subject: str | None = None
    smtp_message: str | None = None
    symbols: dict[str, Any] = field(default_factory=dict)
    add_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()
    virus: str | None = None

    @property
    def is_spam(self) -> bool:
        return self.action in SPAM_ACTIONS

    @property
    def flag(self) -> str:
        """James's ``org.apache.james.rspamd.flag``: ``YES`` or ``NO``."""
        return "YES" if self.is_spam else "NO"

    @property
    def status(self) -> str:
        """James's ``org.apache.james.rspamd.status``:
        ``Yes, actions=add header score=7.5 requiredScore=15.0``."""
        return (f"{'Yes' if self.is_spam else 'No'}, actions={self.action} "
                f"score={_java_float(self.score)} requiredScore={_java_float(self.required_score)}")

    def spamd_result(self) -> str:
        """The ``X-Spamd-Result`` value as rspamd's milter headers write it: the metric line,
        then one folded line per symbol, highest score first."""
        head = (f"default: {'True' if self.is_spam else 'False'} "
                f"[{self.score:.2f} / {self.required_score:.2f}]")
        lines = [head]
        ranked = sorted(self.symbols.values(), key=lambda s: (-_number(s.get("score")),
                                                               str(s.get("name", ""))))
        for symbol in ranked:
            options = ",".join(_clean(str(o)) for o in symbol.get("options") or [])
            lines.append(f"{_clean(str(symbol.get('name', '?')))}"
                         f"({_number(symbol.get('score')):.2f})[{options}]")
        return ";\r\n\t".join(lines)


def _java_float(value: float) -> str:
    """A float as Java's ``Float.toString`` writes a short one (``7.5``, ``15.0``)."""
    return repr(float(f"{value:.7g}"))


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _clean(text: str, limit: int = 900) -> str:
    """One line of printable text: control characters become spaces."""
    return "".join(c if c.isprintable() else " " for c in text)[:limit]


def _milter_headers(milter: Any) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """The ``milter`` block's fields to add (``name: value``, a ``{value, order}`` object, or
    a list of them) and the names it asks to remove."""
    if not isinstance(milter, dict):
        return (), ()
    added: list[tuple[str, str]] = []
    for name, spec in (milter.get("add_headers") or {}).items():
        for item in spec if isinstance(spec, list) else [spec]:
            value = item.get("value") if isinstance(item, dict) else item
            if isinstance(value, (str, int, float)):
                added.append((str(name), str(value)))
    removed = tuple(str(n) for n in (milter.get("remove_headers") or {}))
    return tuple(added), removed


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def parse_result(body: bytes) -> RspamdResult:
    """The verdict in a ``/checkv2`` answer; :class:`FilterUnavailable` for anything that
    is not one (James fails the same way on an unknown action)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise FilterUnavailable("rspamd answered with something that is not JSON") from None
    if not isinstance(doc, dict):
        raise FilterUnavailable("rspamd answered with JSON that is not an object")
    action = doc.get("action")
    if action not in ACTIONS:
        raise FilterUnavailable(f"rspamd answered with an unknown action {action!r}")
    symbols = _object(doc.get("symbols"))
    messages = _object(doc.get("messages"))
    smtp_message = messages.get("smtp_message")
    subject = doc.get("subject")
    virus = symbols.get("CLAM_VIRUS")
    added, removed = _milter_headers(doc.get("milter"))
    return RspamdResult(
        action=action, score=_number(doc.get("score")),
        required_score=_number(doc.get("required_score")),
        subject=subject if isinstance(subject, str) else None,
        smtp_message=_clean(smtp_message, 400) if isinstance(smtp_message, str) else None,
        symbols={k: v for k, v in symbols.items() if isinstance(v, dict)},
        add_headers=added, remove_headers=removed,
        virus=json.dumps(virus) if virus is not None else None)


async def checkv2(url: str, content: bytes, headers: Iterable[tuple[str, str]], *,
                  timeout: float, password: str = "",
                  dns: Callable[[], Any] | None = None) -> RspamdResult:
    """Scan ``content`` with the rspamd at ``url`` (``http://host:port``); ``headers`` are
    the protocol's request headers (``IP``, ``Helo``, ``From``, ``Rcpt`` ...).  Raises
    :class:`FilterUnavailable` when there is no verdict within ``timeout`` seconds."""
    import httpx   # servers without a spam filter never load it

    for name in ("httpx", "httpcore"):   # httpx logs every request at INFO; the verdict is logged once
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.WARNING)

    parts = split_http_url(url)
    host = parts.hostname or ""
    request_headers = [(k, _clean(v)) for k, v in headers]
    if password:
        request_headers.append(("Password", password))
    try:
        with trio.fail_after(timeout):
            address = await resolve_host(host, dns)
            literal = f"[{address}]" if ":" in address else address
            netloc = literal if parts.port is None else f"{literal}:{parts.port}"
            target = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}/checkv2"
            request_headers.append(("Host", parts.netloc.rpartition("@")[2]))
            async with httpx.AsyncClient(timeout=timeout, trust_env=False,
                                         follow_redirects=False) as client:
                request = client.build_request(
                    "POST", target, content=content, headers=request_headers,
                    extensions={"sni_hostname": host} if parts.scheme == "https" else None)
                response = await client.send(request, stream=True)
                try:
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_RESPONSE:
                            raise FilterUnavailable(f"rspamd at {url}: answer larger than "
                                                    f"{MAX_RESPONSE} bytes")
                finally:
                    await response.aclose()
    except trio.TooSlowError:
        raise FilterUnavailable(f"rspamd at {url} did not answer within {timeout:g} s") from None
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
        raise FilterUnavailable(f"rspamd at {url}: {type(exc).__name__}: {exc}") from None
    if response.status_code == 401:
        raise FilterUnavailable(f"rspamd at {url} refused the password (HTTP 401)")
    if response.status_code != 200:
        raise FilterUnavailable(f"rspamd at {url} answered HTTP {response.status_code}: "
                                f"{_clean(body[:200].decode('utf-8', 'replace'))}")
    return parse_result(bytes(body))
