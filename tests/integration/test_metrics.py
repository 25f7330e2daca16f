"""Metrics and health checks of a running ``chainmail run`` with two worker processes, read
through WebAdmin (``/metrics``, ``/healthcheck``) over real HTTP after known SMTP traffic.

The spool is made read-only for real: the server runs in a mount namespace of its own
(``unshare --mount``) and the test bind-mounts its spool directory read-only there
(``nsenter``).  Permission bits would not do: the tests run as root, whom they do not stop;
a read-only mount stops everyone, as a full or failing disk does."""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from chainmail.store.spool import DirectorySpool

from ..conftest import ChainmailProcess, wait_for
from .test_auth import PASSWORD, add_user
from .test_tls import Material, tls_block
from .test_webadmin import properties, webadmin_url

CORE = "org.apache.james.smtpserver.CoreCmdHandlerLoader"
MESSAGE = "From: a@local.test\r\nTo: b@local.test\r\nSubject: m{n}\r\n\r\nbody {n}\r\n"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(scrape: dict, name: str, **labels: str) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def material(tmp_path):
    return Material(tmp_path)


@pytest.fixture
def server(chainmail_factory, material):
    """Two workers, STARTTLS and AUTH (password mechanisms need TLS), WebAdmin on."""
    proc = chainmail_factory(
        tls_block(material.keystore("ks.p12", "mx.test")) +
        "<ioWorkerCount>2</ioWorkerCount><auth><announce>always</announce></auth>",
        core=CORE, authorized="", files={"webadmin.properties": properties()})
    add_user(proc, "alice@local.test")
    proc.material = material
    return proc


