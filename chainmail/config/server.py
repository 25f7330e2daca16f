"""``smtpserver.xml`` / ``lmtpserver.xml``: James's server blocks as frozen dataclasses.

A file holds ``<smtpservers>`` (or ``<lmtpservers>``) with one ``<smtpserver>``
(``<lmtpserver>``) block per listening server; a bare ``<smtpserver>`` root, as
older James releases wrote it, is accepted too.  See ``docs/configuration.md``
for every option, its default and where chainmail differs from James.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from .errors import ConfigError, ConfigErrors, ConfigWarning
from .netmatch import NetworkSet
from .size import parse_size
from .xml import Reader, children_named, element_parameters, first_child, parse_file, text_of

__all__ = [
    "BindAddress",
    "HandlerSpec",
    "HandlerChainConfig",
    "TLSConfig",
    "OidcConfig",
    "AuthConfig",
    "ServerConfig",
    "load_servers",
    "read_servers",
    "parse_servers",
    "collect_servers",
    "resolve_path",
    "SMTP_CORE_PACKAGE",
    "LMTP_CORE_PACKAGE",
    "DEFAULT_PORTS",
    "ANNOUNCE_MODES",
    "VERIFY_IDENTITY_MODES",
]

SMTP_CORE_PACKAGE = "org.apache.james.smtpserver.CoreCmdHandlerLoader"
LMTP_CORE_PACKAGE = "org.apache.james.lmtpserver.CoreCmdHandlerLoader"
DEFAULT_PORTS = {"smtp": 25, "lmtp": 24}
DEFAULT_CORE_PACKAGES = {"smtp": SMTP_CORE_PACKAGE, "lmtp": LMTP_CORE_PACKAGE}
ANNOUNCE_MODES = ("never", "always", "forUnauthorizedAddresses")
VERIFY_IDENTITY_MODES = ("strict", "relaxed", "disabled")
MIN_LINE_LENGTH = 1000
MAX_LINE_LENGTH = 1048576
MAX_BUSY_POLL = 10000      # microseconds: more would only burn CPU


def _default_io_workers() -> int:
    return 2 * (os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------
# Data model
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BindAddress:
    """One listening address.  ``host`` never carries brackets; ``::`` means all IPv6."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class HandlerSpec:
    """A ``<handler class="...">`` entry of a handler chain.

    ``params`` maps the handler's child element names to their text (repeated
    elements joined with ``,``; grandchildren also appear as ``parent.child``).
    The raw element is kept for handlers that need nested structure.  ``params`` is a
    :class:`~chainmail.config.xml.Parameters`: it knows each parameter's line.
    """

    name: str
    params: Mapping[str, str] = field(hash=False)
    element: Any = field(compare=False, repr=False)
    file: str = ""
    line: int = 0


@dataclass(frozen=True)
class HandlerChainConfig:
    core_package: str = SMTP_CORE_PACKAGE
    handlers: tuple[HandlerSpec, ...] = ()
    enable_jmx: bool = True
    file: str = ""
    line: int = 0


@dataclass(frozen=True)
class TLSConfig:
    """``<tls socketTLS=".." startTLS="..">``.  Paths are resolved to absolute strings."""

    socket_tls: bool = False
    start_tls: bool = False
    keystore: str | None = None
    keystore_type: str = "JKS"
    secret: str = ""
    private_key: str | None = None
    certificates: str | None = None
    supported_protocols: tuple[str, ...] = ()
    supported_cipher_suites: tuple[str, ...] = ()
    client_auth: bool = False
    truststore: str | None = None
    truststore_type: str = "JKS"
    truststore_secret: str = ""
    sni: tuple["SniCertificate", ...] = ()
    file: str = ""
    line: int = 0

    @property
    def enabled(self) -> bool:
        return self.socket_tls or self.start_tls


@dataclass(frozen=True)
class SniCertificate:
    """An extra certificate chosen by the client's SNI name (``<tls><sni><certificate>``).
    ``hosts`` empty means: the DNS names of the certificate itself."""

    hosts: tuple[str, ...] = ()
    keystore: str | None = None
    keystore_type: str = "PKCS12"
    secret: str = ""
    private_key: str | None = None
    certificates: str | None = None
    file: str = ""
    line: int = 0


@dataclass(frozen=True)
class OidcConfig:
    oidc_configuration_url: str
    jwks_url: str
    claim: str
    scope: str
    aud: str | None = None
    introspection_url: str | None = None
    introspection_auth: str | None = None
    userinfo_url: str | None = None


