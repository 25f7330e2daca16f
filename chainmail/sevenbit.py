"""Making a message 7-bit for a server that lacks ``8BITMIME`` (RFC 6152) or ``SMTPUTF8``.

**Body** (:func:`to_seven_bit`), as Jakarta Mail's ``convertTo7Bit`` does for James: every leaf
MIME part whose content has 8-bit bytes is re-encoded, ``quoted-printable`` for ``text/*`` and
``base64`` otherwise; its ``Content-Transfer-Encoding`` is replaced and an
``X-MIME-Autoconverted`` field added.  The message is transformed in place, not re-serialised:
headers, boundaries and parts that need no change keep their bytes.  Beyond James:

- ``multipart/*`` and ``message/rfc822`` are walked into, never encoded (RFC 2046 §5 forbids
  encoding composite types); a composite part declared ``8bit``/``binary`` is relabelled ``7bit``;
- a part that already says ``quoted-printable`` or ``base64`` but carries stray 8-bit bytes
  keeps its encoding: the bytes are escaped as ``=XX`` (QP) or dropped (base64 decoders skip
  them anyway), so nothing is encoded twice;
- a message without ``MIME-Version`` gains ``MIME-Version: 1.0`` and, without a
  ``Content-Type``, ``text/plain`` with ``charset=utf-8`` when the body is UTF-8 (otherwise
  ``unknown-8bit``, RFC 1428), so that readers decode the new encoding;
- 8-bit bytes in a preamble or epilogue (which readers ignore) become ``?``.

**Headers** (:func:`downgrade_headers`): 8-bit bytes in a header need ``SMTPUTF8`` (RFC 6532);
``8BITMIME`` covers the body only.  Without ``SMTPUTF8``, RFC 6531 §3.2 leaves two choices:
downgrade or refuse.  We take the least surprising one that stays correct: the fields RFC 2047
§5 allows encoded-words in (``Subject``, ``Comments``, ``Content-Description`` and ``X-*``)
get their non-ASCII words encoded (``=?utf-8?b?...?=``, or ``unknown-8bit`` for bytes that are
not UTF-8); any other field with 8-bit bytes (addresses, ``Received``, MIME parameters...)
cannot be downgraded without changing its meaning, so the mail fails permanently with
``554 5.6.9`` (RFC 6531's "UTF-8 header message cannot be transferred").  The same applies to
the headers of parts and of attached messages when the body is converted.
"""

from __future__ import annotations

import base64
import binascii
import email.message
import re

from chainmail.protocol.lineends import is_canonical

__all__ = ["ConversionError", "has_8bit", "split_entity", "to_seven_bit", "to_lines",
           "for_line_store", "downgrade_headers"]

_BARE_LF = re.compile(rb"(?<!\r)\n")
_WORDS = re.compile(rb"([ \t]+)")
_UNSTRUCTURED = {"subject", "comments", "content-description"}
_ENCODED_CHUNK = 45     # bytes of text per encoded-word: 60 base64 chars, under RFC 2047's 75


class ConversionError(Exception):
    """The message cannot be made 7-bit without changing its meaning (``554 5.6.9``)."""

    code, enhanced = 554, "5.6.9"


def has_8bit(data: bytes) -> bool:
    return not data.isascii()


def split_entity(data: bytes) -> tuple[bytes, bytes, bytes]:
    """``(header block, blank line, body)``; the header block keeps its last CRLF."""
    if data.startswith(b"\r\n"):
        return b"", b"\r\n", data[2:]
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return data, b"", b""
    return data[:end + 2], b"\r\n", data[end + 4:]


def to_seven_bit(content: bytes, *, by: str = "localhost") -> bytes:
    """The message with a 7-bit body (the top-level header block is left to the caller)."""
    content = _BARE_LF.sub(b"\r\n", content)
    header, sep, body = split_entity(content)
    if not has_8bit(body):
        return content
    return _entity(header, sep, body, "text/plain", by, top=True)


def _not_lines(data: bytes) -> bool:
    """8-bit, or not CRLF lines: a bare CR, a bare LF or a NUL (binary content)."""
    return has_8bit(data) or not is_canonical(data)


def to_lines(content: bytes, *, by: str = "localhost") -> bytes:
    """A binary message (``BODY=BINARYMIME``, RFC 3030) as a 7-bit message of CRLF lines,
    for a store or a server that takes only lines: every leaf part whose body is 8-bit or
    holds a bare CR, a bare LF or a NUL is re-encoded in base64, byte for byte, as
    :func:`to_seven_bit` does for 8-bit parts; the header sections are left as they are."""
    header, sep, body = split_entity(content)
    if not _not_lines(body):
        return content
    return _entity(header, sep, body, "text/plain", by, top=True, needs=_not_lines)


