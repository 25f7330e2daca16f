"""The durable outgoing queue and its delivery workers.

Entries live in a :class:`chainmail.store.spool.DirectorySpool` of their own (James's
``outgoing`` MailQueue; ``var/outgoing/<name>/``).  Each envelope carries, in its attributes:

- ``next_attempt`` (epoch seconds): not tried before;
- ``delivery_retry_count`` (James's attribute): retries done so far;
- ``last_error``: the message of the last failed attempt;
- ``name``: the mail's name (``<name>-to-<domain>`` when split by domain).

The envelope's MAIL and RCPT parameters travel with the entry (RFC 3461 DSN, REQUIRETLS,
MT-PRIORITY).

Scheduling: :meth:`OutgoingQueue.run` looks for due entries every second (at once after
:meth:`wake`, and for entries a ``chainmail queue flush`` request covers) and hands each to
the workers of its **destination** (its recipients' domain, or the gateways): at most
``per_destination`` workers per destination, each taking that destination's entries one
after the other (so that a pooled connection carries them), and at most ``max_parallel``
attempts overall.  An attempt that stalls holds only its own worker.

With ``usePriority`` (as James's priority-aware queues), due entries are dispatched, and
each destination's entries tried, highest ``MAIL_PRIORITY`` first (James's scale: 1 low,
5 normal, 9 high; an MT-PRIORITY below 1 counts as 1, as James's message hook sets it), then
oldest first, and a freed attempt slot (``max_parallel``) goes to the highest-priority entry
waiting for one, whatever its destination; a retried entry drops to low priority
(JAMES-1311), so fresh mail is not held up behind mail that keeps failing.  Without it, entries go in queue order.

Each attempt's outcome is applied durably:

- delivered recipients are done (``delivered`` callback: ``onSuccess``, RFC 3461 relayed
  notices);
- permanently failed recipients, and pending ones once ``maxRetries`` retries have been
  made, are handed to ``bounce`` (an async callable that must make the bounce durable);
- pending recipients otherwise are re-queued as a new entry with ``retry_count + 1`` and
  ``next_attempt = now + delay_before_retry(retry_count + 1)``; when the mail arrived
  ``delayWarningTime`` ago or more, those of them whose RFC 3461 ``NOTIFY`` asks for
  ``DELAY`` are first handed to ``delayed`` (a ``delayed`` report), once per entry: the
  retries carry ``chainmail.delay-notified``.  As Postfix's ``delay_warning_time``, the
  check is made when an attempt fails, so the report comes with the first failed attempt
  after that time.

The entry is removed only after all of that is durable, so a crash at any point delivers
at least once and loses nothing (a recipient may get the mail twice).

An entry carries the mail's queue id (``chainmail.queue_id``, the id of the 250 reply) and
so does every retry of it: the log names that id, not the entry's own spool id, and an
entry whose queue id is held (``chainmail queue hold``) is not tried until released.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, Sequence

import trio

from chainmail import health, metrics
from chainmail.logctx import about_message
from chainmail.mailet.api import ATTR_ARRIVAL
from chainmail.mailet.context import ATTR_QUEUE_ID, queue_id_of
from chainmail.store.holds import HoldList
from chainmail.store.spool import DirectorySpool, Envelope, QueuedMessage

from .config import RemoteDeliveryConfig
from .control import consume_flush_requests
from .delivery import Outcome, deliver
from .dns import DnsService
from .slots import PrioritySlots

__all__ = ["OutgoingQueue", "Bounce", "Delivered", "DelayNotice", "ATTR_NEXT_ATTEMPT",
           "ATTR_RETRY_COUNT", "ATTR_LAST_ERROR", "ATTR_NAME", "ATTR_PRIORITY",
           "ATTR_DELAY_NOTIFIED", "asks_for_delay", "LOW_PRIORITY", "NORMAL_PRIORITY",
           "destination_of", "queue_priority", "queue_id"]

log = logging.getLogger("chainmail.remote.queue")

ATTR_NEXT_ATTEMPT = "next_attempt"
ATTR_RETRY_COUNT = "delivery_retry_count"
ATTR_LAST_ERROR = "last_error"
ATTR_NAME = "name"
#: James's attribute for the MT-PRIORITY of a mail (kept only with ``usePriority``).
ATTR_PRIORITY = "MAIL_PRIORITY"
#: When the ``delayed`` report of this mail was sent (epoch seconds): never a second one.
ATTR_DELAY_NOTIFIED = "chainmail.delay-notified"
LOW_PRIORITY, NORMAL_PRIORITY = 1, 5
GATEWAY = "[gateway]"


@dataclass(frozen=True)
class Bounce:
    """What the bounce callback gets: the entry, its content, and who failed why."""

    entry: QueuedMessage
    content: bytes
    recipients: dict[str, str]        # recipient -> reason
    outcome: Outcome
    too_many_retries: bool


@dataclass(frozen=True)
class Delivered:
    """What the delivered callback gets: the recipients the remote server took the mail for."""

    entry: QueuedMessage
    content: bytes
    recipients: list[str]
    outcome: Outcome


@dataclass(frozen=True)
class DelayNotice:
    """What the delayed callback gets: the entry, its content, and the recipients still
    pending that asked ``NOTIFY=DELAY`` (recipient -> the last error)."""

    entry: QueuedMessage
    content: bytes
    recipients: dict[str, str]
    outcome: Outcome


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def asks_for_delay(params: Mapping[str, Any] | None) -> bool:
    """RFC 3461 §4.1: only an explicit ``NOTIFY`` naming ``DELAY`` asks for delay reports
    (without NOTIFY, failures alone are reported)."""
    notify = {str(k).upper(): v for k, v in (params or {}).items()}.get("NOTIFY")
    return isinstance(notify, str) and "DELAY" in {w.strip().upper() for w in notify.split(",")}


def _arrival(entry: QueuedMessage) -> float:
    """When the mail arrived (the first entry's time for mail queued without it)."""
    value = entry.envelope.attributes.get(ATTR_ARRIVAL)
    return float(value) if isinstance(value, (int, float)) else entry.queued_at


def destination_of(envelope: Envelope, config: RemoteDeliveryConfig) -> str:
    """Where an entry goes: the gateways, or the domain of its (first) recipient."""
    if config.gateways:
        return GATEWAY
    return _domain(envelope.recipients[0]) if envelope.recipients else ""


def _priority(envelope: Envelope, config: RemoteDeliveryConfig) -> int | None:
    """The MT-PRIORITY to ask for (RFC 6710), only with ``usePriority``."""
    if not config.use_priority:
        return None
    value = envelope.mail_params.get("MT-PRIORITY", envelope.attributes.get(ATTR_PRIORITY))
    try:
        return int(str(value))      # deliver() keeps it within RFC 6710's -9..9
    except (TypeError, ValueError):
        return None


def queue_priority(envelope: Envelope) -> int:
    """Where the entry goes in the queue with ``usePriority`` (higher first): its
    ``MAIL_PRIORITY`` attribute, else its MT-PRIORITY (at least :data:`LOW_PRIORITY`), else
    :data:`NORMAL_PRIORITY`."""
    for value in (envelope.attributes.get(ATTR_PRIORITY), envelope.mail_params.get("MT-PRIORITY")):
        try:
            return max(LOW_PRIORITY, int(str(value)))
        except (TypeError, ValueError):
            continue
    return NORMAL_PRIORITY


def queue_id(entry: QueuedMessage) -> str:
    """The queue id of the mail ``entry`` holds (the entry's own id for an entry queued
    without one)."""
    return queue_id_of(entry.envelope, entry.id)


def _order(entry: QueuedMessage) -> tuple[int, float]:
    return -queue_priority(entry.envelope), entry.queued_at


def _requires_tls(envelope: Envelope) -> bool:
    """RFC 8689: the client asked for REQUIRETLS (MAIL parameter or James's attribute)."""
    return "REQUIRETLS" in envelope.mail_params or bool(envelope.attributes.get("REQUIRETLS"))


class OutgoingQueue:
    def __init__(self, spool: DirectorySpool, config: RemoteDeliveryConfig, dns: DnsService, *,
                 bounce: Callable[[Bounce], Awaitable[Any]],
                 delivered: Callable[[Delivered], Awaitable[Any]] | None = None,
                 max_parallel: int = 16, per_destination: int = 4, pool: Any = None,
                 deliver_fn: Callable[..., Awaitable[Outcome]] = deliver,
                 holds: HoldList | None = None,
                 delayed: Callable[[DelayNotice], Awaitable[Any]] | None = None) -> None:
        self.spool = spool
        self.config = config
        self.dns = dns
        self.bounce = bounce
        self.delivered = delivered
        self.delayed = delayed
        self.max_parallel = max(1, max_parallel)
        self.per_destination = max(1, per_destination)
        self.pool = pool
        self.deliver_fn = deliver_fn
        self.holds = holds
        self.in_flight: set[str] = set()
        self._slots = PrioritySlots(self.max_parallel)
        self._waiting: dict[str, deque[QueuedMessage]] = {}
        self._workers: dict[str, int] = {}
        self._wake = trio.Event()

    async def enqueue(self, sender: str, recipients: Sequence[str], content: bytes, *,
                      name: str = "", attributes: dict[str, Any] | None = None,
                      retry_count: int = 0, next_attempt: float = 0.0,
                      last_error: str | None = None,
                      mail_params: Mapping[str, Any] | None = None,
                      rcpt_params: Mapping[str, Mapping[str, Any]] | None = None) -> str:
        """Durably add one entry; returns its id."""
        attrs = dict(attributes or {})
        attrs.update({ATTR_NEXT_ATTEMPT: next_attempt, ATTR_RETRY_COUNT: retry_count,
                      ATTR_NAME: name})
        if last_error is not None:
            attrs[ATTR_LAST_ERROR] = last_error
        params = rcpt_params or {}
        writer = self.spool.open_writer()
        try:
            if len(content) > 256 * 1024:   # streams to a file: keep the disk off the loop
                await trio.to_thread.run_sync(writer.write, content)
            else:
                writer.write(content)
            return await writer.commit(Envelope(
                sender=sender, recipients=list(recipients), mail_params=dict(mail_params or {}),
                rcpt_params=[dict(params.get(r, {})) for r in recipients],
                attributes=attrs, state="outgoing"))
        finally:
            writer.abort()
            self.wake()

    # -- choosing what to try

    def due(self, now: float | None = None) -> list[QueuedMessage]:
        """Entries whose next attempt has come (or that a flush request covers), not in flight."""
        now = time.time() if now is None else now
        # A flush request covers what was queued before it: one scan spends it (what fails
        # again is re-queued, later than the request, on its normal schedule).
        flushes = consume_flush_requests(self.spool.root)
        out = []
        for entry in self.spool.list():
            if entry.id in self.in_flight:
                continue
            if self.holds is not None and self.holds.is_held(queue_id(entry)):
                continue
            if (float(entry.envelope.attributes.get(ATTR_NEXT_ATTEMPT) or 0) <= now
                    or any(f.matches(entry) for f in flushes)):
                out.append(entry)
        if self.config.use_priority:
            out.sort(key=_order)
        return out

    def wake(self) -> None:
        """Something was queued or should be tried now."""
        self._wake.set()

    def _dispatch(self, entries: list[QueuedMessage], nursery: trio.Nursery) -> None:
        for entry in entries:
            self.in_flight.add(entry.id)
            key = destination_of(entry.envelope, self.config)
            self._waiting.setdefault(key, deque()).append(entry)
        if self.config.use_priority:
            for waiting in self._waiting.values():   # in place: workers hold these deques
                ordered = sorted(waiting, key=_order)
                waiting.clear()
                waiting.extend(ordered)
        for key, waiting in list(self._waiting.items()):
            while waiting and self._workers.get(key, 0) < min(len(waiting), self.per_destination):
                self._workers[key] = self._workers.get(key, 0) + 1
                nursery.start_soon(self._worker, key, name=f"outgoing-{key}")

    async def _worker(self, key: str) -> None:
        """Take ``key``'s entries one after the other (a pooled connection carries them)."""
        waiting = self._waiting[key]
        try:
            while waiting:
                entry = waiting.popleft()
                try:
                    priority = queue_priority(entry.envelope) if self.config.use_priority else 0
                    async with self._slots.slot(priority):
                        await self.attempt(entry)
                except Exception:
                    with about_message(queue_id(entry)):
                        log.exception("%s: delivery failed unexpectedly; the entry stays "
                                      "queued", queue_id(entry))
                finally:
                    self.in_flight.discard(entry.id)
        finally:
            self._workers[key] -= 1
            if not self._workers[key]:
                del self._workers[key]
                if not waiting:
                    self._waiting.pop(key, None)

    # -- running

    async def run(self, *, poll_interval: float = 1.0,
                  task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Deliver due entries until cancelled (looks every ``poll_interval`` seconds, or at
        once after :meth:`wake`).  Attempts run in the background: a slow server never
        delays the others."""
        self._wake = trio.Event()
        health.track_queue(self.config.outgoing, self)   # its size and age: health, metrics
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    self._wake = trio.Event()
                    try:
                        entries = await trio.to_thread.run_sync(self.due)
                    except OSError as exc:
                        log.error("cannot list the outgoing queue %s: %s", self.spool.root, exc)
                        entries = []
                    self._dispatch(entries, nursery)
                    if self.pool is not None:
                        await self.pool.expire()
                    with trio.move_on_after(poll_interval):
                        await self._wake.wait()
        finally:
            health.untrack_queue(self.config.outgoing, self)
            if self.pool is not None:
                with trio.move_on_after(2) as scope:
                    scope.shield = True
                    await self.pool.aclose()

    async def run_once(self, now: float | None = None) -> int:
        """Try every due entry once and wait for the attempts; returns how many were tried."""
        entries = self.due(now)
        async with trio.open_nursery() as nursery:
            self._dispatch(entries, nursery)
        return len(entries)

    # -- one attempt

    def _read(self, entry: QueuedMessage) -> bytes | None:
        try:
            with self.spool.open_body(entry.id) as fh:
                return fh.read()
        except KeyError:
            return None

    async def attempt(self, entry: QueuedMessage) -> Outcome | None:
        """One delivery attempt of ``entry``, its outcome applied durably (None: the entry
        was removed meanwhile, by ``chainmail queue remove``)."""
        with about_message(queue_id(entry)):
            return await self._attempt(entry)

    async def _attempt(self, entry: QueuedMessage) -> Outcome | None:
        content = self._read(entry) if entry.size <= 256 * 1024 else \
            await trio.to_thread.run_sync(self._read, entry)
        if content is None:
            return None
        env = entry.envelope
        count = int(env.attributes.get(ATTR_RETRY_COUNT) or 0)
        rcpt_params = {r: p for r, p in zip(env.recipients, env.rcpt_params) if p}
        outcome = await self.deliver_fn(
            env.sender, env.recipients, content, config=self.config, dns=self.dns,
            retry_count=count, mail_params=env.mail_params, rcpt_params=rcpt_params,
            require_tls=_requires_tls(env), priority=_priority(env, self.config), pool=self.pool)
        with trio.CancelScope(shield=True):
            await self._apply(entry, content, count, outcome)
        return outcome

    async def _notify_delay(self, entry: QueuedMessage, content: bytes, outcome: Outcome) -> bool:
        """The ``delayed`` report of ``entry``'s pending recipients, when it is due and
        wanted; True once it was sent (or is not owed to anyone any more)."""
        env = entry.envelope
        warn_after = self.config.delay_warning_ms / 1000
        if (self.delayed is None or warn_after <= 0 or env.attributes.get(ATTR_DELAY_NOTIFIED)
                or time.time() - _arrival(entry) < warn_after or not env.sender):
            return False
        params = dict(zip(env.recipients, env.rcpt_params))
        wanted = {r: outcome.message for r in outcome.pending if asks_for_delay(params.get(r))}
        if not wanted:
            return False
        await self.delayed(DelayNotice(entry, content, wanted, outcome))
        log.info("%s: still undelivered after %.0f s; delayed report sent for %s",
                 queue_id(entry), time.time() - _arrival(entry), ", ".join(wanted))
        return True

    async def _apply(self, entry: QueuedMessage, content: bytes, count: int,
                     outcome: Outcome) -> None:
        env = entry.envelope
        qid = queue_id(entry)
        if self._removed_meanwhile(entry):
            # `chainmail queue remove` (another process) while it was being tried: removal wins
            log.info("%s: removed from the queue during its attempt; no retry, no bounce", qid)
            return
        failed = dict(outcome.failed)
        too_many = False
        deferred = 0
        if outcome.pending:
            if count < self.config.max_retries:
                deferred = len(outcome.pending)
                delay = self.config.delays.delay_before_retry(count + 1) / 1000
                rcpt_params = {r: p for r, p in zip(env.recipients, env.rcpt_params)}
                attributes = dict(env.attributes)
                attributes.setdefault(ATTR_QUEUE_ID, qid)
                attributes.setdefault(ATTR_ARRIVAL, _arrival(entry))
                if self.config.use_priority:
                    attributes[ATTR_PRIORITY] = LOW_PRIORITY   # retries go last (JAMES-1311)
                if await self._notify_delay(entry, content, outcome):
                    attributes[ATTR_DELAY_NOTIFIED] = time.time()
                new_id = await self.enqueue(
                    env.sender, outcome.pending, content,
                    name=str(env.attributes.get(ATTR_NAME, "")),
                    attributes=attributes, retry_count=count + 1,
                    next_attempt=time.time() + delay, last_error=outcome.message,
                    mail_params=env.mail_params, rcpt_params=rcpt_params)
                log.info("%s: temporary failure for %d recipient(s) (%s); retry %d of %d "
                         "in %.0f s (entry %s)", qid, len(outcome.pending), outcome.message,
                         count + 1, self.config.max_retries, delay, new_id)
            else:
                too_many = True
                reason = (f"Too many retries failure. Bouncing after {count} retries. "
                          f"{outcome.message}")
                failed.update({r: reason for r in outcome.pending})
        metrics.delivery_attempt(len(outcome.delivered), deferred, len(failed))
        if failed:
            await self.bounce(Bounce(entry, content, failed, outcome, too_many))
            metrics.bounce()
            log.info("%s: failed for %s: %s", qid, ", ".join(failed),
                     "; ".join(sorted(set(failed.values()))))
        if outcome.delivered:
            log.info("%s: delivered to %s at %s", qid, ", ".join(outcome.delivered),
                     outcome.remote_mta)
            if self.delivered is not None:
                await self.delivered(Delivered(entry, content, list(outcome.delivered), outcome))
        await self._finished(entry)

    def _removed_meanwhile(self, entry: QueuedMessage) -> bool:
        return entry.id not in self.spool.ids()

    async def _finished(self, entry: QueuedMessage) -> None:
        """The entry's outcome is durable: it leaves the queue."""
        try:
            await self.spool.aremove(entry.id)
        except KeyError:
            log.info("%s: already removed from the outgoing queue", queue_id(entry))