@dataclass(frozen=True)
class AuthConfig:
    announce: str = "never"  # "never" | "always" | "forUnauthorizedAddresses"
    require_ssl: bool = True  # the documented default (James's code uses false)
    plain_auth_enabled: bool = True
    required: bool = False
    oidc: OidcConfig | None = None


@dataclass(frozen=True)
class ServerConfig:
    kind: str = "smtp"
    enabled: bool = True
    name: str = "smtpserver"
    bind: tuple[BindAddress, ...] = (BindAddress("0.0.0.0", 25),)
    connection_backlog: int = 200
    connection_timeout: int = 300
    connection_limit: int = 0
    connection_limit_per_ip: int = 0
    hello_name: str = "localhost"
    hello_name_autodetect: bool = False
    io_worker_count: int = field(default_factory=_default_io_workers)
    boss_worker_count: int | None = None
    max_executor_count: int = 16
    graceful_shutdown: bool = True
    use_epoll: bool = False
    proxy_required: bool = False
    proxy_first: bool = True
    tls: TLSConfig = field(default_factory=TLSConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    authorized_addresses: NetworkSet = field(default_factory=NetworkSet)
    verify_identity: str = "strict"
    max_message_size: int = 0
    max_line_length: int = 8192
    helo_ehlo_enforcement: bool = True
    address_brackets_enforcement: bool = True
    smtp_greeting: str | None = None
    disabled_features: tuple[str, ...] = ()
    handler_timeout: float = 30.0
    busy_poll: int = 100   # microseconds; 0 = off
    bare_newline: str = "reject"   # "reject" | "normalize"
    high_write_buffer_water_mark: int | None = None
    low_write_buffer_water_mark: int | None = None
    handlerchain: HandlerChainConfig = field(default_factory=HandlerChainConfig)
    file: str = ""
    line: int = 0


# ---------------------------------------------------------------------------------------------
# Element catalogue
# ---------------------------------------------------------------------------------------------

_COMMON_ELEMENTS = {
    "jmxName", "bind", "connectionBacklog", "connectiontimeout", "connectionLimit", "connectionLimitPerIP",
    "helloName", "ioWorkerCount", "bossWorkerCount", "maxExecutorCount", "gracefulShutdown", "useEpoll",
    "highWriteBufferWaterMark", "lowWriteBufferWaterMark", "proxyRequired", "proxyFirst", "tls",
    "handlerchain", "maxmessagesize", "maxLineLength", "handlerTimeout", "busyPoll",
    "forbidBareNewline",
}
_SMTP_ONLY = {
    "auth", "authRequired", "authorizedAddresses", "verifyIdentity", "heloEhloEnforcement",
    "addressBracketsEnforcement", "smtpGreeting", "disabledFeatures",
}
_LMTP_ONLY = {"lmtpGreeting"}
_TLS_ELEMENTS = {
    "keystore", "keystoreType", "secret", "privateKey", "certificates", "provider", "algorithm",
    "supportedProtocols", "supportedCipherSuites", "clientAuth", "enableOCSPCRLChecks", "sessionCache", "sni",
}
_CLIENT_AUTH_ELEMENTS = {"truststore", "truststoreType", "truststoreSecret", "enableOCSPCRLChecks"}
_AUTH_ELEMENTS = {"announce", "requireSSL", "plainAuthEnabled", "required", "oidc"}
_AUTH_UNSUPPORTED = {
    "saslMechanisms": "is not supported by chainmail and is ignored; the built-in mechanisms "
                      "(LOGIN, PLAIN, and OAUTHBEARER/XOAUTH2 when <oidc> is set) are used",
    "gssapi": "GSSAPI (Kerberos) is not supported by chainmail; the element is ignored",
}
_OIDC_ELEMENTS = {"oidcConfigurationURL", "jwksURL", "claim", "scope", "aud", "introspection", "userinfo"}
_OIDC_MANDATORY = (
    ("oidcConfigurationURL", True),
    ("jwksURL", True),
    ("claim", False),
    ("scope", False),
    ("aud", False),
)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_servers(
    path: str | os.PathLike[str], kind: str = "smtp", conf_dir: str | os.PathLike[str] | None = None,
) -> tuple[tuple[ServerConfig, ...], list[ConfigWarning]]:
    """Read every server block of ``path`` (``kind`` is ``"smtp"`` or ``"lmtp"``).

    A missing file gives ``((), [])``: the caller decides whether that is fatal.
    ``conf_dir`` (default: the file's directory) anchors relative TLS paths; James
    ``file://`` URLs are relative to its parent, the James home.  Every error of the file
    is raised at once (:class:`ConfigErrors` when there are several).
    """
    servers, warnings, errors = read_servers(path, kind, conf_dir)
    if errors:
        raise ConfigErrors.of(errors)
    return servers, warnings


def read_servers(
    path: str | os.PathLike[str], kind: str = "smtp", conf_dir: str | os.PathLike[str] | None = None,
) -> tuple[tuple[ServerConfig, ...], list[ConfigWarning], list[ConfigError]]:
    """:func:`load_servers` that returns the errors instead of raising them, with every
    block that could be parsed (bad values read as their defaults) so that its handler
    chain can still be checked."""
    file = os.fspath(path)
    if kind not in DEFAULT_PORTS:
        raise ValueError(f"kind must be 'smtp' or 'lmtp', not {kind!r}")
    if not os.path.exists(file):
        return (), [], []
    if conf_dir is None:
        conf_dir = os.path.dirname(os.path.abspath(file))
    try:
        root = parse_file(file)
    except ConfigError as exc:   # not well-formed: nothing more can be read
        return (), [], [exc]
    return collect_servers(root, file, kind=kind, conf_dir=os.fspath(conf_dir))


def parse_servers(
    root: etree._Element, file: str, *, kind: str = "smtp", conf_dir: str = ".",
) -> tuple[tuple[ServerConfig, ...], list[ConfigWarning]]:
    """Build the server configs from an already parsed document root; raise every error."""
    servers, warnings, errors = collect_servers(root, file, kind=kind, conf_dir=conf_dir)
    if errors:
        raise ConfigErrors.of(errors)
    return servers, warnings


def collect_servers(
    root: etree._Element, file: str, *, kind: str = "smtp", conf_dir: str = ".",
) -> tuple[tuple[ServerConfig, ...], list[ConfigWarning], list[ConfigError]]:
    """Every block of the document, every warning and every error, in one pass: a bad
    value is reported and read as its default, so that the rest of the block is checked."""
    reader = Reader(file, collect=True)
    block_tag = f"{kind}server"
    list_tag = f"{kind}servers"
    if root.tag == list_tag:
        reader.check_children(root, {block_tag}, repeatable={block_tag})
        blocks = children_named(root, block_tag)
        if not blocks:
            reader.warn(root, list_tag, f"contains no <{block_tag}> block; no {kind.upper()} server will be started")
    elif root.tag == block_tag:
        blocks = [root]
    else:
        reader.fail(
            root, str(root.tag),
            f"unexpected root element; expected <{list_tag}> containing <{block_tag}> blocks",
        )
        return (), reader.warnings, reader.errors

    servers: list[ServerConfig] = []
    clean: list[ServerConfig] = []   # blocks without errors: only they are compared
    for block in blocks:
        before = len(reader.errors)
        enabled = reader.attr_bool(block, "enabled", True)   # a bad value reads as true
        if not enabled:
            inner = Reader(file, collect=True)
            server = _parse_block(inner, block, kind, conf_dir, enabled=False)
            reader.warnings.extend(inner.warnings)
            for exc in inner.errors:
                reader.warn(exc.line or block.sourceline, block_tag,
                            f"disabled server block is not used and contains an error: {exc}")
            if not inner.errors:
                servers.append(server)
            continue
        server = _parse_block(reader, block, kind, conf_dir, enabled=True)
        servers.append(server)
        if len(reader.errors) == before:
            clean.append(server)

    _check_unique(reader, clean)
    warnings = sorted(reader.warnings, key=lambda w: w.line or 0)
    errors = sorted(reader.errors, key=lambda e: e.line or 0)
    return tuple(servers), warnings, errors


def _check_unique(reader: Reader, servers: list[ServerConfig]) -> None:
    names: dict[str, ServerConfig] = {}
    binds: dict[tuple[str, int], ServerConfig] = {}
    for server in servers:
        if server.name in names:
            reader.record(ConfigError(
                server.file, server.line, "jmxName",
                f"{server.name!r} is already used by the server at line {names[server.name].line}; "
                f"expected a distinct <jmxName> for every enabled server block",
            ))
        names.setdefault(server.name, server)
        for addr in server.bind:
            if addr.port == 0:
                continue
            key = (addr.host, addr.port)
            if key in binds:
                reader.record(ConfigError(
                    server.file, server.line, "bind",
                    f"{addr} is already bound by the server at line {binds[key].line}; "
                    f"expected a distinct host:port for every enabled server block",
                ))
            binds.setdefault(key, server)


def _parse_block(reader: Reader, block: etree._Element, kind: str, conf_dir: str, *, enabled: bool) -> ServerConfig:
    file = reader.file
    smtp = kind == "smtp"
    extra: dict[str, str] = {}
    if smtp:
        known = _COMMON_ELEMENTS | _SMTP_ONLY
        extra["lmtpGreeting"] = "is only read for LMTP servers and is ignored here; use <smtpGreeting>"
    else:
        known = _COMMON_ELEMENTS | _LMTP_ONLY
        for tag in sorted(_SMTP_ONLY):
            extra[tag] = "has no effect on LMTP servers and is ignored"
        extra["smtpGreeting"] = "is not read for LMTP servers; use <lmtpGreeting>"
    reader.check_children(block, known, repeatable={"disabledFeatures"}, extra=extra)
    for attr in block.attrib:
        if attr != "enabled":
            reader.warn(block, f"{block.tag}[@{attr}]", "unknown attribute is ignored; only 'enabled' is read")

    default_name = f"{kind}server"
    name = reader.child_text(block, "jmxName") or default_name

    bind = _parse_bind(reader, block, DEFAULT_PORTS[kind])

    backlog = reader.child_int(block, "connectionBacklog", 200, minimum=0)
    timeout = reader.child_int(block, "connectiontimeout", 300, minimum=0)
    limit = reader.child_int(block, "connectionLimit", 0, minimum=0)
    limit_ip = reader.child_int(block, "connectionLimitPerIP", 0, minimum=0)

    hello_name, autodetect = _parse_hello_name(reader, block)

    io_workers = reader.child_int(block, "ioWorkerCount", _default_io_workers(), minimum=1)
    boss_workers = reader.child_int(block, "bossWorkerCount", None, minimum=1)
    max_exec = reader.child_int(block, "maxExecutorCount", 16, minimum=1)
    graceful = reader.child_bool(block, "gracefulShutdown", True)
    use_epoll = reader.child_bool(block, "useEpoll", False)
    proxy_required = reader.child_bool(block, "proxyRequired", False)
    proxy_first = reader.child_bool(block, "proxyFirst", True)

    high = _child_size(reader, block, "highWriteBufferWaterMark", "B")
    low = _child_size(reader, block, "lowWriteBufferWaterMark", "B")
    if high is not None and low is None:
        low = high
    elif low is not None and high is None:
        high = low
    if high is not None and low is not None and low > high:
        reader.fail(
            first_child(block, "lowWriteBufferWaterMark"), "lowWriteBufferWaterMark",
            f"{low} bytes is above highWriteBufferWaterMark ({high} bytes); expected low <= high",
        )
        low = high

    tls = _parse_tls(reader, block, conf_dir)

    max_message_size = _child_size(reader, block, "maxmessagesize", "K")
    if max_message_size is None:
        max_message_size = 0
    max_line_length = reader.child_int(block, "maxLineLength", 8192, minimum=None)
    if not MIN_LINE_LENGTH <= max_line_length <= MAX_LINE_LENGTH:
        reader.fail(
            first_child(block, "maxLineLength"), "maxLineLength",
            f"maxLineLength must be between {MIN_LINE_LENGTH} and {MAX_LINE_LENGTH}; got {max_line_length}",
        )
        max_line_length = 8192
    handler_timeout = reader.child_float(block, "handlerTimeout", 30.0, minimum=0.0)
    busy_poll = reader.child_int(block, "busyPoll", 100, minimum=0, maximum=MAX_BUSY_POLL)
    bare_newline = _parse_bare_newline(reader, block)

    if smtp:
        auth = _parse_auth(reader, block)
        authorized = _parse_authorized(reader, block)
        verify = _parse_verify_identity(reader, block)
        helo_enforce = reader.child_bool(block, "heloEhloEnforcement", True)
        brackets_enforce = reader.child_bool(block, "addressBracketsEnforcement", True)
        greeting = reader.child_text(block, "smtpGreeting") or None
        disabled: list[str] = []
        for el in children_named(block, "disabledFeatures"):
            for word in re.split(r"[,\s]+", text_of(el)):
                if word and word.upper() not in disabled:
                    disabled.append(word.upper())
        disabled_features = tuple(disabled)
    else:
        # Hard-wired for LMTP, as in James: no AUTH, no relaying, lenient syntax.
        auth = AuthConfig()
        authorized = NetworkSet()
        verify = "disabled"
        helo_enforce = False
        brackets_enforce = False
        greeting = reader.child_text(block, "lmtpGreeting") or None
        disabled_features = ()

    chain = _parse_handlerchain(reader, block, kind)

    return ServerConfig(
        kind=kind,
        enabled=enabled,
        name=name,
        bind=bind,
        connection_backlog=backlog,
        connection_timeout=timeout,
        connection_limit=limit,
        connection_limit_per_ip=limit_ip,
        hello_name=hello_name,
        hello_name_autodetect=autodetect,
        io_worker_count=io_workers,
        boss_worker_count=boss_workers,
        max_executor_count=max_exec,
        graceful_shutdown=graceful,
        use_epoll=use_epoll,
        proxy_required=proxy_required,
        proxy_first=proxy_first,
        tls=tls,
        auth=auth,
        authorized_addresses=authorized,
        verify_identity=verify,
        max_message_size=max_message_size,
        max_line_length=max_line_length,
        helo_ehlo_enforcement=helo_enforce,
        address_brackets_enforcement=brackets_enforce,
        smtp_greeting=greeting,
        disabled_features=disabled_features,
        handler_timeout=handler_timeout,
        busy_poll=busy_poll,
        bare_newline=bare_newline,
        high_write_buffer_water_mark=high,
        low_write_buffer_water_mark=low,
        handlerchain=chain,
        file=file,
        line=block.sourceline or 0,
    )


# ---------------------------------------------------------------------------------------------
# Individual options
# ---------------------------------------------------------------------------------------------

_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$"
)
_BIND_EXPECTED = "expected host:port with port 0-65535 (IPv6 as [addr]:port), several separated by commas"


