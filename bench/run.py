#!/usr/bin/env python3
"""chainmail benchmark, driven by Postfix's smtp-source (and bench/tls_source.py for STARTTLS).

    .venv/bin/python bench/run.py [--quick] [--cells CELL ...] [--peers PEER ...] [--runs 3]
                                  [--workers 1 2 4]

Within each cell every peer gets a fresh server process; the peers are interleaved run by run (the
order rotates each run) and each metric is the median of --runs runs. Numbers move 10-40% between
invocations on small shared machines: compare peers only within one run, as ratios.

Peers: chainmail (spool only: 250 once the message is fsynced in the spool), chainmail-pipeline
(the shipped conf/mailetcontainer.xml: every message delivered by LocalDelivery into a Maildir;
timed until the last delivery), aiosmtpd-discard, aiosmtpd-maildir, haraka-discard, haraka-maildir
(Haraka 3.3.4), postfix-mta (Postfix as a full MTA: smtpd, cleanup, qmgr, virtual(8) into Maildirs;
timed until the last delivery), smtp-sink (Postfix, C, discards). A peer whose software is missing
is skipped with the reason. --workers N ... runs the chainmail peers once per ioWorkerCount
(chainmail-wN, chainmail-pipeline-wN). See bench/README.md.

All traffic goes to 127.0.0.1. As root, the script re-executes itself under `unshare -n` (a private
network namespace with only `lo`) unless --no-netns is given.

Stdlib only. Results: stdout, bench/results/latest.md and bench/results/latest.json.
"""

from __future__ import annotations

import contextlib
import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import pwd
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
PEERS_DIR = HERE / "peers"
NETNS_ENV = "CHAINMAIL_BENCH_IN_NETNS"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

DOMAIN = "bench.test"
SENDER = f"sender@{DOMAIN}"
# smtp-source -r K sends K recipients per message: "Krcpt@bench.test", ..., "2rcpt@bench.test",
# "rcpt@bench.test". All stay in bench.test, a local domain for every peer.
RCPT = f"rcpt@{DOMAIN}"
USER_PASSWORD = "bench-password"

START_TIMEOUT = 20.0  # seconds for a server to accept connections
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
MAX_RESTARTS = 2  # per peer per cell, when a server exits between or during runs
RSS_TARGET_MIB = 10.0  # spool-only chainmail: peak RSS growth while receiving the 50 MB message
DELIVERY_STALL = 30.0  # seconds without a new delivery before a run stops waiting for the rest
DELIVERY_POLL = 0.01  # seconds between two counts of the Maildirs


def recipients(k: int) -> list[str]:
    """The recipients of smtp-source -r k, in the order it sends them."""
    return [f"{i}{RCPT}" for i in range(k, 1, -1)] + [RCPT]


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
    kind: str = "smtp"  # smtp, lmtp (smtp-source -L), starttls (bench/tls_source.py)

    @property
    def label(self) -> str:
        prefix = "STARTTLS " if self.kind == "starttls" else ""
        return prefix + "`" + " ".join(self.flags) + "`"

    @property
    def rcpts(self) -> int:
        f = list(self.flags)
        return int(f[f.index("-r") + 1]) if "-r" in f else 1

    @property
    def client(self) -> str:
        return "tls_source.py" if self.kind == "starttls" else "smtp-source"


CELLS = [
    Cell("s1", ("-s", "1", "-l", "1024"), 1000, 200, "one connection per message, 1 session"),
    Cell("s10", ("-s", "10", "-l", "1024"), 1500, 300, "one connection per message, 10 sessions"),
    Cell("s50", ("-s", "50", "-l", "1024"), 2000, 300, "one connection per message, 50 sessions"),
    Cell("s10-100k", ("-s", "10", "-l", "102400"), 800, 120, "100 KiB bodies, 10 sessions"),
    Cell("s50-100k", ("-s", "50", "-l", "102400"), 800, 120, "100 KiB bodies, 50 sessions"),
    Cell("s10-d", ("-s", "10", "-l", "1024", "-d"), 2000, 400,
         "many messages per connection (-d), 10 sessions"),
    Cell("s10-r50", ("-s", "10", "-l", "1024", "-r", "50"), 200, 60,
         "50 RCPT per message (50 mailboxes), 10 sessions"),
    Cell("lmtp", ("-L", "-s", "10", "-l", "1024"), 1500, 300,
         "LMTP, one connection per message, 10 sessions", kind="lmtp"),
    Cell("tls-s10", ("-s", "10", "-l", "1024", "-d", "1"), 600, 120,
         "STARTTLS: a connection and a TLS handshake per message, 10 sessions", kind="starttls"),
    Cell("tls-s10-d50", ("-s", "10", "-l", "1024", "-d", "50"), 1500, 500,
         "STARTTLS: 50 messages per TLS connection, 10 sessions", kind="starttls"),
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


def pss_kib(pids: list[int]) -> int:
    """Proportional set size summed over the processes: shared pages (a forked worker's, the
    libraries of Postfix's daemons) are divided among the processes that share them."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def start_time(pid: int) -> int | None:
    """The process's start time (field 22 of /proc/PID/stat): with the pid, it names one process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])


def kill_leftovers(procs: list[tuple[int, int | None]]) -> None:
    """SIGKILL the processes (pid, start time) that are still there (and are still the same)."""
    for pid, started in procs:
        if started is not None and start_time(pid) == started and pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


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
                    with contextlib.suppress(OSError):
                        s.recv(512)
                    return None
                last = f"unexpected greeting {banner[:80]!r}"
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    return f"no 220 greeting on 127.0.0.1:{port} within {timeout:.0f} s ({last})"


def tail(path: Path | None, n: int = 15) -> str:
    if path is None:
        return ""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in lines[-n:])


def count_files(d: Path) -> int:
    try:
        return len(os.listdir(d))
    except FileNotFoundError:
        return 0


def empty_dir(d: Path) -> None:
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return
    for name in names:
        with contextlib.suppress(OSError):
            os.unlink(d / name)


# --------------------------------------------------------------------------------------------
# what the peers share: the TLS certificate, the chainmail users


@dataclass
class Env:
    tmp: Path | None = None  # the run's temp dir (outside the per-cell work dir)
    cert: Path | None = None
    key: Path | None = None
    tls_error: str | None = None  # why STARTTLS cells cannot run

    def make_cert(self) -> None:
        openssl = shutil.which("openssl")
        if not openssl:
            self.tls_error = "openssl not found (needed for the benchmark's self-signed certificate)"
            return
        d = self.tmp / "tls"
        d.mkdir(exist_ok=True)
        cert, key = d / "cert.pem", d / "key.pem"
        r = subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-subj", f"/CN={DOMAIN}", "-days", "2",
                            "-keyout", str(key), "-out", str(cert)],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if r.returncode != 0:
            self.tls_error = f"openssl req failed: {r.stderr.strip()[-200:]}"
            return
        self.cert, self.key = cert, key


