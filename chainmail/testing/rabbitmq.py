"""A throwaway RabbitMQ node for tests and benchmarks: the Debian package's
``rabbitmq-server``, run as the caller's own process on 127.0.0.1 with a free port, its
data, logs, Erlang cookie and port mapper (epmd) under a temporary directory.

    with rabbitmq_node() as broker:
        (conf / "rabbitmq.properties").write_text(f"uri={broker.uri}\n")
        ...
        broker.stop(); broker.start()   # a broker restart: the data stays
        broker.ctl("list_queues", "name", "messages")

Nothing of the system's RabbitMQ service is used or disturbed.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chainmail.store.amqp.config import RabbitMQConfig

__all__ = ["RabbitMQ", "RabbitMQMissing", "rabbitmq_node"]


class RabbitMQMissing(RuntimeError):
    """The rabbitmq-server package is not installed."""


RABBIT_SBIN = Path("/usr/lib/rabbitmq/bin")
_names = itertools.count()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_command() -> list[str]:
    # /usr/sbin/rabbitmq-server switches to the rabbitmq account; the release's own script
    # runs the Erlang node as whoever calls it.
    for candidate in [str(RABBIT_SBIN / "rabbitmq-server"),
                      *sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/"
                                        "rabbitmq-server"))]:
        if os.access(candidate, os.X_OK):
            return [candidate]
    raise RabbitMQMissing("rabbitmq-server is not installed (Debian: apt-get install "
                          "--no-install-recommends rabbitmq-server)")


class RabbitMQ:
    """A RabbitMQ node of its own: data, logs, config, Erlang cookie and epmd under
    ``base``, AMQP on 127.0.0.1:``port``.  ``start``/``stop`` may alternate: the data
    (and the quorum queues in it) stays."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = _free_port()
        self.node = f"chainmail{os.getpid()}x{next(_names)}@localhost"
        self.epmd_port = _free_port()
        ctl_port = _free_port()
        home = base / "home"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            "HOME": str(home),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(_free_port()),
            "RABBITMQ_CTL_DIST_PORT_MIN": str(ctl_port),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(ctl_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(self.epmd_port),
        }
        home.mkdir(parents=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(f"CHAINMAILTEST{os.getpid()}{self.port}")
        cookie.chmod(0o400)
        (base / "rabbitmq.conf").write_text("disk_free_limit.absolute = 1MB\n"
                                            "log.file.level = info\n")
        (base / "rabbitmq-env.conf").write_text("")
        (base / "enabled_plugins").write_text("[].\n")
        self.proc: subprocess.Popen | None = None
        self.epmd: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def config(self, **changes: Any) -> RabbitMQConfig:
        return RabbitMQConfig(uri=self.uri, **{"confirm_timeout": 10.0, **changes})

    def ctl(self, *args: str, timeout: float = 70) -> subprocess.CompletedProcess:
        return subprocess.run([str(RABBIT_SBIN / "rabbitmqctl"), "-n", self.node, *args],
                              env=self.env, capture_output=True, text=True, timeout=timeout,
                              cwd=self.base)

    def _epmd_listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.epmd_port)) == 0

    def start(self) -> None:
        if self.epmd is None:
            # an epmd of the test's own, so that stopping it disturbs nobody else's nodes
            self.epmd = subprocess.Popen(
                ["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while not self._epmd_listening():
                if time.monotonic() > deadline:
                    raise AssertionError("epmd did not listen within 10 s")
                time.sleep(0.05)
        log = open(self.base / "server.out", "ab")
        self.proc = subprocess.Popen(_server_command(), env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, cwd=self.base,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while True:
            # await_startup fails at once while the node is not yet registered with epmd
            done = self.ctl("await_startup", "--timeout", "60")
            if done.returncode == 0:
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"RabbitMQ did not start: {done.stderr[-2000:]}\n"
                                     + (self.base / "server.out").read_text()[-3000:])
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the node (gracefully: ``rabbitmqctl stop``) and wait for it to be gone."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.ctl("stop", timeout=60)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self) -> None:
        self.stop()
        if self.epmd is not None:
            self.epmd.terminate()
            self.epmd.wait(10)
            self.epmd = None


@contextlib.contextmanager
def rabbitmq_node() -> Iterator[RabbitMQ]:
    """A running RabbitMQ node of its own, stopped (with its epmd) and removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="chainmail-rabbitmq-"))
    server = RabbitMQ(base)
    try:
        server.start()
        yield server
    finally:
        server.close()
        shutil.rmtree(base, ignore_errors=True)
