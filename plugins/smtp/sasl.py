"""The one piece of SASL framing every AUTH mechanism shares (RFC 4954 §4)."""

from __future__ import annotations

import base64
import binascii

__all__ = ["decode_response"]


def decode_response(line: str) -> bytes | None:
    """A client's response line: base64, or ``=`` for an empty response; None when it is
    not valid base64."""
    line = line.strip()
    if line == "=":
        return b""
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        return None
