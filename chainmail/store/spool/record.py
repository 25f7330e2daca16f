"""What a queued message is (:class:`Envelope`, :class:`QueuedMessage`) and how it is
written as a segment record.

Segment record (version 1)::

    header, 64 bytes, little-endian:
        magic "CMSR", version 1, kind "M" | "D", 1 pad byte,
        ref (u64: for D, the sequence number of the segment holding the message),
        meta length (u32), body length (u32), id (33 ASCII bytes),
        body CRC32 (u32), head CRC32 (u32, over the first 60 header bytes and the meta)
    meta: UTF-8 JSON {"id", "queued_at", "envelope"} (empty for D)
    body: exactly as received

The meta (:func:`_encode_meta`) is also the trailer of a large message's file
(:mod:`.largefiles`).
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RECORD_VERSION", "Envelope", "QueuedMessage", "SpoolFormatError"]

#: Version of the segment record format.
RECORD_VERSION = 1

_ID_RE = re.compile(r"[0-9a-f]{12}-[0-9a-f]{20}")
_ID_LEN = 33

_MAGIC = b"CMSR"
_KIND_MESSAGE = ord("M")
_KIND_REMOVED = ord("D")
_HEAD = struct.Struct("<4sBBxQII33sI")  # everything but the head CRC
_CRC = struct.Struct("<I")
_HEAD_LEN = _HEAD.size + _CRC.size
assert _HEAD_LEN == 64
_MAX_META = 16 * 1024 * 1024
_MAX_RECORD_BODY = 0xFFFFFFFF
_SCAN_CHUNK = 1024 * 1024


class SpoolFormatError(ValueError):
    """A message in the queue is not stored in a valid format."""


@dataclass
class Envelope:
    """SMTP envelope and processing state of a message."""

    sender: str  # "" for the null reverse-path <>
    recipients: list[str]
    mail_params: dict[str, str | None] = field(default_factory=dict)
    rcpt_params: list[dict[str, str | None]] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    state: str = "root"
    error_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        # Written for each message: json.dumps serialises the nested containers itself, so
        # no deep copy (dataclasses.asdict) is needed.
        return {"sender": self.sender, "recipients": self.recipients,
                "mail_params": self.mail_params, "rcpt_params": self.rcpt_params,
                "attributes": self.attributes, "state": self.state,
                "error_count": self.error_count}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Envelope:
        return cls(
            sender=data["sender"],
            recipients=list(data["recipients"]),
            mail_params=dict(data.get("mail_params", {})),
            rcpt_params=[dict(p) for p in data.get("rcpt_params", [])],
            attributes=dict(data.get("attributes", {})),
            state=data.get("state", "root"),
            error_count=int(data.get("error_count", 0)),
        )


@dataclass(frozen=True)
class QueuedMessage:
    id: str
    envelope: Envelope
    size: int  # body bytes
    queued_at: float  # epoch seconds
    path: str  # the segment file holding the message, or its queue/ file
    offset: int = 0  # where the body starts in ``path``


def _encode_meta(msg_id: str, envelope: Envelope, queued_at: float) -> bytes:
    doc = {"id": msg_id, "queued_at": queued_at, "envelope": envelope.to_dict()}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _decode_meta(meta: bytes | memoryview, msg_id: str) -> tuple[float, Envelope]:
    try:
        doc = json.loads(bytes(meta).decode("utf-8"))
        envelope = Envelope.from_dict(doc["envelope"])
        queued_at = float(doc["queued_at"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SpoolFormatError(f"{msg_id}: bad envelope: {exc}") from None
    if doc.get("id") != msg_id:
        raise SpoolFormatError(f"{msg_id}: record holds message {doc.get('id')!r}")
    return queued_at, envelope


# ------------------------------------------------------------ segment records


def _encode_record(kind: int, msg_id: str, ref: int, meta: bytes, body: bytes | bytearray) -> bytes:
    """The header of a record; the record is header + meta + body."""
    head = _HEAD.pack(
        _MAGIC, RECORD_VERSION, kind, ref, len(meta), len(body), msg_id.encode("ascii"),
        zlib.crc32(body),
    )
    return head + _CRC.pack(zlib.crc32(meta, zlib.crc32(head)))


@dataclass(frozen=True)
class _Record:
    kind: int
    id: str
    ref: int
    offset: int  # of the header
    meta_len: int
    body_len: int
    body_crc: int

    @property
    def end(self) -> int:
        return self.offset + _HEAD_LEN + self.meta_len + self.body_len


def _parse_head(head: bytes | memoryview) -> tuple[int, str, int, int, int, int, int] | None:
    """(kind, id, ref, meta length, body length, body CRC, head CRC) of a plausible
    header, or None."""
    if len(head) < _HEAD_LEN or bytes(head[:4]) != _MAGIC:
        return None
    magic, version, kind, ref, meta_len, body_len, raw_id, body_crc = _HEAD.unpack_from(head)
    (head_crc,) = _CRC.unpack_from(head, _HEAD.size)
    if version != RECORD_VERSION or kind not in (_KIND_MESSAGE, _KIND_REMOVED):
        return None
    if meta_len > _MAX_META:
        return None
    try:
        msg_id = raw_id.decode("ascii")
    except UnicodeDecodeError:
        return None
    if not _ID_RE.fullmatch(msg_id):
        return None
    return kind, msg_id, ref, meta_len, body_len, body_crc, head_crc


class _ChunkReader:
    """pread() through a read-ahead window, for scanning a segment front to back."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._base = 0
        self._buf = b""

    def get(self, offset: int, n: int) -> memoryview:
        """Bytes ``[offset, offset + n)``, fewer at the end of the file."""
        n = max(0, min(n, self.size - offset))
        start = offset - self._base
        if 0 <= start and start + n <= len(self._buf):
            return memoryview(self._buf)[start : start + n]
        if n > _SCAN_CHUNK:
            return memoryview(os.pread(self.fd, n, offset))
        self._buf = os.pread(self.fd, min(_SCAN_CHUNK, self.size - offset), offset)
        self._base = offset
        return memoryview(self._buf)[:n]


_OK, _INCOMPLETE, _BAD_HEAD, _BAD_META, _BAD_BODY = range(5)


def _read_record(reader: _ChunkReader, pos: int) -> tuple[int, _Record | None]:
    """Check the record at ``pos``: (status, record).  The record is given for
    ``_OK``, for ``_BAD_BODY`` (its header, and so its length, can be trusted) and
    for ``_BAD_META`` (the head CRC failed: its length is only a guess)."""
    if reader.size - pos < _HEAD_LEN:
        return _INCOMPLETE, None
    head = reader.get(pos, _HEAD_LEN)
    parsed = _parse_head(head)
    if parsed is None:
        return _BAD_HEAD, None
    kind, msg_id, ref, meta_len, body_len, body_crc, head_crc = parsed
    if pos + _HEAD_LEN + meta_len > reader.size:
        return _INCOMPLETE, None
    meta = reader.get(pos + _HEAD_LEN, meta_len)
    record = _Record(kind, msg_id, ref, pos, meta_len, body_len, body_crc)
    if zlib.crc32(meta, zlib.crc32(head[: _HEAD.size])) != head_crc:
        return (_BAD_META, record) if record.end <= reader.size else (_BAD_HEAD, None)
    if record.end > reader.size:
        return _INCOMPLETE, None
    if kind == _KIND_REMOVED and (meta_len or body_len):
        return _BAD_HEAD, None
    if zlib.crc32(reader.get(pos + _HEAD_LEN + meta_len, body_len)) != body_crc:
        return _BAD_BODY, record
    return _OK, record
