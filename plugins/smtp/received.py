"""The ``Received:`` trace header (RFC 5321 §4.4), naming the client by IP address.

No reverse-DNS lookup is made: the header carries the HELO name and the IP, which is what a
reader can trust, and a lookup per connection is a cost and a dependency on outside DNS.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from email.utils import format_datetime

from .priority import effective_priority

_INDENT = "          "
_date_cache: list = [0, ""]


def _date() -> str:
    """RFC 5322 date of now, formatted once per second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = format_datetime(datetime.fromtimestamp(now, timezone.utc).astimezone())
    return _date_cache[1]


def _protocol(session) -> str:
    if session.lmtp:
        proto = "LMTP"
    else:
        proto = "ESMTP" if session.esmtp else "SMTP"
    if "SMTPUTF8" in session.transaction.mail_params:
        proto = "UTF8LMTP" if session.lmtp else "UTF8SMTP"   # RFC 6531 §3.7.3
    if proto != "SMTP":
        if session.tls is not None:
            proto += "S"
        if session.auth_user:
            proto += "A"
    return proto


class ReceivedHeaderHandler:
    """James's ``ReceivedDataLineFilter``."""

    parameters = ()

    def prepend_headers(self, session):
        ip = session.remote_ip
        literal = f"IPv6:{ip}" if ":" in ip else ip
        lines = [f"Received: from {session.helo_name or ip} ({session.helo_mode or 'HELO'} "
                 f"{session.helo_name or ''}) ([{literal}])"]
        if session.tls is not None:
            lines.append(f"{_INDENT}(using {session.tls.protocol} with cipher {session.tls.cipher})")
        by = f"{_INDENT}by {session.hostname} (chainmail) with {_protocol(session)} ID {session.id}"
        tx = session.transaction
        recipients = tx.recipients
        priority = effective_priority(session, tx.mail_params.get("MT-PRIORITY")) \
            if "MT-PRIORITY" in tx.mail_params else None
        end = ";" if priority is None else f" (PRIORITY {priority});"   # James
        if len(recipients) == 1:
            lines.append(by)
            lines.append(f"{_INDENT}for <{recipients[0]}>{end}")
        else:
            lines.append(by + end)
        lines.append(_INDENT + _date())
        return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")
