"""The fake end-of-data sequences of two public SMTP-smuggling scanners, as test data.

The scanners need network access to run; their lists are short and public, so they are
written down here and every test that needs them takes them from this table.

- SEC Consult, SMTP-Smuggling-Tools, ``smtp_smuggling_scanner.py``
  (https://github.com/The-Login/SMTP-Smuggling-Tools): ``inbound_eod_sequences`` and
  ``outbound_eod_sequences``.
- Hanno Böck, smtpsmug (https://github.com/hannob/smtpsmug): its ``tests`` table (the
  ``nullbefore`` and ``nullafter`` entries are the same sequence there).

A scanner writes a message, then one of these sequences, then a second transaction
(``MAIL FROM:<smuggled@...>``, ``RCPT``, ``DATA``, a message), then the real ``CRLF.CRLF``.
"""

from __future__ import annotations

SEC_CONSULT_INBOUND = [
    b"\n.\n", b"\n.\r", b"\r.\n", b"\r.\r", b"\n.\r\n", b"\r.\r\n", b"\r\n\x00.\r\n",
]
SEC_CONSULT_OUTBOUND = [
    b"\n.\n", b"\n.\r", b"\r.\n", b"\r.\r", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r\r\n",
    b"\r\r\n.\r\r\n", b"\r\n\x00.\r\n",
]
SMTPSMUG = {
    "lflf": b"\n.\n", "crcr": b"\r.\r", "crlf": b"\r.\n", "lfcr": b"\n.\r",
    "lfcrlf": b"\n.\r\n", "crlflf": b"\r\n.\n", "crcrlf": b"\r.\r\n", "crlfcr": b"\r\n.\r",
    "nullbefore": b"\r\n\x00.\r\n", "nullafter": b"\r\n\x00.\r\n",
}

# Every distinct sequence of the three lists, in a stable order.
ALL_SEQUENCES: list[bytes] = list(dict.fromkeys(
    [*SEC_CONSULT_INBOUND, *SEC_CONSULT_OUTBOUND, *SMTPSMUG.values()]))


def sequence_id(seq: bytes) -> str:
    """A readable pytest id: ``\\r\\n\\x00.\\r\\n``."""
    return repr(seq)[2:-1]


def smuggling_message(sequence: bytes, smuggled_sender: str = "smuggled@evil.test",
                      rcpt: str = "victim@remote.example") -> bytes:
    """A message carrying ``sequence`` followed by a second transaction, as the scanners
    write it (without the final ``CRLF.CRLF``)."""
    return (b"From: sender@local.test\r\nTo: " + rcpt.encode() + b"\r\nSubject: smuggling\r\n\r\n"
            b"outer body" + sequence
            + f"MAIL FROM:<{smuggled_sender}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n"
              f"From: {smuggled_sender}\r\nSubject: SMUGGLED\r\n\r\nsmuggled body\r\n".encode())


def bare_octets(data: bytes) -> list[str]:
    """What ``data`` holds that a receiver could take for a line end or that RFC 5321 does
    not allow: ``["bare CR", "bare LF", "NUL"]`` or a part of it; empty when clean."""
    found = []
    stripped = data.replace(b"\r\n", b"")
    if b"\r" in stripped:
        found.append("bare CR")
    if b"\n" in stripped:
        found.append("bare LF")
    if b"\x00" in data:
        found.append("NUL")
    return found
