"""The server's metrics, in Prometheus's text format, summed over the worker processes.

Two kinds:

- **built-in** metrics (``chainmail_*``), counted where things happen (the connection loop,
  DATA, AUTH, the mailet engine, the outgoing queue) through the small functions below, or
  computed when they are read (spool and outgoing queue sizes and ages);
- **named** counters and timers (James's ``MetricFactory``): ``MetricsMailet`` counts mail
  under the name its ``metricName`` gives, rendered under that name as James operators know it.

prometheus-client holds the values.  ``chainmail run`` calls :func:`enable_multiprocess`
before it forks: each process then writes its values to a file of its own under
``<var>/run/metrics/`` and a scrape in any process (WebAdmin's, in worker 0) sums them all,
so the numbers do not depend on which worker took a connection.  Without it (tests, a
library user) the values live in this process only.  Counting is one increment: no scrape
work is done on the hot path.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import re
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest, multiprocess, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

__all__ = ["Counter", "Timer", "counter", "timer", "snapshot", "render_prometheus", "reset",
           "enable_multiprocess", "process_dead", "multiprocess_directory",
           "connection_opened", "connection_closed", "connection_refused", "session_started",
           "command", "reply", "tls_handshake", "message_received", "auth_attempt",
           "mailet_time", "delivery_attempt", "bounce", "BUCKETS"]

#: upper bounds (seconds) of the timer histogram buckets, as Prometheus's client defaults
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: the verbs counted under their own name; any other goes under ``OTHER`` (a client may
#: send anything: the label's values stay few)
VERBS = frozenset({"HELO", "EHLO", "LHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP",
                   "QUIT", "VRFY", "EXPN", "HELP", "STARTTLS", "AUTH", "ETRN"})

prometheus_client.disable_created_metrics()   # no *_created series: nobody graphs them

_lock = threading.Lock()
_counters: dict[str, "Counter"] = {}
_timers: dict[str, "Timer"] = {}
_directory: str | None = None


class _Instruments:
    """Every prometheus-client metric of a process, made in one go so that
    :func:`enable_multiprocess` can make them again with file-backed values."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        P = prometheus_client
        self.connections = P.Counter("chainmail_connections", "TCP connections accepted",
                                     registry=r)
        self.refused = P.Counter("chainmail_connections_refused",
                                 "connections refused by a connection limit or a shutdown",
                                 registry=r)
        self.open = P.Gauge("chainmail_connections_open", "connections open now", registry=r,
                            multiprocess_mode="livesum")
        self.sessions = P.Counter("chainmail_sessions", "SMTP and LMTP sessions begun (greeted)",
                                  ["protocol"], registry=r)
        self.commands = P.Counter("chainmail_commands", "commands received, by verb", ["verb"],
                                  registry=r)
        self.replies = P.Counter("chainmail_replies", "replies sent, by code class", ["class"],
                                 registry=r)
        self.tls = P.Counter("chainmail_tls_handshakes", "TLS handshakes (implicit TLS and "
                             "STARTTLS)", ["result"], registry=r)
        self.messages = P.Counter("chainmail_messages_received",
                                  "messages accepted (250 after DATA or the last BDAT)",
                                  registry=r)
        self.bytes = P.Counter("chainmail_received_bytes",
                               "bytes of the messages accepted, as spooled", registry=r)
        self.auth = P.Counter("chainmail_auth_attempts", "AUTH outcomes, by mechanism",
                              ["mechanism", "result"], registry=r)
        self.mailet = P.Histogram("chainmail_mailet_processing_seconds",
                                  "time a mailet took to service a mail",
                                  ["processor", "mailet"], registry=r, buckets=BUCKETS)
        self.attempts = P.Counter("chainmail_delivery_attempts",
                                  "remote delivery attempts (one per queue entry tried)",
                                  registry=r)
        self.recipients = P.Counter("chainmail_delivery_recipients",
                                    "recipients of remote delivery attempts, by outcome",
                                    ["outcome"], registry=r)
        self.bounces = P.Counter("chainmail_bounces",
                                 "bounces made for mail remote delivery could not deliver",
                                 registry=r)
        # the storage of the named metrics (rendered under their own names)
        self.named = P.Counter(_NAMED_COUNTERS, "named counters (MetricsMailet)", ["name"],
                               registry=r)
        self.named_timers = P.Histogram(_NAMED_TIMERS, "named timers", ["name"], registry=r,
                                        buckets=BUCKETS)
        # children resolved once: a labels() call takes a lock and builds a key
        self.session_by = {p: self.sessions.labels(p) for p in ("smtp", "lmtp")}
        self.reply_by = {c: self.replies.labels(f"{c}xx") for c in range(1, 6)}
        self.tls_ok, self.tls_failed = self.tls.labels("ok"), self.tls.labels("failed")
        self.verb_by: dict[str, Any] = {}
        self.auth_by: dict[tuple[str, bool], Any] = {}
        self.mailet_by: dict[tuple[str, str], Any] = {}
        self.outcome_by = {o: self.recipients.labels(o)
                           for o in ("delivered", "deferred", "bounced")}