ENV = Env()


# --------------------------------------------------------------------------------------------
# peers


class Peer:
    name = "?"
    family = "?"  # the peer's kind, without worker count: chainmail, chainmail-pipeline, ...
    kinds = ("smtp", "lmtp", "starttls")
    workers: int | None = None  # chainmail's ioWorkerCount (None: the configuration's default)
    delivers_later = False  # delivery finishes after the 250: runs are timed until the last one

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.dir: Path | None = None
        self.log: Path | None = None
        self.cell: Cell | None = None

    # what to run; the peer's files go under self.dir
    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        pass

    def available(self) -> str | None:
        """None, or why this peer cannot run at all."""
        return None

    def supports(self, cell: Cell) -> str | None:
        """None, or why this peer has no place in the cell."""
        if cell.kind not in self.kinds:
            return {"lmtp": "no LMTP", "starttls": "no STARTTLS", "smtp": "no SMTP"}[cell.kind]
        return None

    @property
    def workers_label(self) -> str:
        return "—"

    def start(self, workdir: Path, cell: Cell) -> str | None:
        self.cell = cell
        self.dir = workdir / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        try:
            self.prepare()
        except (OSError, subprocess.SubprocessError, RuntimeError) as e:
            return f"preparing failed: {e}"
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

    def expected(self, n: int) -> int:
        """What accepted() should say after n messages of the current cell."""
        return n

    def accepted(self) -> int | None:
        """Messages (or deliveries) since the last reset, or None when the peer cannot tell."""
        return None

    def delivered(self) -> int | None:
        """For peers that deliver after the 250: deliveries so far (cheap, polled)."""
        return None

    def diagnose(self) -> str:
        """A hint when the count does not match (where the rest went)."""
        return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        # every process of the server, also those that left its process group (worker
        # processes that call setsid(), say): killed below if they outlive the leader
        tree = [(p, start_time(p)) for p in proc_tree(proc.pid)[1:]] if proc.poll() is None else []
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
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            break
        if proc.poll() is None:
            proc.wait(timeout=STOP_TIMEOUT)
        kill_leftovers(tree)


class ChainmailPeer(Peer):
    """chainmail run with a bench configuration.

    pipeline=False: no mailetcontainer.xml, so accepted mail stays in the spool (spool only).
    pipeline=True: the shipped conf/mailetcontainer.xml, unchanged, and real users: every message
    goes spool -> root -> transport -> local-delivery -> LocalDelivery into var/mail/<user>/new/.
    In the LMTP cell the pipeline peer runs an <lmtpserver> with CoreCmdHandlerLoader (delivery
    into the Maildirs before each reply) on the measured port.
    """

    _users: dict[str, Path] = {}  # chainmail command -> template var dir with the users made so far

    def __init__(self, command: str, pipeline: bool = False, workers: int | None = None) -> None:
        super().__init__()
        # an executable, or a command such as "<venv>/bin/python -m chainmail"
        self.argv = shlex.split(command)
        self.pipeline = pipeline
        self.workers = workers
        self.family = "chainmail-pipeline" if pipeline else "chainmail"
        self.name = self.family + (f"-w{workers}" if workers else "")
        self.delivers_later = pipeline
        self.kinds = ("smtp", "lmtp", "starttls") if pipeline else ("smtp", "starttls")
        self._base: int | None = None

    def available(self) -> str | None:
        exe = self.argv[0] if self.argv else ""
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            return (f"{exe or '(empty)'} not found "
                    "(install chainmail into the venv: pip install -e .)")
        if self.pipeline and not (REPO / "conf" / "mailetcontainer.xml").is_file():
            return f"{REPO / 'conf' / 'mailetcontainer.xml'} not found"
        return None

    def supports(self, cell: Cell) -> str | None:
        if cell.kind == "lmtp" and not self.pipeline:
            return "LMTP delivers into the Maildirs: see chainmail-pipeline"
        return super().supports(cell)

    @property
    def workers_label(self) -> str:
        return str(self.workers) if self.workers else "default"

    @property
    def conf(self) -> Path:
        return self.dir / "conf"

    @property
    def var(self) -> Path:
        return self.dir / "var"

    @property
    def spool(self) -> Path:
        return self.var / "spool"

    def users(self) -> list[str]:
        return recipients(self.cell.rcpts)

    def maildir_new(self, user: str) -> Path:
        return self.var / "mail" / user.lower() / "new"

    # configuration

    def _server_options(self) -> str:
        s = (f"<helloName autodetect=\"false\">{DOMAIN}</helloName>"
             "<connectiontimeout>360</connectiontimeout>"
             "<maxmessagesize>0</maxmessagesize>")
        if self.workers:
            s += f"<ioWorkerCount>{self.workers}</ioWorkerCount>"
        return s

    def _tls(self) -> str:
        if self.cell.kind != "starttls":
            return ""
        # file://conf/x is relative to the directory above conf/ (docs/tls.md)
        shutil.copy(ENV.cert, self.conf / "bench-cert.pem")
        shutil.copy(ENV.key, self.conf / "bench-key.pem")
        return ("<tls socketTLS=\"false\" startTLS=\"true\">"
                "<privateKey>file://conf/bench-key.pem</privateKey>"
                "<certificates>file://conf/bench-cert.pem</certificates></tls>")

    def prepare(self) -> None:
        self.conf.mkdir(exist_ok=True)
        shutil.rmtree(self.var, ignore_errors=True)
        self.var.mkdir()
        lmtp = self.cell.kind == "lmtp"
        smtp_port = free_port() if lmtp else self.port
        (self.conf / "smtpserver.xml").write_text(
            "<smtpservers><smtpserver enabled=\"true\"><jmxName>bench</jmxName>"
            f"<bind>127.0.0.1:{smtp_port}</bind>"
            + self._server_options() + self._tls() +
            "<authorizedAddresses>127.0.0.0/8</authorizedAddresses>"
            "<handlerchain coreHandlersPackage="
            "\"org.apache.james.smtpserver.NoAuthCmdHandlerLoader\"/>"
            "</smtpserver></smtpservers>\n"
        )
        if lmtp:
            (self.conf / "lmtpserver.xml").write_text(
                "<lmtpservers><lmtpserver enabled=\"true\"><jmxName>bench-lmtp</jmxName>"
                f"<bind>127.0.0.1:{self.port}</bind>"
                + self._server_options() +
                "<handlerchain coreHandlersPackage="
                "\"org.apache.james.lmtpserver.CoreCmdHandlerLoader\"/>"
                "</lmtpserver></lmtpservers>\n"
            )
        (self.conf / "domainlist.xml").write_text(domainlist_xml())
        # Only a closed loopback port as name server: nothing may reach the system's resolver.
        (self.conf / "dnsservice.xml").write_text(
            "<dnsservice><servers><server>127.0.0.1:9</server></servers>"
            "<autodiscover>false</autodiscover><timeout>1</timeout></dnsservice>\n"
        )
        if self.pipeline:
            shutil.copy(REPO / "conf" / "mailetcontainer.xml", self.conf / "mailetcontainer.xml")
            shutil.copy(self._users_db(self.users()), self.var / "chainmail.db")

    def _users_db(self, users: list[str]) -> Path:
        """A chainmail.db holding the users, made once per benchmark with `chainmail user add`
        (a process per user) and copied into each fresh var/."""
        key = " ".join(self.argv)
        tpl = ChainmailPeer._users.get(key)
        if tpl is None:
            tpl = ENV.tmp / f"users-{len(ChainmailPeer._users)}"
            (tpl / "conf").mkdir(parents=True)
            (tpl / "var").mkdir()
            (tpl / "conf" / "domainlist.xml").write_text(domainlist_xml())
            (tpl / "made").write_text("")
            ChainmailPeer._users[key] = tpl
        made = set((tpl / "made").read_text().split())
        todo = [u for u in users if u not in made]

        def add(user: str) -> str | None:
            r = subprocess.run([*self.argv, "user", "add", user, "--password-stdin",
                                "--conf", str(tpl / "conf"), "--var", str(tpl / "var")],
                               input=USER_PASSWORD + "\n", capture_output=True, text=True,
                               timeout=120)
            return None if r.returncode == 0 else (r.stderr or r.stdout).strip()[-300:]

        if todo:
            print(f"  creating {len(todo)} chainmail user(s) with `chainmail user add`", flush=True)
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                errors = dict(zip(todo, pool.map(add, todo)))
            for user in [u for u, e in errors.items() if e]:  # once more, one at a time
                errors[user] = add(user)
            ok = [u for u, e in errors.items() if not e]
            (tpl / "made").write_text(" ".join(sorted(made | set(ok))))
            bad = {u: e for u, e in errors.items() if e}
            if bad:
                user, err = next(iter(bad.items()))
                raise RuntimeError(f"chainmail user add {user}: {err}")
        return tpl / "var" / "chainmail.db"

    def command(self) -> list[str]:
        return [*self.argv, "run", "--conf", str(self.conf), "--var", str(self.var)]

    # counting

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

    def expected(self, n: int) -> int:
        return n * self.cell.rcpts if self.pipeline else n

    def delivered(self) -> int | None:
        if not self.pipeline:
            return None
        return sum(count_files(self.maildir_new(u)) for u in self.users())

    def accepted(self) -> int | None:
        if self.pipeline:
            return self.delivered()
        # Messages queued since reset(): the spool is never edited behind the running server.
        now = self._queued()
        return None if now is None or self._base is None else now - self._base

    def reset(self) -> None:
        if self.pipeline:
            for u in self.users():
                empty_dir(self.maildir_new(u))
        else:
            self._base = self._queued()

    def diagnose(self) -> str:
        if not self.pipeline:
            return ""
        users = {u.lower() for u in self.users()}
        other = []
        mail = self.var / "mail"
        if mail.is_dir():
            for d in sorted(mail.iterdir()):
                if d.name not in users:
                    other.append(f"var/mail/{d.name}: {sum(1 for _ in d.rglob('*') if _.is_file())}")
        queued = self._queued()
        return "; ".join(other + [f"spool: {queued} message(s) queued"])

    def stop(self) -> None:
        super().stop()
        if self.dir is not None:
            shutil.rmtree(self.var, ignore_errors=True)


