"""Line ends of message content: one canonical form, CRLF only and no NUL.

SMTP smuggling (CVE-2023-51764/5/6) works because two programs disagree on where a line, the
header section or the message data ends: one takes a bare CR or a bare LF as a line end, the
next does not.  chainmail refuses such data on the way in (``engine.py``) and, for content
that reached it another way (a mailet, a plugin, a spool or repository written by an older
version), every writer puts it in this canonical form on the way out, so that no reader down
the line can find a line end, a header field or an end of data that chainmail did not see.

The canonical form of a message (:func:`canonical`):

* NUL octets are removed (RFC 5321 §4.1.1.4 does not allow them in mail data);
* the header section ends at the first empty line, lines ending in CRLF or in a bare LF
  (:func:`head_end`; a bare CR is never a line end);
* in the header section a bare LF is a line end (CRLF), and a bare CR becomes a space, so
  ``X-Inject: x\\rFrom: <ceo@example.org>`` stays one ``X-Inject`` field instead of growing a
  ``From`` field that only some readers see; a line of nothing but white space and bare CRs
  is dropped, so that no reader can take what is left of it for the empty line that ends
  the section;
* in the body every bare CR and bare LF becomes CRLF.

Content that already is canonical is returned as is, after a check costing four scans of
the bytes at memory speed.
"""

from __future__ import annotations

import re

__all__ = ["is_canonical", "canonical", "head_end", "Canonicalizer", "ChunkLines", "first_forbidden"]

_BARE_CR = re.compile(rb"\r(?!\n)")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_ANY_LINE_END = re.compile(rb"\r\n|\r|\n")
_FORBIDDEN = re.compile(rb"\r(?!\n)|(?<!\r)\n|\x00")


def is_canonical(data: bytes) -> bool:
    """Whether ``data`` holds no NUL and every CR and LF in it is part of a CRLF."""
    crlf = data.count(b"\r\n")
    return data.count(b"\n") == crlf and data.count(b"\r") == crlf and b"\0" not in data


def first_forbidden(data: bytes) -> bytes | None:
    """The first forbidden octet in ``data``: ``b"\\n"`` (a bare LF), ``b"\\r"`` (a bare CR) or
    ``b"\\0"``; ``None`` if there is none.  The first by position, so that the answer does not
    depend on how a stream was cut into pieces (at line ends)."""
    if is_canonical(data):   # the usual case, at memory speed
        return None
    found = _FORBIDDEN.search(data)
    return None if found is None else found.group()


def _find_head_end(data: bytes) -> int:
    """Where the empty line ending the header section starts, or -1 if ``data`` (starting at
    a line start) has none."""
    if data[:1] == b"\n" or data[:2] == b"\r\n":
        return 0
    ends = [i + 1 for i in (data.find(b"\n\r\n"), data.find(b"\n\n")) if i >= 0]
    return min(ends) if ends else -1


def head_end(content: bytes) -> int:
    """Offset of the end of the header section of ``content`` (where the empty line, if any,
    starts; the whole length if there is none).  Lines end in CRLF or a bare LF."""
    end = _find_head_end(content)
    return len(content) if end < 0 else end


def _canonical_head(head: bytes) -> bytes:
    lines = head.split(b"\n")
    last = len(lines) - 1
    kept = []
    for i, line in enumerate(lines):
        text = line[:-1] if i < last and line.endswith(b"\r") else line   # without its CRLF
        if b"\r" in text and not text.strip(b" \t\r"):
            continue   # white space and bare CRs only: would be a blank line once converted
        kept.append(line if i == last else line + b"\n")
    head = _BARE_CR.sub(b" ", b"".join(kept))
    return _BARE_LF.sub(b"\r\n", head)


def _canonical_body(body: bytes) -> bytes:
    return _ANY_LINE_END.sub(b"\r\n", body)


def canonical(content: bytes) -> bytes:
    """``content`` in the canonical form described above (itself if it already is)."""
    if is_canonical(content):
        return content
    return Canonicalizer().feed(content)