def for_line_store(content: bytes, mail_params) -> bytes:
    """``content`` ready for a store of lines (a Maildir): :func:`to_lines` for a message
    received with ``BODY=BINARYMIME``, anything else as it is."""
    if str((mail_params or {}).get("BODY") or "").upper() == "BINARYMIME":
        return to_lines(content)
    return content


def downgrade_headers(header: bytes) -> bytes:
    """The header block with 8-bit words RFC 2047-encoded; :class:`ConversionError` if impossible."""
    if not has_8bit(header):
        return header
    return b"".join(_downgrade_field(f) if has_8bit(f) else f for f in _fields(header))


# ------------------------------------------------------------------ header fields

def _fields(header: bytes) -> list[bytes]:
    """Header fields with their folded continuation lines and CRLFs."""
    fields: list[bytes] = []
    for line in header.split(b"\r\n")[:-1] if header.endswith(b"\r\n") else header.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + b"\r\n"
        else:
            fields.append(line + b"\r\n")
    return fields


def _name(field: bytes) -> str:
    return field.partition(b":")[0].strip().lower().decode("latin-1")


def _value(fields: list[bytes], name: str) -> str | None:
    for f in fields:
        if _name(f) == name:
            return f.partition(b":")[2].replace(b"\r\n", b"").strip().decode("latin-1")
    return None


def _downgrade_field(field: bytes) -> bytes:
    name, _, value = field.partition(b":")
    key = name.strip().lower().decode("latin-1")
    if key not in _UNSTRUCTURED and not key.startswith("x-"):
        raise ConversionError(f"header field {name.decode('latin-1')!r} has non-ASCII bytes "
                              f"and the server does not offer SMTPUTF8")
    value = re.sub(rb"\r\n(?=[ \t])", b"", value).rstrip(b"\r\n").strip(b" \t")
    return name + b": " + _encode_words(value) + b"\r\n"


def _encode_words(value: bytes) -> bytes:
    """Runs of words with 8-bit bytes become encoded-words; ASCII words stay as they are."""
    tokens = _WORDS.split(value)
    out: list[bytes] = []
    run: list[bytes] = []
    for i, token in enumerate(tokens):
        if i % 2 == 0 and has_8bit(token):
            run.append(token)
        elif run and i % 2 == 1 and i + 1 < len(tokens) and has_8bit(tokens[i + 1]):
            run.append(token)     # whitespace inside a run is encoded with it
        else:
            if run:
                out.append(_encoded_words(b"".join(run)))
                run = []
            out.append(token)
    if run:
        out.append(_encoded_words(b"".join(run)))
    return b"".join(out)


def _encoded_words(text: bytes) -> bytes:
    try:
        chars, charset = text.decode("utf-8"), "utf-8"
        pieces = _utf8_pieces(chars)
    except UnicodeDecodeError:
        charset = "unknown-8bit"
        pieces = [text[i:i + _ENCODED_CHUNK] for i in range(0, len(text), _ENCODED_CHUNK)]
    words = [b"=?" + charset.encode() + b"?b?" + base64.b64encode(p) + b"?=" for p in pieces]
    return b"\r\n ".join(words)


def _utf8_pieces(chars: str) -> list[bytes]:
    """UTF-8 chunks that never split a character (RFC 2047 §5)."""
    pieces, current = [], b""
    for ch in chars:
        encoded = ch.encode("utf-8")
        if len(current) + len(encoded) > _ENCODED_CHUNK:
            pieces.append(current)
            current = b""
        current += encoded
    return pieces + [current] if current else pieces


# ------------------------------------------------------------------ MIME entities

def _content_type(fields: list[bytes], default: str) -> tuple[str, str | None]:
    value = _value(fields, "content-type")
    if value is None:
        return default, None
    msg = email.message.Message()
    msg["Content-Type"] = value
    return msg.get_content_type(), msg.get_boundary()


def _entity(header: bytes, sep: bytes, body: bytes, default: str, by: str, *, top: bool,
            needs=has_8bit) -> bytes:
    """One entity (a message or a body part) with a 7-bit body.  ``needs`` tells a body
    that must be re-encoded."""
    binary = needs is not has_8bit
    if not top and not binary:
        header = downgrade_headers(header)
    if not needs(body):
        return header + sep + body
    fields = _fields(header)
    ctype, boundary = _content_type(fields, default)
    if ctype.startswith("multipart/") and boundary:
        inner = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
        body = _multipart(body, boundary.encode("latin-1"), inner, by, needs)
        return _relabel_composite(fields) + sep + body
    if ctype == "message/rfc822":
        inner_header, inner_sep, inner_body = split_entity(body)
        if not binary:
            inner_header = downgrade_headers(inner_header)
        body = _entity(inner_header, inner_sep, inner_body, "text/plain", by, top=True,
                       needs=needs)
        return _relabel_composite(fields) + sep + body
    if binary and not is_canonical(body):
        ctype = "application/octet-stream"   # base64 keeps every octet; QP would not
    return _leaf(fields, sep, body, ctype, by, top=top)


