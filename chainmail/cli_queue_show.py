"""``chainmail queue show|hold|release ID``: one message, wherever it waits.

A message is found by its queue id (the id of the 250 reply, which it keeps through the
container, the outgoing queue and every retry) or by the id of one spool entry, in the
spool and in every outgoing queue.  Holds are files under ``<var>/held``
(:class:`chainmail.store.holds.HoldList`) that the running server reads within a second.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from typing import Any

from .admin import AdminError, queues
from .durations import format_age

__all__ = ["show", "hold", "release", "find"]


def find(var: str, queue_id: str) -> list[tuple[str, Any, Any]]:
    """(where, spool, entry) of every entry of the message ``queue_id``."""
    return queues.find(var, queue_id)


def _when(epoch: float, now: float) -> str:
    stamp = datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")
    delta = epoch - now
    return f"{stamp} ({'in ' + format_age(delta) if delta > 0 else format_age(-delta) + ' ago'})"


def _headers(spool, entry) -> list[str]:
    try:
        with spool.open_body(entry.id) as fh:
            head = fh.read(64 * 1024)
    except (KeyError, OSError, ValueError):
        return ["(the message could not be read)"]
    end = head.find(b"\r\n\r\n")
    head = head if end < 0 else head[:end]
    return head.decode("utf-8", "replace").splitlines()


def _describe(where: str, spool, entry, holds, now: float) -> list[str]:
    from .mailet.api import ATTR_ARRIVAL, ATTR_ERROR, ATTR_RETRY_AT
    from .mailet.context import queue_id_of
    from .remote.queue import ATTR_LAST_ERROR, ATTR_NEXT_ATTEMPT, ATTR_RETRY_COUNT
    env = entry.envelope
    attrs = env.attributes
    qid = queue_id_of(env, entry.id)
    arrival = attrs.get(ATTR_ARRIVAL)
    lines = [f"queue id:    {qid}",
             f"where:       {where}" + (f", processor {env.state}" if where == "spool" else "")
             + f" (entry {entry.id})"]
    held_at = holds.held_at(qid)
    lines.append("held:        " + (f"yes, since {_when(held_at, now)}; "
                                    f"chainmail queue release {qid[:33]}"
                                    if held_at is not None else "no"))
    lines += [f"arrived:     {_when(float(arrival) if isinstance(arrival, (int, float)) else entry.queued_at, now)}",
              f"sender:      <{env.sender}>",
              "recipients:  " + ", ".join(f"<{r}>" for r in env.recipients),
              f"size:        {entry.size} bytes"]
    if where == "spool":
        due = attrs.get(ATTR_RETRY_AT)
        lines.append(f"tries:       {env.error_count} failed processing attempt(s)"
                     + (f", {attrs['chainmail.local-delivery-retries']} local delivery retries"
                        if attrs.get("chainmail.local-delivery-retries") else ""))
        lines.append("next:        " + (_when(float(due), now) if isinstance(due, (int, float))
                                        and due > now else "now"))
        error = attrs.get(ATTR_ERROR)
    else:
        due = float(attrs.get(ATTR_NEXT_ATTEMPT) or 0)
        lines.append(f"tries:       {int(attrs.get(ATTR_RETRY_COUNT) or 0)} retries so far")
        lines.append("next:        " + (_when(due, now) if due > now else "now"))
        error = attrs.get(ATTR_LAST_ERROR)
    if error:
        lines.append(f"last error:  {' '.join(str(error).split())}")
    lines.append("headers:")
    lines += [f"  {line}" for line in _headers(spool, entry)]
    return lines


def show(var: str, queue_id: str) -> int:
    from .store.holds import HoldList
    found = find(var, queue_id)
    if not found:
        print(f"chainmail: {queue_id} is not queued (neither in the spool nor in an outgoing "
              "queue)", file=sys.stderr)
        return 1
    holds, now = HoldList(var), time.time()
    for n, (where, spool, entry) in enumerate(found):
        if n:
            print()
        print("\n".join(_describe(where, spool, entry, holds, now)))
    return 0


def hold(var: str, queue_id: str) -> int:
    try:
        key, where, newly = queues.hold(var, queue_id)
    except AdminError as exc:
        print(f"chainmail: {exc}", file=sys.stderr)
        return exc.exit_status
    if not newly:
        print(f"{key} is already held ({', '.join(where)})")
        return 0
    print(f"held {key} ({', '.join(where)}): not processed nor delivered until "
          f"chainmail queue release {key}")
    return 0


def release(var: str, queue_id: str) -> int:
    try:
        key = queues.release(var, queue_id)
    except AdminError as exc:
        print(f"chainmail: {exc}", file=sys.stderr)
        return exc.exit_status
    print(f"released {key}: it goes on within a second")
    return 0
