"""Real spam filters for the integration tests: SpamAssassin's ``spamd`` and ``rspamd``,
each started by the test as its own process on a free loopback port, with a configuration
the test writes (no network tests, no DNS outside loopback, no system service), and stopped
at the end of the module.

spamd scores with the rules the Debian package installs (GTUBE among them) plus one local
rule, ``CHAINMAIL_TEST_SPAMWORD`` (7.5 points for the word ``chainmailspamword``).
rspamd runs its stock modules with test patterns enabled (GTUBE: ``reject``) and one Lua
prefilter: a Subject containing ``force-action=<action>.`` gets that action (``soft
reject``, ``greylist``, ``add header``, ``rewrite subject``), with the message ``forced by
the test (<action>)``.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
SPAMWORD = "chainmailspamword"
SPAMD = "/usr/sbin/spamd"
RSPAMD = "/usr/bin/rspamd"

SPAMD_LOCAL_CF = f"""required_score 5.0
use_bayes 0
bayes_auto_learn 0
body CHAINMAIL_TEST_SPAMWORD /\\b{SPAMWORD}\\b/
describe CHAINMAIL_TEST_SPAMWORD The word the chainmail tests use for spam
score CHAINMAIL_TEST_SPAMWORD 7.5
"""

RSPAMD_CONF = """.include "$CONFDIR/common.conf"
options {{
  pidfile = "{dir}/rspamd.pid";
  .include "$CONFDIR/options.inc"
  enable_test_patterns = true;
  dns {{ nameserver = ["127.0.0.1:9"]; timeout = 0.2s; retransmits = 1; }}
}}
logging {{ type = "file"; filename = "{dir}/rspamd.log"; level = "info"; }}
worker "normal" {{ bind_socket = "127.0.0.1:{port}"; mime = true; count = 1; }}
lua = "{dir}/force_action.lua";
"""

RSPAMD_MILTER_HEADERS = """use = ["x-spamd-result", "x-rspamd-action"];
skip_local = false;
skip_authenticated = false;
"""

RSPAMD_FORCE_ACTION = """rspamd_config:register_symbol({
  name = 'CHAINMAIL_TEST_FORCE_ACTION',
  type = 'prefilter',
  priority = 10,
  callback = function(task)
    local subject = task:get_subject() or ''
    local action = subject:match('force%-action=([a-z ]+)%.')
    if action then
      task:set_pre_result(action, 'forced by the test (' .. action .. ')', 'chainmail-test')
    end
  end
})
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Filter:
    """A running filter: its port, its directory and its log."""

    name: str
    port: int
    dir: Path
    proc: subprocess.Popen
    log_path: Path

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_ready(self, timeout: float, probe) -> None:
        deadline = time.monotonic() + timeout
        while not probe():
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{self.log[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"{self.name} not ready after {timeout:g} s:\n{self.log[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)   # the group this fixture started
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _private_dir(prefix: str) -> Path:
    """A directory the filter's unprivileged children can read (pytest's own are 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def _drop_privileges() -> list[str]:
    return ["-u", "nobody"] if os.geteuid() == 0 else []


def start_spamd() -> Filter:
    if not os.access(SPAMD, os.X_OK):
        pytest.fail(f"{SPAMD} is not installed; tests/setup-system.sh installs it")
    base = _private_dir("chainmail-spamd-")
    site = base / "site"
    site.mkdir()
    for pre in glob.glob("/etc/spamassassin/*.pre"):
        shutil.copy(pre, site)
    (site / "local.cf").write_text(SPAMD_LOCAL_CF)
    port = free_port()
    log_path = base / "spamd.log"
    cmd = [SPAMD, f"--listen=127.0.0.1:{port}", "--allowed-ips=127.0.0.1", "--nouser-config",
           "--local", f"--siteconfigpath={site}", f"--pidfile={base}/spamd.pid",
           "--min-children=2", "--max-children=4", "--syslog=stderr", *_drop_privileges()]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    spamd = Filter("spamd", port, base, proc, log_path)
    spamd.wait_ready(60, lambda: "server started on" in spamd.log and _ready(port))
    return spamd


def _rspamd_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"GET /ping HTTP/1.0\r\n\r\n")
            return b"pong" in s.recv(4096)
    except OSError:
        return False


def start_rspamd() -> Filter:
    if not os.access(RSPAMD, os.X_OK):
        pytest.fail(f"{RSPAMD} is not installed; tests/setup-system.sh installs it")
    base = _private_dir("chainmail-rspamd-")
    (base / "local.d").mkdir()
    db = base / "db"
    db.mkdir()
    db.chmod(0o777)
    base.chmod(0o777)   # rspamd writes its pid and log here after dropping privileges
    port = free_port()
    (base / "rspamd.conf").write_text(RSPAMD_CONF.format(dir=base, port=port))
    (base / "local.d" / "milter_headers.conf").write_text(RSPAMD_MILTER_HEADERS)
    (base / "force_action.lua").write_text(RSPAMD_FORCE_ACTION)
    cmd = [RSPAMD, "-f", "-c", str(base / "rspamd.conf"), f"--var=LOCAL_CONFDIR={base}",
           f"--var=DBDIR={db}", f"--var=RUNDIR={base}", f"--var=LOGDIR={base}"]
    if os.geteuid() == 0:
        cmd += ["-u", "nobody", "-g", "nogroup"]
    with open(base / "stdout.log", "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    rspamd = Filter("rspamd", port, base, proc, base / "rspamd.log")
    rspamd.wait_ready(90, lambda: _rspamd_ping(port))
    return rspamd


@pytest.fixture(scope="module")
def spamd():
    running = start_spamd()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def rspamd():
    running = start_rspamd()
    yield running
    running.stop()


class SilentPeer:
    """A loopback listener that accepts connections and never answers: a filter that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def silent_peer():
    peer = SilentPeer()
    yield peer
    peer.close()
