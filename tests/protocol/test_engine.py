"""Unit tests of the sans-I/O framer (chainmail.protocol.engine.Connection).

No sockets: bytes go in through receive_data, events come out of next_event.
"""

from __future__ import annotations

import pytest

from chainmail.protocol.engine import (
    CLOSED, COMMAND, DATA, NEED_DATA, BareLineFeed, BodyChunk, Command, Connection, EndOfData,
    ForbiddenOctet, LineTooLong,
)
from chainmail.protocol.lineends import is_canonical

from ..smuggling import ALL_SEQUENCES, sequence_id, smuggling_message
from ._driver import bodies, commands, feed, normalise, one_byte_chunks, split_at


def cmd(line: str) -> Command:
    verb, _, arg = line.strip(" \t").partition(" ")
    return Command(verb.upper(), arg.strip(" \t") or None, line.strip(" \t"))


# -- command mode ----------------------------------------------------------------------------

def test_fresh_connection_is_in_command_mode_and_needs_data():
    conn = Connection()
    assert conn.mode == COMMAND
    assert conn.max_line_length == 8192
    assert conn.buffered == 0
    assert conn.next_event() is NEED_DATA


@pytest.mark.parametrize("raw,verb,arg,line", [
    (b"NOOP\r\n", "NOOP", None, "NOOP"),
    (b"noop\r\n", "NOOP", None, "noop"),
    (b"mail FROM:<a@b.example>\r\n", "MAIL", "FROM:<a@b.example>", "mail FROM:<a@b.example>"),
    (b"Rcpt To:<c@d.example> NOTIFY=NEVER\r\n", "RCPT", "To:<c@d.example> NOTIFY=NEVER",
     "Rcpt To:<c@d.example> NOTIFY=NEVER"),
    (b"EHLO   client.example  \r\n", "EHLO", "client.example", "EHLO   client.example"),
    (b"  helo x\r\n", "HELO", "x", "helo x"),
    (b"QUIT   \r\n", "QUIT", None, "QUIT"),
    (b"NOOP \t \r\n", "NOOP", None, "NOOP"),
    (b"\r\n", "", None, ""),
    (b"AUTH PLAIN AGZvbwBiYXI=\r\n", "AUTH", "PLAIN AGZvbwBiYXI=", "AUTH PLAIN AGZvbwBiYXI="),
])
def test_command_split_into_upper_cased_verb_and_argument(raw, verb, arg, line):
    assert feed([raw]) == [Command(verb, arg, line)]


def test_argument_keeps_inner_spaces_and_case():
    [event] = feed([b"MAIL FROM:<Mixed.Case@Example.org>  SIZE=12  BODY=8BITMIME\r\n"])
    assert event.verb == "MAIL"
    assert event.arg == "FROM:<Mixed.Case@Example.org>  SIZE=12  BODY=8BITMIME"


def test_non_ascii_bytes_survive_as_surrogates():
    raw = b"HELO \xff\xfe.example\r\n"
    [event] = feed([raw])
    assert event.verb == "HELO"
    assert event.arg.encode("utf-8", "surrogateescape") == b"\xff\xfe.example"


def test_pipelined_batch_in_one_receive_gives_all_commands_in_order():
    batch = (b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
             b"RCPT TO:<e@f.example>\r\nRSET\r\nNOOP\r\nQUIT\r\n")
    conn = Connection()
    conn.receive_data(batch)
    events = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
    assert [e.verb for e in events] == ["EHLO", "MAIL", "RCPT", "RCPT", "RSET", "NOOP", "QUIT"]
    assert [e.arg for e in events] == ["client.example", "FROM:<a@b.example>",
                                       "TO:<c@d.example>", "TO:<e@f.example>", None, None, None]
    assert conn.buffered == 0


