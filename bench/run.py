#!/usr/bin/env python3
"""chainmail benchmark, driven by Postfix's smtp-source.

    .venv/bin/python bench/run.py [--quick] [--cells CELL ...] [--peers PEER ...] [--runs 3]

Within each cell every peer gets a fresh server process; the peers are interleaved run by run (the
order rotates each run) and each metric is the median of --runs runs. Numbers move 10-40% between
invocations on small shared machines: compare peers only within one run, as ratios.

Peers: chainmail (skipped with a message when <venv>/bin/chainmail is missing or does not start),
aiosmtpd-discard, aiosmtpd-maildir (tmp/ + fsync + rename + fsync new/), smtp-sink (Postfix, C,
discards). See bench/README.md.

All traffic goes to 127.0.0.1. As root, the script re-executes itself under `unshare -n` (a private
network namespace with only `lo`) unless --no-netns is given.

Stdlib only. Results: stdout, bench/results/latest.md and bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
NETNS_ENV = "CHAINMAIL_BENCH_IN_NETNS"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

DOMAIN = "bench.test"
SENDER = f"sender@{DOMAIN}"
# smtp-source -r K sends K recipients per message: "Krcpt@bench.test", ..., "2rcpt@bench.test",
# "rcpt@bench.test". All stay in bench.test, a local domain for chainmail.
RCPT = f"rcpt@{DOMAIN}"

START_TIMEOUT = 20.0  # seconds for a server to accept connections
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
MAX_RESTARTS = 2  # per peer per cell, when a server exits between or during runs
RSS_TARGET_MIB = 10.0  # chainmail: peak RSS growth while receiving the 50 MB message


# --------------------------------------------------------------------------------------------
# cells


@dataclass(frozen=True)
class Cell:
    name: str
    flags: tuple[str, ...]
    messages: int  # -m for a full run: about 2-5 s for the slowest peer
    quick: int  # -m with --quick
    what: str
    rss_only: bool = False  # the 50 MB cell: only RSS is reported

    @property
    def label(self) -> str:
        return "`" + " ".join(self.flags) + "`"


CELLS = [
    Cell("s1", ("-s", "1", "-l", "1024"), 1000, 200, "one connection per message, 1 session"),
    Cell("s10", ("-s", "10", "-l", "1024"), 1500, 300, "one connection per message, 10 sessions"),
    Cell("s50", ("-s", "50", "-l", "1024"), 2000, 300, "one connection per message, 50 sessions"),
    Cell("s10-100k", ("-s", "10", "-l", "102400"), 800, 120, "100 KiB bodies, 10 sessions"),
    Cell("s50-100k", ("-s", "50", "-l", "102400"), 800, 120, "100 KiB bodies, 50 sessions"),
    Cell("s10-d", ("-s", "10", "-l", "1024", "-d"), 3000, 600,
         "many messages per connection (-d), 10 sessions"),
    Cell("s10-r50", ("-s", "10", "-l", "1024", "-r", "50"), 300, 60,
         "50 RCPT per message, 10 sessions"),
    Cell("50mb", ("-s", "1", "-l", "52428800"), 1, 1,
         "one 50 MB message: peak RSS only", rss_only=True),
]
CELL_BY_NAME = {c.name: c for c in CELLS}


# --------------------------------------------------------------------------------------------
# /proc helpers


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def proc_tree(pid: int) -> list[int]:
    """pid and all its descendant processes (threads are accounted in their process)."""
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def cpu_ticks(pids: list[int]) -> int:
    """utime+stime (+ reaped children's) of the processes, in clock ticks."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        # fields[0] is field 3 (state); utime/stime/cutime/cstime are fields 14-17.
        total += sum(int(x) for x in fields[11:15])
    return total


def status_kib(pids: list[int], key: str) -> int:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_smtp_ready(port: int, proc: subprocess.Popen, timeout: float) -> str | None:
    """Wait until 127.0.0.1:port answers with a 220 greeting. Returns None or an error text."""
    deadline = time.monotonic() + timeout
    last = "no connection"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with status {proc.returncode} before accepting connections"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.settimeout(5)
                banner = s.recv(512)
                if banner.startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    try:
                        s.recv(512)
                    except OSError:
                        pass
                    return None
                last = f"unexpected greeting {banner[:80]!r}"
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    return f"no 220 greeting on 127.0.0.1:{port} within {timeout:.0f} s ({last})"


def tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in lines[-n:])