def parse_bind_item(item: str) -> BindAddress:
    """Parse one ``host:port`` (or ``[v6]:port``); raises ``ValueError`` with the reason."""
    m = re.match(r"^\[([^\]]*)\]:(.*)$", item)
    if m:
        host, port_text = m.group(1), m.group(2)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{item!r}: {host!r} is not an IPv6 address; {_BIND_EXPECTED}") from None
    else:
        host, sep, port_text = item.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{item!r} has no host:port form; {_BIND_EXPECTED}")
        if ":" in host:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"{item!r}: {host!r} is not a valid host; {_BIND_EXPECTED}") from None
        elif not _valid_host(host):
            raise ValueError(f"{item!r}: {host!r} is not a valid host; {_BIND_EXPECTED}")
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"{item!r} is not a valid port; {_BIND_EXPECTED}")
    return BindAddress(host, int(port_text))


def _valid_host(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        pass
    if host.replace(".", "").isdigit():
        return False
    return bool(_HOSTNAME_RE.match(host))


def _parse_bind(reader: Reader, block: etree._Element, default_port: int) -> tuple[BindAddress, ...]:
    el = first_child(block, "bind")
    if el is None:
        return (BindAddress("0.0.0.0", default_port),)
    text = text_of(el)
    items = [i.strip() for i in text.split(",") if i.strip()]
    if not items:
        reader.fail(el, "bind", f"is empty; {_BIND_EXPECTED}")
        return (BindAddress("0.0.0.0", default_port),)
    out: list[BindAddress] = []
    for item in items:
        try:
            addr = parse_bind_item(item)
        except ValueError as exc:
            reader.fail(el, "bind", str(exc))
            continue
        if addr in out:
            reader.fail(el, "bind", f"{item!r} is listed twice; expected each host:port once")
            continue
        out.append(addr)
    return tuple(out) or (BindAddress("0.0.0.0", default_port),)


def _parse_hello_name(reader: Reader, block: etree._Element) -> tuple[str, bool]:
    el = first_child(block, "helloName")
    if el is None:
        return _autodetected_hostname(), True
    autodetect = reader.attr_bool(el, "autodetect", True)
    body = text_of(el)
    if autodetect:
        if body and el.get("autodetect") is None:
            reader.warn(
                el, "helloName",
                f"body {body!r} is ignored because autodetect defaults to true; "
                f"add autodetect=\"false\" to use it",
            )
        return _autodetected_hostname(), True
    return body or "localhost", False


def _autodetected_hostname() -> str:
    # socket.gethostname() reads the kernel's host name: no DNS lookup.
    try:
        name = socket.gethostname()
    except OSError:
        name = ""
    return name or "localhost"


def _child_size(reader: Reader, block: etree._Element, tag: str, default_unit: str) -> int | None:
    el = first_child(block, tag)
    if el is None:
        return None
    try:
        return parse_size(text_of(el), default_unit)
    except ValueError as exc:
        reader.fail(el, tag, str(exc))
        return None


def _parse_bare_newline(reader: Reader, block: etree._Element) -> str:
    """``forbidBareNewline``: ``reject`` (default; ``yes``/``true`` too) or ``normalize``, as
    Postfix's ``smtpd_forbid_bare_newline``.  Passing bare line ends on is not an option."""
    el = first_child(block, "forbidBareNewline")
    if el is None:
        return "reject"
    value = text_of(el).lower()
    mapping = {"reject": "reject", "yes": "reject", "true": "reject", "normalize": "normalize"}
    if value not in mapping:
        reader.fail(
            el, "forbidBareNewline",
            f"{text_of(el)!r} is not a valid mode; expected reject or normalize "
            "(bare CR, bare LF and NUL are never passed on)",
        )
        return "reject"
    return mapping[value]


def _parse_verify_identity(reader: Reader, block: etree._Element) -> str:
    el = first_child(block, "verifyIdentity")
    if el is None:
        return "strict"
    value = text_of(el).lower()
    mapping = {"true": "strict", "strict": "strict", "relaxed": "relaxed", "false": "disabled", "disabled": "disabled"}
    if value not in mapping:
        reader.fail(
            el, "verifyIdentity",
            f"{text_of(el)!r} is not a valid mode; expected strict, relaxed or disabled (true = strict, false = disabled)",
        )
        return "strict"
    return mapping[value]


def _parse_authorized(reader: Reader, block: etree._Element) -> NetworkSet:
    el = first_child(block, "authorizedAddresses")
    if el is None:
        return NetworkSet()
    nets = NetworkSet(text_of(el), file=reader.file, line=el.sourceline, element="authorizedAddresses")
    reader.warnings.extend(nets.warnings)
    return nets


def _parse_auth(reader: Reader, block: etree._Element) -> AuthConfig:
    auth_el = first_child(block, "auth")
    announce: str | None = None
    require_ssl = True
    plain = True
    required = False
    oidc: OidcConfig | None = None
    if auth_el is not None:
        reader.check_children(auth_el, _AUTH_ELEMENTS, extra=_AUTH_UNSUPPORTED)
        ann_el = first_child(auth_el, "announce")
        if ann_el is not None:
            value = text_of(ann_el)
            for mode in ANNOUNCE_MODES:
                if value.lower() == mode.lower():
                    announce = mode
                    break
            else:
                reader.fail(
                    ann_el, "announce",
                    f"{value!r} is not a valid announce mode; expected never, always or forUnauthorizedAddresses",
                )
        require_ssl = reader.child_bool(auth_el, "requireSSL", True)
        plain = reader.child_bool(auth_el, "plainAuthEnabled", True)
        required = reader.child_bool(auth_el, "required", False)
        oidc_el = first_child(auth_el, "oidc")
        if oidc_el is not None:
            oidc = _parse_oidc(reader, oidc_el)
    if announce is None:
        legacy = (reader.child_text(block, "authRequired") or "false").strip().lower()
        announce = {"true": "forUnauthorizedAddresses", "announce": "always"}.get(legacy, "never")
    return AuthConfig(announce=announce, require_ssl=require_ssl, plain_auth_enabled=plain, required=required, oidc=oidc)


def _parse_oidc(reader: Reader, el: etree._Element) -> OidcConfig | None:
    """None (after reporting why) when the section has an error."""
    before = len(reader.errors)
    reader.check_children(el, _OIDC_ELEMENTS, where="oidc")
    values: dict[str, str] = {}
    for tag, is_url in _OIDC_MANDATORY:
        child = first_child(el, tag)
        value = text_of(child)
        if not value:
            reader.fail(
                child if child is not None else el, "oidc",
                f"<{tag}> is mandatory inside <oidc>; expected <oidcConfigurationURL>, <jwksURL>, "
                f"<claim>, <scope> and <aud> to be set",
            )
            continue
        if is_url:
            _check_url(reader, child, tag, value)
        values[tag] = value

    def nested(parent_tag: str, tag: str, *, url: bool) -> str | None:
        parent = first_child(el, parent_tag)
        if parent is None:
            return None
        reader.check_children(parent, {"url", "auth"} if parent_tag == "introspection" else {"url"}, where=parent_tag)
        child = first_child(parent, tag)
        if child is None:
            return None
        value = text_of(child) or None
        if value and url:
            _check_url(reader, child, f"{parent_tag}.{tag}", value)
        return value

    introspection_url = nested("introspection", "url", url=True)
    introspection_auth = nested("introspection", "auth", url=False)
    userinfo_url = nested("userinfo", "url", url=True)
    if len(reader.errors) > before:
        return None
    return OidcConfig(
        oidc_configuration_url=values["oidcConfigurationURL"],
        jwks_url=values["jwksURL"],
        claim=values["claim"],
        scope=values["scope"],
        aud=values["aud"],
        introspection_url=introspection_url,
        introspection_auth=introspection_auth,
        userinfo_url=userinfo_url,
    )


def _check_url(reader: Reader, el: etree._Element, tag: str, value: str) -> None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        reader.fail(el, tag, f"{value!r} is not a valid URL; expected an absolute http:// or https:// URL")


# -- TLS --------------------------------------------------------------------------------------


def resolve_path(value: str, conf_dir: str) -> str:
    """Resolve a keystore/certificate location to an absolute path.

    ``file://conf/x`` is relative to the James home (the parent of ``conf_dir``),
    ``file:///abs`` and ``/abs`` are absolute, anything else is relative to
    ``conf_dir``.  ``classpath:`` and other schemes raise ``ValueError``.
    """
    conf_abs = os.path.abspath(conf_dir)
    home = os.path.dirname(conf_abs)
    if value.startswith("file://"):
        rest = value[len("file://"):]
        if rest.startswith("/"):
            return os.path.normpath(rest)
        return os.path.normpath(os.path.join(home, rest))
    if value.startswith("file:"):
        rest = value[len("file:"):]
        if rest.startswith("/"):
            return os.path.normpath(rest)
        return os.path.normpath(os.path.join(home, rest))
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", value):
        raise ValueError(
            f"{value!r} uses an unsupported location scheme; expected file://conf/name (relative to the "
            f"directory above the conf directory), file:///absolute/path, an absolute path, or a path "
            f"relative to the conf directory"
        )
    if os.path.isabs(value):
        return os.path.normpath(value)
    return os.path.normpath(os.path.join(conf_abs, value))


def _parse_tls(reader: Reader, block: etree._Element, conf_dir: str) -> TLSConfig:
    """A ``<tls>`` with an error is reported and read as no TLS, so that its key material
    is not opened too (that would only report the same mistake again)."""
    el = first_child(block, "tls")
    if el is None:
        return TLSConfig(file=reader.file, line=block.sourceline or 0)
    before = len(reader.errors)
    for attr in el.attrib:
        if attr not in ("socketTLS", "startTLS"):
            reader.warn(el, f"tls[@{attr}]", "unknown attribute is ignored; expected socketTLS and/or startTLS")
    reader.check_children(el, _TLS_ELEMENTS)
    socket_tls = reader.attr_bool(el, "socketTLS", False)
    start_tls = reader.attr_bool(el, "startTLS", False)
    enabled = socket_tls or start_tls
    if socket_tls and start_tls:
        reader.fail(
            el, "tls",
            "startTLS is only supported when using plain sockets; expected socketTLS=\"true\" (implicit TLS) "
            "or startTLS=\"true\" (STARTTLS), not both",
        )

    def path_of(parent: etree._Element, tag: str) -> str | None:
        child = first_child(parent, tag)
        value = text_of(child)
        if not value:
            return None
        try:
            return resolve_path(value, conf_dir)
        except ValueError as exc:
            if enabled:
                reader.fail(child, tag, str(exc))
            return value

    def words(parent_tag: str, child_tag: str) -> tuple[str, ...]:
        parent = first_child(el, parent_tag)
        if parent is None:
            return ()
        reader.check_children(parent, {child_tag}, repeatable={child_tag})
        return tuple(text_of(c) for c in children_named(parent, child_tag) if text_of(c))

    keystore = path_of(el, "keystore")
    private_key = path_of(el, "privateKey")
    certificates = path_of(el, "certificates")
    client_el = first_child(el, "clientAuth")
    truststore = None
    truststore_type = "JKS"
    truststore_secret = ""
    if client_el is not None:
        reader.check_children(client_el, _CLIENT_AUTH_ELEMENTS)
        truststore = path_of(client_el, "truststore")
        truststore_type = reader.child_text(client_el, "truststoreType") or "JKS"
        truststore_secret = reader.child_text(client_el, "truststoreSecret") or ""
    sni: list[SniCertificate] = []
    sni_el = first_child(el, "sni")
    if sni_el is not None:
        reader.check_children(sni_el, {"certificate"}, repeatable={"certificate"})
        for cert_el in children_named(sni_el, "certificate"):
            reader.check_children(cert_el, {"keystore", "keystoreType", "secret", "privateKey",
                                            "certificates"})
            hosts = tuple(h.strip().lower() for h in (cert_el.get("hosts") or "").replace(",", " ").split()
                          if h.strip())
            entry = SniCertificate(
                hosts=hosts, keystore=path_of(cert_el, "keystore"),
                keystore_type=reader.child_text(cert_el, "keystoreType") or "PKCS12",
                secret=reader.child_text(cert_el, "secret") or "",
                private_key=path_of(cert_el, "privateKey"),
                certificates=path_of(cert_el, "certificates"),
                file=reader.file, line=cert_el.sourceline or 0)
            if entry.keystore is None and (entry.private_key is None or entry.certificates is None):
                reader.fail(cert_el, "sni/certificate",
                            "no key material; expected a <keystore>, or <privateKey> and "
                            "<certificates>")
                continue
            sni.append(entry)
    session_cache = first_child(el, "sessionCache")
    if session_cache is not None:
        reader.check_children(session_cache, {"size", "timeout"})

    if enabled:
        mode = "socketTLS" if socket_tls else "startTLS"
        if keystore is None and (private_key is None or certificates is None):
            if private_key is not None or certificates is not None:
                missing = "certificates" if certificates is None else "privateKey"
                msg = (f"{mode} is enabled with a PEM key pair but <{missing}> is missing; "
                       f"expected both <privateKey> and <certificates>, or a <keystore>")
            else:
                msg = (f"{mode} is enabled but no key material is configured; "
                       f"expected a <keystore>, or <privateKey> and <certificates>")
            reader.fail(el, "tls", msg)
    if len(reader.errors) > before:
        return TLSConfig(file=reader.file, line=el.sourceline or 0)

    return TLSConfig(
        socket_tls=socket_tls,
        start_tls=start_tls,
        keystore=keystore,
        keystore_type=reader.child_text(el, "keystoreType") or "JKS",
        secret=reader.child_text(el, "secret") or "",
        private_key=private_key,
        certificates=certificates,
        supported_protocols=words("supportedProtocols", "protocol"),
        supported_cipher_suites=words("supportedCipherSuites", "cipherSuite"),
        client_auth=client_el is not None,
        truststore=truststore,
        truststore_type=truststore_type,
        truststore_secret=truststore_secret,
        sni=tuple(sni),
        file=reader.file,
        line=el.sourceline or 0,
    )


# -- handler chain ----------------------------------------------------------------------------


def _parse_handlerchain(reader: Reader, block: etree._Element, kind: str) -> HandlerChainConfig:
    default_core = DEFAULT_CORE_PACKAGES[kind]
    el = first_child(block, "handlerchain")
    if el is None:
        return HandlerChainConfig(core_package=default_core, file=reader.file, line=block.sourceline or 0)
    for attr in el.attrib:
        if attr not in ("coreHandlersPackage", "enableJmx", "jmxHandlersPackage"):
            reader.warn(el, f"handlerchain[@{attr}]", "unknown attribute is ignored; expected coreHandlersPackage or enableJmx")
    reader.check_children(el, {"handler"}, repeatable={"handler"})
    core = (el.get("coreHandlersPackage") or "").strip() or default_core
    enable_jmx = reader.attr_bool(el, "enableJmx", True)
    handlers: list[HandlerSpec] = []
    for h in children_named(el, "handler"):
        name = (h.get("class") or "").strip()
        if not name:
            reader.fail(h, "handler", "needs a class attribute; expected <handler class=\"...\">")
            continue
        handlers.append(HandlerSpec(name=name, params=element_parameters(h), element=h, file=reader.file,
                                    line=h.sourceline or 0))
    return HandlerChainConfig(core_package=core, handlers=tuple(handlers), enable_jmx=enable_jmx, file=reader.file, line=el.sourceline or 0)
