"""REQUIRETLS (RFC 8689) on the receiving side, and James's ``EnforceMtaSts``.

A client asks with ``MAIL FROM:<..> REQUIRETLS`` that its message travel only over verified
TLS from here on.  The flag is kept with the MAIL parameters in the spool envelope; the
outgoing queue enforces it (``chainmail.remote.tlspolicy``).  Receiving rules:

- ``REQUIRETLS`` is announced only inside TLS (RFC 8689 §4.1), and a MAIL asking for it on a
  clear connection is refused: ``530 5.7.10 REQUIRETLS needs a TLS session``;
- the parameter takes no value (``501 5.5.4``);
- with ``REQUIRETLS``, a ``TLS-Required`` header field is ignored (RFC 8689 §4.1): the
  message keeps it as sent and nothing here acts on it.  Without ``REQUIRETLS``, a
  ``TLS-Required: No`` field tags the mail with the ``TLS-Required`` attribute (value
  ``No``), as RFC 8689 §4.1 asks of a receiver.
"""

from __future__ import annotations

import re

from chainmail.protocol.replies import Reply
from chainmail.verdict import HookResult

__all__ = ["SmtpRequireTlsEhloHook", "SmtpRequireTlsParameterHook", "SmtpRequireTlsMessageHook",
           "EnforceMtaSts", "PARAMETER", "ATTR_REQUIRETLS", "ATTR_TLS_REQUIRED"]

PARAMETER = "REQUIRETLS"
#: James's mail attribute (the outgoing queue reads it as well as the MAIL parameter).
ATTR_REQUIRETLS = "REQUIRETLS"
#: The value of a ``TLS-Required`` header field of a mail sent without ``REQUIRETLS``.
ATTR_TLS_REQUIRED = "TLS-Required"

NEEDS_TLS = Reply.of(530, "REQUIRETLS needs a TLS session", "5.7.10")
TAKES_NO_VALUE = Reply.of(501, "REQUIRETLS takes no value", "5.5.4")
# James answers "571 StartTLS required", but 571 is no SMTP reply code (RFC 5321 §4.2.1);
# RFC 3207 §4 gives this one.
STARTTLS_FIRST = Reply.of(530, "Must issue a STARTTLS command first", "5.7.0")

_TLS_REQUIRED = re.compile(rb"(?im)^TLS-Required[ \t]*:[ \t]*([^\r\n]*)")


class SmtpRequireTlsEhloHook:
    """Announces ``REQUIRETLS`` on a TLS session only."""

    parameters = ()

    def ehlo_keywords(self, session):
        return (PARAMETER,) if session.tls is not None else None


class SmtpRequireTlsParameterHook:
    """Takes ``REQUIRETLS`` on MAIL: no value, and only inside TLS."""

    parameters = ()

    mail_parameters = (PARAMETER,)

    def on_mail_parameter(self, session, name, value):
        if value is not None:
            return HookResult.reply(TAKES_NO_VALUE)
        if session.tls is None:
            return HookResult.reply(NEEDS_TLS)
        return None


class SmtpRequireTlsMessageHook:
    """Tags the mail: ``REQUIRETLS`` (James's attribute, besides the MAIL parameter the
    spool envelope keeps), or the value of a ``TLS-Required`` field when the client did
    not ask for ``REQUIRETLS``."""

    parameters = ()

    def on_message(self, session, message):
        if PARAMETER in message.transaction.mail_params:
            message.attributes[ATTR_REQUIRETLS] = True
            return None
        found = _TLS_REQUIRED.search(message.head)
        if found is not None:
            message.attributes[ATTR_TLS_REQUIRED] = found.group(1).strip().decode(
                "ascii", "replace")
        return None


class EnforceMtaSts:
    """James's ``EnforceMtaSts``: MAIL only over TLS, for an MX whose MTA-STS policy says
    ``enforce`` (``530 5.7.0 Must issue a STARTTLS command first`` in clear)."""

    parameters = ()

    def on_mail(self, session):
        if session.tls is None:
            return HookResult.reply(STARTTLS_FIRST)
        return None