# --------------------------------------------------------------------------------------------
# peers


class Peer:
    name = "?"

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.dir: Path | None = None
        self.log: Path | None = None

    # what to run; the peer's files go under self.dir
    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        pass

    def available(self) -> str | None:
        """None, or why this peer cannot run at all."""
        return None

    def start(self, workdir: Path) -> str | None:
        self.dir = workdir / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.prepare()
        self.log = self.dir / "server.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,  # own process group: stop() kills the whole group
            )
        err = wait_smtp_ready(self.port, self.proc, START_TIMEOUT)
        if err:
            self.stop()
            return f"{err}\n{tail(self.log)}"
        return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> list[int]:
        return proc_tree(self.proc.pid) if self.alive() else []

    def reset(self) -> None:
        """Remove what the previous run stored."""

    def accepted(self) -> int | None:
        """Messages accepted since the last reset, or None when the peer cannot tell."""
        return None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the group id is the leader's pid
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # the leader is gone; make sure nothing else of its group survives
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        if proc.poll() is None:
            proc.wait(timeout=STOP_TIMEOUT)


class ChainmailPeer(Peer):
    name = "chainmail"

    def __init__(self, command: str) -> None:
        super().__init__()
        # an executable, or a command such as "<venv>/bin/python -m chainmail"
        self.argv = shlex.split(command)
        self._base: int | None = None

    def available(self) -> str | None:
        exe = self.argv[0] if self.argv else ""
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            return (f"{exe or '(empty)'} not found "
                    "(install chainmail into the venv: pip install -e .)")
        return None

    @property
    def var(self) -> Path:
        return self.dir / "var"

    @property
    def spool(self) -> Path:
        return self.var / "spool"

    def prepare(self) -> None:
        conf = self.dir / "conf"
        conf.mkdir(exist_ok=True)
        shutil.rmtree(self.var, ignore_errors=True)
        self.var.mkdir()
        (conf / "smtpserver.xml").write_text(
            "<smtpservers><smtpserver enabled=\"true\"><jmxName>bench</jmxName>"
            f"<bind>127.0.0.1:{self.port}</bind>"
            f"<helloName autodetect=\"false\">{DOMAIN}</helloName>"
            "<connectiontimeout>360</connectiontimeout>"
            "<authorizedAddresses>127.0.0.0/8</authorizedAddresses>"
            "<maxmessagesize>0</maxmessagesize>"
            "<handlerchain coreHandlersPackage="
            "\"org.apache.james.smtpserver.NoAuthCmdHandlerLoader\"/>"
            "</smtpserver></smtpservers>\n"
        )
        (conf / "domainlist.xml").write_text(
            f"<domainlist><domainnames><domainname>{DOMAIN}</domainname></domainnames>"
            "<autodetect>false</autodetect><autodetectIP>false</autodetectIP>"
            f"<defaultDomain>{DOMAIN}</defaultDomain></domainlist>\n"
        )

    def command(self) -> list[str]:
        return [*self.argv, "run", "--conf", str(self.dir / "conf"), "--var", str(self.var)]

    def _queued(self) -> int | None:
        # chainmail keeps small messages as records in segment files under <var>/spool/segments/
        # (and only large ones as files in <var>/spool/queue/), so files are not messages:
        # count them with `chainmail queue list`, which reads the spool as the server wrote it.
        # Outside the timed part of a run, and not a child of the server (no CPU charged to it).
        try:
            r = subprocess.run([*self.argv, "queue", "list", "--var", str(self.var)],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired):
            return None
        last = r.stdout.strip().splitlines()[-1:] if r.returncode == 0 else []
        if not last or not last[0].endswith(" message(s) queued"):
            return None
        return int(last[0].split()[0])

    def accepted(self) -> int | None:
        # Messages queued since reset(): the spool is never edited behind the running server.
        now = self._queued()
        return None if now is None or self._base is None else now - self._base

    def reset(self) -> None:
        self._base = self._queued()

    def stop(self) -> None:
        super().stop()
        if self.dir is not None:
            shutil.rmtree(self.var, ignore_errors=True)


