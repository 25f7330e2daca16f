"""BDAT (RFC 3030) in the engine: the chunk reader and the state table, without sockets."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from chainmail.protocol import states
from chainmail.protocol.engine import (
    CLOSED, PAUSED, BdatCommand, BodyChunk, Command, Connection, EndOfChunk, EndOfData,
    ForbiddenOctet,
)
from chainmail.protocol.lineends import ChunkLines
from chainmail.protocol.replies import R, Reply

from ._driver import bodies, feed, normalise, one_byte_chunks, split_at

PROPS = settings(max_examples=200, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def events_of(raw: bytes, **kw) -> list:
    return normalise(feed([raw], eof=True, chunking=True, **kw))


def test_bdat_chunk_is_read_as_data():
    raw = b"BDAT 12\r\nNOOP\r\nQUIT\r\nBDAT 0 LAST\r\nNOOP\r\n"
    assert events_of(raw) == [
        BdatCommand("BDAT", "12", "BDAT 12", 12, False), BodyChunk(b"NOOP\r\nQUIT\r\n"),
        EndOfChunk(12, False), BdatCommand("BDAT", "0 LAST", "BDAT 0 LAST", 0, True),
        EndOfChunk(0, True), Command("NOOP", None, "NOOP"), CLOSED]


def test_bdat_keyword_last_is_case_insensitive():
    [cmd, *_] = events_of(b"bdat 3 last\r\nabc")
    assert isinstance(cmd, BdatCommand) and cmd.last and cmd.size == 3


def test_malformed_bdat_is_a_plain_command():
    for arg in (b"", b" x", b" 1 2", b" -1", b" 1 LASTX", b" 1" + b"0" * 18):
        [cmd, *_] = events_of(b"BDAT" + arg + b"\r\n")
        assert type(cmd) is Command and cmd.verb == "BDAT"


def test_without_chunking_bdat_is_an_ordinary_command():
    events = normalise(feed([b"BDAT 4\r\nNOOP\r\n"], eof=True))
    assert [type(e) for e in events] == [Command, Command, type(CLOSED)]


def test_bdat_line_with_a_nul_ends_the_stream():
    conn = Connection(chunking=True)
    conn.receive_data(b"BDAT 4\0\r\nNOOP\r\n")
    event = conn.next_event()
    assert event == ForbiddenOctet(b"\0", in_data=True)
    assert conn.state is states.CLOSED_STATE and conn.next_event() is CLOSED


def test_chunk_waits_for_its_bytes():
    conn = Connection(chunking=True)
    conn.receive_data(b"BDAT 5 LAST\r\nab")
    assert isinstance(conn.next_event(), BdatCommand)
    assert conn.next_event() == BodyChunk(b"ab")
    assert conn.next_event().name == "NEED_DATA"
    conn.receive_data(b"cdeQUIT\r\n")
    assert conn.next_event() == BodyChunk(b"cde")
    assert conn.next_event() == EndOfChunk(5, True)
    assert conn.next_event() == Command("QUIT", None, "QUIT")


def test_state_table_moves_on_replies():
    conn = Connection()
    conn.receive_data(b"DATA\r\n")
    conn.next_event()
    assert conn.send(R.no_sender) is states.COMMAND   # a refused DATA reads commands
    conn.receive_data(b"DATA\r\n")
    conn.next_event()
    assert conn.send(R.start_data) is states.DATA
    conn.receive_data(b"x\r\n.\r\n")
    assert conn.next_event() == BodyChunk(b"x\r\n")
    assert isinstance(conn.next_event(), EndOfData) and conn.state is states.COMMAND
    conn.receive_data(b"STARTTLS\r\n")
    conn.next_event()
    assert conn.send(Reply.of(220, "Ready to start TLS")) is states.TLS_HANDSHAKE
    conn.receive_data(b"EHLO injected\r\n")
    assert conn.next_event() is PAUSED and conn.buffered
    conn.start_tls()
    assert conn.state is states.COMMAND and not conn.buffered
    assert conn.send(R.ok.closing()) is states.CLOSED_STATE and conn.next_event() is CLOSED


def test_a_354_to_another_verb_does_not_start_data():
    conn = Connection()
    conn.receive_data(b"XDATA\r\nNOOP\r\n")
    conn.next_event()
    assert conn.send(Reply.of(354, "go")) is states.COMMAND
    assert conn.next_event() == Command("NOOP", None, "NOOP")


# -- properties ---------------------------------------------------------------------------

chunk_bytes = st.lists(st.sampled_from([b"x", b"\r", b"\n", b"\r\n", b".", b"\r\n.\r\n",
                                        b"\0", b"DATA\r\n", b"BDAT 3\r\n", b"QUIT\r\n"]),
                       max_size=12).map(b"".join)


@st.composite
def bdat_stream(draw):
    """A client stream of commands and BDAT chunks holding anything, commands included."""
    parts, chunks, commands = [], [], []
    for kind in draw(st.lists(st.sampled_from(["cmd", "bdat"]), max_size=8)):
        if kind == "cmd":
            line = draw(st.sampled_from([b"NOOP", b"MAIL FROM:<a@b>", b"RSET", b"DATAX"]))
            parts.append(line + b"\r\n")
            commands.append(line.decode())
        else:
            data = draw(chunk_bytes)
            last = draw(st.booleans())
            parts.append(b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data)
            chunks.append(data)
            commands.append(f"BDAT {len(data)}{' LAST' if last else ''}")
    return b"".join(parts), chunks, commands


@PROPS
@given(stream=bdat_stream(), data=st.data())
def test_bdat_events_whatever_the_reads(stream, data):
    """Any split of the reads gives the same events; each chunk comes out byte for byte, and
    only the command lines are commands."""
    raw, chunks, commands = stream
    whole = events_of(raw)
    assert normalise(feed(one_byte_chunks(raw), eof=True, chunking=True)) == whole
    cuts = data.draw(st.lists(st.integers(1, max(len(raw) - 1, 1)), max_size=10))
    assert normalise(feed(split_at(raw, cuts), eof=True, chunking=True)) == whole
    assert [e.line for e in whole if isinstance(e, Command)] == commands
    assert bodies(whole, EndOfChunk) == chunks


# -- ChunkLines: DATA's line rules across chunk boundaries ----------------------------------

def lines_through(pieces: list[bytes], normalize: bool = False, limit: int = 998):
    lines = ChunkLines(limit, normalize=normalize)
    out = b"".join(lines.feed(p) for p in pieces) + lines.close()
    return out, lines


@given(text=st.lists(st.sampled_from([b"ab", b"\r\n", b".", b"\r", b"\n", b"\0"]), max_size=20)
       .map(b"".join), data=st.data())
@settings(max_examples=200, deadline=None)
def test_chunk_lines_do_not_depend_on_the_cuts(text, data):
    cuts = data.draw(st.lists(st.integers(1, max(len(text) - 1, 1)), max_size=6))
    for normalize in (False, True):
        whole, a = lines_through([text], normalize)
        split, b = lines_through(split_at(text, cuts), normalize)
        assert (a.refused, a.line_too_long) == (b.refused, b.line_too_long)
        if a.refused is None:
            assert whole == split


def test_chunk_lines_refuse_bare_line_ends_and_nul():
    assert lines_through([b"a\r", b"\nb\r\n"])[1].refused is None
    assert lines_through([b"a\r", b"b\r\n"])[1].refused == b"\r"
    assert lines_through([b"a\n"])[1].refused == b"\n"
    assert lines_through([b"a\0\r\n"])[1].refused == b"\0"


def test_chunk_lines_normalize_and_end_the_last_line():
    out, lines = lines_through([b"Subject: x\n\nbody\rmore"], normalize=True)
    assert out == b"Subject: x\r\n\r\nbody\r\nmore\r\n" and lines.refused is None


def test_chunk_lines_flag_long_lines_with_bounded_memory():
    lines = ChunkLines(10)
    for _ in range(100):
        lines.feed(b"y" * 1000)
        assert len(lines.tail) <= 12
    lines.feed(b"\r\nok\r\n")
    assert lines.line_too_long and lines.refused is None
