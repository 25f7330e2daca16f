"""Property tests of the framer and of the reply encoder (hypothesis, no sockets)."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, example, given, settings, strategies as st

from chainmail.protocol.engine import (
    CLOSED, NEED_DATA, BareLineFeed, BodyChunk, Command, Connection, EndOfData, ForbiddenOctet,
    LineTooLong,
)
from chainmail.protocol.lineends import is_canonical
from chainmail.protocol.replies import Reply

from ._driver import bodies, feed, normalise, one_byte_chunks, split_at

PROPS = settings(max_examples=200, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- stream generation -------------------------------------------------------------------------

_VERBS = ["HELO", "EHLO", "MAIL", "RCPT", "RSET", "NOOP", "QUIT", "VRFY", "STARTTLS", "help"]
_ARGS = ["", " client.example", " FROM:<a@b.example>", " TO:<c@d.example> NOTIFY=NEVER",
         " FROM:<>", "   spaced  ", " x"]

command_line = st.one_of(
    st.builds(lambda v, a: (v + a).encode(), st.sampled_from(_VERBS), st.sampled_from(_ARGS)),
    # arbitrary text without line breaks
    st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")),
    # over-long for the small limit used below
    st.integers(65, 300).map(lambda n: b"L" * n),
)

# A body line: random bytes, never a CR, LF or NUL (the engine refuses those: see
# framing_noise below for them), possibly with leading dots.
body_line = st.builds(
    lambda dots, rest: b"." * dots + rest.replace(b"\n", b"").replace(b"\r", b"").replace(b"\0", b""),
    st.integers(0, 3), st.binary(max_size=40),
)


@st.composite
def smtp_stream(draw, max_body_line: int | None = None):
    """Bytes of a plausible client stream: commands and DATA bodies, every line CRLF-ended."""
    parts = []
    for kind in draw(st.lists(st.sampled_from(["cmd", "data"]), max_size=8)):
        if kind == "cmd":
            parts.append(draw(command_line) + b"\r\n")
        else:
            lines = draw(st.lists(body_line, max_size=6))
            if max_body_line is not None:
                lines = [line[:max_body_line] for line in lines]
            parts.append(b"DATA\r\n" + b"".join(line + b"\r\n" for line in lines) + b".\r\n")
    return b"".join(parts)


def chunkings(data: st.DataObject, raw: bytes) -> list[bytes]:
    if len(raw) < 2:
        return [raw] if raw else []
    cuts = data.draw(st.lists(st.integers(1, len(raw) - 1), max_size=20), label="cuts")
    return split_at(raw, cuts)


def body_blind(events: list) -> list:
    """Normalised events where the body of a message flagged line_too_long is blanked (its
    over-long lines are dropped as they arrive, which depends on the chunking by design)."""
    out, pending = [], []
    for event in normalise(events):
        if isinstance(event, BodyChunk):
            pending.append(event)
            continue
        if isinstance(event, EndOfData):
            out.extend([BodyChunk(b"")] if event.line_too_long else pending)
        pending = []
        out.append(event)
    return out + pending


# -- (a) chunking does not matter ------------------------------------------------------------------

LIMIT = 64


@PROPS
@given(raw=smtp_stream(max_body_line=LIMIT), data=st.data())
@example(raw=b"DATA\r\n..x\r\n.\r\nNOOP\r\n", data=None)
@example(raw=b"L" * 100 + b"\r\nNOOP\r\nDATA\r\n.\r\n.\r\n", data=None)
def test_same_events_whatever_the_chunking(raw, data):
    whole = normalise(feed([raw], LIMIT, eof=True))
    assert normalise(feed(one_byte_chunks(raw), LIMIT, eof=True)) == whole
    if data is not None:
        assert normalise(feed(chunkings(data, raw), LIMIT, eof=True)) == whole


@PROPS
@given(raw=smtp_stream(), data=st.data())
def test_same_framing_whatever_the_chunking_with_over_long_body_lines(raw, data):
    """With body lines over the limit too, commands, LineTooLong and EndOfData (size and flag)
    do not depend on the chunking."""
    whole = body_blind(feed([raw], 16, eof=True))
    assert body_blind(feed(chunkings(data, raw), 16, eof=True)) == whole
    assert body_blind(feed(one_byte_chunks(raw), 16, eof=True)) == whole


framing_noise = st.lists(
    st.sampled_from([b"A", b"L" * 20, b".", b"\r\n", b"\r", b"\n", b"\x00", b"DATA\r\n",
                     b"\r\n.\r\n", b"NOOP\r\n", b"MAIL FROM:<a@b>\r\n"]),
    max_size=30,
).map(b"".join)


def delivered(events: list) -> list:
    """Normalised events where body content counts only once its EndOfData arrives: a body cut
    short by a bare LF is thrown away with the session, however much of it was handed out."""
    out, pending = [], b""
    for event in events:
        if isinstance(event, BodyChunk):
            pending += event.data
            continue
        if isinstance(event, EndOfData):
            out.append(BodyChunk(b"" if event.line_too_long else pending))
        pending = b""
        out.append(event)
    return out


@PROPS
@given(raw=framing_noise, limit=st.integers(4, 24), data=st.data())
@example(raw=b"A" * 30 + b"\nMAIL FROM:<a@b>\r\n", limit=16, data=None)
@example(raw=b"A" * 17 + b"\r\nNOOP\r\n", limit=16, data=None)
@example(raw=b"DATA\r\n" + b"L" * 20 + b"\rAA", limit=4, data=None)   # closed mid-line
def test_same_framing_whatever_the_chunking_with_bare_line_feeds(raw, limit, data):
    """CR, LF and over-long lines in any mix: the framing (commands, LineTooLong, BareLineFeed,
    EndOfData, CLOSED) does not depend on where the reads were split."""
    whole = delivered(feed([raw], limit, eof=True))
    assert delivered(feed(one_byte_chunks(raw), limit, eof=True)) == whole
    if data is not None:
        assert delivered(feed(chunkings(data, raw), limit, eof=True)) == whole


@PROPS
@given(raw=framing_noise, data=st.data())
@example(raw=b"DATA\r\nA\n.\r\nA\r\n.\r\n", data=None)
def test_normalize_mode_frames_alike_whatever_the_chunking_and_bodies_are_canonical(raw, data):
    """With ``normalize``: the same events whatever the reads, and every message handed out
    has CRLF line ends only and no NUL."""
    def run(chunks):
        return delivered(feed(chunks, eof=True, conn=Connection(normalize=True)))
    whole = run([raw])
    assert run(one_byte_chunks(raw)) == whole
    if data is not None:
        assert run(chunkings(data, raw)) == whole
    assert all(is_canonical(e.data) for e in whole if isinstance(e, BodyChunk))


# -- (b) dot-stuffing round trip -------------------------------------------------------------------

def dot_stuff(body: bytes) -> bytes:
    """RFC 5321 4.5.2, sender side: double a leading '.' on every CRLF-terminated line."""
    assert body.endswith(b"\r\n") or not body
    lines = body.split(b"\r\n")[:-1]
    return b"".join((b"." if line.startswith(b".") else b"") + line + b"\r\n" for line in lines)


raw_body_line = st.builds(
    lambda dots, rest: b"." * dots + rest.replace(b"\n", b"").replace(b"\r", b"").replace(b"\0", b""),
    st.integers(0, 4), st.binary(max_size=60),
)


@PROPS
@given(lines=st.lists(raw_body_line, max_size=12), data=st.data())
@example(lines=[b".", b"..", b"", b". ", b". x"], data=None)
@example(lines=[], data=None)
def test_dot_stuffing_round_trip(lines, data):
    body = b"".join(line + b"\r\n" for line in lines)
    stuffed = dot_stuff(body)
    raw = b"DATA\r\n" + stuffed + b".\r\nQUIT\r\n"
    chunk_sets = [[raw], one_byte_chunks(raw)]
    if data is not None:
        chunk_sets.append(chunkings(data, raw))
    for chunks in chunk_sets:
        events = feed(chunks)
        assert bodies(events) == [body]
        assert [e for e in events if isinstance(e, EndOfData)] == [EndOfData(len(stuffed), False)]
        assert events[-1] == Command("QUIT", None, "QUIT")


# -- (c) no input crashes the engine ---------------------------------------------------------------

noisy = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from([b"DATA\r\n", b"\r\n", b"\n", b"\r", b".", b"\r\n.\r\n", b"A" * 40,
                              b"NOOP\r\n", b"..", b"x"]), max_size=30).map(b"".join),
)


@PROPS
@given(raw=noisy, limit=st.integers(1, 64), data=st.data(), eof=st.booleans())
def test_arbitrary_bytes_never_crash_and_always_terminate(raw, limit, data, eof):
    conn = Connection(limit)
    chunks = chunkings(data, raw)
    if eof:
        chunks.append(b"")
    steps, budget = 0, len(raw) + 4 * len(chunks) + 8
    closed = False
    for chunk in chunks:
        conn.receive_data(chunk)
        while not closed:
            steps += 1
            assert steps <= budget, "next_event does not make progress"
            event = conn.next_event()
            if event is NEED_DATA:
                break
            if event is CLOSED:
                closed = True
                break
            assert isinstance(event, (Command, BodyChunk, EndOfData, LineTooLong, BareLineFeed,
                                      ForbiddenOctet))
            if isinstance(event, Command) and event.verb == "DATA":
                conn.start_data()
        assert conn.buffered <= len(raw) + 1
    if eof:
        assert closed
        assert conn.next_event() is CLOSED


# -- (d) Reply.encode is always well formed --------------------------------------------------------

printable_line = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")),
                         max_size=40)
REPLY_LINE = re.compile(r"\d{3}[- ].*\r\n\Z", re.DOTALL)


@PROPS
@given(code=st.integers(200, 599), lines=st.lists(printable_line, min_size=1, max_size=6),
       enhanced=st.one_of(st.none(), st.from_regex(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}", fullmatch=True)))
def test_reply_encode_is_well_formed(code, lines, enhanced):
    wire = Reply.of(code, lines, enhanced).encode()
    assert wire.endswith(b"\r\n")
    parts = wire.split(b"\r\n")[:-1]
    assert len(parts) == len(lines)
    for i, part in enumerate(parts):
        text = part.decode("utf-8") + "\r\n"
        assert REPLY_LINE.match(text), text
        assert "\r" not in text[:-2] and "\n" not in text[:-2]
        assert text[:3] == str(code)
        assert text[3] == ("-" if i < len(parts) - 1 else " ")
    first = parts[0].decode("utf-8")[4:]
    assert first == (f"{enhanced} {lines[0]}" if enhanced else lines[0])
    for part, line in zip(parts[1:], lines[1:]):
        assert part.decode("utf-8")[4:] == line