class AiosmtpdPeer(Peer):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.name = f"aiosmtpd-{mode}"
        self.seq = 0

    @property
    def maildir(self) -> Path:
        return self.dir / "Maildir"

    @property
    def count_file(self) -> Path:
        return self.dir / "count"

    def available(self) -> str | None:
        try:
            import aiosmtpd  # noqa: F401
        except ImportError:
            return "aiosmtpd is not installed in this interpreter (pip install aiosmtpd)"
        return None

    def prepare(self) -> None:
        self.seq = 0
        self.base = 0
        shutil.rmtree(self.maildir, ignore_errors=True)

    def command(self) -> list[str]:
        cmd = [sys.executable, str(HERE / "peers" / "aiosmtpd_peer.py"), "--port", str(self.port),
               "--mode", self.mode, "--count-file", str(self.count_file)]
        if self.mode == "maildir":
            cmd += ["--maildir", str(self.maildir)]
        return cmd

    def _count(self) -> int | None:
        """Ask the peer (SIGUSR1) for its running count of accepted messages."""
        if not self.alive():
            return None
        self.seq += 1
        os.kill(self.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                seq, count = self.count_file.read_text().split()
                if int(seq) == self.seq:
                    return int(count)
            except (OSError, ValueError):
                pass
            time.sleep(0.01)
        return None

    def reset(self) -> None:
        self.base = self._count() or 0
        if self.mode == "maildir":
            new = self.maildir / "new"
            if new.is_dir():
                for f in os.listdir(new):
                    try:
                        os.unlink(new / f)
                    except OSError:
                        pass

    def accepted(self) -> int | None:
        count = self._count()
        if count is None:
            return None
        count -= self.base
        if self.mode == "maildir":
            files = len(os.listdir(self.maildir / "new"))
            if files != count:
                return files  # trust the disk: the mismatch will show
        return count


class SmtpSinkPeer(Peer):
    name = "smtp-sink"

    def __init__(self, binary: str | None, count: bool) -> None:
        super().__init__()
        self.binary = binary
        self.count = count
        self.base = 0

    def available(self) -> str | None:
        return None if self.binary else "smtp-sink not found (apt-get install postfix)"

    def command(self) -> list[str]:
        cmd = [self.binary, "-h", DOMAIN]
        if self.count:
            cmd.append("-c")  # running counters on stdout (server.log): lets us count messages
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]  # required as root: drop privileges after binding
        return cmd + [f"127.0.0.1:{self.port}", "1024"]

    def _count(self) -> int | None:
        if not self.count or self.log is None:
            return None
        # "-c" rewrites "sess=N quit=N mesg=N" after a '\r' for every event
        try:
            with open(self.log, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log) - 200))
                last = f.read().replace(b"\n", b"\r").split(b"\r")
        except OSError:
            return None
        for chunk in reversed(last):
            for word in chunk.split():
                if word.startswith(b"mesg="):
                    return int(word[5:])
        return 0

    def reset(self) -> None:
        self.base = self._count() or 0

    def accepted(self) -> int | None:
        count = self._count()
        return None if count is None else count - self.base


# --------------------------------------------------------------------------------------------
# running


@dataclass
class RunResult:
    ok: bool
    wall_s: float
    msgs_per_s: float | None
    cpu_us_per_msg: float | None
    client_cpu_us_per_msg: float | None
    accepted: int | None
    expected: int
    rss_before_kib: int
    count_mismatch: bool = False
    note: str = ""


