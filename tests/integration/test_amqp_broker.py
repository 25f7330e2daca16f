"""The RabbitMQ groundwork of the shared spool on a real broker (the Debian package's
rabbitmq-server, started here as the test's own node on loopback): confirmed publishes,
manual acks with redelivery after a consumer dies, delayed redelivery through TTL queues,
quorum queues surviving a restart, and a publish that fails when the broker is gone.

The broker is the session's (``rabbitmq_broker`` in tests/conftest.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
import trio

from chainmail.config.errors import ConfigError
from chainmail.store.amqp.broker import Broker, PublishError, delay_queue
from chainmail.store.amqp.config import RabbitMQConfig, load_rabbitmq, parse_rabbitmq
from chainmail.testing.rabbitmq import RabbitMQ
from tests.conftest import ROOT


@pytest.fixture
def rabbitmq(rabbitmq_broker) -> RabbitMQ:
    return rabbitmq_broker


@pytest.fixture
def own_rabbitmq(rabbitmq_broker) -> Iterator[RabbitMQ]:
    """The node, for a test that stops or restarts it: running again afterwards."""
    yield rabbitmq_broker
    if rabbitmq_broker.proc is None or rabbitmq_broker.proc.poll() is not None:
        rabbitmq_broker.start()


# --- rabbitmq.properties ----------------------------------------------------------------

def test_properties_absent_means_none(tmp_path):
    assert load_rabbitmq(tmp_path) is None


def test_properties_james_sample(tmp_path):
    (tmp_path / "rabbitmq.properties").write_text(textwrap.dedent("""\
        # RabbitMQ configuration
        uri=amqp://james:secret@rabbitmq:5672/mail
        hosts=ip1:5672,ip2:5673
        management.uri=http://rabbitmq:15672
        management.user=guest
        management.password=guest
        quorum.queues.replication.factor=3
        mailqueue.view.sliceWindow=1h
        task.consumption.enabled=true
        notification.queue.ttl=3600000
        """))
    config = load_rabbitmq(tmp_path)
    assert config is not None and not config.warnings
    assert config.quorum_queues and config.replication_factor == 3
    assert config.describe() == "amqp://james@rabbitmq:5672/mail"
    assert config.endpoints() == ["amqp://james:secret@rabbitmq:5672/mail",
                                  "amqp://james:secret@ip1:5672/mail",
                                  "amqp://james:secret@ip2:5673/mail"]
    assert config.management_uri == "http://rabbitmq:15672"
    assert config.ssl_context() is None


@pytest.mark.parametrize("text, line, key, expected", [
    ("management.user=guest\n", None, "uri", "required"),
    ("\nuri=http://rabbitmq:5672\n", 2, "uri", "expected amqp://"),
    ("uri=amqp://h\nhosts=a:1,b:x\n", 2, "hosts", "'b:x'"),
    ("uri=amqp://h\n# c\nquorum.queues.enable=yes\n", 3, "quorum.queues.enable",
     "expected true or false"),
    ("uri=amqp://h\nquorum.queues.replication.factor=0\n", 2,
     "quorum.queues.replication.factor", "at least 1"),
    ("uri=amqp://h\nssl.validation.strategy=override\n", 2, "ssl.validation.strategy",
     "needs ssl.truststore"),
    ("uri=amqp://h\nssl.truststore=missing.pem\n", 2, "ssl.truststore", "no such file"),
    ("uri=amqp://h\nmanagement.uri=rabbitmq:15672\n", 2, "management.uri", "http://"),
    ("uri=amqp://h\npublish.confirm.timeout=soon\n", 2, "publish.confirm.timeout",
     "not a duration"),
])
def test_properties_errors_name_file_line_key(tmp_path, text, line, key, expected):
    (tmp_path / "rabbitmq.properties").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_rabbitmq(tmp_path)
    err = caught.value
    assert (err.file, err.line, err.element) == (str(tmp_path / "rabbitmq.properties"), line, key)
    assert expected in err.message
    assert str(err).startswith(f"{tmp_path / 'rabbitmq.properties'}:")


def test_properties_unknown_key_warns_and_tls(tmp_path):
    import trustme
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    config = parse_rabbitmq("uri=amqps://h\nssl.validation.strategy=override\n"
                            "ssl.truststore=ca.pem\nqueue.name=x\n", "r.properties",
                            str(tmp_path))
    assert [(w.line, w.element) for w in config.warnings] == [(4, "queue.name")]
    assert config.tls and config.ssl_truststore == str(tmp_path / "ca.pem")
    context = config.ssl_context()
    assert context is not None and context.check_hostname
    assert len(context.get_ca_certs()) == 1


# --- the broker -------------------------------------------------------------------------

async def _next(consumer, timeout: float = 15):
    with trio.fail_after(timeout):
        return await consumer.__anext__()


async def _empty(broker: Broker, queue: str, wait: float = 0.5) -> bool:
    """Nothing arrives in ``queue`` within ``wait`` seconds."""
    async with broker.consume(queue, prefetch=1) as consumer:
        with trio.move_on_after(wait):
            delivery = await consumer.__anext__()
            await delivery.nack(requeue=True)
            return False
    return True


async def test_publish_confirm_consume_ack(rabbitmq):
    async with Broker.connect(rabbitmq.config()) as broker:
        await broker.publish("spool.roundtrip", b"From: a\r\n\r\nhello\r\n",
                             {"mail-from": "a@example.org", "rcpt": ["b@example.org"]},
                             priority=5)
        listed = rabbitmq.ctl("list_queues", "name", "type", "durable")
        assert "spool.roundtrip\tquorum\ttrue" in listed.stdout
        async with broker.consume("spool.roundtrip", prefetch=4) as consumer:
            delivery = await _next(consumer)
            assert delivery.body == b"From: a\r\n\r\nhello\r\n"
            assert delivery.headers["mail-from"] == "a@example.org"
            assert list(delivery.headers["rcpt"]) == ["b@example.org"]
            assert not delivery.redelivered
            await delivery.ack()
        assert await _empty(broker, "spool.roundtrip")


CONSUMER = """
import sys, trio
from chainmail.store.amqp.broker import Broker
from chainmail.store.amqp.config import RabbitMQConfig

