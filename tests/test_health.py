"""Health checks run in this process against real sockets, directories, a real SQLite file
and a real outgoing queue; James's JSON shape and status codes; the outgoing queue's
metrics (attempts, recipients by outcome, bounces, size and age at the scrape).

The read-only spool of a running server is tested in tests/integration/test_metrics.py."""

from __future__ import annotations

import os
import time

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from chainmail import health, metrics
from chainmail.mailet.api import ATTR_ARRIVAL
from chainmail.mailet.context import ATTR_QUEUE_ID
from chainmail.remote.config import RemoteDeliveryConfig
from chainmail.remote.delivery import Outcome
from chainmail.remote.dns import DnsService
from chainmail.remote.queue import OutgoingQueue
from chainmail.store.domains import DomainStore
from chainmail.store import holds as holds_module
from chainmail.store.holds import HoldList
from chainmail.store.spool import DirectorySpool

BODY = b"Subject: s\r\n\r\nbody\r\n"
QID1, QID2 = "0190a1b2c3d4-0000a1b2c3d4e5f6a7b8", "0190a1b2c3d5-0000a1b2c3d4e5f6a7b8"


async def greeter(nursery, greeting: bytes) -> int:
    """A TCP server on loopback that sends ``greeting`` to each client; its port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def serve(stream):
        async with stream:
            await stream.send_all(greeting)
            await stream.receive_some(100)

    nursery.start_soon(trio.serve_listeners, serve, listeners)
    return listeners[0].socket.getsockname()[1]


def closed_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listener(port: int, name: str = "mx") -> health.Listener:
    return health.Listener("smtp", name, "127.0.0.1", port)


async def test_listeners_healthy_degraded_unhealthy(nursery):
    good = await greeter(nursery, b"220-mx.test ESMTP\r\n220 ready\r\n")
    busy = await greeter(nursery, b"421 4.7.0 mx.test Too many connections\r\n")
    down = closed_port()
    checks = await health.run_checks(
        spool=None, database=None, mailboxes=None, queues={},
        listeners=[listener(good, "a"), listener(busy, "b"), listener(down, "c")])
    by_name = {c.name: c for c in checks}
    assert by_name[f"SMTP listener a 127.0.0.1:{good}"] == health.Check(
        f"SMTP listener a 127.0.0.1:{good}", "healthy")
    busy_check = by_name[f"SMTP listener b 127.0.0.1:{busy}"]
    assert busy_check.status == "degraded" and busy_check.healthy
    assert "421 4.7.0" in busy_check.cause
    down_check = by_name[f"SMTP listener c 127.0.0.1:{down}"]
    assert down_check.status == "unhealthy" and not down_check.healthy
    assert "no greeting" in down_check.cause


async def test_a_listener_that_never_greets_times_out(nursery):
    silent = await greeter(nursery, b"")
    [check] = await health.run_checks(listeners=[listener(silent)], queues={}, timeout=0.3)
    assert check.status == "unhealthy" and check.cause == "no answer within 0.3 s"


async def test_state_directory_checks(tmp_path):
    var = tmp_path / "var"
    DirectorySpool(var / "spool")
    DomainStore(str(var / "chainmail.db")).close()
    checks = await health.run_checks(var=str(var), listeners=[], queues={})
    assert [(c.name, c.status) for c in checks] == [
        ("Spool", "healthy"), ("Mailboxes", "healthy"), ("Stores", "healthy")]
    assert os.listdir(var / "spool" / "tmp") == []   # the probe file is gone again

    # A directory that cannot take a file (root too: it is not a directory any more).
    os.rmdir(var / "spool" / "tmp")
    (var / "spool" / "tmp").write_text("not a directory")
    os.unlink(var / "chainmail.db")
    checks = {c.name: c for c in await health.run_checks(var=str(var), listeners=[], queues={})}
    assert checks["Spool"].status == "unhealthy"
    assert "cannot write a file in" in checks["Spool"].cause
    assert checks["Stores"].status == "unhealthy" and "does not exist" in checks["Stores"].cause
    assert checks["Mailboxes"].status == "healthy"


def make_queue(tmp_path, deliver_fn=None, bounced=None) -> OutgoingQueue:
    async def bounce(b):
        if bounced is None:
            raise AssertionError("no bounce expected")
        bounced.append(b)

    kwargs = {"deliver_fn": deliver_fn} if deliver_fn else {}
    return OutgoingQueue(DirectorySpool(tmp_path / "outgoing"),
                         RemoteDeliveryConfig.from_params({"delayTime": "10s", "maxRetries": "3"}),
                         DnsService(nameservers=[("127.0.0.1", 9)]), bounce=bounce,
                         holds=HoldList(tmp_path), **kwargs)


async def test_outgoing_queue_age(tmp_path, monkeypatch):
    monkeypatch.setattr(holds_module, "RECHECK", 0.0)   # the queue sees a new hold at once
    q = make_queue(tmp_path)
    only = {"outgoing": q}
    [check] = await health.run_checks(listeners=[], queues=only)
    assert check == health.Check("Outgoing queue outgoing", "healthy")   # empty
    await q.enqueue("a@local.test", ["x@example.test"], BODY,
                    attributes={ATTR_ARRIVAL: time.time() - 600, ATTR_QUEUE_ID: QID1})
    [check] = await health.run_checks(listeners=[], queues=only, max_queue_age=900)
    assert check.status == "healthy"
    [check] = await health.run_checks(listeners=[], queues=only, max_queue_age=300)
    assert check.status == "unhealthy"
    assert "the oldest of 1 mail(s) has waited 60" in check.cause and "bound 300 s" in check.cause
    # by default: the retry schedule (3 x 10 s) and an hour
    [check] = await health.run_checks(listeners=[], queues=only)
    assert check.status == "healthy"
    await q.enqueue("a@local.test", ["x@example.test"], BODY,
                    attributes={ATTR_ARRIVAL: time.time() - 3631, ATTR_QUEUE_ID: QID2})
    [check] = await health.run_checks(listeners=[], queues=only)
    assert check.status == "unhealthy" and "bound 3630 s" in check.cause
    # held mail waits on purpose: it does not count
    assert HoldList(tmp_path).hold(QID2)
    [check] = await health.run_checks(listeners=[], queues=only)
    assert check.status == "healthy"


def test_james_json_and_status_codes():
    ok = health.Check("SMTP listener mx 127.0.0.1:25", "healthy")
    slow = health.Check("Outgoing queue outgoing", "degraded", "slow")
    sick = health.Check("Spool", "unhealthy", "cannot write")
    assert health.check_json(ok) == {
        "componentName": "SMTP listener mx 127.0.0.1:25",
        "escapedComponentName": "SMTP%20listener%20mx%20127.0.0.1%3A25",
        "status": "healthy", "cause": None}
    assert health.report([ok, slow]) == {"status": "degraded",
                                         "checks": [health.check_json(ok), health.check_json(slow)]}
    assert health.report([])["status"] == "healthy"
    assert health.http_status([ok, slow]) == 200
    assert health.http_status([ok, slow], strict=True) == 503
    assert health.http_status([ok, sick]) == 503


async def test_healthcheck_selects_and_refuses_unknown_names(tmp_path):
    var = tmp_path / "var"
    DirectorySpool(var / "spool")
    code, body = await health.healthcheck(["Spool"], var=str(var), listeners=[], queues={})
    assert code == 200 and [c["componentName"] for c in body["checks"]] == ["Spool"]
    code, body = await health.healthcheck(["Spool", "Nothing"], var=str(var), listeners=[],
                                          queues={})
    assert code == 404 and body == {"statusCode": 404, "type": "notFound",
                                    "message": "Component with name Nothing cannot be found",
                                    "details": None}
    assert health.component_names(var=str(var), listeners=[], queues={}) == [
        "Spool", "Mailboxes", "Stores"]


def scrape() -> dict:
    out = {}
    for family in text_string_to_metric_families(metrics.render_prometheus()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def get(sample: dict, name: str, **labels) -> float:
    return sample.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_queue_metrics_count_attempts_outcomes_and_bounces(tmp_path):
    outcomes = iter([
        Outcome(delivered=["a@example.test"], pending=["b@example.test"],
                failed={"c@example.test": "550 no"}, message="mixed"),
        Outcome(delivered=["b@example.test"]),
    ])

    async def deliver(sender, recipients, content, **kwargs):
        return next(outcomes)

    bounced: list = []
    q = make_queue(tmp_path, deliver, bounced)
    before = scrape()
    await q.enqueue("s@local.test", ["a@example.test", "b@example.test", "c@example.test"], BODY)
    assert await q.run_once() == 1
    assert await q.run_once(time.time() + 60) == 1
    after = scrape()

    def moved(name, **labels):
        return get(after, name, **labels) - get(before, name, **labels)

    assert moved("chainmail_delivery_attempts_total") == 2
    assert moved("chainmail_delivery_recipients_total", outcome="delivered") == 2
    assert moved("chainmail_delivery_recipients_total", outcome="deferred") == 1
    assert moved("chainmail_delivery_recipients_total", outcome="bounced") == 1
    assert moved("chainmail_bounces_total") == 1 and len(bounced) == 1


async def test_running_queue_is_measured_at_the_scrape(tmp_path):
    q = make_queue(tmp_path)
    await q.enqueue("s@local.test", ["a@example.test"], BODY,
                    attributes={ATTR_ARRIVAL: time.time() - 100, "next_attempt": time.time() + 600})
    async with trio.open_nursery() as nursery:
        await nursery.start(q.run)
        sample = await trio.to_thread.run_sync(scrape)
        assert get(sample, "chainmail_outgoing_queue_messages", queue="outgoing") == 1
        assert 100 <= get(sample, "chainmail_outgoing_queue_oldest_age_seconds",
                          queue="outgoing") < 200
        assert [c.name for c in await health.run_checks(listeners=[])
                if c.name.startswith("Outgoing")] == ["Outgoing queue outgoing"]
        nursery.cancel_scope.cancel()
    assert ("chainmail_outgoing_queue_messages", (("queue", "outgoing"),)) not in scrape()


def test_named_counters_are_summed_from_a_metrics_directory(tmp_path):
    """What a scrape does in multiprocess mode: a process enables it, forks two that count
    (as ``chainmail run`` forks its workers); the files they leave are summed."""
    import subprocess
    import sys
    directory = tmp_path / "run" / "metrics"
    script = """if True:
        import os, sys
        from chainmail import metrics
        metrics.enable_multiprocess(sys.argv[1])
        for n in (2, 5):
            pid = os.fork()
            if pid == 0:
                metrics.counter("bounces").add(n)
                metrics.command("EHLO")
                metrics.flush_counts()
                os._exit(0)
            os.waitpid(pid, 0)
    """
    script += """
        assert len([n for n in os.listdir(sys.argv[1]) if n.startswith("counter_")]) >= 2
        sys.stdout.write(metrics.render_prometheus())
    """
    text = subprocess.run([sys.executable, "-c", script, str(directory)], check=True,
                          timeout=60, capture_output=True, text=True).stdout
    assert "# TYPE bounces counter\nbounces 7\n" in text
    assert 'chainmail_commands_total{verb="EHLO"} 2.0' in text
    # the values live in shared memory for the run, and go with it
    import os
    assert not os.path.lexists(directory)


def test_mailet_processing_time_per_processor_and_mailet(mailet_harness):
    before = scrape()
    mailet_harness.process(
        '<processor state="root"><mailet match="All" class="AddDeliveredToHeader"/>'
        '<mailet match="All" class="ToProcessor"><processor>transport</processor></mailet>'
        '</processor><processor state="transport"><mailet match="All" class="Null"/></processor>',
        mailet_harness.mail())
    after = scrape()
    for processor, mailet in (("root", "AddDeliveredToHeader"), ("root", "ToProcessor"),
                              ("transport", "Null")):
        key = {"processor": processor, "mailet": mailet}
        assert get(after, "chainmail_mailet_processing_seconds_count", **key) - \
            get(before, "chainmail_mailet_processing_seconds_count", **key) == 1
        assert get(after, "chainmail_mailet_processing_seconds_sum", **key) >= \
            get(before, "chainmail_mailet_processing_seconds_sum", **key)