@dataclass
class CellResult:
    runs: dict[str, list[RunResult]] = field(default_factory=dict)
    hwm_kib: dict[str, int] = field(default_factory=dict)
    rss_start_kib: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    logs: dict[str, list[str]] = field(default_factory=dict)  # output of servers that exited
    restarts: list[str] = field(default_factory=list)


def smtp_source_cmd(smtp_source: str, cell: Cell, n: int, port: int) -> list[str]:
    return [smtp_source, *cell.flags, "-m", str(n), "-f", SENDER, "-t", RCPT, "-M", DOMAIN,
            f"127.0.0.1:{port}"]


def one_run(peer: Peer, smtp_source: str, cell: Cell, n: int) -> RunResult:
    peer.reset()
    pids = peer.pids()
    rss_before = status_kib(pids, "VmRSS")
    cmd = smtp_source_cmd(smtp_source, cell, n, peer.port)
    timeout = max(120.0, n * 0.1)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = cpu_ticks(pids)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        out += f"\n(killed after {timeout:.0f} s)".encode()
    except BaseException:  # interrupted: leave no smtp-source behind
        proc.kill()
        proc.wait()
        raise
    wall = time.perf_counter() - t0
    cpu1 = cpu_ticks(peer.pids() or pids)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    accepted = peer.accepted()
    ok = proc.returncode == 0
    mismatch = False
    note = ""
    if not ok:
        text = out.decode(errors="replace").strip().splitlines()
        note = f"smtp-source exit {proc.returncode}: " + " | ".join(text[-3:])
    elif accepted is not None and accepted != n:
        if accepted > n and accepted % n == 0:
            note = f"{accepted // n} spool files per message"
        else:
            # kept in the medians but flagged: a peer that loses mail is not measured fairly
            mismatch = True
            note = f"peer stored/counted {accepted} of {n} messages"
    return RunResult(
        ok=ok,
        wall_s=wall,
        msgs_per_s=n / wall if ok else None,
        cpu_us_per_msg=(cpu1 - cpu0) / CLK_TCK * 1e6 / n if ok else None,
        client_cpu_us_per_msg=client_cpu * 1e6 / n if ok else None,
        accepted=accepted,
        expected=n,
        rss_before_kib=rss_before,
        count_mismatch=mismatch,
        note=note,
    )


