"""RemoteDelivery mailet parameters, with Apache James's defaults and parsing rules.

James reads these in ``RemoteDeliveryConfiguration``, ``DelaysAndMaxRetry``, ``Delay`` and
``DurationParser``; this module follows them item for item (see docs/remote-delivery.md):

- ``delayTime`` is a comma list of ``[attempts*]delay[unit]`` items (``5000, 100000, 500000``,
  ``2*3600000``, ``2 * 36 s``).  The default unit is milliseconds.  Empty items are ignored;
  the first invalid item stops the parsing and the earlier items are kept.
- ``maxRetries`` is reconciled with the delays: when the attempts of ``delayTime`` add up to
  more than ``maxRetries``, ``maxRetries`` grows to that sum; when they add up to less, the
  last delay gets the missing attempts.  When that is impossible (no usable delay but
  ``maxRetries`` > 0) or ``maxRetries`` is not an integer, both fall back to the defaults
  (5 retries, 6 hours apart).
- unparsable booleans and timeouts fall back to their defaults (James does the same);
  chainmail records a warning naming the parameter for each such fallback, so that
  ``chainmail check`` and the start-up log show it.
- an invalid ``maxDnsProblemRetries`` or a ``mail.*`` parameter without a value is an error
  naming the mailet's file, line and parameter.

chainmail's own parameters: ``chunking`` (send with ``BDAT`` to servers offering CHUNKING,
default true) and ``delayWarningTime`` (when a mail whose recipients asked RFC 3461
``NOTIFY=DELAY`` is still undelivered after this long, they get one ``delayed`` report;
a duration as ``timeout``, default 4 hours, 0 turns it off).

Parameter names are case-sensitive, as in James: ``connectiontimeout`` is the key the code
reads (James's documentation writes ``connectionTimeout``, which James ignores; chainmail
ignores it too, with a warning).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..config.errors import ConfigError, ConfigWarning

__all__ = [
    "DEFAULT_DELAY_MS", "DEFAULT_MAX_RETRIES", "DEFAULT_DELAY_WARNING_MS", "Delay", "DelaysAndMaxRetry", "DelayError",
    "RemoteDeliveryConfig", "parse_duration_ms", "parse_delay", "parse_delay_list",
    "delays_and_max_retry", "parse_gateways", "split_host_port",
]

#: James's ``DEFAULT_DELAY_TIME``: six hours.
DEFAULT_DELAY_MS = 6 * 3600 * 1000
#: James's ``DEFAULT_MAX_RETRY``.
DEFAULT_MAX_RETRIES = 5
DEFAULT_TIMEOUT_MS = 180_000
DEFAULT_CONNECTION_TIMEOUT_MS = 60_000
DEFAULT_OUTGOING = "outgoing"
#: ``delayWarningTime``: Postfix's usual ``delay_warning_time`` setting.
DEFAULT_DELAY_WARNING_MS = 4 * 3600 * 1000

# ChronoUnit durations as James's DurationParser uses them (months and years are the
# estimated ones: a year is 365.2425 days).
_SECOND = 1000
_UNITS_MS: dict[str, int] = {}
for _names, _ms in (
    (("ms", "msec", "msecs"), 1),
    (("s", "sec", "secs", "second", "seconds"), _SECOND),
    (("m", "min", "mins", "minute", "minutes"), 60 * _SECOND),
    (("h", "hour", "hours"), 3600 * _SECOND),
    (("d", "day", "days"), 86400 * _SECOND),
    (("w", "week", "weeks"), 7 * 86400 * _SECOND),
    (("month", "months"), 31556952 * _SECOND // 12),
    (("y", "year", "years"), 31556952 * _SECOND),
):
    for _n in _names:
        _UNITS_MS[_n] = _ms

_DURATION = re.compile(r"\s*(-?[0-9]+)\s*([a-zA-Z]*)\s*")
_DELAY = re.compile(r"\s*([0-9]*\s*\*)?\s*([0-9]+\s*[a-zA-Z]*)\s*")


class DelayError(ValueError):
    """A ``delayTime`` item or a duration that cannot be parsed."""


def parse_duration_ms(text: str, default_unit_ms: int = 1) -> int:
    """A duration such as ``36``, ``36 s`` or ``2hours`` in milliseconds (James's DurationParser)."""
    m = _DURATION.fullmatch(text)
    if not m:
        raise DelayError(f"{text!r} is not a duration; expected a number and an optional unit "
                         "such as 5000, 30s, 10 minutes or 2h")
    amount = int(m.group(1))
    unit = m.group(2).lower()
    if unit:
        if unit not in _UNITS_MS:
            raise DelayError(f"{text!r}: unknown unit {m.group(2)!r}; expected one of ms, s, m, "
                             "h, d, w, month, y (or their long forms)")
        scale = _UNITS_MS[unit]
    else:
        scale = default_unit_ms
    if amount < 0:
        raise DelayError(f"{text!r}: a duration cannot be negative")
    return amount * scale


@dataclass(frozen=True)
class Delay:
    """One ``delayTime`` item: ``attempts`` retries, each ``delay_ms`` after the previous."""

    attempts: int = 1
    delay_ms: int = DEFAULT_DELAY_MS

    def __str__(self) -> str:
        return f"{self.attempts}*{self.delay_ms}ms"


def parse_delay(text: str) -> Delay:
    """One item: ``36`` (ms), ``1s``, ``2*36``, ``2*36s``, ``2 * 36 s`` (James's ``Delay``)."""
    m = _DELAY.fullmatch(text)
    if not m:
        raise DelayError(f"{text!r} is not a delay; expected [attempts*]delay[unit], "
                         "such as 5000, 2*3600000 or 2 * 36 s")
    attempts = 1
    if m.group(1):
        count = m.group(1)[:-1].strip()
        if not count:
            raise DelayError(f"{text!r}: the number of attempts before '*' is missing")
        attempts = int(count)
    return Delay(attempts, parse_duration_ms(m.group(2)))


def parse_delay_list(text: str | None, problems: list[str] | None = None) -> list[Delay]:
    """``delayTime``: ``None`` gives James's default (one attempt after 6 hours).

    Empty items are ignored; the first invalid item ends the list (the earlier ones are
    kept) and its problem is appended to ``problems``.
    """
    if text is None:
        return [Delay()]
    out: list[Delay] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            out.append(parse_delay(item))
        except DelayError as exc:
            if problems is not None:
                problems.append(f"{exc}; the delays after it are ignored")
            break
    return out


@dataclass(frozen=True)
class DelaysAndMaxRetry:
    """The retry schedule: ``delays[i]`` is the wait before retry ``i + 1``."""

    max_retries: int
    delays: tuple[Delay, ...]

    @property
    def expanded_ms(self) -> tuple[int, ...]:
        """One delay per retry, in milliseconds."""
        return tuple(d.delay_ms for d in self.delays for _ in range(d.attempts))

    def delay_before_retry(self, retry: int) -> int:
        """The wait in ms before retry number ``retry`` (1-based); 6 hours beyond the list."""
        expanded = self.expanded_ms
        if 1 <= retry <= len(expanded):
            return expanded[retry - 1]
        return DEFAULT_DELAY_MS

    @classmethod
    def defaults(cls) -> "DelaysAndMaxRetry":
        return cls(DEFAULT_MAX_RETRIES, tuple(Delay() for _ in range(DEFAULT_MAX_RETRIES)))


def delays_and_max_retry(max_retries: int, delay_time: str | None,
                         problems: list[str] | None = None) -> DelaysAndMaxRetry:
    """James's ``DelaysAndMaxRetry.from``: reconcile ``maxRetries`` with ``delayTime``.

    Raises :class:`DelayError` when ``maxRetries`` asks for retries but no usable delay
    remains (James then falls back to :meth:`DelaysAndMaxRetry.defaults`).
    """
    delays = parse_delay_list(delay_time, problems)
    total = sum(d.attempts for d in delays)
    if total > max_retries:
        if problems is not None and delay_time is not None:
            problems.append(f"the delayTime attempts add up to {total}, more than maxRetries "
                            f"{max_retries}: maxRetries is raised to {total}")
        return DelaysAndMaxRetry(total, tuple(delays))
    extra = max_retries - total
    if extra > 0:
        if not delays:
            raise DelayError("no usable delay in delayTime but maxRetries is "
                             f"{max_retries}; expected delays such as 5000, 2*3600000")
        last = delays[-1]
        delays[-1] = Delay(last.attempts + extra, last.delay_ms)
    return DelaysAndMaxRetry(max_retries, tuple(delays))


def split_host_port(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: missing ']' after the IPv6 address")
        host, rest = text[1:end], text[end + 1:]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected [address]:port")
        port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        return text, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: {port!r} is not a port number (1-65535)")
    if not host:
        raise ValueError(f"{text!r}: the host name is missing")
    return host, int(port)


def _has_port(entry: str) -> bool:
    try:
        return split_host_port(entry)[1] is not None
    except ValueError:
        return True  # reported when the entry itself is parsed


def parse_gateways(gateway: str | None, gateway_port: str | None) -> tuple[str, ...]:
    """``gateway=a, b`` -> ``(a, b)``; with ``gatewayPort=25`` -> ``(a:25, b:25)``.

    Entries that carry their own port keep it.
    """
    if gateway is None:
        return ()
    entries = [e.strip() for e in gateway.split(",") if e.strip()]
    port = (gateway_port or "").strip()
    if not port:
        return tuple(entries)
    out = []
    for entry in entries:
        if _has_port(entry):
            out.append(entry)
        elif ":" in entry and not entry.startswith("["):
            out.append(f"[{entry}]:{port}")
        else:
            out.append(f"{entry}:{port}")
    return tuple(out)


_FALSE_WORDS = ("false",)
_TRUE_WORDS = ("true",)


@dataclass(frozen=True)
class RemoteDeliveryConfig:
    """Every RemoteDelivery parameter, typed, with James's code defaults."""

    outgoing: str = DEFAULT_OUTGOING
    delays: DelaysAndMaxRetry = field(default_factory=DelaysAndMaxRetry.defaults)
    max_dns_problem_retries: int = 0
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    connection_timeout_ms: int = DEFAULT_CONNECTION_TIMEOUT_MS
    send_partial: bool = False
    bounce_processor: str | None = None
    on_success: str | None = None
    gateways: tuple[str, ...] = ()
    gateway_username: str | None = None
    gateway_password: str | None = None
    load_balancing: bool = True
    start_tls: bool = False
    ssl_enable: bool = False
    verify_server_identity: bool = True
    ssl_trust_all_certs: bool = False
    helo_name: str = "localhost"
    bind: str | None = None
    use_priority: bool = False
    debug: bool = False
    mail_properties: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[ConfigWarning, ...] = ()
    #: chainmail's TLS policy parameters (docs/delivery.md)
    ca_file: str | None = None
    mta_sts: bool = True
    dnssec: bool = False
    dane: bool = True
    #: RFC 3030 CHUNKING towards servers that offer it
    chunking: bool = True
    #: RFC 3461 NOTIFY=DELAY: a "delayed" report after this long undelivered (0: never)
    delay_warning_ms: int = DEFAULT_DELAY_WARNING_MS
    #: the parameters the configuration set (James defaults versus explicit choices)
    given: frozenset[str] = frozenset()

    @property
    def max_retries(self) -> int:
        return self.delays.max_retries

    @property
    def gateway_hosts(self) -> tuple[tuple[str, int | None], ...]:
        """The gateways as ``(host, port or None)``."""
        return tuple(split_host_port(g) for g in self.gateways)

    @property
    def is_auth(self) -> bool:
        """SMTP AUTH towards the gateways (``mail.smtp.auth``)."""
        return self.gateway_username is not None

    def _prop_bool(self, name: str, default: bool) -> bool:
        value = self.mail_properties.get(name)
        if value is None:
            return default
        return value.strip().lower() == "true"

    @property
    def starttls_enabled(self) -> bool:
        """Opportunistic STARTTLS (``startTLS``, overridden by ``mail.smtp.starttls.enable``)."""
        return self._prop_bool("mail.smtp.starttls.enable", self.start_tls)

    @property
    def starttls_required(self) -> bool:
        """``mail.smtp.starttls.required``: fail rather than send in clear text."""
        return self._prop_bool("mail.smtp.starttls.required", False)

    @property
    def check_server_identity(self) -> bool:
        return self._prop_bool("mail.smtp.ssl.checkserveridentity", self.verify_server_identity)

    @property
    def verify_explicit(self) -> bool | None:
        """``verifyServerIdentity`` (or ``mail.smtp.ssl.checkserveridentity``) as configured;
        None when neither is set (then the TLS policy decides, see docs/delivery.md)."""
        if "mail.smtp.ssl.checkserveridentity" in self.mail_properties:
            return self.check_server_identity
        if "verifyServerIdentity" in self.given:
            return self.verify_server_identity
        return None

    @classmethod
    def from_params(cls, params: Mapping[str, str | None], *, default_domain: str | None = None,
                    file: str = "", line: int | None = None,
                    name: str = "RemoteDelivery") -> "RemoteDeliveryConfig":
        """Read the parameters of one ``<mailet class="RemoteDelivery">``.

        ``default_domain`` is the DomainList default domain, the default ``heloName``.
        """
        warnings: list[ConfigWarning] = []

        def where(key: str) -> str:
            return f"mailet {name}: {key}"

        def warn(key: str, message: str) -> None:
            warnings.append(ConfigWarning(file, line, where(key), message))

        def error(key: str, message: str) -> ConfigError:
            return ConfigError(file, line, where(key), message)

        def text(key: str) -> str | None:
            value = params.get(key)
            return None if value is None else value.strip()

        def boolean(key: str, default: bool) -> bool:
            value = text(key)
            if value is None or value == "":
                return default
            low = value.lower()
            if low in _TRUE_WORDS:
                return True
            if low in _FALSE_WORDS:
                return False
            warn(key, f"{value!r} is not a boolean (true or false); using the default {str(default).lower()}")
            return default

        def millis(key: str, default: int) -> int:
            value = text(key)
            if value is None or value == "":
                return default
            try:
                return int(value)
            except ValueError:
                warn(key, f"{value!r} is not a number of milliseconds; using the default {default}")
                return default

        def optional(key: str) -> str | None:
            value = text(key)
            return value or None

        def duration(key: str, default: int) -> int:
            value = text(key)
            if value is None or value == "":
                return default
            try:
                return parse_duration_ms(value)
            except DelayError as exc:
                warn(key, f"{exc}; using the default {default} ms")
                return default

        # outgoing
        outgoing = optional("outgoing") or DEFAULT_OUTGOING

        # delayTime / maxRetries
        problems: list[str] = []
        raw_retries = text("maxRetries")
        try:
            intended = DEFAULT_MAX_RETRIES if raw_retries in (None, "") else int(raw_retries)
            delays = delays_and_max_retry(intended, params.get("delayTime"), problems)
        except ValueError as exc:
            reason = str(exc) if isinstance(exc, DelayError) else f"{raw_retries!r} is not an integer"
            warn("maxRetries", f"{reason}; using the defaults: {DEFAULT_MAX_RETRIES} retries "
                               f"{DEFAULT_DELAY_MS} ms apart")
            delays = DelaysAndMaxRetry.defaults()
        for problem in problems:
            warn("delayTime", problem)

        # maxDnsProblemRetries: an error when invalid (James throws).
        raw_dns = text("maxDnsProblemRetries")
        dns_retries = 0
        if raw_dns not in (None, ""):
            try:
                dns_retries = int(raw_dns)
            except ValueError:
                raise error("maxDnsProblemRetries",
                            f"{raw_dns!r} is not an integer; expected a number of retries "
                            "such as 0 or 3") from None

        if "connectionTimeout" in params and "connectiontimeout" not in params:
            warn("connectionTimeout", "ignored (as by James): the parameter is spelled "
                                      "connectiontimeout")
        if "deliveryThreads" in params:
            warn("deliveryThreads", "ignored (as by James): deliveries are scheduled by the "
                                    "outgoing queue")

        # gateways and their credentials (read only when a gateway is set)
        gateways = parse_gateways(optional("gateway"), optional("gatewayPort"))
        for entry in gateways:
            try:
                split_host_port(entry)
            except ValueError as exc:
                raise error("gateway", f"{exc}; expected host or host:port entries "
                                       "separated by commas") from None
        username = password = None
        if gateways:
            username = params.get("gatewayUsername")
            if username is None:
                username = params.get("gatewayusername")
            password = params.get("gatewayPassword")

        # mail.* properties
        props: dict[str, str] = {}
        for key, value in params.items():
            if key.startswith("mail."):
                if value is None:
                    raise error(key, "has no value; a mail.* property needs one")
                props[key] = value
        for key in ("mail.smtp.port", "mail.smtps.port"):
            if key in props:
                port = props[key].strip()
                if not port.isdigit() or not 0 < int(port) < 65536:
                    raise error(key, f"{props[key]!r} is not a port number; expected 1-65535")

        helo = optional("heloName") or default_domain or "localhost"

        ca_file = optional("caFile")
        if ca_file is not None and not os.path.isfile(ca_file):
            raise error("caFile", f"{ca_file!r} is not a file; expected a PEM file of CA "
                                  "certificates")
        mta_sts = boolean("mtaSts", True)
        dnssec = boolean("dnssec", False)
        dane = boolean("dane", True)

        return cls(
            outgoing=outgoing,
            delays=delays,
            max_dns_problem_retries=dns_retries,
            timeout_ms=millis("timeout", DEFAULT_TIMEOUT_MS),
            connection_timeout_ms=millis("connectiontimeout", DEFAULT_CONNECTION_TIMEOUT_MS),
            send_partial=boolean("sendpartial", False),
            bounce_processor=optional("bounceProcessor"),
            on_success=optional("onSuccess"),
            gateways=gateways,
            gateway_username=username,
            gateway_password=password,
            load_balancing=boolean("loadBalancing", True),
            start_tls=boolean("startTLS", False),
            ssl_enable=boolean("sslEnable", False),
            verify_server_identity=boolean("verifyServerIdentity", True),
            ssl_trust_all_certs=boolean("sslTrustAllCerts", False),
            helo_name=helo,
            bind=optional("bind"),
            use_priority=boolean("usePriority", False),
            debug=boolean("debug", False),
            mail_properties=props,
            ca_file=ca_file,
            mta_sts=mta_sts,
            dnssec=dnssec,
            dane=dane,
            chunking=boolean("chunking", True),
            delay_warning_ms=duration("delayWarningTime", DEFAULT_DELAY_WARNING_MS),
            warnings=tuple(warnings),
            given=frozenset(k for k, v in params.items() if v is not None and v.strip()),
        )

    @classmethod
    def from_mailet_config(cls, config: Any) -> "RemoteDeliveryConfig":
        """From a :class:`chainmail.mailet.api.MailetConfig` (file and line for messages)."""
        context = getattr(config, "context", None)
        return cls.from_params(
            config.params,
            default_domain=getattr(context, "default_domain", None),
            file=getattr(config, "file", ""), line=getattr(config, "line", None),
            name=getattr(config, "name", "RemoteDelivery"),
        )
