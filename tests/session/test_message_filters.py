"""What an ``on_message`` filter may do with the received message: read all of it, and add
header fields on top of what is stored, for small messages held in memory and for large
ones already written to the spool's temporary file."""

from __future__ import annotations

import pytest

from chainmail.message import header_field
from chainmail.verdict import HookResult
from chainmail.protocol.replies import Reply


class Annotate:
    """Reads the message and adds two fields, the second above the first."""

    seen: list[bytes] = []

    def on_message(self, session, message):
        Annotate.seen.append(message.read())
        message.add_header("X-First", "one")
        message.add_header("X-Second", "two,\r\n\tfolded")
        return None


class Rewrite:
    """Replaces the Subject (folded over two lines) and drops a forged field."""

    seen: list[bytes] = []

    def on_message(self, session, message):
        message.set_header("Subject", "[SPAM] hello")
        message.remove_header("x-spam-flag")
        Rewrite.seen.append(message.read())
        return None


class RejectAfterAnnotating:
    def on_message(self, session, message):
        message.add_header("X-Never", "stored")
        return HookResult.reply(Reply.of(554, "Rejected", "5.7.1"))


def _body(size: int) -> str:
    line = "x" * 76 + "\r\n"
    return "Subject: big\r\n\r\n" + line * (size // len(line))


@pytest.mark.parametrize("size", [200, 600 * 1024], ids=["in-memory", "spilled-to-file"])
def test_a_filter_reads_the_whole_message_and_its_fields_are_stored_on_top(chainmail_session, size):
    Annotate.seen.clear()
    s = chainmail_session([Annotate], helo="client.example")
    content = _body(size)
    assert s.send_message("a@remote.example", ["user@local.test"], content)[-1].code == 250
    [read] = Annotate.seen
    assert read.startswith(b"Received: ")   # the trace field prepended at DATA
    assert read.endswith(content.encode())
    [msg] = s.spooled()
    assert msg.content.startswith(b"X-Second: two,\r\n\tfolded\r\nX-First: one\r\nReceived: ")
    assert msg.content.endswith(content.encode())
    assert len(msg.content) == len(read) + len(b"X-Second: two,\r\n\tfolded\r\nX-First: one\r\n")


@pytest.mark.parametrize("size", [200, 600 * 1024], ids=["in-memory", "spilled-to-file"])
def test_a_filter_replaces_and_removes_fields_of_the_client(chainmail_session, size):
    Rewrite.seen.clear()
    s = chainmail_session([Rewrite], helo="client.example")
    body = _body(size).split("\r\n\r\n", 1)[1]
    content = "Subject: hello\r\n  folded\r\nX-Spam-Flag: NO\r\nTo: b@local.test\r\n\r\n" + body
    assert s.send_message("a@remote.example", ["user@local.test"], content)[-1].code == 250
    [msg] = s.spooled()
    assert msg.content == Rewrite.seen[0]
    head, stored_body = msg.content.split(b"\r\n\r\n", 1)
    assert head.startswith(b"Subject: [SPAM] hello\r\nReceived: ")
    assert head.endswith(b"\r\nTo: b@local.test")
    assert b"folded" not in head and b"X-Spam-Flag" not in head
    assert stored_body == body.encode()


def test_a_rejected_message_stores_nothing(chainmail_session):
    s = chainmail_session([RejectAfterAnnotating], helo="client.example")
    replies = s.send_message("a@remote.example", ["user@local.test"], "Subject: x\r\n\r\nb\r\n")
    assert str(replies[-1]) == "554 5.7.1 Rejected"
    assert s.spooled() == []


@pytest.mark.parametrize("name,value", [
    ("X-Bad", "one\r\nInjected: yes"),
    ("X-Bad", "bare\nlf"),
    ("X-Bad", "bare\rcr"),
    ("X-Bad", "nul\0"),
    ("X Bad", "space in the name"),
    ("X-Bad:", "colon in the name"),
    ("", "empty name"),
])
def test_no_filter_can_smuggle_a_line_into_the_header(name, value):
    with pytest.raises(ValueError):
        header_field(name, value)


def test_folded_and_utf8_values_are_kept():
    assert header_field("X-Ok", "a,\r\n b") == b"X-Ok: a,\r\n b\r\n"
    assert header_field("X-Ok", "caf\u00e9") == "X-Ok: caf\u00e9\r\n".encode()
