"""A loopback world for outgoing-mail tests: a fake DNS and scripted SMTP exchangers served by
a trio loop in a background thread, and Postfix's ``smtp-sink`` as a subprocess.

Every exchanger listens on its own loopback address (127.0.0.2, 127.0.0.3, ...) on one shared
port (MX records carry no port; RemoteDelivery's ``mail.smtp.port`` names it).  The DNS
server answers only what a test put into it, and every address it hands out is in
127.0.0.0/8.  Everything started here is stopped by :meth:`LoopbackWorld.close`.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import ipaddress
import os
import pwd
import re
import shutil
import socket
import subprocess
import threading
import time
from functools import partial
from pathlib import Path

import trio

from ..remote.fakedns import FakeDns
from ..remote.peers import ClientReader

__all__ = ["LoopbackWorld", "Exchanger", "SmtpSink", "free_port", "dnsservice_xml",
           "message_ids"]

_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]+>)", re.I | re.M)


def message_ids(data: bytes) -> list[str]:
    return [m.decode() for m in _MESSAGE_ID.findall(data)]


def _loopback(host: str) -> str:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"{host} is not a loopback address")
    return host


def free_port(hosts: list[str], attempts: int = 50) -> int:
    """A TCP port free on every one of ``hosts`` (loopback addresses) right now."""
    for _ in range(attempts):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            for host in hosts:
                with socket.socket() as s:
                    s.bind((_loopback(host), port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on all of {hosts}")


def dnsservice_xml(port: int) -> str:
    """conf/dnsservice.xml naming only the fake DNS (never the system resolver)."""
    return (f"<dnsservice><servers><server>127.0.0.1:{port}</server></servers>"
            "<autodiscover>false</autodiscover><timeout>2</timeout>"
            "<maxcachesize>0</maxcachesize></dnsservice>\n")


class Exchanger:
    """A scripted SMTP server.

    ``greeting`` None means it accepts connections and never says anything (a stall).
    ``replies`` maps verbs to replies (bytes, or a callable of the command line).  Each
    accepted message is kept in ``messages`` (raw bytes) once its final ``250`` has been
    sent; ``data_delay`` holds that reply back.  ``connections`` counts accepted TCP
    connections, ``connected_at`` holds their times (``time.monotonic()``) and ``closed_after``
    how long each finished connection lasted; ``raw`` every byte received, per connection."""

    def __init__(self, greeting: bytes | None = b"220 mx.test ESMTP\r\n", replies=None,
                 data_delay: float = 0.0, ehlo: bool = True):
        self.greeting = greeting
        self.replies = {
            "EHLO": b"250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n" if ehlo
            else b"500 5.5.1 what?\r\n",
            "HELO": b"250 mx.test\r\n", "MAIL": b"250 2.1.0 OK\r\n", "RCPT": b"250 2.1.5 OK\r\n",
            "DATA": b"354 go on\r\n", "RSET": b"250 2.0.0 OK\r\n", "NOOP": b"250 2.0.0 OK\r\n",
            "QUIT": b"221 2.0.0 bye\r\n", **(replies or {}),
        }
        self.data_delay = data_delay
        self.connections = 0
        self.connected_at: list[float] = []     # time.monotonic() of each connection
        self.closed_after: list[float] = []     # seconds until each connection ended
        self.commands: list[bytes] = []
        self.messages: list[bytes] = []
        self.envelopes: list[tuple[bytes, list[bytes]]] = []
        self.raw: list[bytearray] = []          # every byte received, one entry per connection
        self.host = ""
        self.port = 0

    def message_ids(self) -> list[str]:
        return [i for m in list(self.messages) for i in message_ids(m)]

    async def handle(self, stream) -> None:
        self.connections += 1
        start = time.monotonic()
        self.connected_at.append(start)
        received = bytearray()
        self.raw.append(received)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            async with stream:
                await self._session(_Recording(stream, received))
        self.closed_after.append(time.monotonic() - start)

    async def _session(self, stream) -> None:
        reader = ClientReader(stream)
        if self.greeting is None:   # stalled: say nothing, wait for the client to hang up
            while await reader.next() is not None:
                continue
            return
        await stream.send_all(self.greeting)
        if not self.greeting.startswith(b"2"):
            return
        mail_from, rcpts = b"", []
        while (event := await reader.next()) is not None:
            kind, line = event
            if kind == "data":
                if self.data_delay:
                    await trio.sleep(self.data_delay)
                await stream.send_all(b"250 2.0.0 queued\r\n")
                self.messages.append(line)
                self.envelopes.append((mail_from, rcpts))
                continue
            self.commands.append(line)
            verb = line.split(b" ")[0].decode(errors="replace").upper()
            reply = self.replies.get(verb, b"502 5.5.2 no\r\n")
            if callable(reply):
                reply = reply(line)
            if verb == "MAIL" and reply.startswith(b"2"):
                mail_from, rcpts = line, []
            elif verb == "RCPT" and reply.startswith(b"2"):
                rcpts.append(line)
            await stream.send_all(reply)
            if verb == "DATA" and reply.startswith(b"354"):
                reader.expect_data()
            if verb == "QUIT":
                return


class _Recording:
    """A stream that keeps a copy of every byte it receives (what the wire carried)."""

    def __init__(self, stream, received: bytearray) -> None:
        self.stream, self.received = stream, received

    async def receive_some(self, max_bytes=None) -> bytes:
        data = await self.stream.receive_some(max_bytes)
        self.received += data
        return data

    async def send_all(self, data) -> None:
        await self.stream.send_all(data)


class LoopbackWorld:
    """A trio loop in a thread serving the fake DNS and the scripted exchangers."""

    def __init__(self) -> None:
        self.dns = FakeDns()
        self._token = None
        self._cancel: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._thread_main, name="loopback-world",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the loopback world did not start")
        if self._error is not None:
            raise RuntimeError("the loopback world failed to start") from self._error

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:   # reported by close()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        self.dns.port = sock.getsockname()[1]
        with sock:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.dns.serve, sock)
                self._ready.set()
                await trio.sleep_forever()

    def _run(self, afn, *args):
        return trio.from_thread.run(afn, *args, trio_token=self._token)

    def exchanger(self, host: str, port: int, exchanger: Exchanger | None = None) -> Exchanger:
        """Serve ``exchanger`` on ``host:port`` (a loopback address)."""
        exchanger = exchanger or Exchanger()

        async def start():
            listeners = await self._nursery.start(
                partial(trio.serve_tcp, exchanger.handle, port, host=_loopback(host)))
            return listeners[0].socket.getsockname()[1]

        exchanger.host, exchanger.port = host, self._run(start)
        return exchanger

    def dns_xml(self) -> str:
        return dnsservice_xml(self.dns.port)

    def queried(self, name: str, rtype: str | None = None) -> list[tuple[str, str]]:
        name = name.rstrip(".").lower()
        return [q for q in list(self.dns.queries) if q[0] == name and (rtype is None or q[1] == rtype)]

    def close(self) -> None:
        if self._token is not None and self._nursery is not None and self._thread.is_alive():
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._nursery.cancel_scope.cancel, trio_token=self._token)
        self._thread.join(10)
        if self._thread.is_alive():
            raise RuntimeError("the loopback world did not stop")
        if self._error is not None:
            raise RuntimeError("the loopback world failed") from self._error


class SmtpSink:
    """Postfix's ``smtp-sink`` on ``host:port``, dumping each transaction to its own file."""

    def __init__(self, binary: str, host: str, port: int, workdir: Path, *extra: str) -> None:
        self.host, self.port = _loopback(host), port
        self.dir = workdir / f"sink-{host}-{port}"
        self.dir.mkdir(parents=True)
        args = [binary]
        if os.geteuid() == 0:   # smtp-sink insists on a user to run as when started by root
            args += ["-u", pwd.getpwuid(os.geteuid()).pw_name]
        args += ["-h", "sink.test", "-d", f"{self.dir}/%Y%m%d%H%M%S.", *extra,
                 f"{host}:{port}", "64"]
        self.log = open(workdir / f"sink-{host}-{port}.log", "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"smtp-sink exited with {self.proc.returncode}: "
                                   f"{(workdir / f'sink-{host}-{port}.log').read_text()}")
            with socket.socket() as s:
                s.settimeout(1)
                if s.connect_ex((host, port)) == 0:
                    s.sendall(b"QUIT\r\n")
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("smtp-sink did not start listening")

    def dumps(self) -> list[bytes]:
        out = []
        for path in sorted(self.dir.iterdir()):
            with contextlib.suppress(FileNotFoundError):   # delivered and removed meanwhile
                out.append(path.read_bytes())
        return out

    def messages(self, marker: bytes) -> list[email.message.Message]:
        """The dumped transactions whose content holds ``marker`` (a line written at the end
        of a test message, so that a half-written dump never counts)."""
        return [email.message_from_bytes(d, policy=email.policy.compat32)
                for d in self.dumps() if marker in d]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
