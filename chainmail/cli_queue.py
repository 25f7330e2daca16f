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

import os
import sys
import time

from .admin import AdminError, queues
from .config.errors import ConfigError
from .durations import format_age

__all__ = ["add_subcommands", "run", "format_age"]


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


def run(var: str, args, conf: str | None = None) -> int:
    try:
        queues.use_conf(conf)   # rabbitmq.properties: the queues on the broker
    except ConfigError as exc:
        print(f"chainmail: configuration error: {exc}", file=sys.stderr)
        return 2
    action = getattr(args, "action", None) or "list"
    if action == "remove":
        return _queue_remove(var, args.ids)
    if action in ("show", "hold", "release"):
        from . import cli_queue_show
        return getattr(cli_queue_show, action)(var, args.id)
    try:
        domain = queues.normalised_domain(getattr(args, "domain", None))
        names = queues.outgoing_names(var, getattr(args, "queue_name", None))
    except AdminError as exc:
        print(f"chainmail: {exc}", file=sys.stderr)
        return exc.exit_status
    if action == "flush":
        return _queue_flush(var, names, domain)
    return _queue_list(var, names, domain, spool=getattr(args, "queue_name", None) is None)


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
    queue = queues.open_outgoing(var, name)
    flushes = pending_flush_requests(queue.root) if queue.root is not None else []
    entries = queues.entries(queue, domain)
    print(f"outgoing queue {name} ({queue.root or queue.describe()})")
    print(f"{'ID':<33} {'AGE':>8} {'NEXT':>8} {'TRIES':>5}  SENDER -> RECIPIENTS  (LAST ERROR)")
    held = _held(var)
    for e in entries:
        print(_queue_outgoing_row(e, now, flushes) + held(e))
    parked = [e for e in queue.held() if queues.wanted(e, domain)] \
        if hasattr(queue, "held") else []
    for e in parked:
        print(_queue_outgoing_row(e, now, flushes) + "  [held]")
    entries += parked
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


_qid = queues.qid
_arrival = queues.arrival


def _queue_addresses(env) -> str:
    return f"<{env.sender}> -> " + ", ".join(f"<{r}>" for r in env.recipients)


def _queue_list_spool(var: str, domain: str | None, now: float) -> None:
    spool = queues.open_spool(var)
    messages = queues.entries(spool, domain)
    held = _held(var)
    parked = [e for e in spool.held() if queues.wanted(e, domain)] \
        if hasattr(spool, "held") else []
    print(f"{'ID':<32} {'AGE':>8} {'SIZE':>10} {'STATE':<16} {'TRIES':>5}  SENDER -> RECIPIENTS")
    for m in messages + parked:
        env = m.envelope
        error = env.attributes.get("chainmail.error_message")
        print(f"{_qid(m):<32} {format_age(now - _arrival(m)):>8} {m.size:>10} {env.state:<16} "
              f"{env.error_count:>5}  {_queue_addresses(env)}"
              + (f"  ({error})" if error else "") + (held(m) if m in messages else "  [held]"))
    messages += parked
    print(f"{len(messages)} message(s) queued")


def _queue_flush(var: str, names: list[str], domain: str | None) -> int:
    """One request per queue: the running server picks it up within a second, a stopped one
    at its next start."""
    from .remote.control import OUTGOING_DIR
    if not names:
        print(f"no outgoing queue in {os.path.join(var, OUTGOING_DIR)}: nothing to flush")
        return 0
    for name, covered in queues.flush(var, names, domain):
        print(f"outgoing queue {name}: flush requested for {covered} message(s)"
              + (f" to {domain}" if domain else ""))
    return 0


def _queue_remove(var: str, ids: list[str]) -> int:
    """Each id is looked for in the spool, then in every outgoing queue.  The spool is safe to
    share with a running server; a message it is delivering at this moment may still go out."""
    removed, missing = queues.remove_ids(var, ids)
    for msg_id, where, entry in removed:
        where = "the spool" if where == "spool" else where
        print(f"removed {msg_id} from {where}: {_queue_addresses(entry.envelope)}")
    if missing:
        print(f"chainmail: not queued: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0