def domainlist_xml() -> str:
    return (f"<domainlist><domainnames><domainname>{DOMAIN}</domainname></domainnames>"
            "<autodetect>false</autodetect><autodetectIP>false</autodetectIP>"
            f"<defaultDomain>{DOMAIN}</defaultDomain></domainlist>\n")


class ChainmailBrokerPeer(ChainmailPeer):
    """chainmail-pipeline (the shipped mailetcontainer.xml, LocalDelivery into Maildirs) with
    conf/rabbitmq.properties: the spool on a RabbitMQ node the benchmark starts for itself
    (Debian's rabbitmq-server, on 127.0.0.1, one for the whole invocation). Every 250 waits
    for the broker's confirm; the container consumes and acknowledges after delivery.

    nodes=2: two `chainmail run` nodes (each its own var/, the same configuration) behind
    HAProxy (plain TCP, roundrobin), consuming the same queue; deliveries are counted over
    both. The broker's and HAProxy's processes are counted in the peer's CPU and memory:
    they are part of the path a message takes."""

    _broker = None   # the benchmark's RabbitMQ node, started on first use

    def __init__(self, command: str, nodes: int = 1, workers: int | None = None) -> None:
        super().__init__(command, pipeline=True, workers=workers)
        self.nodes = nodes
        self.family = "chainmail-rabbitmq" + ("-2n" if nodes == 2 else "")
        self.name = self.family + (f"-w{workers}" if workers else "")
        self.kinds = ("smtp", "starttls")
        self._others: list[tuple[subprocess.Popen, Path]] = []   # the second node, HAProxy

    def available(self) -> str | None:
        why = super().available()
        if why:
            return why
        if not Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists():
            return "rabbitmq-server not installed (apt-get install rabbitmq-server)"
        if self.nodes > 1 and not shutil.which("haproxy"):
            return "haproxy not installed"
        return None

    @classmethod
    def broker(cls):
        if cls._broker is None:
            import atexit
            sys.path.insert(0, str(REPO))
            from chainmail.testing.rabbitmq import RabbitMQ
            base = Path(tempfile.mkdtemp(prefix="bench-rabbitmq-"))
            broker = RabbitMQ(base)
            broker.start()
            atexit.register(lambda: (broker.close(), shutil.rmtree(base, ignore_errors=True)))
            cls._broker = broker
        return cls._broker

    def prepare(self) -> None:
        super().prepare()
        broker = self.broker()
        # A virtual host of its own: the peers of a cell run side by side, and consumers of
        # one peer must not take the other's mail.
        vhost = self.name
        broker.ctl("add_vhost", vhost)
        broker.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        (self.conf / "rabbitmq.properties").write_text(f"uri={broker.uri}{vhost}\n")
        for queue in ("spool", "outgoing.outgoing"):
            broker.ctl("purge_queue", "-p", vhost, queue)

    def start(self, workdir: Path, cell: Cell) -> str | None:
        if self.nodes == 1:
            return super().start(workdir, cell)
        front = free_port()
        err = super().start(workdir, cell)   # the first node, on self.port
        if err:
            return err
        ports = [self.port]
        second = self.dir / "node2"
        shutil.rmtree(second, ignore_errors=True)
        shutil.copytree(self.conf, second / "conf")
        (second / "var").mkdir(parents=True)
        shutil.copy(self._users_db(self.users()), second / "var" / "chainmail.db")
        ports.append(free_port())
        xml = second / "conf" / "smtpserver.xml"
        xml.write_text(xml.read_text().replace(f"127.0.0.1:{self.port}<", f"127.0.0.1:{ports[1]}<"))
        with open(second / "server.log", "wb") as log:
            proc = subprocess.Popen([*self.argv, "run", "--conf", str(second / "conf"),
                                     "--var", str(second / "var")], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, cwd=second,
                                    start_new_session=True)
        self._others.append((proc, second / "var"))
        err = wait_smtp_ready(ports[1], proc, START_TIMEOUT)
        if err:
            self.stop()
            return f"second node: {err}\n{tail(second / 'server.log')}"
        cfg = self.dir / "haproxy.cfg"
        cfg.write_text("global\n  maxconn 2000\ndefaults\n  mode tcp\n  timeout connect 5s\n"
                       "  timeout client 400s\n  timeout server 400s\nfrontend smtp\n"
                       f"  bind 127.0.0.1:{front}\n  default_backend nodes\nbackend nodes\n"
                       "  balance roundrobin\n"
                       + "".join(f"  server n{i} 127.0.0.1:{p}\n" for i, p in enumerate(ports)))
        haproxy = subprocess.Popen([shutil.which("haproxy") or "haproxy", "-f", str(cfg), "-db"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        self._others.append((haproxy, self.dir))
        self.port = front
        err = wait_smtp_ready(front, haproxy, START_TIMEOUT)
        if err:
            self.stop()
            return f"haproxy: {err}"
        return None

    def pids(self) -> list[int]:
        out = super().pids()
        for proc, _ in self._others:
            if proc.poll() is None:
                out += proc_tree(proc.pid)
        broker = self._broker
        if broker is not None and broker.proc is not None and broker.proc.poll() is None:
            out += proc_tree(broker.proc.pid)
        return out

    def _vars(self) -> list[Path]:
        return [self.var, *(var for _, var in self._others if var.name == "var")]

    def delivered(self) -> int | None:
        return sum(count_files(var / "mail" / u.lower() / "new")
                   for var in self._vars() for u in self.users())

    def reset(self) -> None:
        for var in self._vars():
            for u in self.users():
                empty_dir(var / "mail" / u.lower() / "new")

    def diagnose(self) -> str:
        problems = []
        for log in [self.log, *(var.parent / "server.log" for var in self._vars()[1:])]:
            if log is not None and log.exists():
                problems += [line for line in log.read_text(errors="replace").splitlines()
                             if " ERROR " in line or " WARNING " in line][-3:]
        return "; ".join([super().diagnose(), *problems])

    def stop(self) -> None:
        others, self._others = self._others, []
        for proc, _ in others:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        super().stop()


class CountFilePeer(Peer):
    """A peer that writes "<seq> <count>" to a file when signalled (aiosmtpd, Haraka)."""

    count_signal = signal.SIGUSR1

    def __init__(self) -> None:
        super().__init__()
        self.seq = 0
        self.base = 0

    @property
    def count_file(self) -> Path:
        return self.dir / "count"

    @property
    def maildir(self) -> Path:
        return self.dir / "Maildir"

    def _count(self) -> int | None:
        """Ask the peer for its running count of accepted messages."""
        if not self.alive():
            return None
        self.seq += 1
        os.kill(self.proc.pid, self.count_signal)
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

    def prepare(self) -> None:
        self.seq = 0
        self.base = 0
        shutil.rmtree(self.maildir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.count_file.unlink()

    def reset(self) -> None:
        self.base = self._count() or 0
        if self.mode == "maildir":
            empty_dir(self.maildir / "new")

    def accepted(self) -> int | None:
        count = self._count()
        if count is None:
            return None
        count -= self.base
        if self.mode == "maildir":
            files = count_files(self.maildir / "new")
            if files != count:
                return files  # trust the disk: the mismatch will show
        return count


class AiosmtpdPeer(CountFilePeer):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.name = self.family = f"aiosmtpd-{mode}"

    def available(self) -> str | None:
        try:
            import aiosmtpd  # noqa: F401
        except ImportError:
            return "aiosmtpd is not installed in this interpreter (pip install aiosmtpd)"
        return None

    def command(self) -> list[str]:
        cmd = [sys.executable, str(PEERS_DIR / "aiosmtpd_peer.py"), "--port", str(self.port),
               "--mode", self.mode, "--count-file", str(self.count_file)]
        if self.mode == "maildir":
            cmd += ["--maildir", str(self.maildir)]
        if self.cell.kind == "lmtp":
            cmd.append("--lmtp")
        if self.cell.kind == "starttls":
            cmd += ["--tls-cert", str(ENV.cert), "--tls-key", str(ENV.key)]
        return cmd


class HarakaPeer(CountFilePeer):
    """Haraka 3.3.4 (Node.js), one process, via bench/peers/haraka.sh."""

    kinds = ("smtp", "starttls")
    count_signal = signal.SIGUSR2  # node keeps SIGUSR1 for its inspector

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.name = self.family = f"haraka-{mode}"

    def available(self) -> str | None:
        return haraka_missing()

    def command(self) -> list[str]:
        cmd = ["bash", str(PEERS_DIR / "haraka.sh"), str(self.port), self.mode,
               "--run", str(self.dir / "haraka"), "--dir", str(self.maildir),
               "--count-file", str(self.count_file)]
        if self.cell.kind == "starttls":
            cmd += ["--tls", str(ENV.cert), str(ENV.key)]
        return cmd


def haraka_missing() -> str | None:
    if not shutil.which("node"):
        return "node not found (Haraka needs Node.js >= 20)"
    r = subprocess.run(["bash", str(PEERS_DIR / "haraka.sh"), "--check"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return ("Haraka is not installed: run bench/peers/haraka.sh --install "
                "(npm, outside the benchmark's network namespace) or make bench")
    return None


def haraka_version() -> str:
    r = subprocess.run(["bash", str(PEERS_DIR / "haraka.sh"), "--check"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return "n/a"
    try:
        pkg = Path(r.stdout.strip()).parent.parent / "package.json"
        return json.loads(pkg.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return "unknown"


class PostfixMtaPeer(Peer):
    """Postfix as a full MTA (bench/peers/postfix-mta.sh): smtpd -> cleanup (queue file fsynced
    before 250) -> qmgr -> virtual(8) into one Maildir per recipient, DIR/pf/mail/<name>/new/."""

    name = family = "postfix-mta"
    kinds = ("smtp", "starttls")
    delivers_later = True

    @property
    def pf(self) -> Path:
        return self.dir / "pf"

    def available(self) -> str | None:
        if os.geteuid() != 0:
            return "needs root (a private Postfix instance: master, setuid delivery)"
        if not shutil.which("postfix") and not os.access("/usr/sbin/postfix", os.X_OK):
            return "postfix not found (apt-get install postfix)"
        try:
            pwd.getpwnam("postfix")
        except KeyError:
            return "no postfix user (apt-get install postfix)"
        return None

    def command(self) -> list[str]:
        cmd = ["bash", str(PEERS_DIR / "postfix-mta.sh"), "127.0.0.1", str(self.port), str(self.pf)]
        if self.cell.kind == "starttls":
            cmd += ["--tls", str(ENV.cert), str(ENV.key)]
        return cmd

    def maildir_new(self, user: str) -> Path:
        return self.pf / "mail" / user.split("@")[0] / "new"

    def expected(self, n: int) -> int:
        return n * self.cell.rcpts

    def delivered(self) -> int | None:
        return sum(count_files(self.maildir_new(u)) for u in recipients(self.cell.rcpts))

    def accepted(self) -> int | None:
        return self.delivered()

    def reset(self) -> None:
        for u in recipients(self.cell.rcpts):
            empty_dir(self.maildir_new(u))

    def diagnose(self) -> str:
        log = self.pf / "maillog"
        try:
            lines = [ln for ln in log.read_text(errors="replace").splitlines()
                     if "status=" in ln and "status=sent" not in ln]
        except OSError:
            return ""
        return f"{len(lines)} non-sent log line(s), last: {lines[-1][-160:]}" if lines else ""

    def _ours(self, pid: int) -> bool:
        """The master of this instance: it works in its queue directory."""
        try:
            return os.readlink(f"/proc/{pid}/cwd") == str((self.pf / "spool").resolve())
        except OSError:
            return False

    def _master(self) -> int | None:
        try:
            return int((self.pf / "spool" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        # The master detaches with setsid(): the process group of postfix-script does not hold
        # it. SIGTERM the master (it stops its children), then clean up what is left.
        master = self._master() if self.proc is not None else None
        if master and pid_alive(master) and self._ours(master):
            tree = [(p, start_time(p)) for p in proc_tree(master)]
            with contextlib.suppress(ProcessLookupError):
                os.kill(master, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while time.monotonic() < deadline and pid_alive(master):
                time.sleep(0.05)
            kill_leftovers(tree)
        super().stop()


class SmtpSinkPeer(Peer):
    name = family = "smtp-sink"
    kinds = ("smtp", "lmtp")

    def __init__(self, binary: str | None, count: bool) -> None:
        super().__init__()
        self.binary = binary
        self.count = count
        self.base = 0

    def available(self) -> str | None:
        return None if self.binary else "smtp-sink not found (apt-get install postfix)"

    def command(self) -> list[str]:
        cmd = [self.binary, "-h", DOMAIN]
        if self.cell.kind == "lmtp":
            cmd.append("-L")
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
    wall_s: float  # until the last delivery for peers that deliver after the 250
    client_wall_s: float  # the load generator's own wall time
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
    procs: dict[str, int] = field(default_factory=dict)  # most processes seen
    pss_kib: dict[str, int] = field(default_factory=dict)  # highest PSS sum seen after a run
    skipped: dict[str, str] = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)
    logs: dict[str, list[str]] = field(default_factory=dict)  # output of servers that exited
    restarts: list[str] = field(default_factory=list)


def client_cmd(args, cell: Cell, n: int, port: int) -> list[str]:
    common = ["-m", str(n), "-f", SENDER, "-t", RCPT, "-M", DOMAIN, f"127.0.0.1:{port}"]
    if cell.kind == "starttls":
        return [sys.executable, str(HERE / "tls_source.py"), *cell.flags,
                "-P", str(args.tls_procs), *common]
    return [args.smtp_source, *cell.flags, *common]


def wait_delivered(peer: Peer, expected: int) -> tuple[int | None, float]:
    """Poll the peer's delivery count until it reaches expected, or stops moving for
    DELIVERY_STALL seconds. Returns (count, perf_counter() when it was reached)."""
    last, last_change = -1, time.monotonic()
    while True:
        count = peer.delivered()
        now = time.perf_counter()
        if count is None or count >= expected:
            return count, now
        if count != last:
            last, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > DELIVERY_STALL or not peer.alive():
            return count, now
        time.sleep(DELIVERY_POLL)


def one_run(peer: Peer, args, cell: Cell, n: int) -> RunResult:
    peer.reset()
    pids = peer.pids()
    rss_before = status_kib(pids, "VmRSS")
    cmd = client_cmd(args, cell, n, peer.port)
    expected = peer.expected(n)
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
    except BaseException:  # interrupted: leave no client behind
        proc.kill()
        proc.wait()
        raise
    t_client = time.perf_counter()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ok = proc.returncode == 0
    t_end = t_client
    if ok and peer.delivers_later:
        _, t_end = wait_delivered(peer, expected)
    wall = t_end - t0
    cpu1 = cpu_ticks(peer.pids() or pids)
    client_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    accepted = peer.accepted()
    mismatch = False
    note = ""
    if not ok:
        text = out.decode(errors="replace").strip().splitlines()
        note = f"{cell.client} exit {proc.returncode}: " + " | ".join(text[-3:])
    elif accepted is not None and accepted != expected:
        # kept in the medians but flagged: a peer that loses mail is not measured fairly
        mismatch = True
        what = "deliveries" if expected != n or peer.delivers_later else "messages"
        note = f"peer stored/counted {accepted} of {expected} {what}"
        hint = peer.diagnose()
        if hint:
            note += f" ({hint})"
    return RunResult(
        ok=ok,
        wall_s=wall,
        client_wall_s=t_client - t0,
        msgs_per_s=n / wall if ok else None,
        cpu_us_per_msg=(cpu1 - cpu0) / CLK_TCK * 1e6 / n if ok else None,
        client_cpu_us_per_msg=client_cpu * 1e6 / n if ok else None,
        accepted=accepted,
        expected=expected,
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

    def sample(peer: Peer) -> None:
        pids = peer.pids()
        res.hwm_kib[peer.name] = max(res.hwm_kib.get(peer.name, 0), status_kib(pids, "VmHWM"))
        res.procs[peer.name] = max(res.procs.get(peer.name, 0), len(pids))
        res.pss_kib[peer.name] = max(res.pss_kib.get(peer.name, 0), pss_kib(pids))

    try:
        for peer in peers:
            why = peer.supports(cell)
            if why:
                res.not_applicable[peer.name] = why
                continue
            if cell.kind == "starttls" and ENV.tls_error:
                res.skipped[peer.name] = ENV.tls_error
                continue
            key = f"{peer.name}/{cell.kind}"
            if key in dead:
                res.skipped[peer.name] = dead[key]
                continue
            err = peer.start(workdir, cell)
            if err:
                print(f"  {peer.name}: SKIPPED, failed to start: {err}", flush=True)
                first = err.strip().splitlines()[0]
                res.skipped[peer.name] = f"failed to start: {first}"
                res.logs.setdefault(peer.name, []).append(f"failed to start:\n{err}")
                # it will not do better in the next cell of this kind: don't spend 20 s on it
                dead[key] = f"failed to start in cell {cell.name}: {first}"
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
            err = peer.start(workdir, cell)
            if err:
                res.skipped[peer.name] = msg + "; restart failed"
                print(f"  {peer.name}: restart failed: {err}", flush=True)
                return False
            res.restarts.append(f"{peer.name}: {msg}; restarted")
            print(f"  {peer.name}: restarted", flush=True)
            return True

        width = max([len(p.name) for p in live] + [17])
        for r in range(args.runs):
            k = r % len(live) if live else 0
            for peer in live[k:] + live[:k]:  # interleave, rotating who goes first
                if not check_alive(peer, f"before run {r + 1}"):
                    continue
                rr = one_run(peer, args, cell, n)
                res.runs[peer.name].append(rr)
                status = (f"{rr.msgs_per_s:8.0f} msg/s {rr.cpu_us_per_msg:7.0f} us/msg"
                          if rr.ok else "   FAILED")
                flag = "MISMATCH " if rr.count_mismatch else ""
                print(f"  run {r + 1}/{args.runs} {peer.name:{width}s} -m {n:<5d} {rr.wall_s:6.2f} s "
                      f"{status} {flag}{rr.note}", flush=True)
                # sampled after every run, so a server that dies later still has its peak
                if check_alive(peer, f"during run {r + 1}"):
                    sample(peer)
        for peer in live:
            if check_alive(peer, "after the last run", restart=False):
                sample(peer)
    finally:
        for peer in peers:
            peer.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True, exist_ok=True)
    return res


# --------------------------------------------------------------------------------------------
# reporting

# The comparisons of the report: (key, column title, the peers whose best messages/s is the base)
RATIOS = (
    ("vs_durable", "÷ better of haraka-maildir, aiosmtpd-maildir",
     ("haraka-maildir", "aiosmtpd-maildir")),
    ("vs_postfix", "÷ postfix-mta", ("postfix-mta",)),
    ("vs_discard", "÷ better of haraka-discard, aiosmtpd-discard",
     ("haraka-discard", "aiosmtpd-discard")),
    ("vs_sink", "÷ smtp-sink", ("smtp-sink",)),
)
# what each comparison is a target for, and over which kinds of cell: the whole pipeline against
# durable peers and Postfix, the spool-only server against discarding servers; STARTTLS apart
PLAIN = ("smtp", "lmtp")
TLS = ("starttls",)
TARGETS = (
    ("chainmail-pipeline", "vs_durable", PLAIN,
     "whole pipeline ÷ better of haraka-maildir and aiosmtpd-maildir"),
    ("chainmail-pipeline", "vs_postfix", PLAIN, "whole pipeline ÷ postfix-mta"),
    ("chainmail", "vs_discard", PLAIN,
     "spool-only chainmail ÷ better of haraka-discard and aiosmtpd-discard"),
    ("chainmail", "vs_sink", PLAIN, "spool-only chainmail ÷ smtp-sink"),
    ("chainmail-pipeline", "vs_sink", PLAIN, "whole pipeline ÷ smtp-sink"),
    ("chainmail-pipeline", "vs_durable", TLS,
     "STARTTLS: whole pipeline ÷ better of aiosmtpd-maildir and haraka-maildir"),
    ("chainmail-pipeline", "vs_postfix", TLS, "STARTTLS: whole pipeline ÷ postfix-mta"),
    ("chainmail", "vs_discard", TLS,
     "STARTTLS: spool-only chainmail ÷ better of aiosmtpd-discard and haraka-discard"),
)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def cell_metrics(cr: CellResult) -> dict[str, dict[str, float | None]]:
    out = {}
    for peer, runs in cr.runs.items():
        good = [r for r in runs if r.ok]
        out[peer] = {
            "msgs_per_s": median(r.msgs_per_s for r in good),
            "wall_s": median(r.wall_s for r in good),
            "client_wall_s": median(r.client_wall_s for r in good),
            "cpu_us_per_msg": median(r.cpu_us_per_msg for r in good),
            "client_cpu_us_per_msg": median(r.client_cpu_us_per_msg for r in good),
            "peak_rss_mib": cr.hwm_kib[peer] / 1024 if peer in cr.hwm_kib else None,
            "rss_start_mib": cr.rss_start_kib[peer] / 1024 if peer in cr.rss_start_kib else None,
            "pss_mib": cr.pss_kib[peer] / 1024 if peer in cr.pss_kib else None,
            "processes": cr.procs.get(peer),
            "accepted_last": runs[-1].accepted if runs else None,
            "expected": runs[-1].expected if runs else None,
            "failed_runs": len(runs) - len(good),
            "count_mismatches": sum(r.count_mismatch for r in runs),
            "died": peer in cr.skipped or any(x.startswith(peer + ":") for x in cr.restarts),
            "runs": len(runs),
        }
    return out


def cell_ratios(metrics: dict, chainmail_peers: list[str]) -> dict[str, dict]:
    """For each chainmail peer: its messages/s over the best of each comparison group."""
    out = {}
    for cm in chainmail_peers:
        mine = (metrics.get(cm) or {}).get("msgs_per_s")
        if mine is None:
            continue
        row = {}
        for key, _, bases in RATIOS:
            cands = [(metrics[b]["msgs_per_s"], b) for b in bases
                     if b in metrics and metrics[b]["msgs_per_s"]]
            if cands:
                best, who = max(cands)
                row[key] = {"ratio": mine / best, "base": who, "base_msgs_per_s": best}
        out[cm] = row
    return out


def fmt(v, digits=0):
    if v is None:
        return "—"
    return f"{v:,.{digits}f}".replace(",", " ") if digits == 0 else f"{v:.{digits}f}"


def flags(m: dict) -> str:
    return ((" !" if m.get("failed_runs") else "") + (" *" if m.get("count_mismatches") else "")
            + (" †" if m.get("died") else ""))


def report(cells, cell_results, peers, args, meta, skipped_peers) -> tuple[str, dict]:
    peer_names = [p.name for p in peers]
    by_name = {p.name: p for p in peers}
    cm_names = [p.name for p in peers if isinstance(p, ChainmailPeer)]
    metrics = {c.name: cell_metrics(cell_results[c.name]) for c in cells}
    ratios = {c.name: cell_ratios(metrics[c.name], cm_names) for c in cells if not c.rss_only}
    perf_cells = [c for c in cells if not c.rss_only]
    out = [f"# chainmail benchmark — {meta['date']}", ""]
    out.append(
        f"smtp-source (Postfix {meta['postfix']}), {meta['cpus']} CPUs, Linux {meta['kernel']}, "
        f"Python {meta['python']}, aiosmtpd {meta['aiosmtpd']}, Haraka {meta['haraka']} "
        f"(node {meta['node']}); "
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

    if perf_cells and cm_names:
        # targets: worst and best cell per comparison and chainmail peer
        lines = ["## Targets (messages/s ratios; > 1: chainmail is faster)", "",
                 "| comparison | chainmail peer | workers | lowest (cell) | highest (cell) | cells ≥ 2 |",
                 "|---|---|---|---|---|---|"]
        for family, key, kinds, title in TARGETS:
            for cm in [n for n in cm_names if by_name[n].family == family]:
                vals = [(ratios[c.name][cm][key]["ratio"], c.name) for c in perf_cells
                        if c.kind in kinds and key in ratios[c.name].get(cm, {})]
                if not vals:
                    continue
                lo, hi = min(vals), max(vals)
                lines.append(f"| {title} | {cm} | {by_name[cm].workers_label} | "
                             f"{lo[0]:.2f} ({lo[1]}) | {hi[0]:.2f} ({hi[1]}) | "
                             f"{sum(v >= 2 for v, _ in vals)} of {len(vals)} |")
        out.append("\n".join(lines) + "\n")

        lines = ["## Ratios per cell (messages/s; > 1: chainmail is faster)", "",
                 "Each chainmail peer's messages/s divided by the best peer of a group, within the "
                 "same cell of this run; the peer that was best is named. In STARTTLS cells the "
                 "two \"better of\" columns are the better of aiosmtpd and Haraka (both with "
                 "STARTTLS); in the LMTP cell Haraka and Postfix have no entry. The whole "
                 "pipeline and postfix-mta are timed until their last Maildir delivery.", "",
                 "| cell | chainmail peer | workers | msg/s | server CPU µs/msg | peak RSS MiB | "
                 + " | ".join(t for _, t, _ in RATIOS) + " |",
                 "|" + "---|" * (6 + len(RATIOS))]
        for c in perf_cells:
            for cm in cm_names:
                m = metrics[c.name].get(cm)
                if not m:
                    continue
                row = [c.name, cm, by_name[cm].workers_label, fmt(m["msgs_per_s"]) + flags(m),
                       fmt(m["cpu_us_per_msg"]), fmt(m["peak_rss_mib"], 1)]
                for key, _, bases in RATIOS:
                    r = ratios[c.name].get(cm, {}).get(key)
                    if r and len(bases) > 1:  # name the better peer
                        row.append(f"{r['ratio']:.2f} ({r['base'].split('-')[0]})")
                    else:
                        row.append(f"{r['ratio']:.2f}" if r else "—")
                lines.append("| " + " | ".join(row) + " |")
        out.append("\n".join(lines) + "\n")

    out.append("## Every peer, per cell\n")
    out.append("msg/s: messages over the wall time of the load generator (smtp-source, or "
               "tls_source.py for STARTTLS), and for peers that deliver after the 250 "
               "(chainmail-pipeline, postfix-mta) until the last message is in its Maildir. "
               "Server CPU: utime+stime of the server's whole process tree (every worker, thread "
               f"and child process) from /proc, {CLK_TCK} ticks/s. Peak RSS: VmHWM summed over the "
               "server's processes (a fresh server per cell; pages shared between processes count "
               "once per process). PSS: proportional set size summed over the processes, highest "
               "seen after a run (shared pages divided among their sharers: the fairer figure for "
               "servers of several processes). Processes: the most seen. Stored: "
               "messages (or Maildir deliveries, one per recipient) counted after the last run "
               "against the expected number. `!` = some runs failed (client exit status not 0; "
               "left out of the median), `*` = the peer stored fewer or more than expected, "
               "`†` = the server exited during the cell (see Notes).\n")
    for c in cells:
        m = metrics[c.name]
        cr = cell_results[c.name]
        lines = [f"### {c.name}: {c.label} — {c.what}", ""]
        if c.rss_only:
            lines += ["| peer | workers | processes | peak RSS MiB | PSS MiB |", "|---|---|---|---|---|"]
        else:
            lines += ["| peer | workers | processes | msg/s | server CPU µs/msg | peak RSS MiB "
                      "| PSS MiB | client CPU µs/msg | stored / expected |",
                      "|---|---|---|---|---|---|---|---|---|"]
        for p in peer_names:
            if p in cr.not_applicable:
                continue
            pm = m.get(p)
            wl = by_name[p].workers_label
            if not pm:
                why = cr.skipped.get(p, "not run")
                lines.append(f"| {p} | {wl} | — | skipped: {why[:80]} | |" if c.rss_only else
                             f"| {p} | {wl} | — | skipped: {why[:80]} | | | | | |")
                continue
            if c.rss_only:
                lines.append(f"| {p} | {wl} | {fmt(pm['processes'])} | "
                             f"{fmt(pm['peak_rss_mib'], 1)}{flags(pm)} | {fmt(pm['pss_mib'], 1)} |")
                continue
            stored = (f"{fmt(pm['accepted_last'])} / {fmt(pm['expected'])}"
                      if pm["accepted_last"] is not None else f"— / {fmt(pm['expected'])}")
            lines.append(f"| {p} | {wl} | {fmt(pm['processes'])} | {fmt(pm['msgs_per_s'])}{flags(pm)} | "
                         f"{fmt(pm['cpu_us_per_msg'])} | {fmt(pm['peak_rss_mib'], 1)} | "
                         f"{fmt(pm['pss_mib'], 1)} | {fmt(pm['client_cpu_us_per_msg'])} | {stored} |")
        if cr.not_applicable:
            lines += ["", "Not in this cell: " + "; ".join(
                f"{p} ({why})" for p, why in cr.not_applicable.items()) + "."]
        out.append("\n".join(lines) + "\n")

    big = [c for c in cells if c.rss_only]
    if big:
        c = big[0]
        lines = ["### RSS while receiving one 50 MB message", "",
                 "| peer | RSS before (MiB) | peak RSS after (MiB) | growth (MiB) |",
                 "|---|---|---|---|"]
        verdicts = []
        for p in peer_names:
            m = metrics[c.name].get(p)
            if not m or m["peak_rss_mib"] is None:
                if p not in cell_results[c.name].not_applicable:
                    lines.append(f"| {p} | — | — | — |")
                continue
            runs = cell_results[c.name].runs.get(p) or []
            before = runs[0].rss_before_kib / 1024 if runs else m["rss_start_mib"]
            growth = m["peak_rss_mib"] - before
            lines.append(f"| {p} | {before:.1f} | {m['peak_rss_mib']:.1f} | {growth:.1f} |")
            if by_name[p].family == "chainmail":
                verdict = "met" if growth <= RSS_TARGET_MIB else "NOT met"
                verdicts.append(f"{p} target (peak RSS flat within {RSS_TARGET_MIB:.0f} MiB): "
                                f"{verdict}, growth {growth:.1f} MiB.")
        lines += [""] + (verdicts or ["spool-only chainmail target (peak RSS flat within 10 MiB): "
                                      "not measured."])
        if any(by_name[p].family == "chainmail-pipeline" for p in metrics[c.name]):
            lines += ["", "The whole pipeline reads each mail whole into memory while the "
                          "mailets process it (docs/mailets.md): its growth is expected."]
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
                 "peers": peer_names, "workers": args.workers},
        "skipped": skipped_peers,
        "peers": {p.name: {"family": p.family, "workers": p.workers} for p in peers},
        "cells": {
            c.name: {
                "flags": list(c.flags),
                "kind": c.kind,
                "client": c.client,
                "what": c.what,
                "metrics": metrics[c.name],
                "ratios": ratios.get(c.name, {}),
                "skipped": cell_results[c.name].skipped,
                "not_applicable": cell_results[c.name].not_applicable,
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


def node_version() -> str:
    if not shutil.which("node"):
        return "n/a"
    r = subprocess.run(["node", "--version"], capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


PEER_CHOICES = ["chainmail", "chainmail-pipeline", "chainmail-rabbitmq", "chainmail-rabbitmq-2n",
                "aiosmtpd-discard", "aiosmtpd-maildir",
                "haraka-discard", "haraka-maildir", "postfix-mta", "smtp-sink"]


def make_peers(args) -> list[Peer]:
    out: list[Peer] = []
    workers = args.workers or [None]
    for name in PEER_CHOICES:
        if name not in args.peers:
            continue
        if name in ("chainmail", "chainmail-pipeline"):
            out += [ChainmailPeer(args.chainmail, pipeline=name == "chainmail-pipeline", workers=w)
                    for w in workers]
        elif name.startswith("chainmail-rabbitmq"):
            out += [ChainmailBrokerPeer(args.chainmail, nodes=2 if name.endswith("-2n") else 1,
                                        workers=w) for w in workers]
        elif name.startswith("aiosmtpd-"):
            out.append(AiosmtpdPeer(name.split("-", 1)[1]))
        elif name.startswith("haraka-"):
            out.append(HarakaPeer(name.split("-", 1)[1]))
        elif name == "postfix-mta":
            out.append(PostfixMtaPeer())
        elif name == "smtp-sink":
            out.append(SmtpSinkPeer(args.smtp_sink, args.sink_count))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="cells: " + ", ".join(
                                     f"{c.name} ({c.label.replace('`', '')})" for c in CELLS))
    ap.add_argument("--quick", action="store_true", help="fewer messages per run (smoke test)")
    ap.add_argument("--runs", type=int, default=3, help="runs per peer per cell (median; default 3)")
    ap.add_argument("--cells", nargs="+", choices=list(CELL_BY_NAME), metavar="CELL",
                    help="cells to run (default: all)")
    ap.add_argument("--peers", nargs="+", choices=PEER_CHOICES, metavar="PEER",
                    default=PEER_CHOICES, help="peers to run (default: all): " + " ".join(PEER_CHOICES))
    ap.add_argument("--workers", nargs="+", type=int, metavar="N",
                    help="run the chainmail peers once per ioWorkerCount N (chainmail-wN, "
                         "chainmail-pipeline-wN); default: the configuration's default, no element")
    ap.add_argument("--messages", type=int, help="override -m for every cell except 50mb")
    ap.add_argument("--chainmail", default=str(Path(sys.executable).parent / "chainmail"),
                    help="chainmail command (default: the chainmail script next to this Python; "
                         "e.g. \"$PWD/.venv/bin/python -m chainmail\" also works)")
    ap.add_argument("--smtp-source", default=find_tool("smtp-source"))
    ap.add_argument("--smtp-sink", default=find_tool("smtp-sink"))
    ap.add_argument("--sink-count", action="store_true",
                    help="run smtp-sink with -c so its accepted messages can be counted "
                         "(adds a stdout write per event; off by default, as in the baselines)")
    ap.add_argument("--tls-procs", type=int, default=1,
                    help="processes of the STARTTLS client tls_source.py (default 1)")
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
    if args.workers and min(args.workers) < 1:
        ap.error("--workers: every N must be >= 1")
    if args.tls_procs < 1:
        ap.error("--tls-procs must be >= 1")
    cells = [CELL_BY_NAME[n] for n in args.cells] if args.cells else list(CELLS)
    if not args.smtp_source and any(c.kind != "starttls" for c in cells):
        ap.error("smtp-source not found (apt-get install postfix, or pass --smtp-source)")

    in_netns = maybe_enter_netns(args.netns or "auto")

    peers, skipped = [], {}
    for peer in make_peers(args):
        why = peer.available()
        if why:
            print(f"{peer.name}: SKIPPED — {why}", flush=True)
            skipped[peer.name] = why
        else:
            peers.append(peer)
    if not peers:
        print("no peer can run", file=sys.stderr)
        return 1

    base = tempfile.mkdtemp(prefix="chainmail-bench-", dir=args.workdir)
    os.chmod(base, 0o755)  # Postfix's unprivileged processes must reach their directories
    workdir = Path(base) / "cell"
    workdir.mkdir()
    ENV.tmp = Path(base)
    if any(c.kind == "starttls" for c in cells):
        ENV.make_cert()
        if ENV.tls_error:
            print(f"STARTTLS cells: SKIPPED — {ENV.tls_error}", flush=True)
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
        "haraka": haraka_version(),
        "node": node_version(),
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
            print(f"cell {cell.name}: {cell.client} {' '.join(cell.flags)} — {cell.what}", flush=True)
            cell_results[cell.name] = run_cell(cell, peers, args, workdir, dead)
    except KeyboardInterrupt:
        print("interrupted; stopping servers", file=sys.stderr)
        return 130
    finally:
        for p in peers:
            p.stop()
        shutil.rmtree(base, ignore_errors=True)

    for p in peers:
        if not any(cell_results[c.name].runs.get(p.name) for c in cells):
            whys = {cell_results[c.name].skipped.get(p.name) for c in cells} - {None}
            if whys:
                skipped.setdefault(p.name, "did not run: " + "; ".join(sorted(whys)))
    meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
    meta["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    md, data = report(cells, cell_results, peers, args, meta, skipped)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(md)
    args.output.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    print()
    print(md)
    print(f"written: {args.output} and {args.output.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
