"""``/mailRepositories``: list, read, delete and reprocess the mail a processor parked.

A repository is named by James's path (``var/mail/error/``, percent-encoded as one path
segment: ``var%2Fmail%2Ferror%2F``).  Clearing and reprocessing answer with a task, whose
work is done when the answer comes (:mod:`.tasks`)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from ..admin import Invalid, NotFound
from ..admin import repositories as ops
from .http import Request, Response, Router, json_response, no_content
from .tasks import TaskRegistry

__all__ = ["add_routes"]

_FIELDS = ("attributes", "headers", "textBody", "messageSize")


def _describe(repo: Any) -> dict[str, Any]:
    path = ops.path_of(repo)
    return {"repository": path, "path": quote(path, safe="")}


def _headers(content: bytes) -> dict[str, list[str]]:
    from email.parser import BytesHeaderParser
    from email.policy import default
    message = BytesHeaderParser(policy=default).parsebytes(content)
    out: dict[str, list[str]] = {}
    for name, value in message.items():
        out.setdefault(name, []).append(str(value))
    return out


def _text_body(content: bytes) -> str | None:
    from email import message_from_bytes
    from email.policy import default
    message = message_from_bytes(content, policy=default)
    part = message.get_body(("plain",))   # type: ignore[attr-defined]
    return part.get_content() if part is not None else None


def _number(req: Request, name: str, minimum: int) -> int | None:
    text = req.param(name)
    if text is None:
        return None
    if not text.isdigit() or int(text) < minimum:
        raise Invalid(f"{name} must be an integer of at least {minimum}, not {text!r}")
    return int(text)


def add_routes(router: Router, var: str, tasks: TaskRegistry, conf: str | None = None) -> None:
    def list_repositories(req: Request) -> Response:
        return json_response([_describe(r) for r in ops.list_repositories(var, conf)])

    def details(req: Request, path: str) -> Response:
        repo = ops.find(var, path, conf)
        return json_response({**_describe(repo), "size": len(repo)})

    def keys(req: Request, path: str) -> Response:
        repo = ops.find(var, path, conf)
        offset = _number(req, "offset", 0) or 0
        limit = _number(req, "limit", 1)
        listed = repo.keys()[offset:]
        return json_response(listed if limit is None else listed[:limit])

    def mail(req: Request, path: str, key: str) -> Response:
        repo = ops.find(var, path, conf)
        item = ops.mail(repo, key)
        if "message/rfc822" in req.headers.get("accept", ""):
            return Response(200, item.content, "message/rfc822")
        info = ops.stored(repo, key)
        attrs = item.attributes
        body: dict[str, Any] = {
            "name": item.name, "sender": item.sender or None, "recipients": item.recipients,
            "state": item.state, "error": item.error_message,
            "remoteHost": attrs.get("remote_host") or attrs.get("remote_addr"),
            "remoteAddr": attrs.get("remote_addr"),
            "lastUpdated": datetime.fromtimestamp(info.stored_at, timezone.utc).isoformat()}
        wanted = [f for f in (req.param("additionalFields") or "").split(",") if f]
        unknown = [f for f in wanted if f not in _FIELDS]
        if unknown:
            raise Invalid(f"unknown additionalFields {', '.join(unknown)}; "
                          f"expected some of {', '.join(_FIELDS)}")
        if "attributes" in wanted:
            body["attributes"] = {k: v if isinstance(v, str) else str(v) for k, v in attrs.items()}
        if "headers" in wanted:
            body["headers"] = _headers(item.content)
        if "textBody" in wanted:
            body["textBody"] = _text_body(item.content)
        if "messageSize" in wanted:
            body["messageSize"] = len(item.content)
        return json_response(body)

    def delete_mail(req: Request, path: str, key: str) -> Response:
        ops.remove(ops.find(var, path, conf), [key])
        return no_content()

    def clear(req: Request, path: str) -> Response:
        repo = ops.find(var, path, conf)

        def work() -> dict:
            before = repo.keys()
            ops.remove(repo, before)
            return {"mailRepositoryPath": ops.path_of(repo), "initialCount": len(before),
                    "remainingCount": len(repo)}
        return tasks.run("clear-mail-repository", work)

    def reprocess_args(req: Request) -> str | None:
        if req.param("action") != "reprocess":
            raise Invalid("the query parameter action is required and can only be reprocess")
        queue = req.param("queue")
        if queue not in (None, "spool"):
            raise Invalid(f"mail is reprocessed through the spool; queue={queue} is not supported")
        processor = req.param("processor")
        if processor is not None and not processor.strip():
            raise Invalid("processor must not be empty")
        return processor

    def reprocess_all(req: Request, path: str) -> Response:
        repo = ops.find(var, path, conf)
        processor = reprocess_args(req)
        limit = _number(req, "limit", 1)

        def work() -> dict:
            before = repo.keys()
            chosen = before if limit is None else before[:limit]
            results = ops.reprocess(var, repo, chosen, processor)
            failed = [k for k, outcome, _ in results if outcome == "failed"]
            if failed:
                raise RuntimeError(f"could not reprocess {', '.join(failed)}")
            return {"mailRepositoryPath": ops.path_of(repo), "targetQueue": "spool",
                    "targetProcessor": processor, "initialCount": len(before),
                    "remainingCount": len(repo)}
        return tasks.run("reprocessing-all", work)

    def reprocess_one(req: Request, path: str, key: str) -> Response:
        repo = ops.find(var, path, conf)
        processor = reprocess_args(req)
        ops.stored(repo, key)

        def work() -> dict:
            results = ops.reprocess(var, repo, [key], processor)
            if results and results[0][1] == "failed":
                raise NotFound(results[0][2])
            return {"mailRepositoryPath": ops.path_of(repo), "targetQueue": "spool",
                    "targetProcessor": processor, "mailKey": key}
        return tasks.run("reprocessing-one", work)

    router.add("GET", "/mailRepositories", list_repositories)
    router.add("GET", "/mailRepositories/{path}", details)
    router.add("GET", "/mailRepositories/{path}/mails", keys)
    router.add("DELETE", "/mailRepositories/{path}/mails", clear)
    router.add("PATCH", "/mailRepositories/{path}/mails", reprocess_all)
    router.add("GET", "/mailRepositories/{path}/mails/{key}", mail)
    router.add("DELETE", "/mailRepositories/{path}/mails/{key}", delete_mail)
    router.add("PATCH", "/mailRepositories/{path}/mails/{key}", reprocess_one)