async def main():
    async with Broker.connect(RabbitMQConfig(uri=sys.argv[1])) as broker:
        async for delivery in broker.consume(sys.argv[2], prefetch=1):
            print("got", delivery.body.decode(), flush=True)
            await trio.sleep_forever()

trio.run(main)
"""


async def test_unacked_delivery_returns_when_consumer_dies(rabbitmq, tmp_path):
    queue = "spool.atleastonce"
    async with Broker.connect(rabbitmq.config()) as broker:
        await broker.publish(queue, b"mail 1", {})
        # a consumer in a process of its own takes the message, then dies without acking
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", CONSUMER, rabbitmq.uri, queue],
            stdout=subprocess.PIPE, cwd=ROOT)
        try:
            with trio.fail_after(30):
                got = b""
                while b"\n" not in got:
                    chunk = await proc.stdout.receive_some()
                    assert chunk, "the consumer process ended"
                    got += chunk
            assert got == b"got mail 1\n"
            assert await _empty(broker, queue), "held by the other consumer"
        finally:
            proc.kill()
            await proc.wait()
        async with broker.consume(queue, prefetch=1) as consumer:
            delivery = await _next(consumer)
            assert (delivery.body, delivery.redelivered) == (b"mail 1", True)
            await delivery.nack(requeue=True)      # nack with requeue: back again
            delivery = await _next(consumer)
            assert delivery.body == b"mail 1"
            await delivery.ack()
        assert await _empty(broker, queue)


async def test_delayed_publish_arrives_after_the_delay(rabbitmq):
    queue = "outgoing.delayed"
    async with Broker.connect(rabbitmq.config()) as broker:
        async with broker.consume(queue, prefetch=1) as consumer:
            sent = trio.current_time()
            await broker.publish_delayed(queue, b"retry me", {"attempt": 2}, delay_s=2.0)
            await broker.publish(queue, b"now", {})
            first = await _next(consumer)
            assert first.body == b"now" and trio.current_time() - sent < 1.5
            await first.ack()
            delivery = await _next(consumer, timeout=15)
            waited = trio.current_time() - sent
            assert delivery.body == b"retry me" and delivery.headers["attempt"] == 2
            assert waited >= 2.0, f"delivered after {waited:.2f} s, before the 2 s delay"
            await delivery.ack()
        listed = rabbitmq.ctl("list_queues", "name", "type", "durable").stdout
        assert f"{delay_queue(queue, 2000)}\tquorum\ttrue" in listed


async def test_quorum_queue_keeps_confirmed_message_across_restart(own_rabbitmq):
    queue = "spool.durable"
    async with Broker.connect(own_rabbitmq.config()) as broker:
        await broker.publish(queue, b"survivor", {"id": "q1"})
    await trio.to_thread.run_sync(own_rabbitmq.stop)
    await trio.to_thread.run_sync(own_rabbitmq.start)
    async with Broker.connect(own_rabbitmq.config()) as broker:
        async with broker.consume(queue, prefetch=1) as consumer:
            delivery = await _next(consumer, timeout=30)
            assert (delivery.body, delivery.headers["id"]) == (b"survivor", "q1")
            await delivery.ack()


async def test_publish_raises_when_the_broker_is_stopped(own_rabbitmq):
    async with Broker.connect(own_rabbitmq.config(confirm_timeout=5.0)) as broker:
        await broker.publish("spool.gone", b"before", {})
        await trio.to_thread.run_sync(own_rabbitmq.stop)
        with trio.fail_after(20):
            with pytest.raises(PublishError):
                await broker.publish("spool.gone", b"after", {})


async def test_publish_raises_when_the_queue_is_gone(rabbitmq):
    # deleted behind the connection's back: the broker returns the message unroutable
    async with Broker.connect(rabbitmq.config()) as broker:
        await broker.publish("spool.deleted", b"one", {})
        deleted = rabbitmq.ctl("delete_queue", "spool.deleted")
        assert deleted.returncode == 0, deleted.stderr
        with trio.fail_after(20):
            with pytest.raises(PublishError, match="spool.deleted"):
                await broker.publish("spool.deleted", b"two", {})


async def test_publish_raises_when_no_confirm_comes_in_time(own_rabbitmq):
    # the broker is frozen: the message is sent, no confirm comes back
    async with Broker.connect(own_rabbitmq.config(confirm_timeout=2.0)) as broker:
        await broker.publish("spool.frozen", b"before", {})
        os.killpg(own_rabbitmq.proc.pid, signal.SIGSTOP)
        try:
            started = trio.current_time()
            with trio.fail_after(20):
                with pytest.raises(PublishError, match="spool.frozen"):
                    await broker.publish("spool.frozen", b"after", {})
            assert trio.current_time() - started >= 1.9
        finally:
            os.killpg(own_rabbitmq.proc.pid, signal.SIGCONT)
