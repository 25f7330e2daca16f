"""James's task API for the operations it runs as tasks (clear a queue, reprocess ...).

chainmail carries these out at once, while the request waits, and records a completed
(or failed) execution report, so a James client that posts, then polls ``/tasks/{id}``
or ``/tasks/{id}/await``, sees what it expects.  Reports live in memory, the last
``KEEP`` of them."""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any, Callable

from .http import HttpError, Request, Response, Router, json_response, no_content

__all__ = ["TaskRegistry", "add_routes", "KEEP"]

KEEP = 1000
STATUSES = ("waiting", "inProgress", "completed", "failed", "cancelled")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TaskRegistry:
    def __init__(self) -> None:
        self._reports: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def run(self, type: str, work: Callable[[], dict[str, Any]]) -> Response:
        """Run ``work`` now (it returns the report's additionalInformation); answer 201 with
        the task id and its Location, as James does when it schedules a task."""
        task_id = str(uuid.uuid4())
        report: dict[str, Any] = {
            "taskId": task_id, "type": type, "status": "inProgress",
            "submitDate": _now(), "startedDate": _now(), "completedDate": None,
            "cancelledDate": None, "failedDate": None, "additionalInformation": {}}
        try:
            report["additionalInformation"] = {"type": type, **work(), "timestamp": _now()}
            report["status"], report["completedDate"] = "completed", _now()
        except HttpError:
            raise
        except Exception as exc:
            report["status"], report["failedDate"] = "failed", _now()
            report["additionalInformation"] = {"type": type, "error": str(exc)}
        with self._lock:
            self._reports[task_id] = report
            while len(self._reports) > KEEP:
                self._reports.popitem(last=False)
        return json_response({"taskId": task_id}, 201, [("Location", f"/tasks/{task_id}")])

    def get(self, task_id: str) -> dict[str, Any]:
        try:
            uuid.UUID(task_id)
        except ValueError:
            raise HttpError(400, f"invalid task id {task_id!r}") from None
        with self._lock:
            report = self._reports.get(task_id)
        if report is None:
            raise HttpError(404, f"no task {task_id}")
        return report

    def list(self, status: str | None) -> list[dict[str, Any]]:
        if status is not None and status not in STATUSES:
            raise HttpError(400, f"invalid status {status!r}; expected one of {', '.join(STATUSES)}")
        with self._lock:
            reports = list(self._reports.values())
        return [r for r in reports if status is None or r["status"] == status]


def add_routes(router: Router, tasks: TaskRegistry) -> None:
    def list_tasks(req: Request) -> Response:
        return json_response(tasks.list(req.param("status")))

    def get_task(req: Request, task_id: str) -> Response:
        return json_response(tasks.get(task_id))

    def cancel_task(req: Request, task_id: str) -> Response:
        tasks.get(task_id)   # every task has already ended: nothing left to cancel
        return no_content()

    router.add("GET", "/tasks", list_tasks)
    router.add("GET", "/tasks/{task_id}", get_task)
    router.add("GET", "/tasks/{task_id}/await", get_task)
    router.add("DELETE", "/tasks/{task_id}", cancel_task)