_NAMED_COUNTERS = "chainmail_named_counter"
_NAMED_TIMERS = "chainmail_named_timer_seconds"
_m = _Instruments()


# ------------------------------------------------------------------ process setup


def enable_multiprocess(directory: str) -> None:
    """Keep the values in files under ``directory`` (emptied first), so that a scrape in
    any process of this run sums every process's.  Called once by ``chainmail run``
    before it forks and before anything is counted."""
    global _m, _directory
    os.makedirs(os.path.dirname(directory), mode=0o700, exist_ok=True)
    directory = _in_memory(directory)
    for path in glob.glob(os.path.join(directory, "*.db")):
        os.unlink(path)   # an earlier run's: its counts are not this run's
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.MultiProcessValue()
    with _lock:
        _directory = directory
        _m = _Instruments()
        for named in _counters.values():
            named._child = _m.named.labels(named.name)
            named._child.inc(named._value)
        for each in _timers.values():
            each._child = _m.named_timers.labels(each.name)


#: a memory file system, where the values' mapped files are never written back to a disk
SHARED_MEMORY = "/dev/shm"


def _in_memory(directory: str) -> str:
    """``directory`` made a link to a directory in shared memory when there is one: the
    values are written on every count, and on a disk the kernel would write those pages back
    (a ``syncfs`` of Maildir delivery waits for them too).  The shared-memory directory is
    removed when the process that made it exits.  Returns the directory to use."""
    if not os.path.isdir(SHARED_MEMORY):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        return directory
    target = os.path.realpath(directory) if os.path.islink(directory) else ""
    if not (target.startswith(SHARED_MEMORY + os.sep) and os.path.isdir(target)):
        if os.path.islink(directory):
            os.unlink(directory)
        elif os.path.isdir(directory):
            shutil.rmtree(directory)
        target = tempfile.mkdtemp(prefix="chainmail-metrics-", dir=SHARED_MEMORY)
        os.symlink(target, directory)
    owner = os.getpid()

    def release() -> None:   # at the run's end, in the process that made it (not a worker)
        if os.getpid() == owner:
            shutil.rmtree(target, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.unlink(directory)
    atexit.register(release)
    return directory


def multiprocess_directory() -> str | None:
    """Where the processes of this run keep their values (None: in this process only)."""
    return _directory


def process_dead(pid: int) -> None:
    """A worker process ended: its gauges (open connections) no longer count; its
    counters still do (they are totals of this run)."""
    if _directory is not None:
        multiprocess.mark_process_dead(pid, _directory)


# ----------------------------------------------------------- built-in: counting points


def connection_opened() -> None:
    _m.connections.inc()
    _m.open.inc()


def connection_closed() -> None:
    _m.open.dec()


def connection_refused() -> None:
    _m.refused.inc()


def session_started(lmtp: bool) -> None:
    _m.session_by["lmtp" if lmtp else "smtp"].inc()


#: Commands and replies counted since the last :func:`flush_counts`: one dictionary and one
#: list update per command, where a Prometheus counter in multiprocess mode takes a lock and
#: writes a mapped file (about 1 µs each: 40% of a pipelined NOOP).  Event loop thread only.
_pending_verbs: dict[str, int] = {}
_pending_classes = [0] * 10


def command(verb: str) -> None:
    _pending_verbs[verb] = _pending_verbs.get(verb, 0) + 1


def reply(code: int) -> None:
    _pending_classes[code // 100 % 10] += 1


def flush_counts() -> None:
    """Add the commands and replies counted since the last call to their Prometheus
    counters.  Called from the event loop at the end of each connection, every second, and
    before a scrape, so a scrape is at most a second behind a session still open."""
    if _pending_verbs:
        for verb, count in _pending_verbs.items():
            child = _m.verb_by.get(verb)
            if child is None:
                child = _m.verb_by[verb] = _m.commands.labels(verb if verb in VERBS else "OTHER")
            child.inc(count)
        _pending_verbs.clear()
    classes = _pending_classes
    for code_class in range(1, 6):
        if classes[code_class]:
            _m.reply_by[code_class].inc(classes[code_class])
            classes[code_class] = 0


def tls_handshake(ok: bool) -> None:
    (_m.tls_ok if ok else _m.tls_failed).inc()


def message_received(size: int) -> None:
    _m.messages.inc()
    _m.bytes.inc(size)


def auth_attempt(mechanism: str, ok: bool) -> None:
    key = (mechanism, ok)
    child = _m.auth_by.get(key)
    if child is None:
        child = _m.auth_by[key] = _m.auth.labels(mechanism, "success" if ok else "failure")
    child.inc()


def mailet_time(processor: str, mailet: str, seconds: float) -> None:
    key = (processor, mailet)
    child = _m.mailet_by.get(key)
    if child is None:
        child = _m.mailet_by[key] = _m.mailet.labels(processor, mailet)
    child.observe(seconds)


def delivery_attempt(delivered: int, deferred: int, bounced: int) -> None:
    """One attempt of an outgoing queue entry: how many recipients went each way."""
    _m.attempts.inc()
    for outcome, count in (("delivered", delivered), ("deferred", deferred),
                           ("bounced", bounced)):
        if count:
            _m.outcome_by[outcome].inc(count)


def bounce() -> None:
    _m.bounces.inc()


# ------------------------------------------------------------ named counters and timers


class Counter:
    """A count that only goes up (James's ``Metric``: ``increment``, ``add``, ``getCount``).
    ``value`` is this process's count; the scrape sums every process's."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._value = 0
        self._child = _m.named.labels(name)

    def increment(self) -> int:
        """Add one; return the new count."""
        return self.add(1)

    def add(self, amount: int) -> int:
        """Add ``amount`` (not negative); return the new count."""
        if amount < 0:
            raise ValueError(f"counter {self.name}: cannot add {amount} (counters only go up)")
        with _lock:
            self._value += amount
            value = self._value
        self._child.inc(amount)
        return value

    @property
    def value(self) -> int:
        with _lock:
            return self._value


class Timer:
    """Durations (seconds) of something: their count, sum and a cumulative histogram."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._count = 0
        self._sum = 0.0
        self._buckets = [0] * len(BUCKETS)
        self._child = _m.named_timers.labels(name)

    def record(self, seconds: float) -> None:
        with _lock:
            self._count += 1
            self._sum += seconds
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self._buckets[i] += 1
        self._child.observe(seconds)

    @contextmanager
    def time(self) -> Iterator[None]:
        """Record how long the ``with`` block took."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.record(time.monotonic() - start)

    def state(self) -> dict[str, object]:
        with _lock:
            return {"count": self._count, "sum": self._sum,
                    "buckets": dict(zip(BUCKETS, self._buckets))}


def counter(name: str) -> Counter:
    """The counter named ``name`` (made at the first call)."""
    with _lock:
        found = _counters.get(name)
        if found is None:
            found = _counters[name] = Counter(name)
        return found


def timer(name: str) -> Timer:
    """The timer named ``name`` (made at the first call)."""
    with _lock:
        found = _timers.get(name)
        if found is None:
            found = _timers[name] = Timer(name)
        return found


def snapshot() -> dict[str, object]:
    """This process's named counters and timers, by name (a consistent copy)."""
    with _lock:
        counters = sorted(_counters.items())
        timers = sorted(_timers.items())
    out: dict[str, object] = {name: metric.value for name, metric in counters}
    out.update({name: metric.state() for name, metric in timers})
    return out


def reset() -> None:
    """Forget the named metrics (for tests and a process that starts over)."""
    with _lock:
        _counters.clear()
        _timers.clear()
        _m.named.clear()
        _m.named_timers.clear()


# ----------------------------------------------------------------------- rendering


_INVALID = re.compile(r"[^a-zA-Z0-9_:]")


def prometheus_name(name: str) -> str:
    """``name`` as a Prometheus metric name: other characters become ``_``, and a name that
    starts with a digit gets a leading ``_``."""
    out = _INVALID.sub("_", name)
    return "_" + out if out[:1].isdigit() or not out else out


#: computed at each scrape (see :func:`add_scrape_source`): name -> callable giving families
_scrape_sources: dict[str, Callable[[], Iterable[Metric]]] = {}


def add_scrape_source(name: str, source: Callable[[], Iterable[Metric]] | None) -> None:
    """Register (or with None remove) ``source``: called at each scrape in this process
    for metric families that are measured rather than counted (queue sizes and ages)."""
    with _lock:
        if source is None:
            _scrape_sources.pop(name, None)
        else:
            _scrape_sources[name] = source


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def _collected(directory: str | None) -> list[Metric]:
    if directory is None:
        return list(_m.registry.collect())
    return list(multiprocess.MultiProcessCollector(None, path=directory).collect())


def render_prometheus(*, directory: str | None = None) -> str:
    """The metrics in Prometheus's text exposition format (version 0.0.4): every process's
    values summed when multiprocess mode is on (or those of ``directory``, another run's
    metrics directory), then the families measured at scrape time in this process.

    It may read the spool and the outgoing queues: call it in a worker thread."""
    families = _collected(directory if directory is not None else _directory)
    if directory is None:
        with _lock:
            sources = list(_scrape_sources.values())
        for source in sources:
            families.extend(source())
    named = [f for f in families if f.name in (_NAMED_COUNTERS, _NAMED_TIMERS)]
    rest = [f for f in families if f.name not in (_NAMED_COUNTERS, _NAMED_TIMERS)]
    text = generate_latest(_Families(rest)).decode("utf-8") if rest else ""  # type: ignore[arg-type]
    return text + _render_named(named)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _render_named(families: list[Metric]) -> str:
    """The named counters and timers under their own names, as James's MetricFactory names
    them (``mailetContainerErrors 3``)."""
    counters: dict[str, float] = {}
    timers: dict[str, dict[str, Any]] = {}
    for family in families:
        for s in family.samples:
            name = s.labels.get("name", "")
            if family.name == _NAMED_COUNTERS:
                if s.name.endswith("_total"):
                    counters[name] = counters.get(name, 0.0) + s.value
                continue
            state = timers.setdefault(name, {"buckets": {}, "sum": 0.0, "count": 0.0})
            if s.name.endswith("_bucket"):
                state["buckets"][s.labels["le"]] = s.value
            elif s.name.endswith("_sum"):
                state["sum"] = s.value
            elif s.name.endswith("_count"):
                state["count"] = s.value
    lines: list[str] = []
    for name in sorted(counters):
        metric = prometheus_name(name)
        lines += [f"# TYPE {metric} counter", f"{metric} {_number(counters[name])}"]
    for name in sorted(timers):
        metric, state = prometheus_name(name), timers[name]
        lines.append(f"# TYPE {metric} histogram")
        for bound in BUCKETS:
            count = state["buckets"].get(str(bound), 0.0)
            lines.append(f'{metric}_bucket{{le="{bound}"}} {_number(count)}')
        lines += [f'{metric}_bucket{{le="+Inf"}} {_number(state["count"])}',
                  f"{metric}_sum {state['sum']}", f"{metric}_count {_number(state['count'])}"]
    return "\n".join(lines) + "\n" if lines else ""


def gauge(name: str, documentation: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    """An empty gauge family for a scrape source to fill (``add_metric``)."""
    return GaugeMetricFamily(name, documentation, labels=list(labels))
