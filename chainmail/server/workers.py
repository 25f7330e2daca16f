"""Worker processes: ``ioWorkerCount`` copies of the server, each a trio loop on a core.

The supervisor (the ``chainmail run`` process) binds every address once, to learn the
ports (``bind`` with port 0) and to report a taken port before anything starts, then forks
the workers.  Each worker opens its own listening socket on every address with
``SO_REUSEPORT``: the kernel spreads new connections over the workers, each with its own
accept queue, so no connection wakes more than one process (the supervisor's sockets are
bound but never listen, so the kernel gives them none).  A worker builds its own stores,
handler chains and mailet container after the fork; nothing that holds a thread, a
database connection or a trio loop crosses it.

What must be exact across workers is shared: connection counts (``limits.py``: a mapped
file, one column per worker); the spool, whose messages any worker may process under a
per-message claim (``store/spool/claims.py``); the Maildirs and SQLite stores, which are safe for
several processes.  Container services (RemoteDelivery's scheduler) run in worker 0 only:
they read their queue, which any worker's mailets write, every second.

The supervisor forwards SIGTERM/SIGINT (every worker drains, then it exits 0) and SIGHUP.
On SIGHUP it first checks the configuration on disk (``on_reload``: built completely in a
forked child, new addresses bound with :func:`rebind`, the plan written for the workers,
:mod:`.reload`); then every worker switches to it in place, or, when it was refused,
re-reads its TLS material only.  A worker started later (a replacement) starts on the
configuration in force.  A worker that dies otherwise (a crash, ``kill
-9``) loses only its own sessions: what it had acknowledged is in the spool, which the
others go on processing; the supervisor clears its connection counts and starts a
replacement.  Workers die with the supervisor (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

__all__ = ["BoundAddress", "bind_addresses", "rebind", "worker_count", "supervise", "listen_on"]

log = logging.getLogger("chainmail.server")

SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
READY_TIMEOUT = 60.0   # seconds for every worker to open its listeners
RESTART_BACKOFF = (0.1, 0.5, 1.0, 2.0, 5.0)   # seconds before restarting a worker that keeps dying
STABLE_AFTER = 10.0    # a worker that ran this long resets its backoff


@dataclass(frozen=True)
class BoundAddress:
    """One listening address of a server block, as the supervisor bound it."""

    block: int           # index of the server block
    family: int
    sockaddr: tuple      # with the port the supervisor got (never 0)


def worker_count(servers: Sequence) -> int:
    """The number of worker processes: the largest ``ioWorkerCount`` of the enabled blocks
    (every worker serves every block)."""
    counts = [s.io_worker_count for s in servers if s.enabled]
    return max([1, *counts])


def _reuse_socket(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock


def _probe(family: int, sockaddr: tuple) -> tuple:
    """Bind ``sockaddr`` as one server alone would (``SO_REUSEADDR`` only) and release it;
    returns the address with the port the kernel chose for port 0."""
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind(sockaddr)
        return probe.getsockname()
    finally:
        probe.close()


def bind_key(cfg, bind) -> Hashable:
    """Which listening socket a ``<bind>`` is: its address, or for port 0 (a port the
    kernel picks) the block and host, so that a reload keeps the port it got."""
    host = None if bind.host in ("", "*") else bind.host
    if bind.port == 0:
        return ("any", cfg.kind, cfg.name, host)
    return ("port", host, bind.port)


def _bind_one(cfg, bind) -> list[tuple[int, tuple, socket.socket]]:
    """Bind (without listening) one ``<bind>`` as trio's ``open_tcp_listeners`` would:
    (family, address with its port, socket) for each address it resolves to."""
    held: list[tuple[int, tuple, socket.socket]] = []
    host = None if bind.host in ("", "*") else bind.host
    try:
        infos = socket.getaddrinfo(host, bind.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        for family, _, _, _, sockaddr in dict.fromkeys(
                (i[0], i[1], i[2], i[3], i[4]) for i in infos):
            # First without SO_REUSEPORT: a port another server (another chainmail too)
            # listens on is refused, not silently shared.
            sockaddr = _probe(family, sockaddr)
            sock = _reuse_socket(family)
            try:
                sock.bind(sockaddr)
            except BaseException:
                sock.close()
                raise
            held.append((family, sock.getsockname(), sock))
    except OSError as exc:
        for _, _, sock in held:
            sock.close()
        raise OSError(exc.errno, f"{cfg.file}:{cfg.line}: {cfg.kind}server {cfg.name!r}: "
                                 f"cannot bind {bind.host}:{bind.port}: {exc.strerror}") from exc
    except BaseException:
        for _, _, sock in held:
            sock.close()
        raise
    return held


def bind_addresses(servers: Sequence) -> tuple[list[BoundAddress], list[socket.socket]]:
    """Bind (without listening) every address of every block, as trio's
    ``open_tcp_listeners`` would; returns the addresses and the sockets holding them."""
    bound, held, _, _ = rebind(servers, {})
    return bound, [sock for entries in held.values() for _, _, sock in entries]


def rebind(servers: Sequence, held: dict) -> tuple[list[BoundAddress], dict, list, list]:
    """The addresses of ``servers``, keeping those ``held`` already holds (by
    :func:`.reload.bind_key`: a kept port-0 bind keeps its port) and binding the others.
    Returns the addresses, what is held now, the keys bound anew, and the sockets no longer
    needed (the caller closes them once the workers have let go).  On an error nothing
    new stays bound and ``held`` is untouched."""
    bound: list[BoundAddress] = []
    now: dict = {}
    fresh: list = []
    try:
        for index, cfg in enumerate(servers):
            for bind in cfg.bind:
                key = bind_key(cfg, bind)
                if key not in now:
                    if key in held:
                        now[key] = held[key]
                    else:
                        now[key] = _bind_one(cfg, bind)
                        fresh.append(key)
                bound.extend(BoundAddress(index, family, sockaddr)
                             for family, sockaddr, _ in now[key])
    except BaseException:
        for key in fresh:
            for _, _, sock in now[key]:
                sock.close()
        raise
    dropped = [sock for key, entries in held.items() if key not in now for _, _, sock in entries]
    return bound, now, fresh, dropped


def listen_on(address: BoundAddress, backlog: int):
    """A worker's own listening socket on ``address`` (``SO_REUSEPORT``), as a trio listener."""
    import trio
    sock = _reuse_socket(address.family)
    try:
        sock.bind(address.sockaddr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: the kernel kills this worker if the supervisor dies."""
    with contextlib.suppress(OSError, AttributeError):   # not Linux: the supervisor's SIGTERM only
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)   # PR_SET_PDEATHSIG = 1


class _Worker:
    __slots__ = ("index", "pid", "started", "failures")

    def __init__(self, index: int) -> None:
        self.index, self.pid, self.started, self.failures = index, 0, 0.0, 0


def supervise(count: int, run_worker: Callable[[int, int | None], int], *,
              on_worker_exit: Callable[[int], None] = lambda index: None,
              on_reload: Callable[[], None] | None = None) -> int:
    """Fork ``count`` workers running ``run_worker(index, ready_fd)`` (which writes one
    byte to ``ready_fd`` once its listeners are open, and returns an exit status); supervise
    them until SIGTERM/SIGINT.  Returns 0 if every worker drained cleanly.  On SIGHUP,
    ``on_reload`` runs (it checks the configuration on disk and plans it for the workers)
    before the signal is passed to every worker."""
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    parent = os.getpid()
    workers = [_Worker(i) for i in range(count)]
    by_pid: dict[int, _Worker] = {}

    def spawn(worker: _Worker, ready_fd: int | None) -> None:
        pid = os.fork()
        if pid == 0:   # the worker
            status = 1
            try:
                _die_with_parent()
                if os.getppid() != parent:
                    os._exit(1)
                from . import reload
                reload.supervisor_pid = parent   # request_reload() signals the supervisor
                for signum in SIGNALS:
                    signal.signal(signum, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
                status = run_worker(worker.index, ready_fd)
            except BaseException:
                log.exception("worker %d failed", worker.index)
            finally:
                logging.shutdown()
                os._exit(status)
        worker.pid, worker.started = pid, time.monotonic()
        by_pid[pid] = worker

    # Worker 0 first: a configuration error is then reported once, with its exit status.
    for batch in (workers[:1], workers[1:]):
        read_fd, write_fd = os.pipe()
        try:
            for worker in batch:
                spawn(worker, write_fd)
            os.close(write_fd)
            write_fd = -1
            code = _wait_ready(read_fd, len(batch), by_pid)
            if code:
                _stop_all(by_pid, signal.SIGKILL)
                for _ in by_pid:
                    os.wait()
                return code
        finally:
            if write_fd >= 0:
                os.close(write_fd)
            os.close(read_fd)
    log.info("chainmail ready (pid %d, %d worker processes: %s)", parent, count,
             " ".join(str(w.pid) for w in workers))

    stopping = False
    failed = False
    while by_pid:
        info = signal.sigwaitinfo(SIGNALS)
        signum = info.si_signo
        if signum in (signal.SIGTERM, signal.SIGINT):
            if not stopping:
                log.info("received %s: stopping %d worker processes", signal.Signals(signum).name,
                         len(by_pid))
                stopping = True
                _stop_all(by_pid, signal.SIGTERM)
            continue
        if signum == signal.SIGHUP:
            from .. import logsetup
            logsetup.reopen()   # logrotate moved the log file: this line goes to the new one
            log.info("received SIGHUP")
            if on_reload is not None and not stopping:
                try:
                    on_reload()
                except Exception:
                    log.exception("configuration reload failed; the configuration in force "
                                  "is kept")
            log.info("passing SIGHUP to every worker")
            _stop_all(by_pid, signal.SIGHUP)
            continue
        for pid, status in _reap():
            if pid not in by_pid:
                continue
            worker = by_pid.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            on_worker_exit(worker.index)
            if stopping:
                if code != 0:
                    failed = True
                    log.error("worker %d (pid %d) exited with %s", worker.index, pid, code)
                continue
            lived = time.monotonic() - worker.started
            worker.failures = 0 if lived > STABLE_AFTER else worker.failures + 1
            delay = RESTART_BACKOFF[min(worker.failures, len(RESTART_BACKOFF)) - 1] \
                if worker.failures else 0.0
            log.error("worker %d (pid %d) died (%s) after %.1f s; its sessions are cut, its "
                      "acknowledged mail is in the spool; starting a replacement%s",
                      worker.index, pid, _describe(code), lived,
                      f" in {delay:.1f} s" if delay else "")
            if delay:
                time.sleep(delay)
            spawn(worker, None)
            log.info("worker %d replaced by pid %d", worker.index, worker.pid)
    log.info("stopped")
    return 1 if failed else 0


def _describe(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit status {code}"


def _reap():
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        from .. import metrics
        metrics.process_dead(pid)   # its open connections no longer count
        yield pid, status


def _stop_all(by_pid: dict, signum: int) -> None:
    for pid in list(by_pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _wait_ready(read_fd: int, count: int, by_pid: dict) -> int:
    """Wait until ``count`` workers wrote their ready byte: 0; else the exit status of one
    that ended first (at least 1), or 1 when time ran out."""
    import select
    ready = 0
    deadline = time.monotonic() + READY_TIMEOUT
    while ready < count:
        left = deadline - time.monotonic()
        if left <= 0:
            log.error("worker processes not ready after %.0f s", READY_TIMEOUT)
            return 1
        readable, _, _ = select.select([read_fd], [], [], min(left, 0.2))
        if readable:
            data = os.read(read_fd, 64)
            if not data:   # every worker of the batch closed its end: one has ended
                time.sleep(0.05)
            ready += len(data)
        for pid, status in _reap():
            if pid in by_pid:
                code = os.waitstatus_to_exitcode(status)
                log.error("worker pid %d exited while starting (%s)", pid, _describe(code))
                by_pid.pop(pid)
                return code if code > 0 else 1
    return 0 if ready >= count else 1
