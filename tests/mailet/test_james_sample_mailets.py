"""The mailets and matchers of James's sample configuration that chainmail adds for it:
MetricsMailet (and the metrics registry), AddDeliveredToHeader, SentByJmap, JMAPFiltering
(and its rule store), run with the test kit's mailet harness (no sockets)."""

from __future__ import annotations

import threading

import pytest

from chainmail import metrics
from chainmail.config.errors import ConfigError
from chainmail.store.filters import FilterStore, RuleError, parse_rule

from chainmail_plugins.mailets.jmap import DELIVERY_PATHS, FORWARDED_BY

MESSAGE = (b"From: Alice Example <alice@remote.example>\r\n"
           b"To: Bob <bob@local.test>, list@lists.example\r\n"
           b"Cc: carol@local.test\r\n"
           b"Subject: =?utf-8?q?Caf=C3=A9?= [news] weekly\r\n"
           b"X-Priority: 1 (Highest)\r\n"
           b"Message-ID: <m1@remote.example>\r\n\r\nbody\r\n")


@pytest.fixture(autouse=True)
def fresh_metrics():
    metrics.reset()
    yield
    metrics.reset()


@pytest.fixture
def harness(mailet_harness):
    for user in ("bob@local.test", "carol@local.test"):
        mailet_harness.stores.add_user(user, "password1")
    return mailet_harness


# -------------------------------------------------------------------------- metrics


def test_counters_are_named_shared_and_thread_safe():
    c = metrics.counter("mails")
    assert metrics.counter("mails") is c

    def work():
        for _ in range(2000):
            c.increment()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.value == 8000
    assert c.add(5) == 8005
    with pytest.raises(ValueError):
        c.add(-1)
    assert metrics.snapshot() == {"mails": 8005}


def test_prometheus_rendering_of_counters_and_timers():
    metrics.counter("mailetContainerErrors").increment()
    metrics.counter("9-odd.name").add(3)
    t = metrics.timer("delivery")
    t.record(0.02)
    t.record(3.0)
    text = metrics.render_prometheus()
    assert "# TYPE mailetContainerErrors counter\nmailetContainerErrors 1\n" in text
    assert "_9_odd_name 3\n" in text
    assert 'delivery_bucket{le="0.025"} 1\n' in text
    assert 'delivery_bucket{le="5.0"} 2\n' in text
    assert 'delivery_bucket{le="+Inf"} 2\n' in text
    assert "delivery_count 2\n" in text
    assert metrics.snapshot()["delivery"]["count"] == 2


def test_metrics_mailet_counts_each_mail_once(harness):
    mailet = harness.mailet("MetricsMailet", {"metricName": "bounces"})
    run = harness.service(mailet, harness.mail(recipients=["bob@local.test", "carol@local.test"]))
    assert run.mail.recipients == ["bob@local.test", "carol@local.test"]   # goes on unchanged
    harness.service(mailet, harness.mail())
    assert metrics.counter("bounces").value == 2
    assert any("metric bounces is now 1" in line for line in run.logs)
    assert metrics.snapshot() == {"bounces": 2}


def test_metrics_mailet_in_james_error_processor(harness):
    processed = harness.process(
        '<processor state="root"><mailet match="All" class="MetricsMailet">'
        "<metricName>mailetContainerErrors</metricName></mailet>"
        '<mailet match="All" class="Null"/></processor>',
        harness.mail(recipients=["bob@local.test", "carol@local.test"]))
    assert metrics.counter("mailetContainerErrors").value == 1
    assert any("metric mailetContainerErrors is now 1" in line for line in processed.logs)


def test_metrics_mailet_needs_its_name(harness):
    with pytest.raises(ConfigError, match="metricName"):
        harness.mailet("MetricsMailet")
    with pytest.raises(ConfigError, match="metricName"):
        harness.mailet("MetricsMailet", {"metricName": "  "})


# -------------------------------------------------------------------- Delivered-To


def test_add_delivered_to_then_local_delivery_one_field_per_copy(harness):
    harness.process(
        '<processor state="root"><mailet match="All" class="AddDeliveredToHeader"/>'
        '<mailet match="All" class="LocalDelivery"/></processor>',
        harness.mail(MESSAGE, recipients=["Bob@local.test", "carol@local.test"]))
    (bob,) = harness.mailbox("bob@local.test")
    (carol,) = harness.mailbox("carol@local.test")
    assert bob.count(b"Delivered-To:") == 1 and b"Delivered-To: Bob@local.test" in bob
    assert carol.count(b"Delivered-To:") == 1 and b"Delivered-To: carol@local.test" in carol


def test_add_delivered_to_leaves_the_shared_message_alone(harness):
    mail = harness.mail(MESSAGE, recipients=["bob@local.test", "carol@local.test"])
    harness.service(harness.mailet("AddDeliveredToHeader"), mail)
    assert mail.content == MESSAGE


# -------------------------------------------------------------------------- SentByJmap


def test_sent_by_jmap_matches_no_mail(harness):
    matcher = harness.matcher("org.apache.james.jmap.mailet.SentByJmap")
    assert harness.match(matcher, harness.mail(attributes={"auth_user": "bob@local.test"})) == []


