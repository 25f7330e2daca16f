"""The spool on RabbitMQ end to end: ``chainmail run`` with ``conf/rabbitmq.properties``
against a real broker (the Debian package's, started by the test on loopback).

SMTP's 250 comes only after the broker's confirm, a broker that is gone gets 451 4.3.0 and
nothing is kept, the container consumes and acknowledges after processing, and both sides
recover by themselves when the broker comes back."""

from __future__ import annotations

import re
import smtplib

import pytest

from chainmail.mailet.repository import RepositoryStore
from tests.conftest import wait_for, wait_for_log
from chainmail.testing.rabbitmq import RabbitMQ

MESSAGE = b"From: a@remote.example\r\nSubject: %d\r\n\r\nbody %d\r\n"


@pytest.fixture
def broker(rabbitmq_broker) -> RabbitMQ:
    return rabbitmq_broker


def container(repository: str = "file://var/mail/out/", threads: int = 4, *,
              on_exception: str = "error", root: str | None = None) -> str:
    """Every mail stored in ``repository`` (or the ``root`` processor's mailets given)."""
    if root is None:
        root = (f'<mailet match="All" class="ToRepository" onMailetException="{on_exception}">'
                f"<repositoryPath>{repository}</repositoryPath></mailet>")
    return f"""<mailetcontainer>
  <context><postmaster>postmaster@local.test</postmaster></context>
  <spooler><threads>{threads}</threads></spooler>
  <processors>
    <processor state="root">
      {root}
    </processor>
    <processor state="error">
      <mailet match="All" class="ToRepository"><repositoryPath>file://var/mail/error/</repositoryPath></mailet>
    </processor>
  </processors>
</mailetcontainer>
"""


def properties(broker: RabbitMQ, queue_prefix: str = "") -> str:
    return f"uri={broker.uri}\npublish.confirm.timeout=5s\n"


def stored(node, repository: str = "file://var/mail/out/") -> list[str]:
    repo = RepositoryStore(str(node.var)).get(repository)
    subjects = []
    for key in repo.keys():
        head = repo.retrieve(key).content.split(b"\r\n\r\n")[0].decode()
        fields = [line[9:] for line in head.split("\r\n") if line.startswith("Subject: ")]
        subjects.append(fields[0] if fields else "(no subject)")
    return sorted(subjects)


def queued(broker: RabbitMQ, queue: str = "spool") -> int | None:
    """The broker's count of messages in ``queue``, ready or held by a consumer (the
    broker updates it every few seconds)."""
    for line in broker.ctl("list_queues", "name", "messages").stdout.splitlines():
        name, _, count = line.partition("\t")
        if name == queue and count.isdigit():
            return int(count)
    return None


def send(node, n: int, start: int = 0) -> list[str]:
    ids = []
    with node.smtp() as s:
        for i in range(start, start + n):
            code, reply = s.sendmail("a@remote.example", ["u@local.test"], MESSAGE % (i, i)), None
            assert code == {}
            ids.append(str(i))
    return ids


@pytest.fixture
def purge(broker):
    """Each test starts with an empty spool queue."""
    broker.ctl("purge_queue", "spool")
    yield
    broker.ctl("purge_queue", "spool")


def test_mail_goes_through_the_broker_to_the_container(broker, purge, chainmail_factory):
    node = chainmail_factory(files={"mailetcontainer.xml": container(),
                                    "rabbitmq.properties": properties(broker)})
    wait_for_log(node, r"spool worker\(s\) on queue 'spool'", 20)
    sent = send(node, 5)
    wait_for(lambda: stored(node) == sorted(sent), 20, "the five mails processed")
    assert node.queued() == []   # nothing in the embedded spool
    wait_for(lambda: queued(broker) == 0, 20, "an empty queue: every delivery acknowledged")


def test_a_broker_that_is_gone_gets_451_and_nothing_is_kept(broker, purge, chainmail_factory):
    node = chainmail_factory(files={"mailetcontainer.xml": container(),
                                    "rabbitmq.properties": properties(broker)})
    wait_for_log(node, r"spool worker\(s\) on queue 'spool'", 20)
    send(node, 1, start=100)
    wait_for(lambda: stored(node) == ["100"], 20, "the first mail processed")
    broker.stop()
    try:
        wait_for_log(node, r"RabbitMQ connection lost", 20)
        with node.smtp() as s:
            s.ehlo()
            s.mail("a@remote.example")
            s.rcpt("u@local.test")
            code, reply = s.data(MESSAGE % (101, 101))
        assert (code, reply) == (451, b"4.3.0 Mail queue unavailable, try again later")
    finally:
        broker.start()
    wait_for_log(node, r"RabbitMQ is back", 30)
    wait_for(lambda: _accepts(node, 102), 20, "mail accepted again")
    wait_for(lambda: stored(node) == ["100", "102"], 30, "the container consuming again")


def _accepts(node, i: int) -> bool:
    try:
        send(node, 1, start=i)
    except smtplib.SMTPDataError:
        return False
    return True


