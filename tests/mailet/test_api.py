"""Mail: header editing keeps the body bytes; duplicates are independent."""

from __future__ import annotations

from .helpers import CONTENT, mail


def test_header_reading():
    m = mail(content=b"Subject: a\r\n  folded\r\nX-A: 1\r\nx-a: 2\r\n\r\nbody\r\n")
    assert m.get_header("subject") == "a  folded"
    assert m.get_headers("X-A") == ["1", "2"]
    assert m.body == b"body\r\n" and m.head.endswith(b"x-a: 2\r\n")
    assert m.message["Subject"] == "a  folded"


def test_add_set_remove_keep_the_body():
    m = mail()
    m.add_header("X-New", "v")
    m.add_header("Received", "from x by y; date")
    m.set_header("Subject", "Grüße")
    assert m.content.startswith(b"Received: from x by y; date\r\nReceived: from a")
    assert m.get_header("X-New") == "v"
    assert m.message["Subject"] == "Grüße" and m.get_header("Subject").startswith("=?utf-8?")
    assert m.remove_header("received") == 2 and not m.has_header("Received")
    assert m.content.endswith(b"\r\n\r\nbody line\r\n")


def test_headers_of_a_message_without_body():
    m = mail(content=b"Subject: x\r\n")
    m.add_header("X-A", "1")
    assert m.content == b"Subject: x\r\nX-A: 1\r\n\r\n"


def test_duplicate_is_independent():
    m = mail(["a@x.test", "b@x.test"], attributes={"k": {"n": 1}})
    d = m.duplicate(["a@x.test"])
    d.attributes["k"]["n"] = 2
    d.set_header("Subject", "changed")
    assert m.attributes["k"]["n"] == 1 and m.get_header("Subject") == "hello"
    assert d.recipients == ["a@x.test"] and d.name.startswith(m.name)
    assert m.content == CONTENT
