"""Configuration: James-compatible ``smtpserver.xml``, ``lmtpserver.xml`` and ``domainlist.xml``.

``load_config(conf_dir)`` reads the whole configuration directory and returns
an immutable :class:`Config`; invalid values raise :class:`ConfigError`
(``file:line: element: message``; :class:`ConfigErrors` holds all of them when
there are several), non-fatal findings are collected as :class:`ConfigWarning`
objects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .domainlist import DomainListConfig, load_domainlist, read_domainlist
from .errors import ConfigError, ConfigErrors, ConfigWarning
from .netmatch import NetworkSet
from .server import (
    AuthConfig,
    BindAddress,
    HandlerChainConfig,
    HandlerSpec,
    OidcConfig,
    ServerConfig,
    TLSConfig,
    load_servers,
    read_servers,
)
from .size import format_size, parse_size

__all__ = [
    "Config",
    "load_config",
    "describe_server",
    "ConfigError",
    "ConfigErrors",
    "ConfigWarning",
    "NetworkSet",
    "parse_size",
    "AuthConfig",
    "BindAddress",
    "HandlerChainConfig",
    "HandlerSpec",
    "OidcConfig",
    "ServerConfig",
    "TLSConfig",
    "DomainListConfig",
    "load_servers",
    "load_domainlist",
    "collect_config",
]

SMTP_FILE = "smtpserver.xml"
LMTP_FILE = "lmtpserver.xml"
DOMAINLIST_FILE = "domainlist.xml"


@dataclass(frozen=True)
class Config:
    conf_dir: str
    smtp_servers: tuple[ServerConfig, ...]
    lmtp_servers: tuple[ServerConfig, ...]
    domainlist: DomainListConfig
    warnings: tuple[ConfigWarning, ...] = ()

    @property
    def servers(self) -> tuple[ServerConfig, ...]:
        """All *enabled* servers, SMTP first."""
        return tuple(s for s in self.smtp_servers + self.lmtp_servers if s.enabled)


def load_config(conf_dir: str | os.PathLike[str]) -> Config:
    """Read ``smtpserver.xml``, ``lmtpserver.xml`` (optional) and ``domainlist.xml`` (optional).

    Every error of every file is raised at once (:class:`ConfigErrors` when there are
    several), so that the operator fixes them in one round."""
    config, errors = collect_config(conf_dir)
    if errors or config is None:
        raise ConfigErrors.of(errors)
    return config


def collect_config(conf_dir: str | os.PathLike[str]) -> tuple[Config | None, list[ConfigError]]:
    """:func:`load_config` that returns the errors instead of raising them: every file is
    read and every block of a server file checked to its end, so that
    ``chainmail check-config`` reports them all in one pass.  The :class:`Config` holds
    what could be read, bad values as their defaults (None when the directory does not
    exist)."""
    conf = os.fspath(conf_dir)
    if not os.path.isdir(conf):
        return None, [ConfigError(conf, None, "", "configuration directory not found; expected "
                                  "a directory containing smtpserver.xml")]
    errors: list[ConfigError] = []
    warnings: list[ConfigWarning] = []
    smtp_path = os.path.join(conf, SMTP_FILE)
    smtp, w, e = read_servers(smtp_path, "smtp", conf)
    warnings.extend(w)
    errors.extend(e)
    if not os.path.exists(smtp_path):
        warnings.append(ConfigWarning(smtp_path, None, "", "file not found; no SMTP server is configured"))
    lmtp, w, e = read_servers(os.path.join(conf, LMTP_FILE), "lmtp", conf)
    warnings.extend(w)
    errors.extend(e)
    domainlist, w, e = read_domainlist(os.path.join(conf, DOMAINLIST_FILE))
    warnings.extend(w)
    errors.extend(e)
    if not errors:   # a block read with defaults for its bad values would clash for nothing
        try:
            _check_across(smtp + lmtp)
        except ConfigError as exc:
            errors.append(exc)
    return Config(conf_dir=conf, smtp_servers=smtp, lmtp_servers=lmtp, domainlist=domainlist,
                  warnings=tuple(warnings)), errors


def _check_across(servers: tuple[ServerConfig, ...]) -> None:
    """jmxName and host:port must be unique across the SMTP and LMTP files too."""
    names: dict[str, ServerConfig] = {}
    binds: dict[tuple[str, int], ServerConfig] = {}
    for server in servers:
        if not server.enabled:
            continue
        other = names.get(server.name)
        if other is not None and other.file != server.file:
            raise ConfigError(
                server.file, server.line, "jmxName",
                f"{server.name!r} is already used by the server at {other.file}:{other.line}; "
                f"expected a distinct <jmxName> for every enabled server",
            )
        names.setdefault(server.name, server)
        for addr in server.bind:
            if addr.port == 0:
                continue
            other = binds.get((addr.host, addr.port))
            if other is not None and other.file != server.file:
                raise ConfigError(
                    server.file, server.line, "bind",
                    f"{addr} is already bound by the server at {other.file}:{other.line}; "
                    f"expected a distinct host:port for every enabled server",
                )
            binds.setdefault((addr.host, addr.port), server)


def _b(value: bool) -> str:
    return "true" if value else "false"


def _opt(value: str | None, absent: str = "unset") -> str:
    return value if value else absent


def describe_server(server: ServerConfig) -> list[tuple[str, str]]:
    """Every option of ``server`` as ``(name as written in the XML, effective value)``.

    Defaults are included, secrets are masked.  Used by ``chainmail check-config``.
    """
    smtp = server.kind == "smtp"
    out: list[tuple[str, str]] = [
        ("[@enabled]", _b(server.enabled)),
        ("jmxName", server.name),
        ("bind", ", ".join(str(b) for b in server.bind)),
        ("connectionBacklog", str(server.connection_backlog)),
        ("connectiontimeout", f"{server.connection_timeout} s"),
        ("connectionLimit", f"{server.connection_limit}" + (" (unlimited)" if server.connection_limit == 0 else "")),
        ("connectionLimitPerIP",
         f"{server.connection_limit_per_ip}" + (" (unlimited)" if server.connection_limit_per_ip == 0 else "")),
        ("helloName[@autodetect]", _b(server.hello_name_autodetect)),
        ("helloName", server.hello_name),
        ("ioWorkerCount", str(server.io_worker_count)),
        ("bossWorkerCount", "unset" if server.boss_worker_count is None else str(server.boss_worker_count)),
        ("maxExecutorCount", str(server.max_executor_count)),
        ("gracefulShutdown", _b(server.graceful_shutdown)),
        ("useEpoll", _b(server.use_epoll) + " (no effect)"),
        ("highWriteBufferWaterMark",
         "unset" if server.high_write_buffer_water_mark is None else f"{server.high_write_buffer_water_mark} B"),
        ("lowWriteBufferWaterMark",
         "unset" if server.low_write_buffer_water_mark is None else f"{server.low_write_buffer_water_mark} B"),
        ("proxyRequired", _b(server.proxy_required)),
        ("proxyFirst", _b(server.proxy_first)),
    ]
    tls = server.tls
    out += [("tls[@socketTLS]", _b(tls.socket_tls)), ("tls[@startTLS]", _b(tls.start_tls))]
    if tls.socket_tls or tls.start_tls:
        out += [
            ("tls/keystore", _opt(tls.keystore)),
            ("tls/keystoreType", tls.keystore_type),
            ("tls/secret", "********" if tls.secret else "(empty)"),
            ("tls/privateKey", _opt(tls.private_key)),
            ("tls/certificates", _opt(tls.certificates)),
            ("tls/supportedProtocols", ", ".join(tls.supported_protocols) or "library defaults"),
            ("tls/supportedCipherSuites", ", ".join(tls.supported_cipher_suites) or "library defaults"),
            ("tls/clientAuth", _b(tls.client_auth)),
        ]
        if tls.client_auth:
            out += [
                ("tls/clientAuth/truststore", _opt(tls.truststore)),
                ("tls/clientAuth/truststoreType", tls.truststore_type),
                ("tls/clientAuth/truststoreSecret", "********" if tls.truststore_secret else "(empty)"),
            ]
    if smtp:
        auth = server.auth
        out += [
            ("auth/announce", auth.announce),
            ("auth/requireSSL", _b(auth.require_ssl)),
            ("auth/plainAuthEnabled", _b(auth.plain_auth_enabled)),
            ("auth/required", _b(auth.required)),
        ]
        if auth.oidc is None:
            out.append(("auth/oidc", "unset (no OAUTHBEARER/XOAUTH2)"))
        else:
            o = auth.oidc
            out += [
                ("auth/oidc/oidcConfigurationURL", o.oidc_configuration_url),
                ("auth/oidc/jwksURL", o.jwks_url),
                ("auth/oidc/claim", o.claim),
                ("auth/oidc/scope", o.scope),
                ("auth/oidc/aud", _opt(o.aud)),
                ("auth/oidc/introspection/url", _opt(o.introspection_url)),
                ("auth/oidc/introspection/auth", "********" if o.introspection_auth else "unset"),
                ("auth/oidc/userinfo/url", _opt(o.userinfo_url)),
            ]
        out += [
            ("authorizedAddresses", str(server.authorized_addresses) or "none"),
            ("verifyIdentity", server.verify_identity),
        ]
    size = server.max_message_size
    out.append(("maxmessagesize", "0 (unlimited)" if size == 0 else f"{size} bytes ({format_size(size)})"))
    out.append(("maxLineLength", str(server.max_line_length)))
    out.append(("forbidBareNewline", server.bare_newline))
    if smtp:
        out += [
            ("heloEhloEnforcement", _b(server.helo_ehlo_enforcement)),
            ("addressBracketsEnforcement", _b(server.address_brackets_enforcement)),
            ("smtpGreeting", _opt(server.smtp_greeting, "default")),
            ("disabledFeatures", ", ".join(server.disabled_features) or "none"),
        ]
    else:
        out.append(("lmtpGreeting", _opt(server.smtp_greeting, "default")))
    out.append(("handlerTimeout", f"{server.handler_timeout:g} s"))
    out.append(("busyPoll", f"{server.busy_poll} microseconds" if server.busy_poll else "0 (off)"))
    chain = server.handlerchain
    out.append(("handlerchain[@coreHandlersPackage]", chain.core_package))
    out.append(("handlerchain[@enableJmx]", _b(chain.enable_jmx)))
    if not chain.handlers:
        out.append(("handlerchain/handler", "none"))
    for h in chain.handlers:
        params = ", ".join(f"{k}={v}" for k, v in h.params.items())
        out.append(("handlerchain/handler[@class]", h.name + (f" ({params})" if params else "")))
    return out