class Canonicalizer:
    """:func:`canonical` for content that arrives in pieces (the engine's ``normalize``
    mode).  Each piece but the last must end with a line end (``\\n``); the engine only ever
    hands over whole lines."""

    __slots__ = ("in_head",)

    def __init__(self) -> None:
        self.in_head = True

    def feed(self, data: bytes) -> bytes:
        if not self.in_head:
            if is_canonical(data):
                return data
            return _canonical_body(data.replace(b"\0", b""))
        data = data.replace(b"\0", b"")
        end = _find_head_end(data)
        if end < 0:
            return data if is_canonical(data) else _canonical_head(data)
        self.in_head = False
        head, body = data[:end], data[end:]
        if not is_canonical(head):
            head = _canonical_head(head)
        if not is_canonical(body):
            body = _canonical_body(body)
        return head + body


class ChunkLines:
    """The line rules of DATA for message data sent in BDAT chunks (RFC 3030) with
    ``BODY=7BIT`` or ``8BITMIME``: chunks may cut a line, or a CRLF, anywhere, so whole
    lines are handed on and the rest waits for the next chunk.

    :meth:`feed` returns the whole lines received so far; with ``normalize`` they are in the
    canonical form (as DATA's ``normalize``), otherwise the first bare CR, bare LF or NUL
    is kept in :attr:`refused` and nothing more is handed on.  A line longer than
    ``max_line_length`` sets :attr:`line_too_long` and is dropped, so memory stays bounded.
    :meth:`close` hands on the last line, ended with CRLF if it had no line end."""

    __slots__ = ("max_line_length", "canonicalizer", "tail", "refused", "line_too_long")

    def __init__(self, max_line_length: int, normalize: bool = False):
        self.max_line_length = max_line_length
        self.canonicalizer = Canonicalizer() if normalize else None
        self.tail = b""
        self.refused: bytes | None = None
        self.line_too_long = False

    def feed(self, data: bytes) -> bytes:
        if self.refused is not None:
            return b""
        if self.tail:
            data = self.tail + data
        cut = data.rfind(b"\n") + 1
        whole, tail = data[:cut], data[cut:]
        limit = self.max_line_length + 2
        if len(tail) > limit:
            # An over-long line: drop what cannot matter (all but a CR that may pair with
            # the next LF), after checking it as the whole line would have been.
            self.line_too_long = True
            if self.canonicalizer is None:
                octet = first_forbidden(tail[:-1])
                if octet is not None:
                    self.refused = octet
                    return b""
            tail = tail[-1:]
        self.tail = tail
        return self._checked(whole)

    def close(self) -> bytes:
        tail, self.tail = self.tail, b""
        if not tail or self.refused is not None:
            return b""
        return self._checked(tail + (b"\n" if tail.endswith(b"\r") and self.canonicalizer
                                     else b"\r\n"))

    def _checked(self, lines: bytes) -> bytes:
        if not lines:
            return b""
        if self.canonicalizer is not None:
            return self.canonicalizer.feed(lines)
        if not self.line_too_long and has_long_line(lines, self.max_line_length):
            self.line_too_long = True
        octet = first_forbidden(lines)
        if octet is not None:
            self.refused = octet
            return b""
        return lines


def has_long_line(block: bytes, limit: int) -> bool:
    """Whether a line (CRLF excluded) in ``block`` is longer than ``limit``, without splitting
    the block into lines: a line longer than ``limit`` covers a whole aligned window of
    ``limit // 2`` octets, so only windows with no LF need a closer look."""
    n = len(block)
    if n <= limit + 2:
        return n - 2 > limit
    step = max(limit // 2, 1)
    for start in range(0, n, step):
        stop = min(start + step, n)
        if block.find(b"\n", start, stop) < 0:
            line_start = block.rfind(b"\n", 0, start) + 1
            line_end = block.find(b"\n", stop)
            if line_end < 0:
                line_end = n
            if line_end - line_start - 1 > limit:
                return True
    return False