def test_partial_lines_across_receives():
    conn = Connection()
    for piece in (b"MA", b"IL FROM:<a", b"@b.example>"):
        conn.receive_data(piece)
        assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\r")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\nRCPT TO:<c@d.exa")
    assert conn.next_event() == Command("MAIL", "FROM:<a@b.example>", "MAIL FROM:<a@b.example>")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"mple>\r\n")
    assert conn.next_event() == Command("RCPT", "TO:<c@d.example>", "RCPT TO:<c@d.example>")
    assert conn.next_event() is NEED_DATA


def test_one_byte_at_a_time_gives_the_same_commands():
    batch = b"HELO a\r\nMAIL FROM:<>\r\nRCPT TO:<x@y.example>\r\nQUIT\r\n"
    assert feed(one_byte_chunks(batch)) == feed([batch])
    assert commands(feed([batch])) == ["HELO a", "MAIL FROM:<>", "RCPT TO:<x@y.example>", "QUIT"]


# -- CRLF required -----------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"NOOP\n", b"\n", b"NOOP\nQUIT\r\n", b"NOOP\r\r\n\n"])
def test_bare_lf_in_command_mode_is_refused_then_closed(raw):
    conn = Connection()
    conn.receive_data(raw)
    events = []
    while (event := conn.next_event()) not in (NEED_DATA, CLOSED):
        events.append(event)
    assert events[-1] == BareLineFeed(in_data=False)
    assert all(e.verb != "QUIT" for e in events if isinstance(e, Command))
    assert conn.next_event() is CLOSED
    # Nothing received afterwards is framed any more.
    conn.receive_data(b"QUIT\r\n")
    assert conn.next_event() is CLOSED


def test_bare_lf_after_good_commands_keeps_the_good_ones():
    events = feed([b"NOOP\r\nRSET\nMAIL FROM:<a@b.example>\r\n"])
    assert events == [cmd("NOOP"), BareLineFeed(in_data=False), CLOSED]


def test_lf_split_from_its_cr_is_still_crlf():
    assert feed([b"NOOP\r", b"\n"]) == [cmd("NOOP")]
    assert feed([b"NOOP", b"\r", b"\n", b"RSET\r", b"\nQUIT\r\n"]) == \
        [cmd("NOOP"), cmd("RSET"), cmd("QUIT")]


@pytest.mark.parametrize("raw,octet", [
    (b"NOOP\rRSET\r\n", b"\r"), (b"MAIL FROM:<a@b.example>\x00\r\n", b"\x00"),
    (b"EHLO x\x00y\rz\r\n", b"\x00"), (b"\rNOOP\r\n", b"\r"),
])
def test_cr_or_nul_in_a_command_refuses_that_command_only(raw, octet):
    """A CR without LF does not end a line; the line is refused, the next one is framed."""
    for chunks in ([raw + b"QUIT\r\n"], one_byte_chunks(raw + b"QUIT\r\n")):
        assert feed(chunks) == [ForbiddenOctet(octet, in_data=False), cmd("QUIT")]


# -- line length -------------------------------------------------------------------------------

@pytest.mark.parametrize("limit", [16, 1000, 8192])
def test_exact_limit_is_accepted_and_one_more_is_too_long(limit):
    exact = b"X" * limit
    assert feed([exact + b"\r\n"], limit) == [Command("X" * limit, None, "X" * limit)]
    assert feed([exact + b"Y\r\nNOOP\r\n"], limit) == [LineTooLong(), cmd("NOOP")]


@pytest.mark.parametrize("length", [15, 16, 17, 18, 40])
def test_limit_boundary_is_the_same_whatever_the_split(length):
    limit = 16
    raw = b"X" * length + b"\r\nNOOP\r\n"
    expected = ([Command("X" * length, None, "X" * length)] if length <= limit
                else [LineTooLong()]) + [cmd("NOOP")]
    assert feed([raw], limit) == expected
    for cut in range(1, len(raw)):
        assert feed(split_at(raw, [cut]), limit) == expected, cut
    assert feed(one_byte_chunks(raw), limit) == expected


