"""A small HTTP/1.1 server on trio and h11: keep-alive, bounded requests, James's JSON errors.

Handlers are plain functions ``handler(request, **path_params) -> Response`` that run in a
worker thread (the stores block), or ``async`` functions that run on the loop.  Path
parameters are whole segments, percent-decoded after the split, so ``var%2Fmail%2Ferror``
is one parameter ``var/mail/error``, as James's clients send repository paths."""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, unquote, urlsplit

import h11
import trio

__all__ = ["HttpError", "Request", "Response", "Router", "serve_connection", "json_response",
           "no_content", "error_response", "MAX_BODY"]

log = logging.getLogger("chainmail.webadmin")

#: bodies beyond this are refused with 413 (WebAdmin's bodies are a few hundred bytes)
MAX_BODY = 1024 * 1024
MAX_HEAD = 16 * 1024
IDLE_TIMEOUT = 60.0
_READ = 64 * 1024

#: James's ErrorResponder types by status
ERROR_TYPES = {400: "InvalidArgument", 401: "InvalidArgument", 404: "notFound",
               405: "InvalidArgument", 409: "WrongState", 413: "InvalidArgument",
               500: "serverError", 501: "serverError", 503: "serverError"}
_REASONS = {200: b"OK", 201: b"Created", 202: b"Accepted", 204: b"No Content", 400: b"Bad Request",
            401: b"Unauthorized", 404: b"Not Found", 405: b"Method Not Allowed",
            409: b"Conflict", 413: b"Content Too Large", 500: b"Internal Server Error",
            501: b"Not Implemented", 503: b"Service Unavailable"}


class HttpError(Exception):
    """Answer with James's error body."""

    def __init__(self, status: int, message: str, *, type: str | None = None,
                 headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ERROR_TYPES.get(status, "serverError")
        self.headers = headers or []


@dataclass
class Request:
    method: str
    target: str
    path: str
    segments: list[str]
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def has(self, name: str) -> bool:
        return name in self.query

    def json(self) -> Any:
        if not self.body.strip():
            raise HttpError(400, "the request needs a JSON body")
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"the body is not valid JSON: {exc}") from None


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_response(obj: Any, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json",
                    headers or [])


def no_content() -> Response:
    return Response(204)


def error_response(status: int, message: str, type: str | None = None,
                   headers: list[tuple[str, str]] | None = None) -> Response:
    """James's error shape: statusCode, type, message, details."""
    body = {"statusCode": status, "type": type or ERROR_TYPES.get(status, "serverError"),
            "message": message, "details": None}
    return json_response(body, status, headers)


Handler = Callable[..., Any]