def run_cell(cell: Cell, peers: list[Peer], args, workdir: Path, dead: dict[str, str]) -> CellResult:
    res = CellResult()
    n = cell.quick if args.quick else cell.messages
    if args.messages:
        n = args.messages if not cell.rss_only else 1
    live: list[Peer] = []
    try:
        for peer in peers:
            if peer.name in dead:
                res.skipped[peer.name] = dead[peer.name]
                continue
            err = peer.start(workdir)
            if err:
                print(f"  {peer.name}: SKIPPED, failed to start: {err}", flush=True)
                first = err.strip().splitlines()[0]
                res.skipped[peer.name] = f"failed to start: {first}"
                if isinstance(peer, ChainmailPeer):
                    # it will not do better in the next cell: don't spend 20 s per cell on it
                    dead[peer.name] = f"failed to start in cell {cell.name}: {first}"
                continue
            res.rss_start_kib[peer.name] = status_kib(peer.pids(), "VmRSS")
            res.runs[peer.name] = []
            live.append(peer)
        restarts: dict[str, int] = {}

        def check_alive(peer: Peer, when: str, restart: bool = True) -> bool:
            """True if the peer's server is up; a server that exited is reported and restarted
            (at most MAX_RESTARTS times per cell)."""
            if peer.alive():
                return True
            if peer.name in res.skipped:
                return False
            rc = peer.proc.returncode if peer.proc else None
            how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"status {rc}"
            msg = f"server exited ({how}) {when}"
            print(f"  {peer.name}: {msg}; last lines of its output:\n{tail(peer.log)}", flush=True)
            res.logs.setdefault(peer.name, []).append(f"{msg}:\n{tail(peer.log, 40)}")
            # keep the peak of the process that exited (sampled after each run)
            peer.stop()
            if not restart:
                res.restarts.append(f"{peer.name}: {msg}")
                return False
            if restarts.get(peer.name, 0) >= MAX_RESTARTS:
                res.skipped[peer.name] = msg + f"; not restarted again (max {MAX_RESTARTS})"
                return False
            restarts[peer.name] = restarts.get(peer.name, 0) + 1
            err = peer.start(workdir)
            if err:
                res.skipped[peer.name] = msg + "; restart failed"
                print(f"  {peer.name}: restart failed: {err}", flush=True)
                return False
            res.restarts.append(f"{peer.name}: {msg}; restarted")
            print(f"  {peer.name}: restarted", flush=True)
            return True

        for r in range(args.runs):
            k = r % len(live) if live else 0
            for peer in live[k:] + live[:k]:  # interleave, rotating who goes first
                if not check_alive(peer, f"before run {r + 1}"):
                    continue
                rr = one_run(peer, args.smtp_source, cell, n)
                res.runs[peer.name].append(rr)
                status = (f"{rr.msgs_per_s:8.0f} msg/s {rr.cpu_us_per_msg:7.0f} us/msg"
                          if rr.ok else "   FAILED")
                flag = "MISMATCH " if rr.count_mismatch else ""
                print(f"  run {r + 1}/{args.runs} {peer.name:17s} -m {n:<5d} {rr.wall_s:6.2f} s "
                      f"{status} {flag}{rr.note}", flush=True)
                # sampled after every run, so a server that dies later still has its peak
                if check_alive(peer, f"during run {r + 1}"):
                    hwm = status_kib(peer.pids(), "VmHWM")
                    res.hwm_kib[peer.name] = max(res.hwm_kib.get(peer.name, 0), hwm)
        for peer in live:
            if check_alive(peer, "after the last run", restart=False):
                hwm = status_kib(peer.pids(), "VmHWM")
                res.hwm_kib[peer.name] = max(res.hwm_kib.get(peer.name, 0), hwm)
    finally:
        for peer in peers:
            peer.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True, exist_ok=True)
    return res


# --------------------------------------------------------------------------------------------
# reporting

RATIO_BASES = ("aiosmtpd-discard", "aiosmtpd-maildir", "smtp-sink")


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def cell_metrics(cr: CellResult) -> dict[str, dict[str, float | None]]:
    out = {}
    for peer, runs in cr.runs.items():
        good = [r for r in runs if r.ok]
        out[peer] = {
            "msgs_per_s": median(r.msgs_per_s for r in good),
            "cpu_us_per_msg": median(r.cpu_us_per_msg for r in good),
            "client_cpu_us_per_msg": median(r.client_cpu_us_per_msg for r in good),
            "peak_rss_mib": cr.hwm_kib[peer] / 1024 if peer in cr.hwm_kib else None,
            "rss_start_mib": cr.rss_start_kib[peer] / 1024 if peer in cr.rss_start_kib else None,
            "failed_runs": len(runs) - len(good),
            "count_mismatches": sum(r.count_mismatch for r in runs),
            "died": peer in cr.skipped or any(x.startswith(peer + ":") for x in cr.restarts),
            "runs": len(runs),
        }
    return out


def fmt(v, digits=0):
    if v is None:
        return "—"
    return f"{v:,.{digits}f}".replace(",", " ") if digits == 0 else f"{v:.{digits}f}"