# ------------------------------------------------------------------------ rule store


def rule(rule_id, conditions, combiner="AND", **action):
    return parse_rule({"id": rule_id, "conditionGroup": {
        "conditionCombiner": combiner,
        "conditions": [{"field": f, "comparator": c, "value": v} for f, c, v in conditions]},
        "action": action})


@pytest.mark.parametrize("data, message", [
    ({"id": "1", "conditionGroup": {"conditions": [{"field": "body", "comparator": "contains",
                                                    "value": "x"}]},
      "action": {"reject": True}}, "not a field"),
    ({"id": "1", "conditionGroup": {"conditions": [{"field": "subject", "comparator": "like",
                                                    "value": "x"}]},
      "action": {"reject": True}}, "not a comparator"),
    ({"id": "1", "conditionGroup": {"conditions": [{"field": "subject", "comparator": "any",
                                                    "value": ""}]},
      "action": {"appendIn": {"mailboxIds": ["a/../../etc"]}}}, "no '..'"),
    ({"id": "1", "conditionGroup": {"conditions": [{"field": "subject", "comparator": "any",
                                                    "value": ""}]},
      "action": {}}, "needs an action"),
    ({"id": "1", "conditionGroup": {"conditions": []}, "action": {"reject": True}},
     "at least one condition"),
    ({"id": "", "conditionGroup": {"conditions": []}, "action": {"reject": True}}, "id"),
])
def test_bad_rules_say_what_is_expected(data, message):
    with pytest.raises(RuleError, match=message):
        parse_rule(data)


def test_rules_keep_james_json_shape_and_order(tmp_path):
    store = FilterStore(tmp_path / "chainmail.db", refresh_interval=0)
    try:
        first = rule("a", [("subject", "contains", "x")], appendIn={"mailboxIds": ["News"]})
        second = parse_rule({"id": "b", "name": "old form",
                             "condition": {"field": "header:X-Spam", "comparator": "any",
                                           "value": ""},
                             "action": {"forwardTo": {"addresses": ["me@else.example"],
                                                      "keepACopy": True}}})
        store.add("Bob@Local.test", first)
        store.add("bob@local.test", second)
        with pytest.raises(RuleError, match="already"):
            store.add("bob@local.test", first)
        assert [r.id for r in store.rules("bob@local.test")] == ["a", "b"]
        assert parse_rule(first.to_json()) == first
        assert second.to_json()["action"]["forwardTo"] == {"addresses": ["me@else.example"],
                                                           "keepACopy": True}
        assert store.next_id("bob@local.test") == "1"
        assert store.remove("bob@local.test", "a") and not store.remove("bob@local.test", "a")
        assert store.clear("bob@local.test") == 1 and store.rules("bob@local.test") == []
    finally:
        store.close()


# ------------------------------------------------------------------------ JMAPFiltering


def add_rules(harness, user, *rules):
    store = FilterStore(harness.var / "chainmail.db", refresh_interval=0)
    try:
        for r in rules:
            store.add(user, r)
    finally:
        store.close()


@pytest.mark.parametrize("conditions, combiner, files", [
    ([("subject", "contains", "Café [news]")], "AND", True),        # decoded subject
    ([("subject", "contains", "café")], "AND", False),              # case-sensitive, as James
    ([("subject", "start-with", "Café")], "AND", True),
    ([("subject", "exactly-equals", "Café [news] weekly")], "AND", True),
    ([("subject", "not-exactly-equals", "Café [news] weekly")], "AND", False),
    ([("from", "exactly-equals", "ALICE@remote.example")], "AND", True),
    ([("from", "exactly-equals", "Alice Example")], "AND", True),
    ([("from", "exactly-equals", "alice@other.example")], "AND", False),
    ([("from", "contains", "alice example")], "AND", True),       # addresses: case-insensitive
    ([("to", "contains", "list@lists")], "AND", True),
    ([("to", "contains", "carol@")], "AND", False),
    ([("cc", "contains", "carol@")], "AND", True),
    ([("recipient", "exactly-equals", "carol@local.test")], "AND", True),
    ([("recipient", "not-contains", "nobody")], "AND", True),
    ([("header:X-Priority", "start-with", "1")], "AND", True),
    ([("header:X-Spam-Flag", "any", "")], "AND", False),
    ([("header:X-Spam-Flag", "not-contains", "YES")], "AND", True),  # absent: nothing contains
    ([("subject", "contains", "news"), ("from", "contains", "nobody")], "AND", False),
    ([("subject", "contains", "news"), ("from", "contains", "nobody")], "OR", True),
])
def test_conditions(harness, conditions, combiner, files):
    add_rules(harness, "bob@local.test",
              rule("1", conditions, combiner, appendIn={"mailboxIds": ["News"]}))
    mail = harness.mail(MESSAGE, recipients=["bob@local.test", "carol@local.test"])
    harness.service(harness.mailet("JMAPFiltering", processor="local-delivery"), mail)
    assert mail.attributes.get(DELIVERY_PATHS + "bob@local.test") == (["News"] if files else None)
    assert DELIVERY_PATHS + "carol@local.test" not in mail.attributes    # carol has no rules
    assert mail.recipients == ["bob@local.test", "carol@local.test"]