def test_james_default_limit_ehlo_8192_a_is_too_long_and_next_command_works():
    # James checklist item 2: EHLO <8192 x A> -> 500, then EHLO test -> 250.
    raw = b"EHLO " + b"A" * 8192 + b"\r\nEHLO test\r\n"
    assert feed([raw]) == [LineTooLong(), cmd("EHLO test")]


def test_larger_limit_accepts_a_16k_command():
    # James checklist item 3: maxLineLength=65536 accepts EHLO <16384 x A>.
    line = "EHLO " + "A" * 16384
    assert feed([line.encode() + b"\r\n"], 65536) == [cmd(line)]


def test_long_line_across_several_receives_without_lf_gives_one_line_too_long():
    limit = 1000
    conn = Connection(limit)
    events = []
    for _ in range(10):
        conn.receive_data(b"A" * 700)
        while (event := conn.next_event()) is not NEED_DATA:
            events.append(event)
        assert conn.buffered <= limit + 700
    conn.receive_data(b"A" * 10 + b"\r")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\nNOOP\r\nQUIT\r\n")
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
    assert events == [LineTooLong(), cmd("NOOP"), cmd("QUIT")]


def test_long_command_line_memory_stays_bounded():
    limit, piece = 8192, 64 * 1024
    conn = Connection(limit)
    events = []
    for _ in range(5 * 1024 * 1024 // piece):
        conn.receive_data(b"B" * piece)
        assert conn.buffered <= limit + piece + 2
        while (event := conn.next_event()) is not NEED_DATA:
            events.append(event)
        assert conn.buffered <= limit + 2
    conn.receive_data(b"\r\nNOOP\r\n")
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
    assert events == [LineTooLong(), cmd("NOOP")]


def test_line_too_long_between_good_commands():
    raw = b"NOOP\r\n" + b"Z" * 50 + b"\r\nRSET\r\n" + b"Z" * 50 + b"\r\nQUIT\r\n"
    expected = [cmd("NOOP"), LineTooLong(), cmd("RSET"), LineTooLong(), cmd("QUIT")]
    assert feed([raw], 20) == expected
    assert feed(one_byte_chunks(raw), 20) == expected


@pytest.mark.parametrize("chunks", [
    pytest.param([b"A" * 60 + b"\nMAIL FROM:<smuggled@evil.example>\r\n"], id="one-piece"),
    pytest.param([b"A" * 60, b"\nMAIL FROM:<smuggled@evil.example>\r\n"], id="split-before-lf"),
    pytest.param([b"A" * 30, b"A" * 30, b"\nMAIL FROM:<smuggled@evil.example>\r\n"],
                 id="three-pieces"),
])
def test_over_long_command_line_ending_in_bare_lf_is_refused_whatever_the_chunking(chunks):
    """The line terminator of an over-long line must still be CRLF: a bare LF may not end it
    (and so frame the following command) just because the long line arrived in several
    receives.  The same bytes must give the same events however they are chunked."""
    events = feed(chunks, 40)
    assert BareLineFeed(in_data=False) in events
    assert "MAIL FROM:<smuggled@evil.example>" not in commands(events)
    assert events == feed([b"".join(chunks)], 40)


# -- EOF ---------------------------------------------------------------------------------------

def test_eof_gives_closed():
    conn = Connection()
    conn.receive_data(b"")
    assert conn.next_event() is CLOSED
    assert conn.next_event() is CLOSED


def test_complete_lines_before_eof_are_still_delivered():
    conn = Connection()
    conn.receive_data(b"NOOP\r\nQUIT\r\n")
    conn.receive_data(b"")
    assert conn.next_event() == cmd("NOOP")
    assert conn.next_event() == cmd("QUIT")
    assert conn.next_event() is CLOSED


def test_partial_line_at_eof_is_dropped():
    conn = Connection()
    conn.receive_data(b"NOOP\r\nQUI")
    conn.receive_data(b"")
    assert conn.next_event() == cmd("NOOP")
    assert conn.next_event() is CLOSED


def test_eof_inside_long_line_gives_closed():
    assert feed([b"A" * 100], 16, eof=True) == [LineTooLong(), CLOSED]


def test_eof_in_data_mode_gives_closed_without_end_of_data():
    events = feed([b"DATA\r\nSubject: x\r\n\r\nbody"], eof=True)
    assert events[0] == cmd("DATA")
    assert events[-1] is CLOSED
    assert not any(isinstance(e, EndOfData) for e in events)


# -- data mode ---------------------------------------------------------------------------------

def test_start_data_switches_modes_and_end_of_data_switches_back():
    conn = Connection()
    conn.receive_data(b"DATA\r\n")
    assert conn.next_event() == cmd("DATA")
    assert conn.mode == COMMAND
    conn.start_data()
    assert conn.mode == DATA
    conn.receive_data(b"hello\r\n.\r\n")
    assert conn.next_event() == BodyChunk(b"hello\r\n")
    assert conn.next_event() == EndOfData(7, False)
    assert conn.mode == COMMAND
    assert conn.next_event() is NEED_DATA


def test_without_start_data_body_lines_are_commands():
    # A refused DATA (503) leaves the engine in command mode: pipelined body lines are then
    # parsed as commands (James behaves the same).
    events = feed([b"DATA\r\nSubject: x\r\n.\r\n"], auto_data=False)
    assert commands(events) == ["DATA", "Subject: x", "."]


@pytest.mark.parametrize("raw_body,body", [
    (b"..x\r\n", b".x\r\n"),
    (b".x\r\n", b"x\r\n"),                       # RFC 5321 4.5.2: the first '.' is deleted
    (b"..\r\n", b".\r\n"),
    (b"...\r\n", b"..\r\n"),
    (b"a\r\n..b\r\n.c\r\n..\r\nd.\r\n", b"a\r\n.b\r\nc\r\n.\r\nd.\r\n"),
    (b"x.y\r\n", b"x.y\r\n"),                    # a dot not at line start is kept
    (b". \r\n", b" \r\n"),
])
def test_dot_unstuffing(raw_body, body):
    raw = b"DATA\r\n" + raw_body + b".\r\nQUIT\r\n"
    for chunks in ([raw], one_byte_chunks(raw)):
        events = feed(chunks)
        assert bodies(events) == [body]
        assert [e for e in events if isinstance(e, EndOfData)] == [EndOfData(len(raw_body))]
        assert commands(events) == ["DATA", "QUIT"]


@pytest.mark.parametrize("raw_body", [
    b"a\n.\nb\r\n",          # LF . LF
    b"a\r.\rb\r\n",          # CR . CR
    b"abc.\r\n",             # '.' CRLF mid-line
    b"a\r\n.\rb\r\n",        # CRLF . CR (no LF)
    b"a\r\n. \r\n",          # CRLF . SP CRLF
    b"a\r\n .\r\n",          # CRLF SP . CRLF
    b"a\r\n..\r\n",          # stuffed dot line
])
def test_end_of_data_only_at_crlf_dot_crlf(raw_body):
    raw = b"DATA\r\n" + raw_body + b".\r\n"
    events = feed([raw])
    if not is_canonical(raw_body):
        # A bare LF or CR is refused outright: no end of data is ever produced from it.
        assert events[-2:] in ([BareLineFeed(in_data=True), CLOSED],
                               [ForbiddenOctet(b"\r", in_data=True), CLOSED])
        assert not any(isinstance(e, EndOfData) for e in events)
    else:
        ends = [e for e in events if isinstance(e, EndOfData)]
        assert ends == [EndOfData(len(raw_body))]
        assert isinstance(normalise(events)[-1], EndOfData)


def test_empty_body():
    for chunks in ([b"DATA\r\n.\r\n"], [b"DATA\r\n", b".\r\n"], [b"DATA\r\n", b".", b"\r", b"\n"]):
        events = feed(chunks)
        assert events == [cmd("DATA"), EndOfData(0, False)]


def test_commands_following_end_of_data_in_the_same_receive():
    raw = (b"DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\n"
           b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nsecond\r\n.\r\nQUIT\r\n")
    events = feed([raw])
    assert commands(events) == ["DATA", "MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>",
                                "DATA", "QUIT"]
    assert bodies(events) == [b"Subject: hi\r\n\r\nbody\r\n", b"second\r\n"]
    assert normalise(events) == normalise(feed(one_byte_chunks(raw)))


def test_james_pipelined_transaction():
    # James checklist item 9: the whole transaction in one write.
    raw = (b"HELO TEST\r\nMAIL FROM:<test@localhost>\r\nRCPT TO:<test2@localhost>\r\nDATA\r\n"
           b"Subject: test\r\n\r\ncontent\r\n.\r\nquit\r\n")
    events = feed([raw])
    assert [type(e).__name__ for e in normalise(events)] == [
        "Command", "Command", "Command", "Command", "BodyChunk", "EndOfData", "Command"]
    assert events[-1] == Command("QUIT", None, "quit")
    assert bodies(events) == [b"Subject: test\r\n\r\ncontent\r\n"]


def test_end_of_data_size_counts_raw_octets():
    raw_body = b"..leading\r\n.x\r\nplain\r\n\r\n"
    raw = b"DATA\r\n" + raw_body + b".\r\n"
    for chunks in ([raw], one_byte_chunks(raw), split_at(raw, [7, 9, 20, len(raw) - 2])):
        events = feed(chunks)
        assert [e for e in events if isinstance(e, EndOfData)] == [EndOfData(len(raw_body))]
        assert bodies(events) == [b".leading\r\nx\r\nplain\r\n\r\n"]


def test_size_and_flag_reset_between_messages():
    limit = 20
    raw = (b"DATA\r\n" + b"L" * 30 + b"\r\n.\r\n"
           b"DATA\r\nshort\r\n.\r\n")
    events = feed([raw], limit)
    assert [e for e in events if isinstance(e, EndOfData)] == [EndOfData(32, True),
                                                               EndOfData(7, False)]


def test_body_chunks_carry_crlfs_and_are_not_held_back():
    conn = Connection()
    conn.receive_data(b"DATA\r\n")
    assert conn.next_event() == cmd("DATA")
    conn.start_data()
    conn.receive_data(b"line one\r\nline t")
    assert conn.next_event() == BodyChunk(b"line one\r\n")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"wo\r\n")
    assert conn.next_event() == BodyChunk(b"line two\r\n")
    conn.receive_data(b".")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\r\n")
    assert conn.next_event() == EndOfData(20, False)


# -- bare LF in data and SMTP smuggling ----------------------------------------------------------

@pytest.mark.parametrize("raw_body", [
    b"a\nb\r\n", b"\n", b"a\r\nb\n", b"ok\r\n\n",
])
def test_bare_lf_inside_data_is_refused_then_closed(raw_body):
    conn = Connection()
    events = feed([b"DATA\r\n" + raw_body + b".\r\nQUIT\r\n"], conn=conn)
    assert BareLineFeed(in_data=True) in events
    assert events[-1] is CLOSED
    assert not any(isinstance(e, EndOfData) for e in events)
    assert commands(events) == ["DATA"]
    conn.receive_data(b".\r\nQUIT\r\n")
    assert conn.next_event() is CLOSED


SMUGGLED_COMMANDS = ["MAIL FROM:<smuggled@evil.test>", "RCPT TO:<victim@remote.example>"]


def chunkings_around(raw: bytes, at: int, width: int) -> list[list[bytes]]:
    """The same bytes in one read, one byte per read, and cut at every offset around ``at``."""
    return [[raw], one_byte_chunks(raw), split_at(raw, range(at - 1, at + width + 2))]


@pytest.mark.parametrize("sequence", ALL_SEQUENCES, ids=sequence_id)
def test_scanner_sequences_are_refused_and_close_the_session(sequence):
    """Every fake end of data of both scanners holds a bare CR, a bare LF or a NUL: the
    message is refused where that octet is seen, nothing after it is framed, whatever the
    chunking."""
    message = smuggling_message(sequence)
    raw = b"DATA\r\n" + message + b".\r\nQUIT\r\n"
    at = len(b"DATA\r\n") + message.index(sequence)
    for chunks in chunkings_around(raw, at, len(sequence)):
        events = feed(chunks)
        assert commands(events) == ["DATA"]
        assert not any(isinstance(e, EndOfData) for e in events)
        refusal, closed = events[-2:]
        assert closed is CLOSED
        assert isinstance(refusal, (BareLineFeed, ForbiddenOctet)) and refusal.in_data
        assert refusal == feed([raw])[-2]   # the same answer whatever the chunking


@pytest.mark.parametrize("sequence", ALL_SEQUENCES, ids=sequence_id)
def test_scanner_sequences_with_normalize_are_content_in_canonical_form(sequence):
    """With ``normalize`` only the real CRLF.CRLF ends the message; the fake end and the
    smuggled transaction are body text, handed out with CRLF line ends only and no NUL."""
    message = smuggling_message(sequence)
    raw = b"DATA\r\n" + message + b".\r\nQUIT\r\n"
    at = len(b"DATA\r\n") + message.index(sequence)
    results = []
    for chunks in chunkings_around(raw, at, len(sequence)):
        events = feed(chunks, conn=Connection(normalize=True))
        assert commands(events) == ["DATA", "QUIT"]
        [body] = bodies(events)
        assert is_canonical(body)
        assert b"MAIL FROM:<smuggled@evil.test>\r\n" in body
        assert body.endswith(b"smuggled body\r\n")
        results.append(body)
    assert results == [results[0]] * len(results)


@pytest.mark.parametrize("raw_body,body", [
    (b"a\nb\r\n", b"a\r\nb\r\n"),
    (b"X-Inject: x\rFrom: <ceo@example.org>\r\n\r\nbody\rmore\r\n",
     b"X-Inject: x From: <ceo@example.org>\r\n\r\nbody\r\nmore\r\n"),
    (b"S: a\r\n\r\nnul\x00here\r\n", b"S: a\r\n\r\nnulhere\r\n"),
    (b"S: a\n\nbody\n..dot\r\n", b"S: a\r\n\r\nbody\r\n.dot\r\n"),
    (b"a\n.\r\nb\r\n", b"a\r\n\r\nb\r\n"),   # LF . CRLF is no end: an unstuffed dot line
])
def test_normalize_mode_body(raw_body, body):
    raw = b"DATA\r\n" + raw_body + b".\r\nQUIT\r\n"
    for chunks in ([raw], one_byte_chunks(raw)):
        events = feed(chunks, conn=Connection(normalize=True))
        assert bodies(events) == [body]
        assert [e for e in events if isinstance(e, EndOfData)] == [EndOfData(len(raw_body))]


def test_normalize_mode_takes_a_bare_lf_as_the_end_of_a_command_line():
    events = feed([b"NOOP\nRSET\r\nNOOP\rX\n"], conn=Connection(normalize=True))
    assert events == [cmd("NOOP"), cmd("RSET"), ForbiddenOctet(b"\r", in_data=False)]


@pytest.mark.parametrize("raw_body,octet", [
    (b"line\rmore\r\n", b"\r"), (b"nul\x00\r\n", b"\x00"), (b"a\r\r\n", b"\r"),
    (b"ok\r\nx\x00y\nz\r\n", b"\x00"),   # the first forbidden octet is the one reported
])
def test_bare_cr_or_nul_inside_data_is_refused_then_closed(raw_body, octet):
    conn = Connection()
    events = feed([b"DATA\r\n" + raw_body + b".\r\nQUIT\r\n"], conn=conn)
    assert events[-2:] == [ForbiddenOctet(octet, in_data=True), CLOSED]
    assert commands(events) == ["DATA"]
    conn.receive_data(b"QUIT\r\n")
    assert conn.next_event() is CLOSED


# -- over-long body lines and bounded memory -------------------------------------------------------

@pytest.mark.parametrize("length,too_long", [(99, False), (100, False), (101, True), (500, True)])
def test_body_line_length_flag(length, too_long):
    limit = 100
    raw_body = b"ok\r\n" + b"B" * length + b"\r\nafter\r\n"
    raw = b"DATA\r\n" + raw_body + b".\r\nNOOP\r\n"
    for chunks in ([raw], split_at(raw, range(0, len(raw), 37)), one_byte_chunks(raw)):
        events = feed(chunks, limit)
        assert [e for e in events if isinstance(e, EndOfData)] == \
            [EndOfData(len(raw_body), too_long)]
        assert commands(events) == ["DATA", "NOOP"]
        if not too_long:
            assert bodies(events) == [raw_body]


def test_over_long_last_line_flags_end_of_data():
    limit = 50
    raw_body = b"C" * 51 + b"\r\n"
    events = feed([b"DATA\r\n" + raw_body + b".\r\n"], limit)
    assert events[-1] == EndOfData(len(raw_body), True)


def test_five_megabyte_body_line_keeps_memory_bounded():
    limit, piece = 8192, 64 * 1024
    total = 5 * 1024 * 1024
    conn = Connection(limit)
    conn.receive_data(b"DATA\r\n")
    assert conn.next_event() == cmd("DATA")
    conn.start_data()
    events = []
    peak = 0
    line = (b"0123456789abcdef" * (piece // 16))[:piece]
    for _ in range(total // piece):
        conn.receive_data(line)
        peak = max(peak, conn.buffered)
        assert conn.buffered <= limit + piece + 3
        while (event := conn.next_event()) is not NEED_DATA:
            events.append(event)
        assert conn.buffered <= limit + 3
    conn.receive_data(b"\r\n.\r\nQUIT\r\n")
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
    assert peak <= limit + piece + 3
    ends = [e for e in events if isinstance(e, EndOfData)]
    assert ends == [EndOfData(total + 2, True)]
    assert events[-1] == cmd("QUIT")
    # What was handed out is bounded too: the over-long line was not delivered whole.
    assert sum(len(e.data) for e in events if isinstance(e, BodyChunk)) <= limit + 16


def test_over_long_body_line_does_not_hide_the_end_marker():
    limit = 64
    for tail in (b"\r\n.\r\n", b"\r", b"."):
        conn = Connection(limit)
        events = feed([b"DATA\r\n", b"x" * 1000 + tail], conn=conn)
        rest = {b"\r\n.\r\n": b"", b"\r": b"\n.\r\n", b".": b"\r\n.\r\n"}[tail]
        events += feed([rest + b"NOOP\r\n"], conn=conn)
        assert [e for e in events if isinstance(e, EndOfData)] == [
            EndOfData(1000 + len(tail) + len(rest) - 3, True)], tail
        assert commands(events) == ["DATA", "NOOP"]


def test_over_long_body_line_ending_in_a_dot_is_not_the_end_marker():
    limit = 64
    raw = b"DATA\r\n" + b"y" * 200 + b".\r\nstill body\r\n.\r\n"
    for chunks in ([raw], split_at(raw, [6 + 150]), split_at(raw, [6 + 200]),
                   split_at(raw, [6 + 201])):
        events = feed(chunks, limit)
        assert [e for e in events if isinstance(e, EndOfData)] == [EndOfData(len(raw) - 9, True)]
        assert bodies(events)[0].endswith(b"still body\r\n")
