"""``conf/rabbitmq.properties``: James's RabbitMQ keys, read into a frozen dataclass.

The file's presence is what puts the spool and the outgoing queue on RabbitMQ:
without it :func:`load_rabbitmq` returns ``None`` and each node keeps its own spool in
``var/``.  A file that is there but wrong is an error naming the file, line and key.

Keys (James's): ``uri`` (required, ``amqp://`` or ``amqps://``), ``hosts`` (``host:port``
list for a cluster; the URI's host when absent), ``management.uri``, ``management.user``,
``management.password`` (the management API, checked but not used yet),
``quorum.queues.enable`` (default **true** here, unlike James: the shared spool needs
replicated queues), ``quorum.queues.replication.factor``, and the TLS keys
``ssl.enabled``, ``ssl.validation.strategy`` (default, ignore, override),
``ssl.truststore`` (PEM CA file, required by ``override``), ``ssl.hostname.verifier``
(default, accept_any_hostname), ``ssl.keystore`` (PEM holding the client certificate and
its key) and ``ssl.keystore.password`` (that key's passphrase).  chainmail adds
``publish.confirm.timeout`` (default 10 s): how long a publish waits for the broker's
confirm before it fails.  James's pool, mail queue view, task and notification keys are
accepted and ignored.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ...config.errors import ConfigError, ConfigWarning
from ...config.properties import Properties, read_properties_file

__all__ = ["FILE", "RabbitMQConfig", "load_rabbitmq", "parse_rabbitmq"]

FILE = "rabbitmq.properties"

VALIDATION_STRATEGIES = ("default", "ignore", "override")
HOSTNAME_VERIFIERS = ("default", "accept_any_hostname")

_KNOWN = {"uri", "hosts", "management.uri", "management.user", "management.password",
          "quorum.queues.enable", "quorum.queues.replication.factor", "ssl.enabled",
          "ssl.management.enabled", "ssl.validation.strategy", "ssl.truststore",
          "ssl.truststore.password", "ssl.hostname.verifier", "ssl.keystore",
          "ssl.keystore.password", "publish.confirm.timeout", "blob.threshold"}
#: James keys for its own connection pools, Cassandra views and tasks: nothing to do here
_IGNORED_PREFIXES = ("connection.pool.", "channel.pool.", "mailqueue.", "task.",
                     "notification.", "event.bus.", "cassandra.")


@dataclass(frozen=True)
class RabbitMQConfig:
    uri: str
    hosts: tuple[tuple[str, int], ...] = ()
    management_uri: str | None = None
    management_user: str | None = None
    management_password: str | None = None
    quorum_queues: bool = True
    replication_factor: int | None = None
    ssl_enabled: bool = False
    ssl_validation_strategy: str = "default"
    ssl_truststore: str | None = None
    ssl_hostname_verifier: str = "default"
    ssl_keystore: str | None = None
    ssl_keystore_password: str | None = None
    confirm_timeout: float = 10.0
    #: content at least this large goes to PostgreSQL's blob table (with postgres.properties),
    #: the queue message carrying a reference; 0: always in the queue message
    blob_threshold: int = 1024 * 1024
    file: str = ""
    lines: dict[str, int] = field(default_factory=dict, compare=False)
    warnings: tuple[ConfigWarning, ...] = ()

    def line_of(self, key: str) -> int | None:
        return self.lines.get(key)

    @property
    def tls(self) -> bool:
        return self.ssl_enabled or urlsplit(self.uri).scheme == "amqps"

    def describe(self) -> str:
        """Where the broker is, for log lines and errors (never the password)."""
        parts = urlsplit(self.uri)
        user = f"{parts.username}@" if parts.username else ""
        host = parts.hostname or "localhost"
        host = f"[{host}]" if ":" in host else host
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{user}{host}{port}{parts.path or '/'}"

    def endpoints(self) -> list[str]:
        """The URIs to try in turn: ``uri`` itself, then ``uri`` with each of ``hosts``."""
        parts = urlsplit(self.uri)
        out = [self.uri]
        auth = parts.netloc.rpartition("@")[0]
        for host, port in self.hosts:
            hostpart = f"[{host}]" if ":" in host else host
            netloc = f"{auth}@{hostpart}:{port}" if auth else f"{hostpart}:{port}"
            uri = parts._replace(netloc=netloc).geturl()
            if uri not in out:
                out.append(uri)
        return out

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context of the ``ssl.*`` keys; ``None`` for plain AMQP."""
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.ssl_truststore
                                             if self.ssl_validation_strategy == "override"
                                             else None)
        if self.ssl_validation_strategy == "ignore":
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif self.ssl_hostname_verifier == "accept_any_hostname":
            context.check_hostname = False
        if self.ssl_keystore:
            context.load_cert_chain(self.ssl_keystore, password=self.ssl_keystore_password)
        return context