def test_every_matching_rule_applies_in_order(harness):
    add_rules(harness, "bob@local.test",
              rule("1", [("subject", "contains", "news")], appendIn={"mailboxIds": ["News"]}),
              rule("2", [("from", "contains", "alice")], moveTo={"mailboxName": "Friends/Alice"}))
    mail = harness.mail(MESSAGE, recipients=["Bob+tag@local.test"])
    run = harness.service(harness.mailet("JMAPFiltering"), mail)
    assert mail.attributes[DELIVERY_PATHS + "bob@local.test"] == ["Friends/Alice"]
    assert any("files it into Friends/Alice (filter rule 2)" in line for line in run.logs)


def test_reject_drops_only_that_recipient(harness):
    add_rules(harness, "carol@local.test", rule("1", [("subject", "contains", "news")], reject=True))
    mail = harness.mail(MESSAGE, recipients=["bob@local.test", "carol@local.test",
                                             "ghost@local.test"])
    harness.service(harness.mailet("JMAPFiltering"), mail)
    assert mail.recipients == ["bob@local.test", "ghost@local.test"]


def test_forward_sends_a_copy_from_the_recipient(harness):
    add_rules(harness, "bob@local.test",
              rule("1", [("subject", "contains", "news")],
                   forwardTo={"addresses": ["me@else.example"], "keepACopy": False}),
              rule("2", [("subject", "contains", "news")], appendIn={"mailboxIds": ["News"]}))
    mail = harness.mail(MESSAGE, recipients=["bob@local.test", "carol@local.test"])
    run = harness.service(harness.mailet("JMAPFiltering"), mail)
    (copy,) = run.sent
    assert copy.sender == "bob@local.test" and copy.recipients == ["me@else.example"]
    assert copy.attributes[FORWARDED_BY] == ["bob@local.test"]
    assert mail.recipients == ["carol@local.test"]          # no copy kept
    assert DELIVERY_PATHS + "bob@local.test" not in mail.attributes


def test_forward_keeping_a_copy_and_loops(harness):
    add_rules(harness, "bob@local.test",
              rule("1", [("subject", "any", "")],
                   forwardTo={"addresses": ["carol@local.test"], "keepACopy": True}))
    add_rules(harness, "carol@local.test",
              rule("1", [("subject", "any", "")], forwardTo={"addresses": ["bob@local.test"]}))
    mailet = harness.mailet("JMAPFiltering")
    mail = harness.mail(MESSAGE, recipients=["bob@local.test"])
    run = harness.service(mailet, mail)
    assert mail.recipients == ["bob@local.test"]
    (to_carol,) = run.sent
    assert to_carol.recipients == ["carol@local.test"]
    # carol's rule would send it back to bob, who forwarded it already: as James, that
    # loop ends in rrt-error for carol, and no copy goes round again
    looped = to_carol.duplicate()
    run = harness.service(mailet, looped)
    assert looped.recipients == []
    assert [(m.state, m.recipients) for m in run.sent] == [("rrt-error", ["carol@local.test"])]
    # a recipient whose own forward came back gets the mail, without forwarding it again
    again = harness.mail(MESSAGE, recipients=["bob@local.test"],
                         attributes={FORWARDED_BY: ["bob@local.test"]})
    assert harness.service(mailet, again).sent == [] and again.recipients == ["bob@local.test"]


def test_needs_the_rrt_error_processor(harness):
    with pytest.raises(ConfigError, match="rrt-error"):
        harness.process('<processor state="root"><mailet match="All" '
                        'class="org.apache.james.jmap.mailet.filter.JMAPFiltering"/>'
                        '<mailet match="All" class="Null"/></processor>', harness.mail())


def test_james_local_delivery_processor_files_into_the_folder(harness):
    from chainmail.testing.stores import read_maildir
    add_rules(harness, "bob@local.test",
              rule("1", [("subject", "contains", "[news]")], appendIn={"mailboxIds": ["News"]}))
    harness.process(
        '<processor state="root">'
        '<mailet match="All" class="AddDeliveredToHeader"/>'
        '<mailet match="All" class="org.apache.james.jmap.mailet.filter.JMAPFiltering">'
        "<onMailetException>ignore</onMailetException></mailet>"
        '<mailet match="All" class="LocalDelivery"/></processor>'
        '<processor state="rrt-error"><mailet match="All" class="Null"/></processor>',
        harness.mail(MESSAGE, recipients=["bob@local.test", "carol@local.test"]))
    root = harness.stores.mailboxes.path_for("bob@local.test")
    (filed,) = read_maildir(f"{root}/.News")
    assert b"Delivered-To: bob@local.test" in filed and b"Subject: =?utf-8?q?Caf" in filed
    assert harness.mailbox("bob@local.test") == []
    assert len(harness.mailbox("carol@local.test")) == 1
