"""The mailet author's contract: :class:`Mail`, matchers, mailets and their configuration.

James's mailet API, in Python:

- a **matcher** looks at a :class:`Mail` and returns the recipients it matches (a subset of
  ``mail.recipients``; ``None`` or empty = no match);
- a **mailet** services a :class:`Mail`: it may change its content, attributes, recipients
  or state, hand it on (``context.send_mail``), deliver it, store it, or drop it
  (``mail.state = GHOST``).

Both are found through entry points (``chainmail.matchers``, ``chainmail.mailets``), made
once per ``<mailet>`` element, and given their configuration in ``init(config)``.
``match`` and ``service`` may be plain functions (called inline on the event loop: keep
them fast), ``async def`` (run on trio), or plain functions with ``runs_on = "thread"``
on the class (blocking work, run in a worker thread bounded by the container's limiter).

See ``docs/mailets.md`` for a walk-through.
"""

from __future__ import annotations

import abc

import email
import email.policy
import itertools
import re
from dataclasses import dataclass, field
from email.header import Header
from types import MappingProxyType
from typing import (TYPE_CHECKING, Any, Awaitable, Callable, Collection, Iterable, Mapping,
                    Protocol, runtime_checkable)

from ..config.errors import ConfigError
from ..plugin_loader import ParameterReader, parse_bool
from ..protocol.lineends import head_end

if TYPE_CHECKING:  # pragma: no cover
    import logging

__all__ = [
    "ROOT", "TRANSPORT", "ERROR", "GHOST",
    "ATTR_SENT_BY_MAILET", "ATTR_ERROR", "ATTR_HOPS", "ATTR_ARRIVAL",
    "Mail", "MailetConfig", "MatcherConfig", "Matcher", "Mailet",
    "GenericMatcher", "GenericRecipientMatcher", "GenericMailet", "MailetError",
    "MailetContext", "Repository", "parse_bool",
]

#: Processor names with a meaning of their own.
ROOT = "root"
TRANSPORT = "transport"
ERROR = "error"
GHOST = "ghost"  # not a processor: the mail is finished

#: Attribute set on mail sent by a mailet (``context.send_mail``): matcher ``SentByMailet``.
ATTR_SENT_BY_MAILET = "sent_by_mailet"
#: Attributes the container keeps in the spool envelope.
ATTR_ERROR = "chainmail.error_message"
ATTR_HOPS = "chainmail.hops"
ATTR_RETRY_AT = "chainmail.retry_at"
#: when the mail first arrived (epoch seconds), kept across re-spooling so that a delivery
#: report's Arrival-Date (RFC 3464 §2.2.5) is not the time of the last hop
ATTR_ARRIVAL = "chainmail.arrival"

_names = itertools.count(1)


class MailetError(Exception):
    """A mailet or matcher cannot do its work; the message becomes the mail's error message."""


# ---------------------------------------------------------------------------------- headers

_WSP = (0x20, 0x09)


def _fields(head: bytes) -> list[bytes]:
    """The header section split into fields (each with its continuation lines and line ends)."""
    out: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if out and line[:1] in (b" ", b"\t"):
            out[-1] += line
        else:
            out.append(line)
    return out


def _field_name(raw: bytes) -> str:
    return raw.split(b":", 1)[0].strip().decode("ascii", "replace").lower()


def _field_value(raw: bytes) -> str:
    value = raw.split(b":", 1)[1] if b":" in raw else b""
    value = re.sub(rb"\r?\n(?=[ \t])", b"", value)
    return value.strip().decode("utf-8", "surrogateescape")


def encode_header_value(value: str, name: str = "") -> str:
    """``value`` as it may appear in a header: RFC 2047 encoded if it is not ASCII."""
    if value.isascii():
        return value.replace("\r", " ").replace("\n", " ")
    return Header(value, "utf-8", header_name=name).encode()


# ------------------------------------------------------------------------------------- Mail


