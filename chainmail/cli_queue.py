"""``chainmail queue``: the mail spool and RemoteDelivery's outgoing queues.

::

    chainmail queue [list] [--queue NAME] [--domain D]   each outgoing queue, then the spool
    chainmail queue flush [--queue NAME] [--domain D]    retry now what is waiting
    chainmail queue remove ID [ID...]                    drop entries from any queue
    chainmail queue show ID                              envelope, headers, where it is
    chainmail queue hold ID / release ID                 stop a message / let it go on

``ID`` is the queue id of the 250 reply (the listings show it): a message keeps it through
the container, the outgoing queue and every retry; the id of one spool entry works too.

The queues are spools that several processes may share, so these commands work whether or
not the server runs; a flush is a request file the running queue reads within a second
(``chainmail.remote.control``), a hold a file the spool workers and the outgoing queues read
within a second (``chainmail.store.holds``).  Exit status: 0 done, 1 an id was not queued
(or, for release, not held), 2 bad input.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from .durations import format_age

__all__ = ["add_subcommands", "run", "format_age"]


def _spool(var: str):
    from .store.spool import DirectorySpool
    return DirectorySpool(os.path.join(var, "spool"))


def add_subcommands(sub, common) -> None:
    """``chainmail queue [list|flush|remove]``; plain ``chainmail queue`` lists."""
    queue = sub.add_parser("queue", parents=[common],
                           help="inspect the spool and the outgoing queues; flush; remove")
    qsub = queue.add_subparsers(dest="action")
    for action, text in (("list", "list each outgoing queue, then the spool"),
                         ("flush", "ask the outgoing queues to try their messages now")):
        p = qsub.add_parser(action, parents=[common], help=text)
        p.add_argument("--queue", dest="queue_name", metavar="NAME",
                       help="only the outgoing queue NAME")
        p.add_argument("--domain", metavar="D", help="only messages with a recipient in domain D")
    remove = qsub.add_parser("remove", parents=[common],
                             help="remove messages from the spool or an outgoing queue")
    remove.add_argument("ids", nargs="+", metavar="ID")
    for action, text in (("show", "show a message: envelope, headers, where it is, its tries"),
                         ("hold", "keep a message where it is (not processed, not delivered) "
                                  "until released"),
                         ("release", "let a held message go on")):
        p = qsub.add_parser(action, parents=[common], help=text)
        p.add_argument("id", metavar="ID", help="queue id (from the 250 reply or the listing)")


def run(var: str, args) -> int:
    action = getattr(args, "action", None) or "list"
    if action == "remove":
        return _queue_remove(var, args.ids)
    if action in ("show", "hold", "release"):
        from . import cli_queue_show
        return getattr(cli_queue_show, action)(var, args.id)
    from .remote.control import normalise_domain
    try:
        domain = normalise_domain(getattr(args, "domain", None))
    except ValueError as exc:
        print(f"chainmail: {exc}", file=sys.stderr)
        return 2
    names = _queue_names(var, getattr(args, "queue_name", None))
    if names is None:
        return 2
    if action == "flush":
        return _queue_flush(var, names, domain)
    return _queue_list(var, names, domain, spool=getattr(args, "queue_name", None) is None)


def _queue_names(var: str, name: str | None) -> list[str] | None:
    """The outgoing queues a command acts on; None (after saying why) for an unknown name."""
    from .remote.control import OUTGOING_DIR, outgoing_queue_names
    names = outgoing_queue_names(var)
    if name is None or name in names:
        return names if name is None else [name]
    known = f" (there are: {', '.join(names)})" if names else ""
    print(f"chainmail: no outgoing queue {name!r} in {os.path.join(var, OUTGOING_DIR)}{known}",
          file=sys.stderr)
    return None


def _outgoing(var: str, name: str):
    from .remote.control import outgoing_root
    from .store.spool import DirectorySpool
    return DirectorySpool(outgoing_root(var, name))


def _queue_wanted(entry, domain: str | None) -> bool:
    from .remote.control import recipient_domains
    return domain is None or domain in recipient_domains(entry.envelope)


def _queue_list(var: str, names: list[str], domain: str | None, *, spool: bool) -> int:
    """The spool comes last, unchanged, so that the last line stays its count
    (``N message(s) queued``), which scripts such as bench/run.py read."""
    now = time.time()
    for name in names:
        _queue_list_outgoing(var, name, domain, now)
        print()
    if spool:
        if names:
            print(f"mail spool ({os.path.join(var, 'spool')})")
        _queue_list_spool(var, domain, now)
    return 0


def _queue_list_outgoing(var: str, name: str, domain: str | None, now: float) -> None:
    from .remote.control import pending_flush_requests
    queue = _outgoing(var, name)
    flushes = pending_flush_requests(queue.root)
    entries = [e for e in queue.list() if _queue_wanted(e, domain)]
    print(f"outgoing queue {name} ({queue.root})")
    print(f"{'ID':<33} {'AGE':>8} {'NEXT':>8} {'TRIES':>5}  SENDER -> RECIPIENTS  (LAST ERROR)")
    held = _held(var)
    for e in entries:
        print(_queue_outgoing_row(e, now, flushes) + held(e))
    print(f"{len(entries)} message(s) waiting in outgoing queue {name}")


def _queue_outgoing_row(entry, now: float, flushes) -> str:
    from .remote.queue import ATTR_LAST_ERROR, ATTR_NEXT_ATTEMPT, ATTR_RETRY_COUNT
    env = entry.envelope
    attrs = env.attributes
    due = float(attrs.get(ATTR_NEXT_ATTEMPT) or 0)
    nxt = "now" if due <= now or any(f.matches(entry) for f in flushes) else f"in {format_age(due - now)}"
    error = " ".join(str(attrs.get(ATTR_LAST_ERROR) or "").split())
    return (f"{_qid(entry):<33} {format_age(now - _arrival(entry)):>8} {nxt:>8} "
            f"{int(attrs.get(ATTR_RETRY_COUNT) or 0):>5}  {_queue_addresses(env)}"
            + (f"  ({error})" if error else ""))


def _held(var: str):
    """A row's suffix: ``  [held]`` for a held message (``chainmail queue hold``)."""
    from .store.holds import HoldList
    holds = HoldList(var)
    return lambda entry: "  [held]" if holds.is_held(_qid(entry)) else ""