def load_rabbitmq(conf_dir: str | os.PathLike[str]) -> RabbitMQConfig | None:
    """The configuration of ``<conf_dir>/rabbitmq.properties``; ``None`` without the file.
    ``ConfigError`` (file:line: key: what is expected) for a bad value."""
    conf = os.fspath(conf_dir)
    path = os.path.join(conf, FILE)
    text = read_properties_file(path)
    if text is None:
        return None
    return parse_rabbitmq(text, path, conf)


def parse_rabbitmq(text: str, path: str, conf_dir: str) -> RabbitMQConfig:
    """The configuration of the properties ``text`` read from ``path``; relative file
    names resolve against ``conf_dir``."""
    props = Properties(text, path, _KNOWN, lambda key: key.startswith(_IGNORED_PREFIXES))
    values, lines, warnings, fail = props.values, props.lines, props.warnings, props.fail
    boolean, choice = props.boolean, props.choice

    def pem_file(key: str) -> str | None:
        return props.pem_file(key, conf_dir)

    uri = values.get("uri", "")
    if not uri:
        raise ConfigError(path, lines.get("uri"), "uri",
                          "required: the broker's address, such as amqp://user:pass@host:5672/")
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise fail("uri", f"{uri!r}: {exc}") from None
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        raise fail("uri", f"{uri!r}: expected amqp://host[:port][/vhost] or amqps://...")

    hosts: list[tuple[str, int]] = []
    for item in filter(None, (h.strip() for h in values.get("hosts", "").split(","))):
        host, sep, port_text = item.rpartition(":")
        if not sep:
            host, port_text = item, str(parts.port or (5671 if parts.scheme == "amqps" else 5672))
        host = host.strip("[]")
        if not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise fail("hosts", f"{item!r}: expected host:port (a port from 1 to 65535)")
        hosts.append((host, int(port_text)))

    management_uri = values.get("management.uri") or None
    if management_uri is not None:
        mparts = urlsplit(management_uri)
        if mparts.scheme not in ("http", "https") or not mparts.hostname:
            raise fail("management.uri", f"{management_uri!r}: expected http://host:15672 "
                                         "or https://...")

    factor: int | None = None
    if values.get("quorum.queues.replication.factor"):
        text_factor = values["quorum.queues.replication.factor"]
        if not text_factor.isdigit() or int(text_factor) < 1:
            raise fail("quorum.queues.replication.factor",
                       f"{text_factor!r}: expected a whole number of at least 1")
        factor = int(text_factor)

    strategy = choice("ssl.validation.strategy", VALIDATION_STRATEGIES)
    truststore = pem_file("ssl.truststore")
    if strategy == "override" and truststore is None:
        raise fail("ssl.validation.strategy",
                   "override needs ssl.truststore (the PEM file of the CA to trust)")

    timeout = 10.0
    if values.get("publish.confirm.timeout"):
        from ...remote.config import DelayError, parse_duration_ms
        try:
            timeout = parse_duration_ms(values["publish.confirm.timeout"], 1000) / 1000
        except DelayError as exc:
            raise fail("publish.confirm.timeout", str(exc)) from None
        if timeout <= 0:
            raise fail("publish.confirm.timeout",
                       f"{values['publish.confirm.timeout']!r}: expected more than 0 seconds")

    blob_threshold = 1024 * 1024
    if values.get("blob.threshold"):
        from ...config.size import parse_size
        try:
            blob_threshold = parse_size(values["blob.threshold"], "B")
        except ValueError as exc:
            raise fail("blob.threshold", str(exc)) from None

    return RabbitMQConfig(
        uri=uri, hosts=tuple(hosts), management_uri=management_uri,
        management_user=values.get("management.user") or None,
        management_password=values.get("management.password") or None,
        quorum_queues=boolean("quorum.queues.enable", True), replication_factor=factor,
        ssl_enabled=boolean("ssl.enabled", False), ssl_validation_strategy=strategy,
        ssl_truststore=truststore,
        ssl_hostname_verifier=choice("ssl.hostname.verifier", HOSTNAME_VERIFIERS),
        ssl_keystore=pem_file("ssl.keystore"),
        ssl_keystore_password=values.get("ssl.keystore.password") or None,
        confirm_timeout=timeout, blob_threshold=blob_threshold, file=path, lines=lines, warnings=tuple(warnings))
