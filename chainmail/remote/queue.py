"""The durable outgoing queue and its delivery runs.

Entries live in a :class:`chainmail.store.spool.DirectorySpool` of their own (James's
``outgoing`` MailQueue, by default ``var/outgoing``).  Each envelope carries, in its
attributes:

- ``next_attempt`` (epoch seconds): not tried before;
- ``delivery_retry_count`` (James's attribute): retries done so far;
- ``last_error``: the message of the last failed attempt;
- ``name``: the mail's name (``<name>-to-<domain>`` when split by domain).

:meth:`OutgoingQueue.run_once` tries every due entry with :func:`deliver` (bounded by
``max_parallel``) and applies the outcome:

- delivered recipients are done;
- permanently failed recipients, and pending ones once ``maxRetries`` retries have been
  made, are handed to ``bounce`` (an async callable that must make the bounce durable);
- pending recipients otherwise are re-queued as a new entry with ``retry_count + 1`` and
  ``next_attempt = now + delay_before_retry(retry_count + 1)``.

The entry is removed only after all of that is durable, so a crash at any point delivers
at least once and loses nothing (a recipient may get the mail twice).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

import trio

from chainmail.store.spool import DirectorySpool, Envelope, QueuedMessage

from .config import RemoteDeliveryConfig
from .delivery import Outcome, deliver
from .dns import DnsService

__all__ = ["OutgoingQueue", "Bounce", "ATTR_NEXT_ATTEMPT", "ATTR_RETRY_COUNT", "ATTR_LAST_ERROR"]

log = logging.getLogger("chainmail.remote.queue")

ATTR_NEXT_ATTEMPT = "next_attempt"
ATTR_RETRY_COUNT = "delivery_retry_count"
ATTR_LAST_ERROR = "last_error"
ATTR_NAME = "name"


@dataclass(frozen=True)
class Bounce:
    """What the bounce callback gets: the entry, its content, and who failed why."""

    entry: QueuedMessage
    content: bytes
    recipients: dict[str, str]        # recipient -> reason
    outcome: Outcome
    too_many_retries: bool


class OutgoingQueue:
    def __init__(self, spool: DirectorySpool, config: RemoteDeliveryConfig, dns: DnsService, *,
                 bounce: Callable[[Bounce], Awaitable[Any]], max_parallel: int = 16,
                 deliver_fn: Callable[..., Awaitable[Outcome]] = deliver) -> None:
        self.spool = spool
        self.config = config
        self.dns = dns
        self.bounce = bounce
        self.max_parallel = max_parallel
        self.deliver_fn = deliver_fn
        self.in_flight: set[str] = set()
        self._wake = trio.Event()

    async def enqueue(self, sender: str, recipients: Sequence[str], content: bytes, *,
                      name: str = "", attributes: dict[str, Any] | None = None,
                      retry_count: int = 0, next_attempt: float = 0.0,
                      last_error: str | None = None) -> str:
        """Durably add one entry; returns its id."""
        attrs = dict(attributes or {})
        attrs.update({ATTR_NEXT_ATTEMPT: next_attempt, ATTR_RETRY_COUNT: retry_count,
                      ATTR_NAME: name})
        if last_error is not None:
            attrs[ATTR_LAST_ERROR] = last_error
        writer = self.spool.open_writer()
        try:
            writer.write(content)
            return await writer.commit(Envelope(sender=sender, recipients=list(recipients),
                                                attributes=attrs, state="outgoing"))
        finally:
            writer.abort()
            self.wake()

    def due(self, now: float | None = None) -> list[QueuedMessage]:
        now = time.time() if now is None else now
        out = []
        for entry in self.spool.list():
            if entry.id in self.in_flight:
                continue
            if float(entry.envelope.attributes.get(ATTR_NEXT_ATTEMPT) or 0) <= now:
                out.append(entry)
        return out

    async def run(self, *, poll_interval: float = 1.0,
                  task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Deliver due entries until cancelled (looks again every ``poll_interval`` seconds,
        or at once after :meth:`wake`)."""
        self._wake = trio.Event()
        task_status.started()
        while True:
            self._wake = trio.Event()
            await self.run_once()
            with trio.move_on_after(poll_interval):
                await self._wake.wait()

    def wake(self) -> None:
        """Something was queued or should be retried now (``chainmail queue flush``)."""
        self._wake.set()

    async def run_once(self, now: float | None = None) -> int:
        """Try every due entry once; returns how many were tried."""
        entries = self.due(now)
        limiter = trio.CapacityLimiter(max(1, self.max_parallel))

        async def one(entry: QueuedMessage) -> None:
            async with limiter:
                try:
                    await self.attempt(entry)
                except Exception:
                    log.exception("%s: delivery run failed; the entry stays queued", entry.id)
                finally:
                    self.in_flight.discard(entry.id)

        async with trio.open_nursery() as nursery:
            for entry in entries:
                self.in_flight.add(entry.id)
                nursery.start_soon(one, entry)
        return len(entries)

    async def attempt(self, entry: QueuedMessage) -> Outcome:
        """One delivery attempt of ``entry``, its outcome applied durably."""
        with self.spool.open_body(entry.id) as fh:
            content = fh.read()
        env = entry.envelope
        count = int(env.attributes.get(ATTR_RETRY_COUNT) or 0)
        outcome = await self.deliver_fn(env.sender, env.recipients, content, config=self.config,
                                        dns=self.dns, retry_count=count)
        with trio.CancelScope(shield=True):
            failed = dict(outcome.failed)
            too_many = False
            if outcome.pending:
                if count < self.config.max_retries:
                    delay = self.config.delays.delay_before_retry(count + 1) / 1000
                    new_id = await self.enqueue(
                        env.sender, outcome.pending, content,
                        name=str(env.attributes.get(ATTR_NAME, "")),
                        attributes={k: v for k, v in env.attributes.items()},
                        retry_count=count + 1, next_attempt=time.time() + delay,
                        last_error=outcome.message)
                    log.info("%s: temporary failure for %d recipient(s) (%s); retry %d of %d "
                             "in %.0f s as %s", entry.id, len(outcome.pending), outcome.message,
                             count + 1, self.config.max_retries, delay, new_id)
                else:
                    too_many = True
                    reason = (f"Too many retries failure. Bouncing after {count} retries. "
                              f"{outcome.message}")
                    failed.update({r: reason for r in outcome.pending})
            if failed:
                await self.bounce(Bounce(entry, content, failed, outcome, too_many))
            await self.spool.aremove(entry.id)
        if outcome.delivered:
            log.info("%s: delivered to %s at %s", entry.id, ", ".join(outcome.delivered),
                     outcome.remote_mta)
        return outcome