def relay_container(port: int, delay: str = "1 s") -> str:
    return container(threads=2, root=f"""<mailet match="All" class="RemoteDelivery">
        <outgoing>outgoing</outgoing>
        <gateway>127.0.0.1</gateway>
        <gatewayPort>{port}</gatewayPort>
        <delayTime>{delay}</delayTime>
        <maxRetries>10</maxRetries>
      </mailet>""")


def test_outgoing_queue_on_the_broker_retries_through_a_delay_queue(broker, chainmail_factory):
    from tests.integration.test_cluster import _free_port
    port = _free_port()
    sender = chainmail_factory(files={"mailetcontainer.xml": relay_container(port),
                                      "rabbitmq.properties": properties(broker)})
    wait_for_log(sender, r"outgoing queue outgoing on queue 'outgoing.outgoing'", 20)
    with sender.smtp() as s:
        assert s.sendmail("a@local.test", ["x@far.example"], MESSAGE % (7, 7)) == {}
    wait_for_log(sender, r"retry 1 of 10", 20)
    assert sender.queued() == []   # nothing kept in var/
    # the next hop comes up: a later retry, taken from a delay queue, delivers
    receiver = chainmail_factory(bind=f"127.0.0.1:{port}",
                                 files={"mailetcontainer.xml": container()})
    wait_for(lambda: stored(receiver) == ["7"], 30, "the retried mail at the next hop")
    wait_for_log(sender, r"delivered to x@far\.example", 10)
    wait_for(lambda: queued(broker, "outgoing.outgoing") == 0, 20, "an empty outgoing queue")


def test_mail_in_the_embedded_spool_moves_to_the_broker_at_start(broker, purge,
                                                                chainmail_factory):
    from tests.conftest import ChainmailProcess
    embedded = chainmail_factory(files={"mailetcontainer.xml": container(threads=0)})
    send(embedded, 3, start=200)
    assert len(embedded.queued()) == 3
    embedded.stop()
    conf = embedded.conf
    (conf / "rabbitmq.properties").write_text(properties(broker))
    (conf / "mailetcontainer.xml").write_text(container())
    node = ChainmailProcess(conf, embedded.var)
    try:
        wait_for(lambda: stored(node) == ["200", "201", "202"], 30,
                 "the moved mail processed from the broker")
        assert node.queued() == []
        assert "moved 3 queued message(s)" in node.log
    finally:
        node.stop()


def test_a_flush_moves_waiting_retries_into_the_queue(broker, chainmail_factory):
    import subprocess

    from tests.conftest import CHAINMAIL
    from tests.integration.test_cluster import _free_port
    port = _free_port()   # nothing listens: every attempt fails
    sender = chainmail_factory(files={"mailetcontainer.xml": relay_container(port, "1 h"),
                                      "rabbitmq.properties": properties(broker)})
    wait_for_log(sender, r"outgoing queue outgoing on queue 'outgoing.outgoing'", 20)
    with sender.smtp() as s:
        assert s.sendmail("a@local.test", ["x@far.example"], MESSAGE % (8, 8)) == {}
    wait_for_log(sender, r"retry 1 of 10 in 3600 s", 20)

    def queue(*args: str) -> str:
        done = subprocess.run([*CHAINMAIL, "queue", *args, "--conf", str(sender.conf),
                               "--var", str(sender.var)], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout
    listed = queue("list")
    assert "outgoing queue outgoing (queue 'outgoing.outgoing' on amqp://" in listed
    [row] = [line for line in listed.splitlines() if "<x@far.example>" in line]
    assert re.search(r"\s+in \S+\s+1\s+<a@local\.test>", row), row   # NEXT: later; TRIES: 1
    assert "1 message(s) waiting in outgoing queue outgoing" in listed
    assert "flush requested for 1 message(s)" in queue("flush")
    wait_for_log(sender, r"retry 2 of 10", 20)   # tried again at once


async def test_classic_queues_carry_the_priority_and_quorum_queues_do_not(broker, tmp_path):
    import trio
    import trio_asyncio

    from chainmail.store.amqp.spool import BrokerSpool
    from chainmail.store.spool import Envelope

    def priority(envelope) -> int:
        return int(envelope.attributes["p"])

    # published low then high: a classic queue hands the high one out first
    for quorum, queue, expected in ((False, "prio.classic", [9, 1]),
                                    (True, "prio.quorum", [0, 0])):
        spool = BrokerSpool(broker.config(quorum_queues=quorum), tmp_path / queue, queue=queue,
                            priority_of=priority)
        # one asyncio loop for every task of the process, as the server opens it
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
            await nursery.start(spool.run)
            for p in (1, 9):
                writer = spool.open_writer()
                writer.write(b"Subject: p\r\n\r\nbody\r\n")
                await writer.commit(Envelope(sender="a@x.test", recipients=["b@y.test"],
                                             attributes={"p": p}))
            seen = []
            async with spool.consume(prefetch=4) as consumer:
                for _ in range(2):
                    delivery = await consumer.__anext__()
                    seen.append(delivery.priority)
                    await delivery.ack()
            nursery.cancel_scope.cancel()
        assert seen == expected, (queue, seen)
