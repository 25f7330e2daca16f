"""The RemoteDelivery mailet: queueing (split by domain, gateways, priority), its delivery
loop as a container service, and what outcomes become (bounces, bounceProcessor, onSuccess,
relayed notices).  Deliveries are replaced by scripted outcomes: no sockets."""

from __future__ import annotations

import email
import email.policy

import pytest
import trio

from chainmail.config.errors import ConfigError
from chainmail.mailet.api import GHOST
from chainmail.remote.delivery import Outcome
from chainmail.remote.queue import ATTR_NAME

from .helpers import build, container_xml, mail

NO_DNS = ("<dnsservice><servers><server>127.0.0.1:9</server></servers>"
          "<autodiscover>false</autodiscover></dnsservice>")

BOUNCES = ('<processor state="bounces"><mailet match="All" class="DSNBounce">'
           '<passThrough>false</passThrough></mailet></processor>')
SUCCESS = '<processor state="sent"><mailet match="All" class="Null"/></processor>'


@pytest.fixture
def rd_context(stores, tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "dnsservice.xml").write_text(NO_DNS)
    return stores.context(conf_dir=str(conf), var_dir=str(stores.var))


def remote_delivery(context, params: str = "", extra: str = ""):
    xml = container_xml(f'<processor state="root"><mailet match="All" class="RemoteDelivery">'
                        f'{params}</mailet></processor>{BOUNCES}{SUCCESS}{extra}')
    engine = build(xml, context)
    [mailet] = engine.services()
    return engine, mailet


def entries(mailet):
    return sorted(mailet.queue.spool.list(), key=lambda e: e.envelope.attributes[ATTR_NAME])


def scripted(outcome: Outcome):
    calls = []

    async def fake_deliver(sender, recipients, content, **kw):
        calls.append((sender, list(recipients), kw))
        return outcome
    return fake_deliver, calls


def spooled(stores):
    return [(e, stores.spool.open_body(e.id).read()) for e in stores.spool.list()]


async def test_split_by_domain_then_ghost(rd_context, stores):
    engine, rd = remote_delivery(rd_context)
    m = mail(["a@one.test", "b@two.test", "c@one.test"], name="m1",
             mail_params={"ENVID": "e1"}, rcpt_params={"b@two.test": {"NOTIFY": "SUCCESS"}})
    result = await engine.service(m)
    assert [x.state for x in result.finished] == [GHOST] and result.outputs == []
    got = [(e.envelope.attributes[ATTR_NAME], e.envelope.recipients) for e in entries(rd)]
    assert got == [("m1-to-one.test", ["a@one.test", "c@one.test"]),
                   ("m1-to-two.test", ["b@two.test"])]
    two = entries(rd)[1].envelope
    assert two.mail_params == {"ENVID": "e1"} and two.rcpt_params == [{"NOTIFY": "SUCCESS"}]
    assert rd.root == str(stores.var / "outgoing" / "outgoing")


async def test_gateway_keeps_the_mail_whole(rd_context):
    engine, rd = remote_delivery(rd_context, "<gateway>127.0.0.1:2525</gateway>")
    await engine.service(mail(["a@one.test", "b@two.test"], name="m2"))
    [entry] = entries(rd)
    assert entry.envelope.recipients == ["a@one.test", "b@two.test"]
    assert entry.envelope.attributes[ATTR_NAME] == "m2"


@pytest.mark.parametrize("use_priority, kept", [("false", False), ("true", True)])
async def test_mail_priority_dropped_unless_use_priority(rd_context, use_priority, kept):
    engine, rd = remote_delivery(rd_context, f"<usePriority>{use_priority}</usePriority>")
    await engine.service(mail(["a@one.test"], attributes={"MAIL_PRIORITY": 8}))
    [entry] = entries(rd)
    assert ("MAIL_PRIORITY" in entry.envelope.attributes) is kept


def test_configuration_creates_nothing_and_checks_processors(rd_context, stores):
    remote_delivery(rd_context, "<bounceProcessor>bounces</bounceProcessor>")
    assert not (stores.var / "outgoing").exists()     # check-config must not create queues
    with pytest.raises(ConfigError, match="bounceProcessor.*no processor named 'nowhere'"):
        remote_delivery(rd_context.__class__(conf_dir=rd_context.conf_dir,
                                             var_dir=rd_context.var_dir),
                        "<bounceProcessor>nowhere</bounceProcessor>")


def test_two_mailets_cannot_share_a_queue(rd_context):
    xml = container_xml('<processor state="root">'
                        '<mailet match="All" class="RemoteDelivery"/>\n'
                        '<mailet match="All" class="RemoteDelivery"/></processor>')
    with pytest.raises(ConfigError, match=r"outgoing: queue 'outgoing' is already used by the "
                                          r"RemoteDelivery at mailetcontainer.xml:1"):
        build(xml, rd_context)


