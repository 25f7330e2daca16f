"""``/healthcheck``, ``/metrics`` and ``/reload``: the server's own state.

The checks are :mod:`chainmail.health`'s, the metrics :mod:`chainmail.metrics`'s (every
worker process summed: WebAdmin runs in the first one), the reload
:func:`chainmail.server.reload.request_reload` (SIGHUP to the supervisor)."""

from __future__ import annotations

from urllib.parse import quote

import trio

from .. import health, metrics
from ..server.reload import request_reload
from .http import Request, Response, Router, json_response

__all__ = ["add_routes", "PROMETHEUS_TYPE"]

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def add_routes(router: Router, conf: str, var: str) -> None:
    async def healthcheck(req: Request) -> Response:
        code, body = await health.healthcheck(req.query.get("check") or None,
                                              strict=req.has("strict"), conf=conf, var=var)
        return json_response(body, code)

    async def list_checks(req: Request) -> Response:
        return json_response([{"componentName": n, "escapedComponentName": quote(n, safe="")}
                              for n in health.component_names(var=var)])

    async def one_check(req: Request, name: str) -> Response:
        code, body = await health.healthcheck([name], strict=req.has("strict"), conf=conf,
                                              var=var)
        return json_response(body if code == 404 else body["checks"][0], code)

    async def scrape(req: Request) -> Response:
        metrics.flush_counts()   # this process's latest, on the loop that counts them
        # It reads the spool and the outgoing queues: off the event loop.
        text = await trio.to_thread.run_sync(metrics.render_prometheus)
        return Response(200, text.encode(), PROMETHEUS_TYPE)

    async def reload(req: Request) -> Response:
        request_reload()
        # The reload happens after this answer; its outcome is logged.
        return json_response({"message": "configuration reload requested"}, 202)

    router.add("GET", "/healthcheck", healthcheck)
    router.add("GET", "/healthcheck/checks", list_checks)
    router.add("GET", "/healthcheck/checks/{name}", one_check)
    router.add("GET", "/metrics", scrape)
    router.add("POST", "/reload", reload)
