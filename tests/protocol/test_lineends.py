"""The canonical form of message content (chainmail.protocol.lineends): no sockets."""

from __future__ import annotations

import email
import email.policy
import re

import pytest
from hypothesis import given, settings, strategies as st

from chainmail.protocol.lineends import (
    Canonicalizer, canonical, first_forbidden, head_end, is_canonical,
)

from ..smuggling import ALL_SEQUENCES, sequence_id, smuggling_message

PROPS = settings(max_examples=300, deadline=None)

noisy = st.lists(st.sampled_from([b"a", b"X: y", b":", b" ", b"\t", b".", b"\r\n", b"\r", b"\n",
                                  b"\x00", b"From: <ceo@example.org>"]), max_size=40).map(b"".join)


@pytest.mark.parametrize("data,expected", [
    (b"", True), (b"a\r\nb\r\n", True), (b"a\rb", False), (b"a\nb", False), (b"a\x00b", False),
    (b"a\r", False), (b"\na", False), (b"\n\r", False),
])
def test_is_canonical(data, expected):
    assert is_canonical(data) is expected
    assert (first_forbidden(data) is None) is expected


@pytest.mark.parametrize("data,octet", [
    (b"ok\r\nx\ry\nz", b"\r"), (b"ok\r\nx\ny\rz", b"\n"), (b"\x00\r", b"\x00"),
    (b"a\r", b"\r"), (b"\n\r\n", b"\n"),
])
def test_first_forbidden_is_the_first_by_position(data, octet):
    assert first_forbidden(data) == octet


@pytest.mark.parametrize("content,expected", [
    # A bare CR in a header hides a field from readers that split on CRLF only: it becomes a
    # space, never a new field.
    (b"X-Inject: x\rFrom: <ceo@example.org>\r\nSubject: s\r\n\r\nbody\r\n",
     b"X-Inject: x From: <ceo@example.org>\r\nSubject: s\r\n\r\nbody\r\n"),
    # In the body a bare CR or LF is a line end.
    (b"S: s\r\n\r\nouter\r.\r\nMAIL FROM:<e@x>\n", b"S: s\r\n\r\nouter\r\n.\r\nMAIL FROM:<e@x>\r\n"),
    # LF-only content (what Python's email package writes by default) keeps its structure.
    (b"Subject: hi\nTo: a@b\n\nbody\n", b"Subject: hi\r\nTo: a@b\r\n\r\nbody\r\n"),
    # NUL is removed everywhere.
    (b"S: a\x00b\r\n\r\n\x00.\r\nx\x00", b"S: ab\r\n\r\n.\r\nx"),
    # CR CR LF in the header is a field with a stray CR, not the empty line.
    (b"A: 1\r\r\nB: 2\r\n\r\nbody", b"A: 1 \r\nB: 2\r\n\r\nbody"),
    # A header line left holding only white space is dropped: no reader may end the
    # section there.
    (b"A: 1\r\n\r\r\nB: 2\r\n\r\nbody", b"A: 1\r\nB: 2\r\n\r\nbody"),
    # No header section at all.
    (b"\nbody\rline", b"\r\nbody\r\nline"),
])
def test_canonical(content, expected):
    assert canonical(content) == expected
    assert is_canonical(expected)


def test_canonical_content_is_returned_as_is():
    content = b"Subject: x\r\n\r\nbody\r\n" * 100
    assert canonical(content) is content


@pytest.mark.parametrize("sequence", ALL_SEQUENCES, ids=sequence_id)
def test_scanner_sequences_lose_their_bare_octets_and_keep_their_text(sequence):
    message = smuggling_message(sequence)
    out = canonical(message)
    assert is_canonical(out)
    # The smuggled commands are plain body lines: one end of data can only be the writer's.
    assert b"\r\nMAIL FROM:<smuggled@evil.test>\r\n" in out
    assert out.count(b"\r\n.\r\n") <= 1 and out.endswith(b"smuggled body\r\n")


def header_fields(content: bytes) -> list[bytes]:
    """Field names as a reader splitting on CRLF would see them."""
    head = content[:head_end(content)]
    return [line.split(b":", 1)[0] for line in head.split(b"\r\n")
            if line and line[:1] not in (b" ", b"\t")]


@PROPS
@given(noisy)
def test_canonical_is_canonical_and_idempotent(data):
    out = canonical(data)
    assert is_canonical(out)
    assert canonical(out) == out
    assert b"\x00" not in out


@PROPS
@given(st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"").replace(b"\x00", b"")),
                min_size=1, max_size=8))
def test_bare_crs_in_fields_never_make_new_fields(values):
    """Whatever bare CRs the field values hold, the canonical header has exactly the fields
    the CRLF structure had."""
    values = [re.sub(rb"\r$", b"", v) for v in values]   # a CR before the CRLF is a CRLF
    content = b"".join(b"F%d: " % i + v + b"\r\n" for i, v in enumerate(values)) + b"\r\nbody\r\n"
    fields = header_fields(canonical(content))
    assert fields == [b"F%d" % i for i in range(len(values))]


@PROPS
@given(noisy, st.data())
def test_streaming_in_whole_lines_gives_the_same_as_one_shot(data, draw):
    """The engine hands the canonicalizer whole lines (each piece ends in LF)."""
    lines = data.split(b"\n")
    pieces, current = [], b""
    for i, line in enumerate(lines):
        current += line + (b"\n" if i < len(lines) - 1 else b"")
        if i < len(lines) - 1 and draw.draw(st.booleans()):
            pieces.append(current)
            current = b""
    pieces.append(current)
    stream = Canonicalizer()
    assert b"".join(stream.feed(p) for p in pieces) == canonical(data)


def test_python_email_reads_the_same_headers_before_and_after():
    content = b"From: a@b.example\nTo: c@d.example\nSubject: s\n\nline 1\nline 2\n"
    before = email.message_from_bytes(content, policy=email.policy.default)
    after = email.message_from_bytes(canonical(content), policy=email.policy.default)
    assert before.items() == after.items()
    assert after.get_content().splitlines() == ["line 1", "line 2"]