def scrape(client: httpx.Client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(response.text)


def wait_closed(client: httpx.Client) -> dict:
    """A scrape once every connection is closed on the server's side too."""
    found: dict = {}

    def settled() -> bool:
        found.update(scrape(client))
        return value(found, "chainmail_connections_open") == 0
    wait_for(settled, what="every connection closed")
    return found


def per_worker(server, sample: str, kind: str = "counter") -> dict[int, float]:
    """``sample``'s value in each process's file of the metrics directory, by pid."""
    out = {}
    for path in glob.glob(str(server.var / "run" / "metrics" / f"{kind}_*.db")):
        pid = int(path.rsplit("_", 1)[1][:-3])
        for key, val, _, _ in MmapedDict.read_all_values_from_file(path):
            if f'"{sample}"' in key:
                out[pid] = out.get(pid, 0.0) + val
    return out


def worker_pid(server, index: int) -> int:
    match = wait_for(lambda: re.findall(rf"worker {index} ready \(pid (\d+)\)", server.log),
                     what=f"worker {index} ready")
    return int(match[-1])


def both_workers_served(server) -> None:
    """Connect until each worker has taken a connection (the kernel spreads them)."""
    workers = {worker_pid(server, 0), worker_pid(server, 1)}
    for _ in range(100):
        served = {pid for pid, n in per_worker(server, "chainmail_connections_total").items() if n}
        if workers <= served:
            return
        with server.smtp() as s:
            s.noop()
    raise AssertionError("one worker took every connection")


def test_known_traffic_moves_each_metric_by_its_amount(server):
    both_workers_served(server)
    with httpx.Client(base_url=webadmin_url(server), timeout=10) as client:
        before = wait_closed(client)
        sent = 6
        for n in range(sent):   # plain sessions: EHLO MAIL RCPT DATA QUIT
            with server.smtp() as s:
                s.ehlo("client.test")
                s.sendmail("a@local.test", ["b@local.test"], MESSAGE.format(n=n))
        with server.smtp() as s:   # refused: relaying; an unknown command
            s.ehlo("client.test")
            assert s.mail("a@local.test")[0] == 250
            assert s.rcpt("someone@remote.example")[0] == 550
            assert s.docmd("FROB")[0] == 500
        with server.smtp() as s:   # STARTTLS then AUTH PLAIN: one failure, one success
            s.ehlo("client.test")
            s.starttls(context=server.material.client_context())
            s.ehlo("client.test")
            s.user, s.password = "alice@local.test", "wrong password"
            with pytest.raises(smtplib.SMTPAuthenticationError):
                s.auth("PLAIN", s.auth_plain)
            s.password = PASSWORD
            assert s.auth("PLAIN", s.auth_plain)[0] == 235
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            reader = raw.makefile("rb")
            assert reader.readline().startswith(b"220 ")
            raw.sendall(b"EHLO client.test\r\n")
            while not reader.readline().startswith(b"250 "):
                pass
            raw.sendall(b"STARTTLS\r\n")
            assert reader.readline().startswith(b"220 ")
            raw.sendall(b"this is not a TLS ClientHello\r\n" * 4)   # a failed handshake
            reader.read()
        after = wait_closed(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    sessions = sent + 3
    assert moved("chainmail_connections_total") == sessions
    assert moved("chainmail_connections_refused_total") == 0
    assert moved("chainmail_sessions_total", protocol="smtp") == sessions
    assert moved("chainmail_commands_total", verb="EHLO") == sent + 1 + 2 + 1
    assert moved("chainmail_commands_total", verb="MAIL") == sent + 1
    assert moved("chainmail_commands_total", verb="RCPT") == sent + 1
    assert moved("chainmail_commands_total", verb="DATA") == sent
    assert moved("chainmail_commands_total", verb="QUIT") == sent + 2
    assert moved("chainmail_commands_total", verb="STARTTLS") == 2
    assert moved("chainmail_commands_total", verb="AUTH") == 2
    assert moved("chainmail_commands_total", verb="OTHER") == 1      # FROB
    # each sent message: 220 greeting, 250 EHLO, MAIL, RCPT, after the data, 221 QUIT, 354
    assert moved("chainmail_replies_total", **{"class": "2xx"}) == (
        sent * 6 + 4 + 6 + 3)   # refused session 220 250 250 221; TLS 220 250 220 250 235 221;
    #                             failed handshake 220 250 220
    assert moved("chainmail_replies_total", **{"class": "3xx"}) == sent        # 354
    assert moved("chainmail_replies_total", **{"class": "5xx"}) == 3           # 550 500 535
    assert moved("chainmail_replies_total", **{"class": "4xx"}) == 0
    assert moved("chainmail_tls_handshakes_total", result="ok") == 1
    assert moved("chainmail_tls_handshakes_total", result="failed") == 1
    assert moved("chainmail_auth_attempts_total", mechanism="PLAIN", result="failure") == 1
    assert moved("chainmail_auth_attempts_total", mechanism="PLAIN", result="success") == 1
    queued = DirectorySpool(str(server.var / "spool")).list()
    assert len(queued) == sent
    assert moved("chainmail_messages_received_total") == sent
    assert moved("chainmail_received_bytes_total") == sum(m.size for m in queued)
    # measured at the scrape: no mailet container here, so the mail stays in the spool
    assert value(after, "chainmail_spool_messages") == sent
    assert 0 < value(after, "chainmail_spool_oldest_age_seconds") < 300
    # one scrape (in worker 0) is the sum of both workers' own counts
    counts = per_worker(server, "chainmail_connections_total")
    assert counts[worker_pid(server, 0)] and counts[worker_pid(server, 1)]
    assert value(after, "chainmail_connections_total") == sum(counts.values())


def test_a_replaced_worker_keeps_its_counts_and_drops_its_open_connections(server):
    victim = worker_pid(server, 1)
    with httpx.Client(base_url=webadmin_url(server), timeout=10) as client:
        idle = []
        while not per_worker(server, "chainmail_connections_open", "gauge_livesum").get(victim):
            idle.append(server.smtp())   # until one is held by worker 1
            assert len(idle) < 100
        wait_for(lambda: value(scrape(client), "chainmail_connections_open") == len(idle),
                 what="every connection open counted")
        before = scrape(client)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: worker_pid(server, 1) != victim, what="a replacement worker")
        during = scrape(client)
        assert value(during, "chainmail_connections_open") < len(idle)
        for s in idle:
            try:
                s.quit()
            except (smtplib.SMTPException, OSError):
                pass    # held by the killed worker
        after = wait_closed(client)
    assert value(after, "chainmail_connections_total") == value(before, "chainmail_connections_total")


# ------------------------------------------------------------------------ health


class NamespacedProcess(ChainmailProcess):
    """``chainmail run`` in a mount namespace of its own, for mounts only it sees."""

    def __init__(self, conf, var):
        self.conf, self.var = conf, var
        self.host = "127.0.0.1"
        self.ports = []
        self.log_path = var.parent / "chainmail.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", sys.executable, "-m",
             "chainmail", "run", "--conf", str(conf), "--var", str(var)],
            stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
            cwd=str(self.log_path.parent))
        try:
            self._wait_ready(20)
        except BaseException:
            self.stop()
            raise

    def mount(self, *args: str) -> None:
        subprocess.run(["nsenter", "--target", str(self.proc.pid), "--mount", "--", "mount",
                        *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def namespaced(chainmail_factory):
    if not (shutil.which("unshare") and shutil.which("nsenter")) or os.geteuid() != 0:
        pytest.skip("needs root with unshare and nsenter (util-linux) for a read-only mount")
    template = chainmail_factory("<ioWorkerCount>2</ioWorkerCount>",
                                 files={"webadmin.properties": properties()})
    template.stop()   # its files, started again in a mount namespace of its own
    proc = NamespacedProcess(template.conf, template.var)
    yield proc
    proc.stop()


def test_health_is_503_while_the_spool_is_read_only(namespaced):
    spool = str(namespaced.var / "spool")
    with httpx.Client(base_url=webadmin_url(namespaced), timeout=20) as client:
        healthy = client.get("/healthcheck")
        assert healthy.status_code == 200, healthy.text
        body = healthy.json()
        assert body["status"] == "healthy"
        names = {c["componentName"] for c in body["checks"]}
        assert {"Spool", "Stores", "Mailboxes",
                f"SMTP listener {_block_name(namespaced)} 127.0.0.1:{namespaced.port}"} <= names
        assert all(c["status"] == "healthy" and c["cause"] is None for c in body["checks"])

        namespaced.mount("--bind", spool, spool)
        namespaced.mount("-o", "remount,bind,ro", spool)
        sick = client.get("/healthcheck")
        assert sick.status_code == 503, sick.text
        assert sick.json()["status"] == "unhealthy"
        [spool_check] = [c for c in sick.json()["checks"] if c["componentName"] == "Spool"]
        assert spool_check["status"] == "unhealthy"
        assert "Read-only file system" in spool_check["cause"]
        assert all(c["status"] == "healthy" for c in sick.json()["checks"] if c is not spool_check
                   and c["componentName"] != "Spool")
        one = client.get("/healthcheck/checks/Spool")
        assert one.status_code == 503 and one.json()["escapedComponentName"] == "Spool"
        namespaced.mount("-o", "remount,bind,rw", spool)
        assert client.get("/healthcheck").status_code == 200


def _block_name(proc) -> str:
    return re.search(r"smtpserver '([^']+)' listening", proc.log).group(1)
