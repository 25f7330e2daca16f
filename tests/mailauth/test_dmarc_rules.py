"""DMARC's rules without I/O: records, organisational domains, alignment, author domain,
policy selection and pct (RFC 7489)."""

from __future__ import annotations

import random

import pytest

from chainmail_plugins.smtp.mailauth_dmarc import (
    DmarcRecord, MalformedFrom, aligned, evaluate, from_domain, organizational_domain,
    parse_record, select_record)


def test_record_tags_and_defaults():
    r = parse_record("v=DMARC1; p=reject; sp=quarantine; pct=30; adkim=s; aspf=r; rua=mailto:x@y")
    assert r == DmarcRecord(p="reject", sp="quarantine", pct=30, adkim="s", aspf="r")
    assert parse_record("v=DMARC1; p=quarantine") == DmarcRecord("quarantine", "quarantine")
    # unknown values take their defaults; tag names are case-insensitive
    assert parse_record("v=DMARC1;P=none;pct=400;adkim=x") == DmarcRecord("none", "none")


@pytest.mark.parametrize("text", ["v=spf1 -all", "p=reject; v=DMARC1", "v=DMARC2; p=reject",
                                  "v=DMARC1; p=bogus", "v=DMARC1", ""])
def test_not_a_usable_record(text):
    assert parse_record(text) is None


def test_missing_policy_with_report_address_is_none():
    assert parse_record("v=DMARC1; rua=mailto:d@example.com").p == "none"


def test_several_records_are_no_policy():
    assert select_record(["v=DMARC1; p=reject", "v=spf1 -all"]).p == "reject"
    assert select_record(["v=DMARC1; p=reject", "v=DMARC1; p=none"]) is None


@pytest.mark.parametrize("domain, org", [
    ("mail.example.com", "example.com"), ("example.com", "example.com"),
    ("a.b.example.co.uk", "example.co.uk"), ("co.uk", "co.uk"), ("EXAMPLE.org.", "example.org"),
])
def test_organizational_domain(domain, org):
    assert organizational_domain(domain) == org


def test_alignment_modes():
    assert aligned("bounce.example.com", "news.example.com", "r")
    assert not aligned("bounce.example.com", "news.example.com", "s")
    assert aligned("Example.com", "example.com.", "s")
    assert not aligned("example.net", "example.com", "r")
    assert not aligned("example.co.uk", "other.co.uk", "r")   # different registrants


def test_author_domain():
    assert from_domain(["Alice <alice@Mail.Example.com>"]) == "mail.example.com"
    assert from_domain(["a@example.com, b@example.com"]) == "example.com"
    for bad in ([], ["a@example.com", "b@example.com"], ["a@example.com, b@example.net"],
                ["undisclosed"]):
        with pytest.raises(MalformedFrom):
            from_domain(bad)


def test_evaluate_pass_and_policy_choice():
    rec = DmarcRecord("reject", "none")
    v = evaluate("news.example.com", rec, "example.com", ("pass", "example.com"), [])
    assert (v.result, v.spf_aligned, v.dkim_aligned) == ("pass", True, False)
    v = evaluate("example.com", rec, "example.com", ("fail", "example.com"),
                 [("fail", "example.com"), ("pass", "other.net")])
    assert (v.result, v.policy, v.disposition) == ("fail", "reject", "reject")
    # the organisational record's sp= for a subdomain author
    v = evaluate("news.example.com", rec, "example.com", None, [])
    assert (v.policy, v.disposition) == ("none", "none")


def test_pct_sampling_falls_back_to_the_milder_policy():
    rec = DmarcRecord("reject", "reject", pct=50)
    outcomes = {evaluate("example.com", rec, "example.com", None, [], random.Random(seed)).disposition
                for seed in range(40)}
    assert outcomes == {"reject", "quarantine"}
    q = DmarcRecord("quarantine", "quarantine", pct=0)
    assert evaluate("example.com", q, "example.com", None, []).disposition == "none"
