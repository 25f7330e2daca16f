"""Process-wide named metrics: counters and timers, and their Prometheus text rendering.

Mailets and handlers count what happens to mail (James's ``MetricFactory``: the
``MetricsMailet`` of James's sample configuration counts errors, bounces and denied relays).
A metric is made the first time its name is asked for and lives as long as the process.
Every operation takes a lock, so counters may be incremented from the event loop and from
worker threads alike.

With several worker processes (``<workers>``), each process has its own counters: the
numbers are per process until they are gathered in one place.
"""

from __future__ import annotations

import re
import threading
import time
from contextlib import contextmanager
from typing import Iterator

__all__ = ["Counter", "Timer", "counter", "timer", "snapshot", "render_prometheus", "reset"]

_lock = threading.Lock()
_counters: dict[str, "Counter"] = {}
_timers: dict[str, "Timer"] = {}

#: upper bounds (seconds) of the timer histogram buckets, as Prometheus's client defaults
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Counter:
    """A count that only goes up (James's ``Metric``: ``increment``, ``add``, ``getCount``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._value = 0

    def increment(self) -> int:
        """Add one; return the new count."""
        return self.add(1)

    def add(self, amount: int) -> int:
        """Add ``amount`` (not negative); return the new count."""
        if amount < 0:
            raise ValueError(f"counter {self.name}: cannot add {amount} (counters only go up)")
        with _lock:
            self._value += amount
            return self._value

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

    def record(self, seconds: float) -> None:
        with _lock:
            self._count += 1
            self._sum += seconds
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self._buckets[i] += 1

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
    """Every counter's value and every timer's state, by name (a consistent copy)."""
    with _lock:
        counters = sorted(_counters.items())
        timers = sorted(_timers.items())
    out: dict[str, object] = {name: metric.value for name, metric in counters}
    out.update({name: metric.state() for name, metric in timers})
    return out


def reset() -> None:
    """Forget every metric (for tests and a process that starts over)."""
    with _lock:
        _counters.clear()
        _timers.clear()


_INVALID = re.compile(r"[^a-zA-Z0-9_:]")


def prometheus_name(name: str) -> str:
    """``name`` as a Prometheus metric name: other characters become ``_``, and a name that
    starts with a digit gets a leading ``_``."""
    out = _INVALID.sub("_", name)
    return "_" + out if out[:1].isdigit() or not out else out


def render_prometheus() -> str:
    """The metrics in Prometheus's text exposition format (version 0.0.4)."""
    lines: list[str] = []
    for name, value in snapshot().items():
        metric = prometheus_name(name)
        if isinstance(value, int):
            lines += [f"# TYPE {metric} counter", f"{metric} {value}"]
            continue
        assert isinstance(value, dict)
        lines.append(f"# TYPE {metric} histogram")
        buckets = value["buckets"]
        assert isinstance(buckets, dict)
        for bound, count in buckets.items():
            lines.append(f'{metric}_bucket{{le="{bound}"}} {count}')
        lines += [f'{metric}_bucket{{le="+Inf"}} {value["count"]}',
                  f"{metric}_sum {value['sum']}", f"{metric}_count {value['count']}"]
    return "\n".join(lines) + "\n" if lines else ""
