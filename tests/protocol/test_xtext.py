"""xtext (RFC 3461 §4) and utf-8-addr-xtext (RFC 6533 §3): what DSN parameters may carry and
what a report quotes of them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chainmail.protocol.xtext import (XtextError, decode, decode_envid, decode_utf8_addr, encode,
                                      encode_utf8_addr, is_xtext, parse_orcpt)


@pytest.mark.parametrize("text", ["", "QQ314159", "a+2Bb", "+3D", "!~", "x+20y", "caf+C3+A9"])
def test_valid_xtext(text):
    assert is_xtext(text)


@pytest.mark.parametrize("text", ["a+b", "a=b", "a b", "+2b", "+2", "+", "+G0", "é", "a\tb", "\x7f"])
def test_invalid_xtext(text):
    assert not is_xtext(text)
    with pytest.raises(XtextError):
        decode(text)


def test_decode():
    assert decode("QQ314159") == "QQ314159"
    assert decode("user+2Btag@example.org") == "user+tag@example.org"
    assert decode("a+3Db+20c") == "a=b c"
    assert decode("caf+C3+A9") == "café"


@pytest.mark.parametrize("text", ["a+0D+0AX-Injected:+20yes", "+00", "+7F", "tab+09"])
def test_control_characters_are_refused(text):
    with pytest.raises(XtextError, match="control"):
        decode(text)


def test_octets_that_are_not_utf8_are_refused():
    with pytest.raises(XtextError, match="UTF-8"):
        decode("+FF+FE")


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FFF,
                                      blacklist_categories=("Cs",)).filter(lambda c: c != "\x7f")))
def test_encode_decode_round_trip(text):
    encoded = encode(text)
    assert is_xtext(encoded)
    assert decode(encoded) == text


def test_encode():
    assert encode("a+b=c d") == "a+2Bb+3Dc+20d"


def test_envid():
    assert decode_envid("QQ314159") == "QQ314159"
    assert decode_envid("id+20with+20spaces") == "id with spaces"
    assert decode_envid("x" * 100) == "x" * 100
    with pytest.raises(XtextError, match="100"):
        decode_envid("x" * 101)
    with pytest.raises(XtextError, match="US-ASCII"):
        decode_envid("caf+C3+A9")


def test_orcpt():
    assert parse_orcpt("rfc822;orcpt@localhost") == ("rfc822", "orcpt@localhost")
    assert parse_orcpt("RFC822;a+2Bb@example.org") == ("RFC822", "a+b@example.org")
    assert parse_orcpt("utf-8;caf\\x{E9}@example.org") == ("utf-8", "café@example.org")
    assert parse_orcpt("utf-8;café@example.org") == ("utf-8", "café@example.org")
    addr = "a" * 488 + "@example.org"
    assert parse_orcpt(f"rfc822;{addr}")[1] == addr   # 500 characters


@pytest.mark.parametrize("value, reason", [
    ("orcpt@localhost", "semicolon"),
    (";orcpt@localhost", "semicolon"),
    ("rfc(822);x@y", "semicolon"),
    ("rfc822;", "no address"),
    ("rfc822;a+b@c", "xtext"),
    ("rfc822;" + "a" * 489 + "@example.org", "500"),
    ("utf-8;a+b@c", "utf-8-addr-xtext"),
    ("utf-8;a\\b@c", "utf-8-addr-xtext"),
    ("utf-8;a\\x{D800}@c", "Unicode"),
    ("utf-8;a\\x{0A}@c", "control"),
])
def test_bad_orcpt(value, reason):
    with pytest.raises(XtextError, match=reason):
        parse_orcpt(value)


def test_utf8_addr_round_trip():
    for text in ("café@example.org", "a+b=c\\d@x", "plain@example.org"):
        encoded = encode_utf8_addr(text)
        assert encoded.isascii()
        assert decode_utf8_addr(encoded) == text