async def test_permanent_failure_bounces_an_rfc3464_report(rd_context, stores):
    engine, rd = remote_delivery(rd_context)
    await engine.service(mail(["x@one.test", "y@one.test"], name="m3"))
    reply = "550 5.1.1 <x@one.test>: no such user"
    rd.queue.deliver_fn, _ = scripted(Outcome(delivered=["y@one.test"], failed={"x@one.test": reply},
                                              message=reply, code=550, remote_mta="mx.one.test"))
    assert await rd.queue.run_once() == 1
    assert rd.queue.spool.list() == []
    [(entry, body)] = spooled(stores)
    assert entry.envelope.sender == "" and entry.envelope.recipients == ["alice@remote.example"]
    report = email.message_from_bytes(body, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    status = report.get_payload()[1]
    assert status.get_content_type() == "message/delivery-status"
    fields = status.get_payload()[1]
    assert fields["Final-Recipient"] == "rfc822; x@one.test"
    assert fields["Action"] == "failed" and fields["Status"] == "5.1.1"
    assert fields["Remote-MTA"] == "dns; mx.one.test"
    assert fields["Diagnostic-Code"] == f"smtp; {reply}"


async def test_bounce_processor_gets_the_mail_with_james_attributes(rd_context, stores):
    engine, rd = remote_delivery(rd_context, "<bounceProcessor>bounces</bounceProcessor>")
    await engine.service(mail(["x@one.test"], name="m4"))
    reply = "421 4.3.2 try later"
    rd.queue.deliver_fn, calls = scripted(Outcome(pending=["x@one.test"], message=reply, code=421,
                                                  remote_mta="mx.one.test"))
    # maxRetries defaults to 5: make this the last attempt
    [entry] = entries(rd)
    await rd.queue.spool.aremove(entry.id)
    await rd.queue.enqueue(entry.envelope.sender, entry.envelope.recipients, b"Subject: s\r\n\r\nb\r\n",
                           name="m4-to-one.test", retry_count=5)
    assert await rd.queue.run_once() == 1
    [(spooled_entry, _)] = spooled(stores)
    env = spooled_entry.envelope
    assert env.state == "bounces" and env.recipients == ["x@one.test"]
    attrs = env.attributes
    assert attrs["delivery-error"] == reply and attrs["delivery-error-code"] == 421
    assert attrs["is-delivery-permanent-error"] is False
    assert attrs["chainmail.delivery-errors"]["x@one.test"].startswith(
        "Too many retries failure. Bouncing after 5 retries.")
    assert attrs["sent_by_mailet"] is True


async def test_on_success_copy_and_relayed_notice(rd_context, stores):
    engine, rd = remote_delivery(rd_context, "<onSuccess>sent</onSuccess>")
    await engine.service(mail(["x@one.test"], name="m5",
                              rcpt_params={"x@one.test": {"NOTIFY": "SUCCESS,FAILURE"}}))
    outcome = Outcome(delivered=["x@one.test"], remote_mta="mx.one.test")
    outcome.relayed = ["x@one.test"]
    rd.queue.deliver_fn, _ = scripted(outcome)
    await rd.queue.run_once()
    got = sorted((e.envelope.state, e.envelope.sender, tuple(e.envelope.recipients), body)
                 for e, body in spooled(stores))
    assert [g[:3] for g in got] == [("root", "", ("alice@remote.example",)),
                                    ("sent", "alice@remote.example", ("x@one.test",))]
    report = email.message_from_bytes(got[0][3], policy=email.policy.default)
    fields = report.get_payload()[1].get_payload()[1]
    assert fields["Action"] == "relayed" and fields["Status"] == "2.0.0"


@pytest.mark.parametrize("sender, params", [("", {}), ("alice@remote.example", {"NOTIFY": "NEVER"})])
async def test_no_bounce_for_null_sender_or_notify_never(rd_context, stores, sender, params):
    engine, rd = remote_delivery(rd_context)
    await engine.service(mail(["x@one.test"], sender=sender, rcpt_params={"x@one.test": params}))
    rd.queue.deliver_fn, _ = scripted(Outcome(failed={"x@one.test": "550 5.1.1 no"}, message="550"))
    await rd.queue.run_once()
    assert rd.queue.spool.list() == [] and stores.spool.list() == []


async def test_delivery_loop_runs_as_a_container_service(rd_context):
    engine, rd = remote_delivery(rd_context)
    rd.queue.deliver_fn, calls = scripted(Outcome(delivered=["x@one.test"]))
    async with trio.open_nursery() as nursery:
        await nursery.start(rd.run)
        await engine.service(mail(["x@one.test"]))
        with trio.fail_after(5):
            while rd.queue.spool.list():
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert [c[1] for c in calls] == [["x@one.test"]]
