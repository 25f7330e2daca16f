"""WebAdmin as a service of the process: ``async run(task_status)``, started with the
mailet container's services in the first worker process (or the only process).

It keeps its own connections to the stores; the SMTP servers and the command line see its
changes within a second, as they see each other's."""

from __future__ import annotations

import logging
import ssl
from types import SimpleNamespace
from typing import Any

import trio

from ..admin import AdminError, Stores
from ..config.errors import ConfigError
from . import address, domains, queues, repositories, system, tasks, users
from .auth import JwtVerifier
from .config import WebAdminConfig, load_webadmin
from .http import (HttpError, Request, Response, Router, call_handler, error_response,
                   serve_connection)

__all__ = ["WebAdminService", "webadmin_services"]

log = logging.getLogger("chainmail.webadmin")

_CORS_METHODS = "GET, HEAD, PUT, POST, DELETE, PATCH, OPTIONS"
_CORS_HEADERS = "Content-Type, Authorization, Accept, Origin, X-Requested-With, Content-Length"


def webadmin_services(conf: str, var: str, app_config: Any) -> list[WebAdminService]:
    """The WebAdmin service of ``conf/webadmin.properties``, if enabled (``ConfigError``
    for a bad file, a missing key or certificate)."""
    config = load_webadmin(conf)
    for warning in config.warnings:
        log.warning("%s", warning)
    if not config.enabled:
        return []
    return [WebAdminService(config, conf=conf, var=var, app_config=app_config)]


def _ssl_context(config: WebAdminConfig) -> ssl.SSLContext:
    """The keystore or PEM pair, read as smtpserver.xml's ``<tls>`` is."""
    from ..server.tls import build_server_context
    line = config.line_of("https.keystore") or config.line_of("https.certificates") \
        or config.line_of("https.enabled")
    tls = SimpleNamespace(
        file=config.file, line=line, supported_protocols=(), supported_cipher_suites=(),
        client_auth=False, keystore=config.keystore, keystore_type=config.keystore_type,
        secret=config.password, private_key=config.private_key,
        certificates=config.certificates, sni=())
    try:
        return build_server_context(tls)
    except ConfigError as err:
        key = err.element.replace("tls/keystore", "https.keystore") \
            .replace("tls/privateKey", "https.privateKey") \
            .replace("tls/certificates", "https.certificates").replace("tls", "https.enabled")
        raise ConfigError(err.file, err.line, key, err.message) from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(config.file, line, "https", f"cannot use the key material: {exc}") from None


class WebAdminService:
    def __init__(self, config: WebAdminConfig, *, conf: str, var: str, app_config: Any) -> None:
        self.config = config
        self.ssl = _ssl_context(config) if config.https else None
        self.verifier = (JwtVerifier(config.jwt_public_key or "", file=config.file,
                                     line=config.line_of("jwt.publickeypem.url"))
                         if config.jwt else None)
        self.stores = Stores(app_config, conf, var)
        self.tasks = tasks.TaskRegistry()
        self.limiter = trio.CapacityLimiter(4)
        self.bound: list[tuple[str, int]] = []
        router = self.router = Router()
        domains.add_routes(router, self.stores)
        users.add_routes(router, self.stores)
        address.add_routes(router, self.stores)
        from ..admin import queues as queue_ops
        queue_ops.use_conf(conf)   # rabbitmq.properties: the queues on the broker
        queues.add_routes(router, var, self.tasks)
        repositories.add_routes(router, var, self.tasks, conf)
        tasks.add_routes(router, self.tasks)
        system.add_routes(router, conf, var)

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        try:
            listeners: list[Any] = list(await trio.open_tcp_listeners(cfg.port, host=cfg.host))
        except OSError as exc:
            raise OSError(exc.errno, f"{cfg.file}: webadmin: cannot bind {cfg.host}:{cfg.port}: "
                                     f"{exc.strerror}") from exc
        for listener in listeners:
            host, port = listener.socket.getsockname()[:2]
            self.bound.append((host, port))
            log.info("webadmin (%s) listening on %s", "https" if self.ssl else "http",
                     f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        if self.ssl is not None:
            listeners = [trio.SSLListener(lst, self.ssl, https_compatible=True)
                         for lst in listeners]
        task_status.started()
        try:
            await trio.serve_listeners(self._connection, listeners)
        finally:
            self.stores.close()

    async def _connection(self, stream: Any) -> None:
        try:
            await serve_connection(stream, self.answer, self._extra_headers)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass   # the client went away, or its TLS handshake failed

    def _extra_headers(self, request: Request | None) -> list[tuple[str, str]]:
        if not self.config.cors:
            return []
        return [("Access-Control-Allow-Origin", self.config.cors_origin),
                ("Access-Control-Allow-Methods", _CORS_METHODS),
                ("Access-Control-Allow-Headers", _CORS_HEADERS),
                ("Access-Control-Allow-Credentials", "true")]

    async def answer(self, request: Request) -> Response:
        """Authenticate, route and run one request; every failure in James's error shape."""
        if request.method == "OPTIONS" and self.config.cors:
            return Response(200)   # a CORS preflight carries no token
        if self.verifier is not None:
            reason = self.verifier.verify(request.headers.get("authorization"))
            if reason is not None:
                log.info("webadmin: %s %s refused: %s", request.method, request.path, reason)
                return error_response(401, reason, headers=[
                    ("WWW-Authenticate", 'Bearer realm="chainmail webadmin"')])
        try:
            handler, params = self.router.match(request.method, request.segments)
            response = await call_handler(handler, request, params, self.limiter)
        except HttpError as exc:
            response = error_response(exc.status, exc.message, exc.type, exc.headers)
        except AdminError as exc:
            response = error_response(exc.status, str(exc))
        except ConfigError as exc:
            response = error_response(500, f"configuration error: {exc}")
        except Exception as exc:
            log.exception("webadmin: %s %s failed", request.method, request.path)
            response = error_response(500, f"internal error: {type(exc).__name__}")
        level = logging.DEBUG if request.method in ("GET", "HEAD") else logging.INFO
        log.log(level, "webadmin: %s %s -> %d", request.method, request.path, response.status)
        return response
