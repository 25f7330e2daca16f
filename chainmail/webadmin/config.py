"""``conf/webadmin.properties``: James's WebAdmin keys, read into a frozen dataclass.

A missing file means WebAdmin is off, as James's ``enabled`` defaults to false.  Errors
name the file, the line and what was expected, like the XML configuration's."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..config.errors import ConfigError, ConfigWarning
from ..config.properties import parse_properties

__all__ = ["FILE", "WebAdminConfig", "load_webadmin"]

FILE = "webadmin.properties"
DEFAULT_PORT = 8000
DEFAULT_HOST = "127.0.0.1"

_BOOLEANS = {"enabled", "https.enabled", "jwt.enabled", "cors.enable"}
_STRINGS = {"host", "https.keystore", "https.password", "https.keystoreType",
            "https.certificates", "https.privateKey", "jwt.publickeypem.url", "cors.origin"}
#: James keys chainmail reads but has no use for (its own thread model, its extensions)
_IGNORED = {"https.trust.keystore", "https.trust.password", "maxThreadCount", "minThreadCount",
            "url.prefix", "extensions.routes", "jwt.enable"}


@dataclass(frozen=True)
class WebAdminConfig:
    enabled: bool = False
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    https: bool = False
    keystore: str | None = None
    keystore_type: str = "PKCS12"
    password: str = ""
    certificates: str | None = None
    private_key: str | None = None
    jwt: bool = False
    jwt_public_key: str | None = None
    cors: bool = False
    cors_origin: str = "*"
    file: str = ""
    lines: dict[str, int] = field(default_factory=dict)
    warnings: tuple[ConfigWarning, ...] = ()

    def line_of(self, key: str) -> int | None:
        return self.lines.get(key)


def load_webadmin(conf_dir: str) -> WebAdminConfig:
    """The configuration of ``<conf_dir>/webadmin.properties`` (WebAdmin off without it)."""
    from ..config.server import resolve_path
    path = os.path.join(conf_dir, FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        return WebAdminConfig(file=path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, "", f"cannot read: {exc}") from None
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    warnings: list[ConfigWarning] = []
    for line, key, value in parse_properties(text):
        if key in _BOOLEANS or key in _STRINGS or key == "port":
            values[key], lines[key] = value, line
        elif key not in _IGNORED:
            known = ", ".join(sorted(_BOOLEANS | _STRINGS | {"port"}))
            warnings.append(ConfigWarning(path, line, key, f"unknown key, ignored (known: {known})"))

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(path, lines.get(key), key, message)

    def boolean(key: str, default: bool = False) -> bool:
        value = values.get(key)
        if value is None or value == "":
            return default
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise fail(key, f"{value!r} is not a boolean; expected true or false")

    def location(key: str) -> str | None:
        value = values.get(key)
        if not value:
            return None
        try:
            return resolve_path(value, conf_dir)
        except ValueError as exc:
            raise fail(key, str(exc)) from None

    port_text = values.get("port", "")
    try:
        port = int(port_text) if port_text else DEFAULT_PORT
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise fail("port", f"{port_text!r} is not a port; expected a number from 0 to 65535 "
                           f"(0 picks a free port), James's default is {DEFAULT_PORT}")
    config = WebAdminConfig(
        enabled=boolean("enabled"), host=values.get("host") or DEFAULT_HOST, port=port,
        https=boolean("https.enabled"), keystore=location("https.keystore"),
        keystore_type=values.get("https.keystoreType") or "PKCS12",
        password=values.get("https.password", ""), certificates=location("https.certificates"),
        private_key=location("https.privateKey"), jwt=boolean("jwt.enabled"),
        jwt_public_key=location("jwt.publickeypem.url"), cors=boolean("cors.enable"),
        cors_origin=values.get("cors.origin") or "*", file=path, lines=lines,
        warnings=tuple(warnings))
    if config.https and not config.keystore and not (config.certificates and config.private_key):
        raise fail("https.enabled", "https is enabled without key material; expected "
                                    "https.keystore (PKCS12, opened by https.password), or "
                                    "https.certificates and https.privateKey (PEM files)")
    if config.jwt and not config.jwt_public_key:
        raise fail("jwt.enabled", "JWT is enabled without a key; expected jwt.publickeypem.url "
                                  "(file:// URL or path of the PEM public key of the token issuer)")
    return config