class Mail:
    """One mail in the container: envelope, content, attributes and processing state.

    ``content`` is the message exactly as received (header section, empty line, body; CRLF
    line ends).  The header helpers edit the header section in place and leave the body
    bytes untouched; :attr:`message` parses the whole message (``email`` package) for
    mailets that need MIME structure, and :meth:`set_message` replaces it.

    ``attributes`` travel with the mail through the spool: keep them JSON-serialisable.
    The SMTP server records ``remote_addr``, ``remote_port``, ``helo``, ``helo_mode``,
    ``server_name``, ``relaying_allowed``, ``auth_user`` (after AUTH), ``tls_protocol``.
    """

    __slots__ = ("name", "sender", "recipients", "state", "attributes", "error_message",
                 "mail_params", "rcpt_params", "queued_at", "error_count", "hops",
                 "_content", "_message", "_field_cache", "trace")

    def __init__(self, name: str | None, sender: str, recipients: Iterable[str], content: bytes,
                 *, state: str = ROOT, attributes: Mapping[str, Any] | None = None,
                 error_message: str | None = None, mail_params: Mapping[str, Any] | None = None,
                 rcpt_params: Mapping[str, Mapping[str, Any]] | None = None, queued_at: float = 0.0,
                 error_count: int = 0, hops: int = 0) -> None:
        self.name = name or f"mail-{next(_names)}"
        self.sender = sender or ""
        self.recipients: list[str] = list(recipients)
        self.state = state
        self.attributes: dict[str, Any] = dict(attributes or {})
        self.error_message = error_message
        self.mail_params: dict[str, Any] = dict(mail_params or {})
        #: RCPT parameters (``NOTIFY``, ``ORCPT`` ...) by recipient address.
        self.rcpt_params: dict[str, dict[str, Any]] = {
            r: dict(p) for r, p in (rcpt_params or {}).items()}
        self.queued_at = queued_at
        self.error_count = error_count
        self.hops = hops
        self._content = bytes(content)
        self._message: email.message.EmailMessage | None = None
        self._field_cache: list[tuple[str, bytes]] | None = None   # parsed once per content
        self.trace: list[str] = []  # processors visited (for logs and tests; not persisted)

    # -- envelope

    @property
    def has_null_sender(self) -> bool:
        """``MAIL FROM:<>`` (bounces, notifications)."""
        return not self.sender

    @property
    def sender_domain(self) -> str:
        return self.sender.rpartition("@")[2].lower() if self.sender else ""

    @property
    def remote_addr(self) -> str | None:
        return self.attributes.get("remote_addr")

    @property
    def remote_host(self) -> str | None:
        """The client's HELO name (chainmail does no reverse-DNS lookups)."""
        return self.attributes.get("helo")

    @property
    def auth_user(self) -> str | None:
        return self.attributes.get("auth_user")

    # -- content

    @property
    def content(self) -> bytes:
        return self._content

    def set_content(self, content: bytes) -> None:
        self._content = bytes(content)
        self._message = None
        self._field_cache = None

    @property
    def size(self) -> int:
        return len(self._content)

    @property
    def head(self) -> bytes:
        """The header section (without the empty line that ends it)."""
        return self._content[:head_end(self._content)]

    @property
    def body(self) -> bytes:
        """Everything after the empty line that ends the header section."""
        content = self._content
        end = head_end(content)
        rest = content[end:]
        if rest.startswith(b"\r\n"):
            return rest[2:]
        if rest.startswith(b"\n"):
            return rest[1:]
        return b""

    def _line_end(self) -> bytes:
        head = self.head
        return b"\n" if head and b"\r\n" not in head and b"\n" in head else b"\r\n"

    def _field_list(self) -> list[tuple[str, bytes]]:
        """``(lower-cased name, raw field)`` of every header field, parsed once per content
        (matchers and mailets ask for headers many times per mail)."""
        fields = self._field_cache
        if fields is None:
            fields = self._field_cache = [(_field_name(raw), raw) for raw in _fields(self.head)]
        return fields

    def header_fields(self) -> list[tuple[str, str]]:
        """Every header field as ``(name, unfolded value)``, in order (names as written)."""
        out = []
        for _, raw in self._field_list():
            name = raw.split(b":", 1)[0].strip().decode("ascii", "replace")
            out.append((name, _field_value(raw)))
        return out

    def get_headers(self, name: str) -> list[str]:
        """The unfolded values of every ``name`` field (case-insensitive), raw (not decoded)."""
        key = name.lower()
        return [_field_value(raw) for lname, raw in self._field_list() if lname == key]

    def get_header(self, name: str, default: str | None = None) -> str | None:
        values = self.get_headers(name)
        return values[0] if values else default

    def has_header(self, name: str) -> bool:
        key = name.lower()
        return any(lname == key for lname, _ in self._field_list())

    def _rebuild(self, fields: list[bytes]) -> None:
        content = self._content
        end = head_end(content)
        rest = content[end:]
        if not rest and fields:
            rest = self._line_end()  # a message without body still needs the empty line
        self.set_content(b"".join(fields) + rest)

    def _field(self, name: str, value: str) -> bytes:
        text = f"{name}: {encode_header_value(value, name)}"
        return text.encode("utf-8", "surrogateescape") + self._line_end()

    def add_header(self, name: str, value: str, *, top: bool | None = None) -> None:
        """Add a field.  Like JavaMail: ``Received`` and ``Return-Path`` (or ``top=True``) go
        on top, others after the last field of the same name, else at the end."""
        fields = _fields(self.head)
        new = self._field(name, value)
        key = name.lower()
        if top is None:
            top = key in ("received", "return-path")
        if top:
            fields.insert(0, new)
        else:
            last = max((i for i, raw in enumerate(fields) if _field_name(raw) == key), default=None)
            fields.insert(len(fields) if last is None else last + 1, new)
        self._rebuild(fields)

    def set_header(self, name: str, value: str) -> None:
        """Replace the first ``name`` field (remove the others); add it if there is none."""
        fields = _fields(self.head)
        key = name.lower()
        new = self._field(name, value)
        out: list[bytes] = []
        done = False
        for raw in fields:
            if _field_name(raw) == key:
                if not done:
                    out.append(new)
                    done = True
                continue
            out.append(raw)
        if not done:
            out.append(new)
        self._rebuild(out)

    def remove_header(self, name: str) -> int:
        """Remove every ``name`` field; return how many there were."""
        fields = _fields(self.head)
        key = name.lower()
        kept = [raw for raw in fields if _field_name(raw) != key]
        removed = len(fields) - len(kept)
        if removed:
            self._rebuild(kept)
        return removed

    @property
    def message(self) -> email.message.EmailMessage:
        """The parsed message (``email.policy.default``).  Treat it as read-only: change it
        and call :meth:`set_message`, or use the header helpers."""
        if self._message is None:
            self._message = email.message_from_bytes(self._content, policy=email.policy.default)
        return self._message

    def set_message(self, message: email.message.Message) -> None:
        self.set_content(message.as_bytes(policy=email.policy.default.clone(linesep="\r\n")))

    # -- copies

    def duplicate(self, recipients: Iterable[str] | None = None, name: str | None = None) -> Mail:
        """A copy (content shared: it is immutable bytes) with its own recipients, attributes
        and state.  Used when a matcher matches only some recipients."""
        copy = Mail(name or f"{self.name}-{next(_names)}", self.sender,
                    self.recipients if recipients is None else recipients, self._content,
                    state=self.state, attributes=_copy_attributes(self.attributes),
                    error_message=self.error_message, mail_params=self.mail_params,
                    rcpt_params=self.rcpt_params, queued_at=self.queued_at,
                    error_count=self.error_count, hops=self.hops)
        copy._message = None
        copy.trace = list(self.trace)
        return copy

    def __repr__(self) -> str:
        return (f"<Mail {self.name} state={self.state} from=<{self.sender}> "
                f"to={len(self.recipients)} size={self.size}>")


