"""Helpers shared by the engine tests: drive a Connection the way the server does."""

from __future__ import annotations

from chainmail.protocol.engine import (
    CLOSED, NEED_DATA, BareLineFeed, BodyChunk, Command, Connection, EndOfData,
)
from chainmail.protocol.replies import R


def drain(conn: Connection, events: list, auto_data: bool = True) -> bool:
    """Append every event available to ``events``; True once CLOSED was returned.

    ``auto_data`` answers ``354`` to each ``DATA`` command, as the server does: the engine's
    state table then reads the body.  The loop is bounded so an engine that stops making
    progress fails the test instead of hanging it.
    """
    for _ in range(conn.buffered + 16):
        event = conn.next_event()
        if event is NEED_DATA:
            return False
        events.append(event)
        if event is CLOSED:
            return True
        if auto_data and type(event) is Command and event.verb == "DATA":
            conn.send(R.start_data)
    raise AssertionError("next_event made no progress")


def feed(chunks, max_line_length: int = 8192, auto_data: bool = True, eof: bool = False,
         conn: Connection | None = None, chunking: bool = False) -> list:
    """Feed ``chunks`` one receive at a time, draining after each; return all events."""
    conn = conn if conn is not None else Connection(max_line_length, chunking=chunking)
    events: list = []
    for chunk in chunks:
        conn.receive_data(chunk)
        if drain(conn, events, auto_data):
            return events
    if eof:
        conn.receive_data(b"")
        drain(conn, events, auto_data)
    return events


def split_at(data: bytes, cuts) -> list[bytes]:
    cuts = sorted(set(c for c in cuts if 0 < c < len(data)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def one_byte_chunks(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def normalise(events: list) -> list:
    """Events with consecutive BodyChunks joined into one (chunking may split a body)."""
    out: list = []
    for event in events:
        if isinstance(event, BodyChunk) and out and isinstance(out[-1], BodyChunk):
            out[-1] = BodyChunk(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def bodies(events: list, end: type = EndOfData) -> list[bytes]:
    """The message contents delivered: BodyChunks joined per ``end`` event (EndOfData, or
    EndOfChunk for BDAT chunks)."""
    out, current = [], b""
    for event in events:
        if isinstance(event, BodyChunk):
            current += event.data
        elif isinstance(event, end):
            out.append(current)
            current = b""
    return out


def commands(events: list) -> list[str]:
    return [e.line for e in events if isinstance(e, Command)]


__all__ = [
    "drain", "feed", "split_at", "one_byte_chunks", "normalise", "bodies", "commands",
    "BareLineFeed", "BodyChunk", "Command", "Connection", "EndOfData", "CLOSED", "NEED_DATA",
]
