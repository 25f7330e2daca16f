"""The mail spool and RemoteDelivery's outgoing queues, whether or not the server runs.

With ``conf/rabbitmq.properties`` (:func:`use_conf` tells where the configuration is) the
queues are on the broker and every operation goes through
:class:`chainmail.store.amqp.browse.BrokerQueue`: the same on every node, for the mail
waiting there (not the mail a node is processing at that moment); a flush moves waiting
retries into the queue at once and a hold parks the mail in ``<queue>.held``.

The queues are spools that several processes may share: entries are listed and removed
directly; a flush is a request file the running queue reads within a second
(:mod:`chainmail.remote.control`), a hold a file the spool workers and the outgoing queues
read within a second (:mod:`chainmail.store.holds`).  A message is named by its queue id
(the id of the 250 reply, which it keeps through the container and every retry) or by the
id of one spool entry."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from .errors import Invalid, NotFound

__all__ = ["SPOOL", "queue_names", "outgoing_names", "open_queue", "open_spool",
           "open_outgoing", "entries", "qid", "arrival", "next_attempt", "wanted",
           "normalised_domain", "find", "remove_ids", "remove_matching", "flush",
           "hold", "release", "all_queues", "use_conf", "broker_queue"]

#: the name WebAdmin gives the mail spool (James's ``spool`` queue)
SPOOL = "spool"

_broker: list[Any] = [None, None]   # the RabbitMQ configuration in force, if any, and conf


def use_conf(conf: str | None) -> None:
    """The configuration directory of this process: its ``rabbitmq.properties`` puts the
    queues on the broker (``ConfigError`` for a broken one)."""
    from ..store.amqp import load_rabbitmq
    _broker[:] = [load_rabbitmq(conf) if conf is not None else None, conf]


def broker_queue(queue: str) -> Any:
    """The queue on the broker, or None with the embedded queues."""
    if _broker[0] is None:
        return None
    from ..store.amqp.browse import BrokerQueue
    from ..store.postgres.blobs import open_blobs
    conf = _broker[1]
    return BrokerQueue(_broker[0], queue, blobs=lambda: open_blobs(conf))


def open_spool(var: str) -> Any:
    from ..store.spool import DirectorySpool
    return broker_queue(SPOOL) or DirectorySpool(os.path.join(var, "spool"))


def open_outgoing(var: str, name: str) -> Any:
    from ..remote.control import outgoing_root
    from ..store.spool import DirectorySpool
    return broker_queue(f"outgoing.{name}") or DirectorySpool(outgoing_root(var, name))


def _outgoing_queue_names(var: str) -> list[str]:
    """The outgoing queues: their directories in ``var/outgoing`` (on the broker: those a
    RemoteDelivery of this node has used, which keep their temporary files there)."""
    from ..remote.control import OUTGOING_DIR, outgoing_queue_names
    if _broker[0] is None:
        return outgoing_queue_names(var)
    try:
        return sorted(e.name for e in os.scandir(os.path.join(var, OUTGOING_DIR))
                      if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))
    except FileNotFoundError:
        return []


def queue_names(var: str) -> list[str]:
    """``spool``, then every outgoing queue."""
    return [SPOOL, *(n for n in _outgoing_queue_names(var) if n != SPOOL)]


def outgoing_names(var: str, name: str | None = None) -> list[str]:
    """Every outgoing queue, or just ``name``; ``NotFound`` (naming the others) if unknown."""
    from ..remote.control import OUTGOING_DIR
    names = _outgoing_queue_names(var)
    if name is None or name in names:
        return names if name is None else [name]
    known = f" (there are: {', '.join(names)})" if names else ""
    raise NotFound(f"no outgoing queue {name!r} in {os.path.join(var, OUTGOING_DIR)}{known}",
                   exit_status=2)


def open_queue(var: str, name: str) -> Any:
    """The spool (``spool``) or the outgoing queue ``name``; ``NotFound`` otherwise."""
    if name == SPOOL:
        return open_spool(var)
    if name not in queue_names(var):
        raise NotFound(f"no mail queue {name!r} (there are: {', '.join(queue_names(var))})")
    return open_outgoing(var, name)


def all_queues(var: str) -> Iterator[tuple[str, Any]]:
    """(where, spool) of the spool and every outgoing queue, as the listings name them."""
    yield "spool", open_spool(var)
    for name in _outgoing_queue_names(var):
        yield f"outgoing queue {name}", open_outgoing(var, name)


def normalised_domain(domain: str | None) -> str | None:
    from ..remote.control import normalise_domain
    try:
        return normalise_domain(domain)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def qid(entry: Any) -> str:
    """The queue id the listings show (the operator's handle for show/hold/remove)."""
    from ..mailet.context import queue_id_of
    return queue_id_of(entry.envelope, entry.id)


def arrival(entry: Any) -> float:
    """When the mail arrived: a retry or a re-spooled mail is a newer entry of an older mail."""
    from ..mailet.api import ATTR_ARRIVAL
    value = entry.envelope.attributes.get(ATTR_ARRIVAL)
    return float(value) if isinstance(value, (int, float)) else entry.queued_at


def next_attempt(entry: Any) -> float:
    """When the entry is due (epoch seconds; 0 = now): the outgoing queue's next attempt,
    or the spool's next processing retry."""
    from ..mailet.api import ATTR_RETRY_AT
    from ..remote.queue import ATTR_NEXT_ATTEMPT
    attrs = entry.envelope.attributes
    for key in (ATTR_NEXT_ATTEMPT, ATTR_RETRY_AT):
        value = attrs.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return 0.0


def wanted(entry: Any, domain: str | None) -> bool:
    from ..remote.control import recipient_domains
    return domain is None or domain in recipient_domains(entry.envelope)


def entries(queue: Any, domain: str | None = None) -> list[Any]:
    return [e for e in queue.list() if wanted(e, domain)]


def _matches(entry: Any, queue_id: str) -> bool:
    q = qid(entry)
    return entry.id == queue_id or q == queue_id or q.startswith(queue_id + "-")


def find(var: str, queue_id: str) -> list[tuple[str, Any, Any]]:
    """(where, spool, entry) of every entry of the message ``queue_id``."""
    return [(where, spool, entry) for where, spool in all_queues(var)
            for entry in spool.list() if _matches(entry, queue_id)]


def remove_ids(var: str, ids: list[str]) -> tuple[list[tuple[str, str, Any]], list[str]]:
    """Remove each message from the spool or an outgoing queue: ([(id, where, entry)],
    [ids not queued]).  A message being delivered at this moment may still go out."""
    queues = list(all_queues(var))
    removed, missing = [], []
    for msg_id in dict.fromkeys(ids):
        found = _remove_one(queues, msg_id)
        if found is None:
            missing.append(msg_id)
        else:
            removed.append((msg_id, *found))
    return removed, missing


def _remove_one(queues: list[tuple[str, Any]], msg_id: str) -> tuple[str, Any] | None:
    """(where, entry) of the removed message, or None if no queue holds it.  A queue id
    removes every entry of that message (its retries, the copies made of it)."""
    removed = None
    for where, spool in queues:
        with contextlib.suppress(KeyError, ValueError):
            entry = spool.get(msg_id)
            spool.remove(msg_id)
            return where, entry
        for entry in spool.list():
            if qid(entry) == msg_id or qid(entry).startswith(msg_id + "-"):
                try:
                    spool.remove(entry.id)
                except KeyError:
                    continue
                removed = where, entry
    return removed


def remove_matching(var: str, name: str, *, sender: str | None = None,
                    recipient: str | None = None, mail_name: str | None = None) -> tuple[int, int]:
    """Remove the entries of queue ``name`` whose sender, a recipient or queue id (the
    mail's name) is the one given; all of them when nothing is given.
    Returns (entries before, entries after)."""
    queue = open_queue(var, name)
    listed = queue.list()
    sender_l = sender.strip().lower() if sender is not None else None
    recipient_l = recipient.strip().lower() if recipient is not None else None

    def pick(entry: Any) -> bool:
        env = entry.envelope
        if sender_l is not None and (env.sender or "").lower() != sender_l:
            return False
        if recipient_l is not None and recipient_l not in (r.lower() for r in env.recipients):
            return False
        return mail_name is None or _matches(entry, mail_name)
    if hasattr(queue, "remove_where"):   # on the broker: one pass
        queue.remove_where(pick)
    else:
        for entry in listed:
            if pick(entry):
                with contextlib.suppress(KeyError):
                    queue.remove(entry.id)
    return len(listed), len(queue.list())


def flush(var: str, names: list[str], domain: str | None = None) -> list[tuple[str, int]]:
    """Ask each outgoing queue to try what waits now: [(queue, entries covered)].  The
    running server picks a request up within a second, a stopped one at its next start."""
    from ..remote.control import request_flush
    done = []
    for name in names:
        queue = open_outgoing(var, name)
        if queue.root is None:   # on the broker: the waiting retries move into the queue
            done.append((name, queue.flush(lambda e: wanted(e, domain), _due_now)))
            continue
        request = request_flush(queue.root, domain)
        done.append((name, sum(1 for e in queue.list() if request.matches(e))))
    return done


def _due_now(envelope: Any) -> None:
    """A flushed entry is tried at once: its time to wait is cleared."""
    from ..remote.queue import ATTR_NEXT_ATTEMPT
    envelope.attributes[ATTR_NEXT_ATTEMPT] = 0


def _hold_key(var: str, queue_id: str) -> str | None:
    """The queue id to hold for ``queue_id`` (an entry id gives its message's queue id)."""
    from ..store.holds import valid_queue_id
    found = find(var, queue_id)
    if not found:
        return None
    qids = {qid(e) for _, _, e in found}
    if queue_id in qids or not valid_queue_id(queue_id) or len(qids) != 1:
        return queue_id
    return qids.pop()


def _not_queued(queue_id: str) -> NotFound:
    return NotFound(f"{queue_id} is not queued (neither in the spool nor in an outgoing queue)")


def hold(var: str, queue_id: str) -> tuple[str, list[str], bool]:
    """Hold a message: (queue id held, where it waits, False if it was held already)."""
    from ..store.holds import HoldList, valid_queue_id
    if not valid_queue_id(queue_id):
        raise Invalid(f"{queue_id!r} is not a queue id")
    if _broker[0] is not None:
        return _hold_on_broker(var, queue_id)
    key = _hold_key(var, queue_id)
    if key is None:
        raise _not_queued(queue_id)
    where = sorted({w for w, _, _ in find(var, key)})
    return key, where, HoldList(var).hold(key)


def _hold_on_broker(var: str, queue_id: str) -> tuple[str, list[str], bool]:
    where, held = [], []
    for name, queue in all_queues(var):
        if queue.hold(lambda e: _matches(e, queue_id)):
            where.append(name)
        if any(_matches(e, queue_id) for e in queue.held()):
            held.append(name)
    if not held:
        raise _not_queued(queue_id)
    return queue_id, sorted(held), bool(where)


def release(var: str, queue_id: str) -> str:
    """Let a held message go on; the queue id released."""
    from ..store.holds import HoldList, valid_queue_id
    if not valid_queue_id(queue_id):
        raise Invalid(f"{queue_id!r} is not a queue id")
    if _broker[0] is not None:
        if sum(queue.release(lambda e: _matches(e, queue_id)) for _, queue in all_queues(var)):
            return queue_id
        raise NotFound(f"{queue_id} is not held")
    holds = HoldList(var)
    for key in dict.fromkeys(k for k in (queue_id, queue_id[:33], _hold_key(var, queue_id)) if k):
        if holds.release(key):
            return key
    raise NotFound(f"{queue_id} is not held")
