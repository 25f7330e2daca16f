"""``/mailQueues``: the spool (``spool``) and RemoteDelivery's outgoing queues.

Deleting and clearing answer with a task, as in James; the work is already done when the
answer comes (:mod:`.tasks`).  A flush asks the outgoing queues to try their delayed mail
now; the spool has no delayed mail to flush."""

from __future__ import annotations

from datetime import datetime, timezone

from ..admin import Invalid
from ..admin import queues as ops
from .http import Request, Response, Router, json_response, no_content
from .tasks import TaskRegistry

__all__ = ["add_routes"]


def _iso(epoch: float) -> str | None:
    if epoch <= 0:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def _limit(req: Request) -> int | None:
    text = req.param("limit")
    if text is None:
        return None
    if not text.isdigit() or int(text) < 1:
        raise Invalid(f"limit must be a strictly positive integer, not {text!r}")
    return int(text)


def add_routes(router: Router, var: str, tasks: TaskRegistry) -> None:
    def list_queues(req: Request) -> Response:
        return json_response(ops.queue_names(var))

    def details(req: Request, queue: str) -> Response:
        return json_response({"name": queue, "size": len(ops.open_queue(var, queue).list())})

    def mails(req: Request, queue: str) -> Response:
        limit = _limit(req)
        listed = ops.open_queue(var, queue).list()[:limit]
        return json_response([{"name": ops.qid(e), "sender": e.envelope.sender or None,
                               "recipients": list(e.envelope.recipients),
                               "nextDelivery": _iso(ops.next_attempt(e))} for e in listed])

    def delete_mails(req: Request, queue: str) -> Response:
        ops.open_queue(var, queue)
        given = {k: req.param(k) for k in ("sender", "recipient", "name") if req.has(k)}
        unknown = sorted(set(req.query) - {"sender", "recipient", "name"})
        if unknown or len(given) > 1 or any(not v for v in given.values()):
            raise Invalid("give exactly one of the query parameters sender, recipient or name "
                          "(or none, to clear the queue)")
        if not given:
            def clear() -> dict:
                before, after = ops.remove_matching(var, queue)
                return {"mailQueueName": queue, "initialCount": before, "remainingCount": after}
            return tasks.run("clear-mail-queue", clear)

        def delete() -> dict:
            before, after = ops.remove_matching(
                var, queue, sender=given.get("sender"), recipient=given.get("recipient"),
                mail_name=given.get("name"))
            return {"queue": queue, "initialCount": before, "remainingCount": after,
                    "sender": given.get("sender"), "name": given.get("name"),
                    "recipient": given.get("recipient")}
        return tasks.run("delete-mails-from-mail-queue", delete)

    def flush(req: Request, queue: str) -> Response:
        ops.open_queue(var, queue)
        if req.param("delayed") != "true":
            raise Invalid("a flush is PATCH with ?delayed=true and the body {\"delayed\": false}")
        body = req.json()
        if not isinstance(body, dict) or body.get("delayed") is not False:
            raise Invalid('expected the body {"delayed": false}')
        if queue != ops.SPOOL:
            ops.flush(var, [queue])
        return no_content()

    router.add("GET", "/mailQueues", list_queues)
    router.add("GET", "/mailQueues/{queue}", details)
    router.add("PATCH", "/mailQueues/{queue}", flush)
    router.add("GET", "/mailQueues/{queue}/mails", mails)
    router.add("DELETE", "/mailQueues/{queue}/mails", delete_mails)
    router.add("PATCH", "/mailQueues/{queue}/mails", flush)
