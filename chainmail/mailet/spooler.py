"""Spool workers (James's ``JamesMailSpooler``): take mail from the durable spool and run it
through the mailet engine.

``threads`` workers (trio tasks, not OS threads) receive spool ids from one dispatcher,
which takes each mail this process commits to the spool as it is committed (the spool's
commit listeners: SMTP, LMTP and the container's own mail start at once), lists the spool
every ``poll_interval`` seconds for the rest (other processes' mail, retries, what a
restart finds), and never hands the same id to two workers.

A mail leaves the spool only once processing has durably handed it on:

1. the engine runs it; deliveries and repository stores it makes are fsynced as they happen;
2. mail the mailets sent (bounces, forwards, ``send_mail`` to another state) is committed to
   the spool as new entries;
3. only then is the original removed (shielded from cancellation, so that a shutdown does
   not stop between 2 and 3).  The removal record needs no fdatasync of its own: it
   becomes durable with the next commit's, or within ``REMOVAL_DELAY`` (and at stop);
   a crash before that processes the mail again, as below.

If the process dies anywhere before 3, the mail is still in the spool and is processed
again from its spooled state at the next start: delivery is **at least once** (a recipient
already delivered before the crash gets the message twice; nothing is ever lost).

If processing raises (a mailet with ``onMailetException=propagate``, a failed spool or
repository write), the original mail is re-spooled unchanged (its original recipients and
state) with ``error_count + 1`` and the error message, not to be retried before a short
delay; after ``max_attempts`` (5, as James) failed attempts it is stored in the error
repository with the reason instead.

A configuration reload hands the spooler a new engine (:meth:`MailSpooler.use`): each mail
runs on the engine that was current when a worker took it, to its end, and the next mail
taken runs on the new one; :meth:`MailSpooler.running_on` tells when an old engine has no
mail left, so that it can be destroyed.

Every log line about a mail names its queue id (the id of the 250 reply, kept through
re-spooling) and is written inside :func:`chainmail.logctx.about_message`.  A mail whose
queue id is held (``chainmail queue hold``, :class:`chainmail.store.holds.HoldList`) stays
in the spool untouched until it is released.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from typing import Any

import trio

from ..logctx import about_message
from ..store.holds import RECHECK, HoldList
from .api import ATTR_RETRY_AT, ERROR
from .context import MailetContext, mail_from_queued, queue_id_of
from .engine import MailetEngine

__all__ = ["MailSpooler", "MAX_ATTEMPTS", "POLL_INTERVAL"]

log = logging.getLogger("chainmail.spooler")

MAX_ATTEMPTS = 5
POLL_INTERVAL = 0.15
MAX_FRESH = 10000   # ids kept between two dispatches; past this, list the spool instead
REMOVAL_DELAY = 0.05   # seconds a processed mail's removal may wait for a commit to share its sync


class MailSpooler:
    def __init__(self, spool: Any, engine: MailetEngine, context: MailetContext, *,
                 threads: int = 20, error_repository: str = "file://var/mail/error/",
                 max_attempts: int = MAX_ATTEMPTS, poll_interval: float = POLL_INTERVAL,
                 retry_delay: float = 1.0) -> None:
        self.spool = spool
        self.engine = engine
        self.context = context
        self.threads = threads
        self.error_repository = error_repository
        self.max_attempts = max_attempts
        self.poll_interval = poll_interval
        self.retry_delay = retry_delay
        self.in_flight: set[str] = set()
        self.deferred: dict[str, float] = {}   # id -> not before (epoch seconds)
        self.broken: set[str] = set()
        self.holds = HoldList(context.var_dir)
        self._held_seen: set[str] = set()     # held spool ids already logged
        self.processed = 0                     # mails handed on (for logs and tests)
        self._wake = trio.Event()
        self._removals = trio.Event()   # set when a removal waits for the flusher
        self._fresh: list[str] = []   # committed by this process since the last dispatch
        self._next_scan = -math.inf   # trio.current_time() of the next full listing
        self._stopping = False
        self._stopped = trio.Event()
        self._running: dict[int, int] = {}   # id(engine) -> mails being processed on it
        context.on_spooled = self.notify
        listeners = getattr(spool, "commit_listeners", None)
        if listeners is not None:
            listeners.append(self.notify)

    def use(self, engine: MailetEngine, context: MailetContext, *,
            error_repository: str | None = None, threads: int | None = None) -> None:
        """Process the mail taken from now on with ``engine`` and ``context`` (a reloaded
        configuration); mail being processed finishes on the engine it started on.  The
        number of workers is set at start: a new ``threads`` applies at the next start."""
        self.engine, self.context = engine, context
        if error_repository is not None:
            self.error_repository = error_repository
        if threads is not None and threads != self.threads:
            log.warning("mailet container threads %d -> %d: the number of spool workers "
                        "changes at the next start", self.threads, threads)
        context.on_spooled = self.notify
        self.notify()   # what waited for the old engine (nothing should) is looked at again

    def running_on(self, engine: MailetEngine) -> int:
        """How many mails are being processed on ``engine``."""
        return self._running.get(id(engine), 0)

    # -- spool access: blocking calls go to a worker thread; async ones are awaited

    async def _spool_call(self, name: str, *args: Any) -> Any:
        fn = getattr(self.spool, name)
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        return await self.context.run_blocking(fn, *args)

    async def _remove(self, msg_id: str, *, durable: bool = True) -> None:
        try:
            if hasattr(self.spool, "sync_removals") and not durable:
                # What the mail became is durable already: its removal is made durable by
                # the next commit or by the removal flusher (a crash before: processed
                # again, at least once).
                await self.spool.aremove(msg_id, durable=False)
                self._removals.set()
            elif hasattr(self.spool, "aremove"):   # group-committed removal, for trio callers
                await self.spool.aremove(msg_id)
            else:
                await self._spool_call("remove", msg_id)
        except KeyError:
            log.warning("%s: already removed from the spool", msg_id)

    def _read_body(self, msg_id: str) -> bytes:
        with self.spool.open_body(msg_id) as fh:
            return fh.read()

    # -- running

    def notify(self, msg_id: str | None = None) -> None:
        """``msg_id`` was spooled: hand it to a worker now rather than at the next listing
        (without an id: list the spool now)."""
        if msg_id is None or len(self._fresh) >= MAX_FRESH:
            self._fresh.clear()            # a listing finds them all
            self._next_scan = -math.inf
        else:
            self._fresh.append(msg_id)
        self._wake.set()

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run the dispatcher and the workers until :meth:`stop` (or cancellation)."""
        if self.threads <= 0:
            log.info("spooler threads is 0: mail stays in the spool unprocessed")
            task_status.started()
            try:
                while not self._stopping:
                    self._wake = trio.Event()
                    await self._wake.wait()
            finally:
                self._stopped.set()
            return
        send, receive = trio.open_memory_channel[str](0)
        log.info("mailet container: %d spool worker(s), processors %s", self.threads,
                 ", ".join(self.engine.states))
        try:
            async with trio.open_nursery() as nursery:
                async with receive:
                    for n in range(self.threads):
                        nursery.start_soon(self._worker, receive.clone(), name=f"spool-worker-{n}")
                nursery.start_soon(self._dispatch, send, name="spool-dispatcher")
                if hasattr(self.spool, "sync_removals"):
                    nursery.start_soon(self._flush_removals, name="spool-removal-flusher")
                task_status.started()
        finally:
            if getattr(self.spool, "removals_pending", False):
                with trio.CancelScope(shield=True):
                    await self.spool.sync_removals()
            self._stopped.set()

    async def stop(self) -> None:
        """Stop taking mail; return once the workers have finished the mail they hold."""
        self._stopping = True
        self._wake.set()
        self._removals.set()
        await self._stopped.wait()

    async def _dispatch(self, send: trio.MemorySendChannel[str]) -> None:
        async with send:
            while not self._stopping:
                self._wake = trio.Event()
                if trio.current_time() >= self._next_scan:
                    mine = set(self._fresh)   # committed here: taken at once, however young
                    self._fresh.clear()
                    self._next_scan = trio.current_time() + self.poll_interval
                    listed = True
                    try:
                        ids = await self._spool_call("ids")
                    except OSError as exc:
                        log.error("cannot list the spool: %s", exc)
                        ids = []
                else:   # only what was committed meanwhile (a listener may repeat an id)
                    listed = False
                    ids = list(dict.fromkeys(self._fresh))
                    self._fresh.clear()
                now = time.time()
                if listed and getattr(self.spool, "shared", False):
                    # Other workers take their own fresh mail at once; from a listing, only
                    # what nobody took within ADOPT_AFTER (a worker that died, an old run).
                    from chainmail.store.spool import ADOPT_AFTER, message_age
                    ids = [i for i in ids if i in mine or message_age(i) >= ADOPT_AFTER]
                for msg_id in ids:
                    if self._stopping:
                        break
                    if msg_id in self.in_flight or msg_id in self.broken:
                        continue
                    not_before = self.deferred.get(msg_id)
                    if not_before is not None:
                        if not_before > now:
                            continue
                        del self.deferred[msg_id]
                    self.in_flight.add(msg_id)
                    await send.send(msg_id)
                if self._stopping:
                    break
                with trio.move_on_at(self._next_scan):
                    await self._wake.wait()

    async def _flush_removals(self) -> None:
        """Removals become durable within REMOVAL_DELAY, when no commit covered them."""
        while not self._stopping:
            await self._removals.wait()
            if self._stopping:
                break   # run() makes the last ones durable
            self._removals = trio.Event()
            await trio.sleep(REMOVAL_DELAY)
            await self.spool.sync_removals()

    async def _worker(self, receive: trio.MemoryReceiveChannel[str]) -> None:
        async with receive:
            async for msg_id in receive:
                try:
                    await self.process(msg_id)
                except Exception:
                    log.exception("%s: unexpected error in the spooler; the mail stays spooled",
                                  msg_id)
                    self.deferred[msg_id] = time.time() + 30
                finally:
                    self.in_flight.discard(msg_id)

    # -- one mail

    async def process(self, msg_id: str) -> bool:
        """Process the spooled mail ``msg_id``; True if it left the spool.  Where the spool
        is shared by worker processes, only under its claim: one process at a time."""
        claim = None
        if hasattr(self.spool, "claim"):
            claim = self.spool.claim(msg_id)
            if claim is None:
                return False   # another process has it, or has finished it
        try:
            return await self._process(msg_id)
        finally:
            if claim is not None:
                claim.release()

    async def _process(self, msg_id: str) -> bool:
        from chainmail.store.spool import SpoolFormatError
        small = None
        try:
            read_small = getattr(self.spool, "read_small", None)
            if read_small is not None:
                small = read_small(msg_id)   # most mail: from the page cache, no thread hop
            queued = small[0] if small is not None else await self._spool_call("get", msg_id)
        except KeyError:
            return False  # taken meanwhile (removed after our listing)
        except SpoolFormatError as exc:
            if msg_id not in self.broken:
                log.error("%s: unreadable spool entry left in place: %s", msg_id, exc)
            self.broken.add(msg_id)
            return False
        return await self._run(msg_id, queued, small)

    async def _run(self, msg_id: str, queued: Any, small: Any) -> bool:
        """Process a spool entry read (``small``: it and its content, when at hand) on the
        engine current now; True if it left the spool."""
        queue_id = queue_id_of(queued.envelope, msg_id)
        engine, context = self.engine, self.context   # this mail's, to its end
        key = id(engine)
        self._running[key] = self._running.get(key, 0) + 1
        try:
            with about_message(queue_id):
                return await self._process_queued(msg_id, queue_id, queued, small, engine,
                                                  context)
        finally:
            self._running[key] -= 1
            if not self._running[key]:
                del self._running[key]

    async def _process_queued(self, msg_id: str, queue_id: str, queued: Any,
                              small: Any, engine: MailetEngine, context: MailetContext) -> bool:
        if self.holds.is_held(queue_id):
            if msg_id not in self._held_seen:
                self._held_seen.add(msg_id)
                log.info("%s: held; left in the spool until released", queue_id)
            self.deferred[msg_id] = time.time() + RECHECK
            return False
        if msg_id in self._held_seen:
            self._held_seen.discard(msg_id)
            log.info("%s: released", queue_id)
        retry_at = queued.envelope.attributes.get(ATTR_RETRY_AT)
        if isinstance(retry_at, (int, float)) and retry_at > time.time():
            self.deferred[msg_id] = float(retry_at)
            return False
        try:
            content = small[1] if small is not None else \
                await context.run_blocking(self._read_body, msg_id)
        except KeyError:
            return False
        mail = mail_from_queued(queued, content)
        start = time.monotonic()
        try:
            result = await engine.service(mail)
            with trio.CancelScope(shield=True):
                for out in result.outputs:
                    await context.commit(out)
                await self._remove(msg_id, durable=False)
        except Exception as exc:
            await self._failed(queued, content, exc, context)
            return True
        self.processed += 1
        log.info("%s: processed from <%s> to %d recipient(s) in %.1f ms: %s", queue_id,
                 queued.envelope.sender, len(queued.envelope.recipients),
                 (time.monotonic() - start) * 1000, _summary(result, len(result.outputs)))
        return True

    async def _failed(self, queued: Any, content: bytes, exc: BaseException,
                      context: MailetContext | None = None) -> None:
        context = context or self.context
        msg_id = queued.id
        reason = f"{type(exc).__name__}: {exc}"
        mail = mail_from_queued(queued, content)   # the original recipients and state
        queue_id = mail.name
        mail.error_count += 1
        mail.error_message = f"processing failed (attempt {mail.error_count}): {reason}"
        with trio.CancelScope(shield=True):
            try:
                if mail.error_count >= self.max_attempts:
                    mail.error_message = (f"processing failed {mail.error_count} times; "
                                          f"last error: {reason}")
                    mail.state = ERROR
                    repo = context.repository(self.error_repository)
                    key = await context.run_blocking(repo.store, mail)
                    await self._remove(msg_id)
                    log.error("%s: %s; stored in %s as %s", queue_id, mail.error_message,
                              repo.url, key)
                    return
                delay = self.retry_delay * (2 ** (mail.error_count - 1))
                retry_at = time.time() + delay
                new_id = await context.commit(mail, extra={ATTR_RETRY_AT: retry_at})
                self.deferred[new_id] = retry_at
                await self._remove(msg_id)
                log.warning("%s: %s; re-spooled (spool entry %s), retry in %.0f s", queue_id,
                            mail.error_message, new_id, math.ceil(delay))
            except Exception as again:
                log.error("%s: processing failed (%s) and the failure could not be recorded "
                          "(%s: %s); the mail stays spooled", queue_id, reason,
                          type(again).__name__, again)
                self.deferred[msg_id] = time.time() + 30


def _summary(result: Any, outputs: int) -> str:
    parts = []
    finished = [m for m in result.finished]
    if finished:
        trails = sorted({" -> ".join(m.trace) for m in finished})
        parts.append("; ".join(trails))
    if outputs:
        parts.append(f"{outputs} mail(s) spooled")
    if result.stored:
        parts.append(f"{len(result.stored)} stored in the error repository")
    return ", ".join(parts) or "nothing to do"
