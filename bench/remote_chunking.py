#!/usr/bin/env python3
"""RemoteDelivery's SMTP client sending large messages with DATA and with BDAT (RFC 3030).

    .venv/bin/python bench/remote_chunking.py                      # 1 MiB x 40, 10 MiB x 8, 3 runs
    .venv/bin/python bench/remote_chunking.py --sizes 1 10 --count 40 8 --runs 5
    .venv/bin/python bench/remote_chunking.py --sink chainmail     # the receiver: chainmail itself

The client is :class:`chainmail.remote.client.SmtpClient`, sending every message of a cell
over one connection (``send`` per message, as a pooled connection does), first with
``chunking=False`` (DATA: canonical form plus dot-stuffing) then with ``chunking=True`` (one
``BDAT`` per MiB, pipelined), alternating which goes first on each run.  The messages are
text lines of 76 octets, one in ten starting with a dot, so that DATA has stuffing to do.

The receiver, on 127.0.0.1 only, in a process of its own so that its CPU is not counted:

- ``sink`` (default): a small sink in this file speaking both DATA and BDAT with the same
  code path (it keeps only the byte count; DATA's end is found by scanning each read and the
  four octets before it, BDAT's by counting), so the difference measured is the client's and
  the wire's.  Postfix 3.7's ``smtp-sink`` does not announce CHUNKING;
- ``chainmail``: ``chainmail run`` with a NoAuthCmdHandlerLoader block and no mailet
  container: each message is spooled (fsynced) before its 250, DATA or BDAT alike.

Reported per cell: messages per second (wall), client CPU milliseconds per message (user +
system of this process), and the BDAT/DATA ratio of each (median of the runs).
Standard library and chainmail only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chainmail.remote.client import SmtpClient  # noqa: E402

MIB = 1024 * 1024


# ------------------------------------------------------------------ the sink

def _sink_session(conn: socket.socket) -> None:
    """One session: EHLO offers PIPELINING, CHUNKING, BINARYMIME; replies are batched."""
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.sendall(b"220 sink.bench ESMTP\r\n")
    buf = b""
    while True:
        out = []
        while True:
            end = buf.find(b"\r\n")
            if end < 0:
                break
            line, buf = buf[:end], buf[end + 2:]
            verb = line[:4].upper()
            if verb == b"EHLO":
                out.append(b"250-sink.bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                           b"250-CHUNKING\r\n250-BINARYMIME\r\n250 SIZE 0\r\n")
            elif verb == b"DATA":
                conn.sendall(b"".join(out) + b"354 go on\r\n")
                out = []
                buf = _read_data(conn, buf)
                out.append(b"250 2.0.0 ok\r\n")
            elif verb == b"BDAT":
                args = line.split()
                size = int(args[1])
                buf = _skip(conn, buf, size)
                out.append(b"250 2.0.0 ok\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"".join(out) + b"221 bye\r\n")
                return
            else:
                out.append(b"250 2.0.0 ok\r\n")
        if out:
            conn.sendall(b"".join(out))
        chunk = conn.recv(1 << 20)
        if not chunk:
            return
        buf += chunk


def _read_data(conn: socket.socket, buf: bytes) -> bytes:
    """Up to CRLF.CRLF; each octet is scanned once (plus 4 of overlap)."""
    tail = b"\r\n"            # DATA's own line end counts for a message that is just "."
    data = buf
    while True:
        window = tail + data
        end = window.find(b"\r\n.\r\n")
        if end >= 0:
            return window[end + 5:]
        tail = window[-4:]
        data = conn.recv(1 << 20)
        if not data:
            raise ConnectionError("closed in DATA")


def _skip(conn: socket.socket, buf: bytes, size: int) -> bytes:
    if len(buf) >= size:
        return buf[size:]
    size -= len(buf)
    while size > 0:
        chunk = conn.recv(min(1 << 20, size) if size > (1 << 20) else 1 << 20)
        if not chunk:
            raise ConnectionError("closed in BDAT")
        if len(chunk) > size:
            return chunk[size:]
        size -= len(chunk)
    return b""


def serve_sink(port_file: str) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    Path(port_file).write_text(str(listener.getsockname()[1]))
    while True:
        conn, _ = listener.accept()
        with conn:
            try:
                _sink_session(conn)
            except (ConnectionError, OSError):
                pass


# ------------------------------------------------------------------ receivers

class Receiver:
    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.tmp = tmp
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> None:
        if self.kind == "sink":
            port_file = self.tmp / "port"
            self.proc = subprocess.Popen([sys.executable, __file__, "--serve-sink", str(port_file)],
                                         start_new_session=True)
            self.port = int(_wait_for(lambda: port_file.exists() and port_file.read_text()))
        else:
            self.port = _free_port()
            conf, var = self.tmp / "conf", self.tmp / "var"
            conf.mkdir(exist_ok=True)
            (conf / "smtpserver.xml").write_text(
                '<smtpservers><smtpserver enabled="true"><jmxName>bench</jmxName>'
                f"<bind>127.0.0.1:{self.port}</bind><helloName autodetect=\"false\">bench</helloName>"
                "<authorizedAddresses>127.0.0.0/8</authorizedAddresses>"
                "<maxmessagesize>0</maxmessagesize><verifyIdentity>false</verifyIdentity>"
                '<handlerchain coreHandlersPackage="org.apache.james.smtpserver.NoAuthCmdHandlerLoader"/>'
                "</smtpserver></smtpservers>\n")
            (conf / "domainlist.xml").write_text(
                "<domainlist><domainnames><domainname>bench.test</domainname></domainnames>"
                "<defaultDomain>bench.test</defaultDomain></domainlist>\n")
            (conf / "dnsservice.xml").write_text(
                "<dnsservice><servers><server>127.0.0.1:9</server></servers>"
                "<autodiscover>false</autodiscover></dnsservice>\n")
            exe = shutil.which("chainmail", path=str(Path(sys.executable).parent)) or "chainmail"
            self.proc = subprocess.Popen([exe, "run", "--conf", str(conf), "--var", str(var)],
                                         start_new_session=True, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            _wait_for(lambda: _greets(self.port), timeout=20)

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _greets(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            return s.recv(3) == b"220"
    except OSError:
        return False


def _wait_for(probe, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError("the receiver did not start")


# ------------------------------------------------------------------ the client

def message(size: int) -> bytes:
    head = b"From: a@bench.test\r\nTo: r@bench.test\r\nSubject: chunking bench\r\n\r\n"
    line = b"x" * 74 + b"\r\n"
    dotted = b"." + b"x" * 73 + b"\r\n"
    block = (line * 9 + dotted) * 64
    body = block * (size // len(block) + 1)
    return head + body[:size - len(head) - 2].rstrip(b"\r") + b"\r\n"


async def one_cell(port: int, content: bytes, count: int, chunking: bool) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for ``count`` messages on one connection."""
    client = await SmtpClient.connect("127.0.0.1", port, helo_name="client.bench", timeout=60)
    assert "CHUNKING" in client.extensions or not chunking, "the receiver has no CHUNKING"
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(count):
        result = await client.send("a@bench.test", ["r@bench.test"], content, chunking=chunking)
        if result.delivered != ["r@bench.test"]:
            raise RuntimeError(f"not delivered: {result.data_reply}")
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    await client.quit()
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10], help="MiB per message")
    parser.add_argument("--count", type=int, nargs="+", default=[40, 8],
                        help="messages per run, one per size")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sink", choices=("sink", "chainmail"), default="sink")
    parser.add_argument("--serve-sink", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sink:
        serve_sink(args.serve_sink)
        return 0
    counts = (args.count * len(args.sizes))[:len(args.sizes)] if len(args.count) == 1 else args.count
    if len(counts) != len(args.sizes):
        parser.error("--count takes one number, or one per size")
    with tempfile.TemporaryDirectory(prefix="chunking-bench-") as tmp:
        receiver = Receiver(args.sink, Path(tmp))
        receiver.start()
        try:
            rows = []
            for size, count in zip(args.sizes, counts):
                content = message(size * MIB)
                got: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
                for run in range(args.runs):
                    for chunking in ((False, True) if run % 2 == 0 else (True, False)):
                        got[chunking].append(trio.run(one_cell, receiver.port, content, count,
                                                      chunking))
                rows.append((size, count, got))
        finally:
            receiver.stop()
    print(f"receiver: {args.sink}; median of {args.runs} runs; one connection per run\n")
    print("| size | messages | DATA msg/s | BDAT msg/s | ratio | DATA CPU ms/msg | "
          "BDAT CPU ms/msg | ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size, count, got in rows:
        rate = {k: statistics.median(count / w for w, _ in v) for k, v in got.items()}
        cpu = {k: statistics.median(c / count * 1000 for _, c in v) for k, v in got.items()}
        print(f"| {size} MiB | {count} | {rate[False]:.1f} | {rate[True]:.1f} | "
              f"{rate[True] / rate[False]:.2f} | {cpu[False]:.2f} | {cpu[True]:.2f} | "
              f"{cpu[True] / cpu[False]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