def _qid(entry) -> str:
    """The queue id the listings show (the operator's handle for show/hold/remove)."""
    from .mailet.context import queue_id_of
    return queue_id_of(entry.envelope, entry.id)


def _arrival(entry) -> float:
    """When the mail arrived: a retry or a re-spooled mail is a newer entry of an older mail."""
    from .mailet.api import ATTR_ARRIVAL
    arrival = entry.envelope.attributes.get(ATTR_ARRIVAL)
    return float(arrival) if isinstance(arrival, (int, float)) else entry.queued_at


def _queue_addresses(env) -> str:
    return f"<{env.sender}> -> " + ", ".join(f"<{r}>" for r in env.recipients)


def _queue_list_spool(var: str, domain: str | None, now: float) -> None:
    spool = _spool(var)
    messages = [m for m in spool.list() if _queue_wanted(m, domain)]
    held = _held(var)
    print(f"{'ID':<32} {'AGE':>8} {'SIZE':>10} {'STATE':<16} {'TRIES':>5}  SENDER -> RECIPIENTS")
    for m in messages:
        env = m.envelope
        error = env.attributes.get("chainmail.error_message")
        print(f"{_qid(m):<32} {format_age(now - _arrival(m)):>8} {m.size:>10} {env.state:<16} "
              f"{env.error_count:>5}  {_queue_addresses(env)}"
              + (f"  ({error})" if error else "") + held(m))
    print(f"{len(messages)} message(s) queued")


def _queue_flush(var: str, names: list[str], domain: str | None) -> int:
    """One request per queue: the running server picks it up within a second, a stopped one
    at its next start."""
    from .remote.control import OUTGOING_DIR, request_flush
    if not names:
        print(f"no outgoing queue in {os.path.join(var, OUTGOING_DIR)}: nothing to flush")
        return 0
    for name in names:
        queue = _outgoing(var, name)
        request = request_flush(queue.root, domain)
        covered = sum(1 for e in queue.list() if request.matches(e))
        print(f"outgoing queue {name}: flush requested for {covered} message(s)"
              + (f" to {domain}" if domain else ""))
    return 0


def _queue_remove(var: str, ids: list[str]) -> int:
    """Each id is looked for in the spool, then in every outgoing queue.  The spool is safe to
    share with a running server; a message it is delivering at this moment may still go out."""
    from .remote.control import outgoing_queue_names
    queues = [("the spool", _spool(var))]
    queues += [(f"outgoing queue {n}", _outgoing(var, n)) for n in outgoing_queue_names(var)]
    missing = []
    for msg_id in dict.fromkeys(ids):
        removed = _queue_remove_one(queues, msg_id)
        if removed is None:
            missing.append(msg_id)
        else:
            print(f"removed {msg_id} from {removed[0]}: {_queue_addresses(removed[1].envelope)}")
    if missing:
        print(f"chainmail: not queued: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def _queue_remove_one(queues, msg_id: str):
    """(where, entry) of the removed message, or None if no queue holds it.  A queue id
    removes every entry of that message (its retries, the copies made of it)."""
    removed = None
    for where, spool in queues:
        with contextlib.suppress(KeyError, ValueError):
            entry = spool.get(msg_id)
            spool.remove(msg_id)
            return where, entry
        for entry in spool.list():
            if _qid(entry) == msg_id or _qid(entry).startswith(msg_id + "-"):
                try:
                    spool.remove(entry.id)
                except KeyError:
                    continue
                removed = where, entry
    return removed