def _copy_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    import copy
    return copy.deepcopy(dict(attributes))


# ------------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class MailetConfig(ParameterReader):
    """What a mailet gets in ``init()``: its own ``<mailet>`` element's parameters.

    Parameters are the child elements (dotted names for nested ones, repeated elements
    joined with ``,``).  ``get``, ``require``, ``get_bool``, ``get_int`` and ``get_list``
    read them; a bad value raises :class:`ConfigError` naming file and line.
    """

    name: str                      # the class as written in the XML
    params: Mapping[str, str]
    context: Any = field(default=None, repr=False)   # MailetContext
    processor: str = ""
    file: str = ""
    line: int | None = None

    kind = "mailet"


@dataclass(frozen=True)
class MatcherConfig:
    """What a matcher gets in ``init()``: ``Name=condition`` as written after ``match=``."""

    name: str
    condition: str | None
    context: Any = field(default=None, repr=False)
    processor: str = ""
    file: str = ""
    line: int | None = None

    def error(self, message: str) -> ConfigError:
        return ConfigError(self.file, self.line, f"matcher {self.name}", message)

    def require_condition(self) -> str:
        if not self.condition or not self.condition.strip():
            raise self.error(f"needs a condition: write match=\"{self.name}=...\"")
        return self.condition.strip()