def _multipart(body: bytes, boundary: bytes, default: str, by: str, needs=has_8bit) -> bytes:
    """Each part converted on its own; delimiters, preamble and epilogue kept."""
    delimiter = b"--" + boundary
    lines = body.split(b"\r\n")
    out: list[bytes] = []
    current: list[bytes] = []
    in_part = False
    for i, line in enumerate(lines):
        bare = line.rstrip(b" \t")
        if bare not in (delimiter, delimiter + b"--"):
            current.append(line)
            continue
        if current:
            chunk = b"\r\n".join(current)
            out.append(_part(chunk, default, by, needs) if in_part else _sanitise(chunk))
        out.append(line)
        current, in_part = [], True
        if bare == delimiter + b"--":
            if lines[i + 1:]:
                out.append(_sanitise(b"\r\n".join(lines[i + 1:])))
            return b"\r\n".join(out)
    if current:
        chunk = b"\r\n".join(current)
        out.append(_part(chunk, default, by, needs) if in_part else _sanitise(chunk))
    return b"\r\n".join(out)


def _part(data: bytes, default: str, by: str, needs=has_8bit) -> bytes:
    header, sep, body = split_entity(data)
    return _entity(header, sep, body, default, by, top=False, needs=needs)


def _sanitise(data: bytes) -> bytes:
    return bytes(b if b < 128 else 0x3F for b in data) if has_8bit(data) else data


def _cte(fields: list[bytes]) -> str:
    return (_value(fields, "content-transfer-encoding") or "7bit").lower()


def _relabel_composite(fields: list[bytes]) -> bytes:
    if _cte(fields) in ("8bit", "binary"):
        fields = _set_field(fields, "content-transfer-encoding", b"Content-Transfer-Encoding: 7bit")
    return b"".join(fields)


def _set_field(fields: list[bytes], name: str, line: bytes) -> list[bytes]:
    """``fields`` with the first ``name`` field replaced by ``line`` (appended when missing)."""
    out, done = [], False
    for f in fields:
        if _name(f) != name:
            out.append(f)
        elif not done:
            out.append(line + b"\r\n")
            done = True
    return out if done else out + [line + b"\r\n"]


def _leaf(fields: list[bytes], sep: bytes, body: bytes, ctype: str, by: str, *, top: bool) -> bytes:
    declared = _cte(fields)
    if declared == "quoted-printable":
        return b"".join(fields) + sep + re.sub(rb"[\x80-\xff]", lambda m: b"=%02X" % m.group()[0], body)
    if declared == "base64":
        return b"".join(fields) + sep + re.sub(rb"[\x80-\xff]", b"", body)
    encoding = "quoted-printable" if ctype.startswith("text/") else "base64"
    encoded = _quoted_printable(body) if encoding == "quoted-printable" else _base64(body)
    fields = _set_field(fields, "content-transfer-encoding",
                        f"Content-Transfer-Encoding: {encoding}".encode())
    fields.append(f"X-MIME-Autoconverted: from 8bit to {encoding} by {by}\r\n".encode())
    if top:
        fields = _mime_fields(fields, body)
    return b"".join(fields) + (sep or b"\r\n") + encoded


def _mime_fields(fields: list[bytes], body: bytes) -> list[bytes]:
    """A top-level leaf needs ``MIME-Version`` (and a charset) for its new encoding to count."""
    if _value(fields, "mime-version") is None:
        fields.append(b"MIME-Version: 1.0\r\n")
    if _value(fields, "content-type") is None:
        try:
            body.decode("utf-8")
            charset = "utf-8"
        except UnicodeDecodeError:
            charset = "unknown-8bit"
        fields.append(f"Content-Type: text/plain; charset={charset}\r\n".encode())
    return fields


def _quoted_printable(body: bytes) -> bytes:
    """Line by line, so CRLFs stay line breaks (RFC 2045 §6.7 rule 4)."""
    return b"\r\n".join(binascii.b2a_qp(line).replace(b"\n", b"\r\n") for line in body.split(b"\r\n"))


def _base64(body: bytes) -> bytes:
    return base64.encodebytes(body).replace(b"\n", b"\r\n").removesuffix(b"\r\n")