class Router:
    """Routes by method and path pattern (``/users/{username}``)."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, list[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method.upper(), [p for p in pattern.split("/") if p], handler))

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.add(method, pattern, handler)
            return handler
        return register

    def match(self, method: str, segments: list[str]) -> tuple[Handler, dict[str, str]]:
        allowed: set[str] = set()
        for verb, pattern, handler in self._routes:
            params = _match(pattern, segments)
            if params is None:
                continue
            if verb == method or (method == "HEAD" and verb == "GET" and not any(
                    v == "HEAD" and _match(p, segments) is not None for v, p, _ in self._routes)):
                return handler, params
            allowed.add(verb)
        if allowed:
            raise HttpError(405, f"{method} is not supported here; allowed: "
                                 f"{', '.join(sorted(allowed))}",
                            headers=[("Allow", ", ".join(sorted(allowed)))])
        raise HttpError(404, f"no such resource: /{'/'.join(segments)}")


def _match(pattern: list[str], segments: list[str]) -> dict[str, str] | None:
    if len(pattern) != len(segments):
        return None
    params = {}
    for want, got in zip(pattern, segments):
        if want.startswith("{") and want.endswith("}"):
            params[want[1:-1]] = got
        elif want != got:
            return None
    return params


def parse_target(method: str, target: str, headers: dict[str, str], body: bytes) -> Request:
    parts = urlsplit(target)
    raw = [s for s in parts.path.split("/") if s]
    segments = [unquote(s, errors="strict") for s in raw]
    query = parse_qs(parts.query, keep_blank_values=True)
    return Request(method, target, parts.path or "/", segments, query, headers, body)


App = Callable[[Request], Awaitable[Response]]


async def call_handler(handler: Handler, request: Request, params: dict[str, str],
                       limiter: trio.CapacityLimiter) -> Response:
    """Sync handlers block (SQLite, files): a worker thread; async ones run here."""
    if inspect.iscoroutinefunction(handler):
        return await handler(request, **params)
    return await trio.to_thread.run_sync(lambda: handler(request, **params), limiter=limiter)


class _Connection:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)

    async def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            with trio.move_on_after(IDLE_TIMEOUT):
                data = await self.stream.receive_some(_READ)
                self.conn.receive_data(bytes(data))
                continue
            return None   # idle too long

    async def send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def respond(self, response: Response, method: str, extra: list[tuple[str, str]],
                      close: bool) -> None:
        headers = [(k, v) for k, v in (*response.headers, *extra)]
        if response.content_type:
            headers.append(("Content-Type", response.content_type))
        if response.status != 204 and response.status >= 200:
            headers.append(("Content-Length", str(len(response.body))))
        if close:
            headers.append(("Connection", "close"))
        await self.send(h11.Response(status_code=response.status, headers=headers,
                                     reason=_REASONS.get(response.status, b"")))
        if response.body and method != "HEAD" and response.status != 204:
            await self.send(h11.Data(data=response.body))
        await self.send(h11.EndOfMessage())


async def serve_connection(stream: trio.abc.Stream, app: App,
                           extra_headers: Callable[[Request | None], list[tuple[str, str]]]) -> None:
    """Requests of one connection, one after the other, until it closes or idles out."""
    c = _Connection(stream)
    try:
        while True:
            try:
                event = await c.next_event()
            except h11.RemoteProtocolError as exc:
                if c.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await c.respond(error_response(exc.error_status_hint, f"bad request: {exc}"),
                                    "GET", extra_headers(None), True)
                return
            if event is None or isinstance(event, (h11.ConnectionClosed, h11.EndOfMessage)):
                return
            if not isinstance(event, h11.Request):
                return
            method = event.method.decode("ascii", "replace").upper()
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
            target = event.target.decode("latin-1")
            response, close = await _read_and_answer(c, app, method, target, headers)
            if response is None:
                return
            request_for_headers = None
            try:
                request_for_headers = parse_target(method, target, headers, b"")
            except (UnicodeDecodeError, ValueError):
                pass
            await c.respond(response, method, extra_headers(request_for_headers), close)
            if close or c.conn.our_state is h11.MUST_CLOSE:
                return
            try:
                c.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
        return
    finally:
        with trio.move_on_after(1) as cleanup:
            cleanup.shield = True
            try:
                await stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass


async def _read_and_answer(c: _Connection, app: App, method: str, target: str,
                           headers: dict[str, str]) -> tuple[Response | None, bool]:
    """Read the body (at most MAX_BODY octets) and answer; (response, close after it)."""
    length = headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > MAX_BODY:
        return error_response(413, f"the body is larger than {MAX_BODY} octets"), True
    if c.conn.they_are_waiting_for_100_continue:
        await c.send(h11.InformationalResponse(status_code=100, headers=[]))
    body = bytearray()
    while True:
        try:
            event = await c.next_event()
        except h11.RemoteProtocolError as exc:
            return error_response(400, f"bad request: {exc}"), True
        if event is None or isinstance(event, h11.ConnectionClosed):
            return None, True
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                return error_response(413, f"the body is larger than {MAX_BODY} octets"), True
            continue
        if isinstance(event, h11.EndOfMessage):
            break
    try:
        request = parse_target(method, target, headers, bytes(body))
    except (UnicodeDecodeError, ValueError):
        return error_response(400, "the path is not valid percent-encoded UTF-8"), False
    return await app(request), False