EMPTY_PARAMS: Mapping[str, str] = MappingProxyType({})


# -------------------------------------------------------------------------------- protocols


class Repository(Protocol):
    """A mail repository as a mailet sees it (``context.repository(url)``).  Every method
    blocks: call it through ``context.run_blocking``."""

    @property
    def url(self) -> str: ...

    def store(self, mail: Mail) -> str:
        """Store ``mail`` durably; return its key."""
        ...

    def remove(self, key: str) -> bool: ...

    def keys(self) -> list[str]: ...

    def retrieve(self, key: str) -> Mail: ...


class MailetContext(Protocol):
    """What a matcher or mailet may ask of the container (James's ``MailetContext``):
    ``self.context`` in :class:`GenericMailet` and :class:`GenericMatcher`.

    A protocol, so that mailets depend on this contract and not on the container that
    implements it (:class:`chainmail.mailet.context.ContainerContext`); a test may pass
    any object with these members."""

    # -- what the container knows
    @property
    def postmaster(self) -> str:
        """The postmaster's address (``user@domain``)."""
        ...

    @property
    def default_domain(self) -> str: ...

    @property
    def hostname(self) -> str:
        """The name the server gives itself (reports, ``Received`` fields)."""
        ...

    @property
    def states(self) -> frozenset[str]:
        """The container's processors (empty while unknown)."""
        ...

    @property
    def conf_dir(self) -> str:
        """Where a mailet finds its own configuration files."""
        ...

    @property
    def var_dir(self) -> str:
        """The state directory (queues and repositories live under it)."""
        ...

    @property
    def log(self) -> logging.Logger: ...

    # stores: the domain list, users, the recipient rewrite table, the Maildirs
    @property
    def domains(self) -> Any: ...

    @property
    def users(self) -> Any: ...

    @property
    def rrt(self) -> Any: ...

    @property
    def mailboxes(self) -> Any: ...

    @property
    def limiter(self) -> Any:
        """The ``trio.CapacityLimiter`` bounding the container's worker threads."""
        ...

    @property
    def claims(self) -> dict[tuple[str, str], Any]:
        """Named resources (an outgoing queue) by kind and name, and the configuration of
        the mailet that owns each: a second claim is a configuration error."""
        ...

    # -- questions
    def has_processor(self, state: str) -> bool: ...

    def is_local_server(self, domain: str) -> bool: ...

    def is_local_email(self, address: str) -> bool: ...

    def is_auth_network(self, mail: Mail) -> bool: ...

    def repository(self, url: str) -> Repository: ...

    async def run_blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking function in a worker thread (bounded by :attr:`limiter`)."""
        ...

    # -- sending
    async def send_mail(self, mail: Mail, state: str | None = None) -> Mail:
        """Send a copy of ``mail`` through the container again, from processor ``state``."""
        ...

    async def send_message(self, sender: str, recipients: Iterable[str], content: bytes, *,
                           state: str = ROOT, attributes: Mapping[str, Any] | None = None,
                           error_message: str | None = None) -> Mail: ...

    async def send_later(self, mail: Mail, at: float) -> None:
        """Put ``mail`` back in the spool, not to be processed before ``at`` (epoch s)."""
        ...

    async def commit(self, mail: Mail, *, extra: Mapping[str, Any] | None = None) -> str:
        """Durably add ``mail`` to the spool now, in its state; return the spool id."""
        ...

    async def bounce(self, mail: Mail, message: str | None = None, *, status: str | None = None,
                     attachment: str = "message", recipients: Iterable[str] | None = None,
                     state: str = ROOT, details: Mapping[str, str] | None = None,
                     remote_mta: str | None = None, action: str = "failed") -> Mail | None:
        """Send an RFC 3464 delivery status notification about ``mail`` to its sender."""
        ...


@runtime_checkable
class Matcher(Protocol):
    def init(self, config: MatcherConfig) -> None: ...

    def match(self, mail: Mail) -> Collection[str] | None | Awaitable[Collection[str] | None]: ...


@runtime_checkable
class Mailet(Protocol):
    def init(self, config: MailetConfig) -> None: ...

    def service(self, mail: Mail) -> Awaitable[None] | None: ...


class GenericMatcher(abc.ABC):
    """Base class: keeps the configuration; override :meth:`match` (sync or ``async``)."""

    config: MatcherConfig
    context: MailetContext
    #: True: needs ``Name=condition``; False: takes none (a condition given is warned
    #: about); None: not declared, nothing is checked.
    takes_condition: bool | None = None

    def init(self, config: MatcherConfig) -> None:
        self.config = config
        self.context = config.context
        self.configure(config.condition)

    def configure(self, condition: str | None) -> None:
        """Called by ``init`` with the condition; raise ``self.config.error(...)`` if invalid."""

    @property
    def condition(self) -> str | None:
        return self.config.condition

    @abc.abstractmethod
    def match(self, mail: Mail) -> Collection[str] | None | Awaitable[Collection[str] | None]:
        """The recipients of ``mail`` this matcher matches (all, some or none)."""

    def destroy(self) -> None:
        pass


class GenericRecipientMatcher(GenericMatcher):
    """A matcher that decides recipient by recipient: override :meth:`match_recipient`."""

    def match(self, mail: Mail) -> list[str]:
        return [r for r in mail.recipients if self.match_recipient(r)]

    @abc.abstractmethod
    def match_recipient(self, recipient: str) -> bool:
        """Whether this one recipient matches."""


class GenericMailet(abc.ABC):
    """Base class: keeps the configuration; override :meth:`service` (sync or ``async``)."""

    config: MailetConfig
    context: MailetContext
    #: The parameters (child elements) the mailet reads; any other is warned about with
    #: a suggestion.  None: not declared, nothing is checked (docs/plugins.md).
    parameters: tuple[str, ...] | None = None

    def init(self, config: MailetConfig) -> None:
        self.config = config
        self.context = config.context
        self.configure(config)

    def configure(self, config: MailetConfig) -> None:
        """Called by ``init``: read parameters here (``config.get``, ``get_bool`` ...)."""

    @abc.abstractmethod
    def service(self, mail: Mail) -> Awaitable[None] | None:
        """Act on ``mail``: change it, deliver it, set ``mail.state``, or empty its recipients."""

    def destroy(self) -> None:
        pass

    @property
    def info(self) -> str:
        doc = type(self).__doc__
        return doc.strip().splitlines()[0] if doc else type(self).__name__
