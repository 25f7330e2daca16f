"""``/healthcheck``, ``/metrics`` and ``/reload``: the server's own state.

The health checks and the reload live elsewhere (``chainmail.health.run_checks``,
``chainmail.server.reload.request_reload``); these routes call them when the installed
chainmail has them.  ``/metrics`` is this process's counters (WebAdmin runs in the first
worker process)."""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable
from urllib.parse import quote

import trio

from .http import HttpError, Request, Response, Router, error_response, json_response

__all__ = ["add_routes", "PROMETHEUS_TYPE"]

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_ORDER = {"healthy": 0, "degraded": 1, "unhealthy": 2}


def _optional(module: str, name: str) -> Callable[..., Any] | None:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


async def _call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """An async function is awaited here; a plain one runs in a worker thread."""
    if inspect.iscoroutinefunction(function):
        return await function(*args, **kwargs)
    result = await trio.to_thread.run_sync(lambda: function(*args, **kwargs))
    if inspect.isawaitable(result):
        return await result
    return result


def _check(result: Any) -> dict[str, Any]:
    """One check's result, a mapping or an object, in James's shape."""
    get = result.get if isinstance(result, dict) else (lambda k, d=None: getattr(result, k, d))
    name = str(get("componentName") or get("name") or "unnamed")
    status = str(get("status") or "unhealthy").lower()
    if status not in _ORDER:
        status = "unhealthy"
    return {"componentName": name, "escapedComponentName": quote(name, safe=""),
            "status": status, "cause": get("cause")}


def add_routes(router: Router, conf: str, var: str) -> None:
    async def checks() -> list[dict[str, Any]]:
        run_checks = _optional("chainmail.health", "run_checks")
        if run_checks is None:
            return []
        return [_check(r) for r in await _call(run_checks, conf=conf, var=var)]

    async def healthcheck(req: Request) -> Response:
        results = await checks()
        status = max((r["status"] for r in results), key=_ORDER.__getitem__, default="healthy")
        return json_response({"status": status, "checks": results},
                             503 if status == "unhealthy" else 200)

    async def list_checks(req: Request) -> Response:
        return json_response([{k: r[k] for k in ("componentName", "escapedComponentName")}
                              for r in await checks()])

    async def one_check(req: Request, name: str) -> Response:
        for result in await checks():
            if result["componentName"] == name:
                return json_response(result, 503 if result["status"] == "unhealthy" else 200)
        raise HttpError(404, f"no health check named {name!r}")

    async def metrics(req: Request) -> Response:
        from ..metrics import render_prometheus
        return Response(200, render_prometheus().encode(), PROMETHEUS_TYPE)

    async def reload(req: Request) -> Response:
        request_reload = _optional("chainmail.server.reload", "request_reload")
        if request_reload is None:
            return error_response(501, "configuration reload is not available in this chainmail")
        result = request_reload()
        if inspect.isawaitable(result):
            await result
        # The reload happens after this answer; its outcome is logged.
        return json_response({"message": "configuration reload requested"}, 202)

    router.add("GET", "/healthcheck", healthcheck)
    router.add("GET", "/healthcheck/checks", list_checks)
    router.add("GET", "/healthcheck/checks/{name}", one_check)
    router.add("GET", "/metrics", metrics)
    router.add("POST", "/reload", reload)
