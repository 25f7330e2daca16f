"""Shared fixtures: a real ``chainmail run`` process with a temporary conf and var directory.

Integration tests talk to it over real sockets with real clients (smtplib, swaks, openssl,
Postfix's tools).  All traffic stays on the loopback interface.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAINMAIL = [sys.executable, "-m", "chainmail"]
LISTENING = re.compile(r"listening on (\[[^\]]+\]|[0-9.]+):(\d+)")

NO_DNS = """<dnsservice><servers><server>127.0.0.1:9</server></servers>
<autodiscover>false</autodiscover><timeout>1</timeout></dnsservice>
"""

DOMAINLIST = """<domainlist>
  <domainnames>{names}</domainnames>
  <autodetect>false</autodetect><autodetectIP>false</autodetectIP>
  <defaultDomain>{default}</defaultDomain>
</domainlist>
"""


def smtpserver_xml(body: str = "", *, bind: str = "127.0.0.1:0", hello: str = "mx.test",
                   core: str = "org.apache.james.smtpserver.NoAuthCmdHandlerLoader",
                   handlers: str = "", authorized: str = "127.0.0.0/8") -> str:
    """One ``<smtpserver>`` block with test defaults; ``body`` adds or overrides options."""
    defaults = {
        "jmxName": f"<jmxName>test{abs(hash(body + bind)) % 100000}</jmxName>",
        "bind": f"<bind>{bind}</bind>",
        "helloName": f'<helloName autodetect="false">{hello}</helloName>',
        "connectiontimeout": "<connectiontimeout>30</connectiontimeout>",
        # James's default (strict) refuses messages without From: and local senders from
        # outside; the identity tests set it explicitly.
        "verifyIdentity": "<verifyIdentity>false</verifyIdentity>",
        "authorizedAddresses": f"<authorizedAddresses>{authorized}</authorizedAddresses>" if authorized else "",
    }
    options = "\n  ".join(v for k, v in defaults.items() if f"<{k}" not in body)
    return (f'<smtpserver enabled="true">\n  {options}\n  {body}\n'
            f'  <handlerchain coreHandlersPackage="{core}">{handlers}</handlerchain>\n</smtpserver>')


class ChainmailProcess:
    """A running ``chainmail run``.  ``ports`` lists bound ports in log order."""

    def __init__(self, conf: Path, var: Path, extra_args=()):
        self.conf, self.var = conf, var
        self.log_path = var.parent / "chainmail.log"
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([*CHAINMAIL, "run", "--conf", str(conf), "--var", str(var),
                                      *extra_args], stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, cwd=str(var.parent))
        self.ports: list[int] = []
        self.host = "127.0.0.1"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            text = self.log
            if "chainmail ready" in text:
                self.ports = [int(m.group(2)) for m in LISTENING.finditer(text)]
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"chainmail exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"chainmail did not start:\n{self.log}")

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def smtp(self, port: int | None = None, **kwargs) -> smtplib.SMTP:
        kwargs.setdefault("local_hostname", "client.test")  # never let smtplib ask DNS
        return smtplib.SMTP(self.host, port or self.port, timeout=10, **kwargs)

    def queued(self) -> list:
        from chainmail.store.spool import DirectorySpool
        return DirectorySpool(str(self.var / "spool")).list()

    def queued_body(self, msg_id: str) -> bytes:
        from chainmail.store.spool import DirectorySpool
        with DirectorySpool(str(self.var / "spool")).open_body(msg_id) as f:
            return f.read()

    def signal(self, signum=signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def chainmail_factory(tmp_path):
    """``start(servers_xml, domains=("local.test",), extra_files={})`` -> ChainmailProcess."""
    started: list[ChainmailProcess] = []
    counter = iter(range(1000))

    def start(servers: str | list[str] = "", *, domains=("local.test",), default_domain=None,
              files: dict[str, str] | None = None, raw_smtpserver: str | None = None,
              extra_args=(), **block_options) -> ChainmailProcess:
        base = tmp_path / f"node{next(counter)}"
        conf, var = base / "conf", base / "var"
        conf.mkdir(parents=True)
        if raw_smtpserver is not None:
            (conf / "smtpserver.xml").write_text(raw_smtpserver)
        else:
            blocks = [servers] if isinstance(servers, str) else servers
            blocks = [b if b.lstrip().startswith("<smtpserver") else smtpserver_xml(b, **block_options)
                      for b in blocks]
            (conf / "smtpserver.xml").write_text("<smtpservers>\n" + "\n".join(blocks) + "\n</smtpservers>\n")
        names = "".join(f"<domainname>{d}</domainname>" for d in domains)
        (conf / "domainlist.xml").write_text(
            DOMAINLIST.format(names=names, default=default_domain or (domains[0] if domains else "localhost")))
        # Outgoing mail never asks the system resolver: unless a test brings its own DNS,
        # lookups go to a closed loopback port and fail as temporary errors.
        files = {"dnsservice.xml": NO_DNS, **(files or {})}
        for name, text in files.items():
            (conf / name).write_text(text)
        proc = ChainmailProcess(conf, var, extra_args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def chainmail(chainmail_factory):
    """A default server: local domain local.test, 127.0.0.0/8 may relay."""
    return chainmail_factory()


def need(tool: str) -> str:
    path = shutil.which(tool) or next((p for p in (f"/usr/sbin/{tool}", f"/usr/lib/postfix/sbin/{tool}")
                                       if os.path.exists(p)), None)
    if path is None:
        pytest.fail(f"{tool} is not installed; .ci/run installs it (apt-get install postfix swaks)")
    return path


def cli_on_conf(tmp_path, smtpserver: str, *command: str) -> subprocess.CompletedProcess:
    """Write ``smtpserver`` as ``conf/smtpserver.xml`` under ``tmp_path`` and run
    ``chainmail <command> --conf ... --var ...`` on it."""
    conf = tmp_path / "conf"
    conf.mkdir(parents=True)
    (conf / "smtpserver.xml").write_text(smtpserver)
    return subprocess.run([*CHAINMAIL, *command, "--conf", str(conf), "--var", str(tmp_path / "var")],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path)


def raw_exchange(port: int, data: bytes, *, host="127.0.0.1", read_until_close=True,
                 timeout=5.0, expect_lines: int | None = None) -> bytes:
    """Send ``data`` in one write and collect what the server answers."""
    import socket
    with socket.create_connection((host, port), timeout=timeout) as s:
        greeting = b""
        while not greeting.endswith(b"\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            greeting += chunk
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if expect_lines is not None and out.count(b"\r\n") >= expect_lines:
                break
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
        return greeting + out


def read_line(sock, timeout: float = 5) -> bytes:
    """One reply line (up to and including CRLF) from a plain socket."""
    sock.settimeout(timeout)
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def alive(pid: int) -> bool:
    """Whether process ``pid`` still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
