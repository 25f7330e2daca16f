"""The rules of an SMTP/LMTP byte stream, as tables (h11's model).

Which reader frames the next bytes depends on the state.  The state moves on what the client
sent (an event the engine produced) and on what the server answered
(:meth:`chainmail.protocol.engine.Connection.send`), never on anything else, so the same
bytes and the same answers always give the same framing.

========================  ==================================================================
state                     reader
========================  ==================================================================
``COMMAND``               CRLF-terminated command lines (:meth:`Connection._next_command_event`)
``DATA``                  a DATA body up to ``CRLF . CRLF``, dot-unstuffed
``CHUNK``                 exactly the octets a ``BDAT`` line announced (RFC 3030), unparsed
``TLS_HANDSHAKE``         nothing: the server runs the handshake, then calls ``start_tls()``
``CLOSED``                nothing: a closing reply was sent or the stream cannot be framed
========================  ==================================================================

A ``BDAT`` line moves to ``CHUNK`` as soon as it is read, before any reply: the client sends
the chunk right behind it (RFC 3030 §2), and it is read as data whatever the reply to the
command will be, so that no byte of a chunk is ever taken for a command.  DATA moves only
once the server has answered ``354``: until then the client sends nothing more.
"""

from __future__ import annotations

__all__ = [
    "COMMAND", "DATA", "CHUNK", "TLS_HANDSHAKE", "CLOSED_STATE", "UNFRAMABLE", "CLIENT_TRANSITIONS",
    "SERVER_TRANSITIONS", "after_client_event", "after_reply",
]

COMMAND = "command"
DATA = "data"
CHUNK = "chunk"
TLS_HANDSHAKE = "tls-handshake"
CLOSED_STATE = "closed"

#: The client event that leaves a stream that can no longer be framed: a bare LF ending a
#: line (outside ``normalize``), a bare CR or NUL in DATA, a BDAT line whose size is lost.
UNFRAMABLE = "unframable"

#: (state, event type name) -> next state, for what the client sent.  Events not listed
#: leave the state as it is.
CLIENT_TRANSITIONS: dict[tuple[str, str], str] = {
    (COMMAND, "BdatCommand"): CHUNK,
    (DATA, "EndOfData"): COMMAND,
    (CHUNK, "EndOfChunk"): COMMAND,
    (COMMAND, UNFRAMABLE): CLOSED_STATE,
    (DATA, UNFRAMABLE): CLOSED_STATE,
}

#: (state, verb of the command answered, reply code) -> next state, for what the server sent.
#: Any reply that closes the connection moves to ``CLOSED`` from every state.
SERVER_TRANSITIONS: dict[tuple[str, str, int], str] = {
    (COMMAND, "DATA", 354): DATA,
    (COMMAND, "STARTTLS", 220): TLS_HANDSHAKE,
}


def after_client_event(state: str, event_type: str) -> str:
    """The state once the client's event of type ``event_type`` has been read."""
    return CLIENT_TRANSITIONS.get((state, event_type), state)


def after_reply(state: str, verb: str | None, code: int, close: bool) -> str:
    """The state once the server has answered ``code`` to the command ``verb``."""
    if close:
        return CLOSED_STATE
    if verb is None:
        return state
    return SERVER_TRANSITIONS.get((state, verb, code), state)
