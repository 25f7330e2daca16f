"""``verifyIdentity``: authenticated users may only send as themselves (James's
``SenderAuthIdentifyVerificationHook``).

* strict (``true``): an authenticated user's MAIL FROM must be one of the user's identities
  (the user, its address aliases, and those under its domain's aliases) in a local domain,
  else ``503 5.7.1``; an unauthenticated client outside ``authorizedAddresses`` may not use
  a local sender (``530 5.7.1``).  Checked again at RCPT (AUTH may follow MAIL) and on the
  ``From:`` header at the end of DATA.
* relaxed: as strict, except that the unauthenticated rule applies only to clients that look
  like mail user agents (their HELO name is not a dotted domain name).
* disabled (``false``): no checks.
The null sender ``<>`` always passes.
"""

from __future__ import annotations

import re
from email.utils import getaddresses

from chainmail.protocol.replies import R
from chainmail.verdict import HookResult

_MX_LIKE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$")


def _mode(session) -> str:
    return session.config.verify_identity


def _allowed(session, address: str) -> bool:
    """Whether the authenticated user may use ``address`` as a sender."""
    server = session.server
    users, rrt = server.users, server.rrt
    name = users.username_for(address) if users is not None else address.lower()
    domain = name.rpartition("@")[2]
    if not server.is_local_domain(domain):
        return False
    if name == session.auth_user:
        return True
    return rrt is not None and name in rrt.identities_of(session.auth_user)


def _looks_like_mx(session) -> bool:
    helo = session.helo_name or ""
    return bool(_MX_LIKE.match(helo))


class SenderAuthIdentifyVerificationHook:

    parameters = ()

    def _check_sender(self, session, sender):
        mode = _mode(session)
        if mode == "disabled" or sender is None:
            return None
        if session.auth_user:
            if not _allowed(session, str(sender)):
                return HookResult.reply(R.wrong_identity)
            return None
        if session.relaying_allowed or not session.server.is_local_domain(sender.domain_lower):
            return None
        if mode == "relaxed" and _looks_like_mx(session):
            return None
        return HookResult.reply(R.auth_required)

    def on_mail(self, session, sender):
        return self._check_sender(session, sender)

    def on_rcpt(self, session, sender):
        return self._check_sender(session, sender)

    def on_message(self, session, message):
        mode = _mode(session)
        if mode == "disabled" or (mode == "relaxed" and not session.auth_user):
            return None
        values = from_headers(message.head)
        if not values:
            return HookResult.reply(R.missing_from)
        if not session.auth_user:
            return None
        addresses = [addr for _, addr in getaddresses(values)]
        if not addresses or any(not addr or "@" not in addr or not _allowed(session, addr)
                                for addr in addresses):
            return HookResult.reply(R.wrong_identity)
        return None


def from_headers(head: bytes) -> list[str]:
    """The values of the ``From:`` fields of a header section (unfolded).  A plain scan: this
    runs for every message, and the email package's parsers cost ten times more."""
    values: list[str] = []
    current: list[str] | None = None
    for line in head.split(b"\r\n"):
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line.decode("utf-8", "replace"))
            continue
        current = None
        if line[:5].lower() == b"from:":
            current = [line[5:].decode("utf-8", "replace")]
            values.append(current)  # type: ignore[arg-type]
    return [" ".join(part.strip() for part in v) for v in values]  # type: ignore[union-attr]