def table(title, cells, results, peer_names, key, digits=0, note=""):
    head = ["cell (smtp-source flags)", *peer_names]
    has_cm = "chainmail" in peer_names
    ratios = [b for b in RATIO_BASES if b in peer_names] if has_cm else []
    head += [f"chainmail/{b}" for b in ratios]
    lines = [f"### {title}", ""]
    if note:
        lines += [note, ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in cells:
        m = results[cell.name]
        row = [cell.label]
        for p in peer_names:
            v = m.get(p, {}).get(key)
            flag = (" !" if m.get(p, {}).get("failed_runs") else "") + (
                " *" if m.get(p, {}).get("count_mismatches") else "") + (
                " †" if m.get(p, {}).get("died") else "")
            row.append(fmt(v, digits) + flag)
        cm = m.get("chainmail", {}).get(key)
        for b in ratios:
            bv = m.get(b, {}).get(key)
            row.append(f"{cm / bv:.2f}" if cm is not None and bv else "—")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def report(cells, cell_results, peer_names, args, meta, skipped_peers) -> tuple[str, dict]:
    metrics = {c.name: cell_metrics(cell_results[c.name]) for c in cells}
    perf_cells = [c for c in cells if not c.rss_only]
    out = [f"# chainmail benchmark — {meta['date']}", ""]
    out.append(
        f"smtp-source (Postfix {meta['postfix']}), {meta['cpus']} CPUs, Linux {meta['kernel']}, "
        f"Python {meta['python']}, aiosmtpd {meta['aiosmtpd']}; "
        f"{'private network namespace (unshare -n)' if meta['netns'] else 'host network namespace'}; "
        f"median of {args.runs} interleaved runs{' (--quick)' if args.quick else ''}; "
        f"load average {meta['loadavg_start'][0]} at start, {meta['loadavg_end'][0]} at end; "
        f"{meta['elapsed_s']:.0f} s. Compare only within this run, as ratios."
    )
    out.append("")
    if skipped_peers:
        for name, why in skipped_peers.items():
            out.append(f"- **{name} skipped:** {why}")
        out.append("")
    if perf_cells:
        out.append(table("Messages per second (higher is better)", perf_cells, metrics,
                         peer_names, "msgs_per_s",
                         note="Wall time of smtp-source. `!` = some runs failed (smtp-source exit status "
                              "not 0; left out of the median), `*` = the peer stored fewer or "
                              "more messages than were sent, `†` = the server exited during the cell "
                              "and was restarted or dropped (see Notes)."))
        out.append(table("Server CPU µs per message (lower is better)", perf_cells, metrics,
                         peer_names, "cpu_us_per_msg",
                         note="utime+stime of the server process (all its threads and child "
                              f"processes) from /proc, {CLK_TCK} ticks/s."))
    out.append(table("Peak RSS MiB (VmHWM of a fresh server per cell; lower is better)", cells,
                     metrics, peer_names, "peak_rss_mib", digits=1))
    big = [c for c in cells if c.rss_only]
    if big:
        c = big[0]
        lines = ["### RSS while receiving one 50 MB message", "",
                 "| peer | RSS before (MiB) | peak RSS after (MiB) | growth (MiB) |",
                 "|---|---|---|---|"]
        for p in peer_names:
            m = metrics[c.name].get(p)
            if not m or m["peak_rss_mib"] is None:
                lines.append(f"| {p} | — | — | — |")
                continue
            runs = cell_results[c.name].runs.get(p) or []
            before = runs[0].rss_before_kib / 1024 if runs else m["rss_start_mib"]
            lines.append(f"| {p} | {before:.1f} | {m['peak_rss_mib']:.1f} | "
                         f"{m['peak_rss_mib'] - before:.1f} |")
        cm = metrics[c.name].get("chainmail")
        if cm and cm["peak_rss_mib"] is not None and cell_results[c.name].runs.get("chainmail"):
            before = cell_results[c.name].runs["chainmail"][0].rss_before_kib / 1024
            growth = cm["peak_rss_mib"] - before
            verdict = "met" if growth <= RSS_TARGET_MIB else "NOT met"
            lines += ["", f"chainmail target (peak RSS flat within {RSS_TARGET_MIB:.0f} MiB): "
                          f"{verdict}, growth {growth:.1f} MiB."]
        else:
            lines += ["", "chainmail target (peak RSS flat within 10 MiB): not measured."]
        out.append("\n".join(lines) + "\n")
    notes = []
    for c in cells:
        for p, why in cell_results[c.name].skipped.items():
            if p not in skipped_peers:
                notes.append(f"- {c.name} {p}: {why}")
        for what in cell_results[c.name].restarts:
            notes.append(f"- {c.name} {what}")
        for p, runs in cell_results[c.name].runs.items():
            for i, r in enumerate(runs):
                if r.note:
                    notes.append(f"- {c.name} {p} run {i + 1}: {r.note}")
    if notes:
        out.append("### Notes\n\n" + "\n".join(notes) + "\n")
    md = "\n".join(out)
    data = {
        "meta": meta,
        "args": {"runs": args.runs, "quick": args.quick, "cells": [c.name for c in cells],
                 "peers": peer_names},
        "skipped": skipped_peers,
        "cells": {
            c.name: {
                "flags": list(c.flags),
                "what": c.what,
                "metrics": metrics[c.name],
                "skipped": cell_results[c.name].skipped,
                "server_output_on_death": cell_results[c.name].logs,
                "runs": {p: [r.__dict__ for r in runs]
                         for p, runs in cell_results[c.name].runs.items()},
            }
            for c in cells
        },
    }
    return md, data


# --------------------------------------------------------------------------------------------
# network namespace


def maybe_enter_netns(mode: str) -> bool:
    """Re-exec under `unshare -n` when asked/possible. Returns True when inside one."""
    if os.environ.get(NETNS_ENV) == "1":
        r = subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"could not bring lo up in the network namespace: {r.stderr.strip()}")
        return True
    if mode == "off":
        return False
    why = None
    if os.geteuid() != 0:
        why = "not running as root"
    elif not shutil.which("unshare") or not shutil.which("ip"):
        why = "unshare or ip not found"
    else:
        probe = subprocess.run(["unshare", "-n", "--", "ip", "link", "set", "lo", "up"],
                               capture_output=True, text=True)
        if probe.returncode != 0:
            why = f"unshare -n does not work here ({probe.stderr.strip()})"
    if why:
        if mode == "on":
            sys.exit(f"--netns requested but {why}")
        print(f"note: running in the host network namespace ({why}); traffic stays on 127.0.0.1",
              flush=True)
        return False
    env = dict(os.environ, **{NETNS_ENV: "1"})
    argv = ["unshare", "-n", "--", sys.executable, os.path.abspath(__file__), *sys.argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe("unshare", argv, env)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------


def find_tool(name: str) -> str | None:
    for cand in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/lib/postfix/sbin/{name}"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def postfix_version() -> str:
    postconf = find_tool("postconf")
    if postconf:
        # -d: the built-in default, which works without /etc/postfix/main.cf
        r = subprocess.run([postconf, "-d", "-h", "mail_version"], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip()
    return "unknown"


def main() -> int:
    peer_choices = ["chainmail", "aiosmtpd-discard", "aiosmtpd-maildir", "smtp-sink"]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="cells: " + ", ".join(
                                     f"{c.name} ({' '.join(c.flags)})" for c in CELLS))
    ap.add_argument("--quick", action="store_true", help="fewer messages per run (smoke test)")
    ap.add_argument("--runs", type=int, default=3, help="runs per peer per cell (median; default 3)")
    ap.add_argument("--cells", nargs="+", choices=list(CELL_BY_NAME), metavar="CELL",
                    help="cells to run (default: all)")
    ap.add_argument("--peers", nargs="+", choices=peer_choices, metavar="PEER",
                    default=peer_choices, help="peers to run (default: all)")
    ap.add_argument("--messages", type=int, help="override -m for every cell except 50mb")
    ap.add_argument("--chainmail", default=str(Path(sys.executable).parent / "chainmail"),
                    help="chainmail command (default: the chainmail script next to this Python; "
                         "e.g. \"$PWD/.venv/bin/python -m chainmail\" also works)")
    ap.add_argument("--smtp-source", default=find_tool("smtp-source"))
    ap.add_argument("--smtp-sink", default=find_tool("smtp-sink"))
    ap.add_argument("--sink-count", action="store_true",
                    help="run smtp-sink with -c so its accepted messages can be counted "
                         "(adds a stdout write per event; off by default, as in the baselines)")
    ns = ap.add_mutually_exclusive_group()
    ns.add_argument("--netns", dest="netns", action="store_const", const="on",
                    help="run in a private network namespace (default when root and it works)")
    ns.add_argument("--no-netns", dest="netns", action="store_const", const="off")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where servers keep their files (default: a temp dir, removed at exit); "
                         "must be a real disk for fsync to mean anything")
    ap.add_argument("--output", type=Path, default=RESULTS / "latest.md",
                    help="Markdown report (a .json with the same stem is written next to it)")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    if not args.smtp_source:
        ap.error("smtp-source not found (apt-get install postfix, or pass --smtp-source)")

    in_netns = maybe_enter_netns(args.netns or "auto")

    cells = [CELL_BY_NAME[n] for n in args.cells] if args.cells else list(CELLS)
    order = [p for p in peer_choices if p in args.peers]
    all_peers: dict[str, Peer] = {
        "chainmail": ChainmailPeer(args.chainmail),
        "aiosmtpd-discard": AiosmtpdPeer("discard"),
        "aiosmtpd-maildir": AiosmtpdPeer("maildir"),
        "smtp-sink": SmtpSinkPeer(args.smtp_sink, args.sink_count),
    }
    peers, skipped = [], {}
    for name in order:
        why = all_peers[name].available()
        if why:
            print(f"{name}: SKIPPED — {why}", flush=True)
            skipped[name] = why
        else:
            peers.append(all_peers[name])
    if not peers:
        print("no peer can run", file=sys.stderr)
        return 1

    base = tempfile.mkdtemp(prefix="chainmail-bench-", dir=args.workdir)
    workdir = Path(base) / "cell"
    workdir.mkdir()
    fstype = subprocess.run(["stat", "-f", "-c", "%T", base], capture_output=True, text=True)
    if fstype.stdout.strip() == "tmpfs":
        print(f"warning: {base} is on tmpfs, fsync costs nothing there; use --workdir", flush=True)

    try:
        import aiosmtpd

        aiosmtpd_version = aiosmtpd.__version__
    except ImportError:
        aiosmtpd_version = "n/a"
    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "postfix": postfix_version(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiosmtpd": aiosmtpd_version,
        "netns": in_netns,
        "workdir_fs": fstype.stdout.strip(),
        "smtp_source": args.smtp_source,
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }
    if float(meta["loadavg_start"][0]) > 1.0:
        print(f"warning: load average {' '.join(meta['loadavg_start'])} before the run; other work "
              "on this machine will skew the numbers (the interleaving spreads it over the peers)",
              flush=True)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    cell_results: dict[str, CellResult] = {}
    dead: dict[str, str] = {}
    t_start = time.monotonic()
    try:
        for cell in cells:
            print(f"cell {cell.name}: smtp-source {' '.join(cell.flags)} — {cell.what}", flush=True)
            cell_results[cell.name] = run_cell(cell, peers, args, workdir, dead)
    except KeyboardInterrupt:
        print("interrupted; stopping servers", file=sys.stderr)
        return 130
    finally:
        for p in peers:
            p.stop()
        shutil.rmtree(base, ignore_errors=True)

    for name in list(dead):
        skipped.setdefault(name, dead[name])
    cm_res = [cell_results[c.name].runs.get("chainmail") for c in cells]
    if "chainmail" in [p.name for p in peers] and not any(cm_res):
        skipped.setdefault("chainmail", "did not start (see the messages above)")
    meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
    meta["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    md, data = report(cells, cell_results, order, args, meta, skipped)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(md)
    args.output.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    print()
    print(md)
    print(f"written: {args.output} and {args.output.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
