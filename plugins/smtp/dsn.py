"""RFC 3461 DSN on the receiving side: James's ``org.apache.james.smtpserver.dsn`` hooks.

The client asks for delivery status notifications with ``RET``/``ENVID`` on MAIL and
``NOTIFY``/``ORCPT`` on RCPT.  These handlers announce ``DSN`` (EHLO and LHLO) and check the
parameters' syntax; the values travel unchanged with the mail (the spool envelope and the
:class:`~chainmail.mailet.api.Mail` keep every MAIL and RCPT parameter), where the reports
(``chainmail.mailet.dsn``) and RemoteDelivery's client read them.  Without these handlers in
the chain (James's default) DSN is not announced and ``NOTIFY``/``ORCPT`` are refused with 504.
"""

from __future__ import annotations

from chainmail.protocol.xtext import XtextError, decode_envid, parse_orcpt
from chainmail.verdict import HookResult

__all__ = ["DSNEhloHook", "DSNMailParameterHook", "DSNRcptParameterHook", "DSNMessageHook",
           "check_notify"]

_NOTIFY_WORDS = ("SUCCESS", "FAILURE", "DELAY")


def _bad(text: str) -> HookResult:
    return HookResult.deny(501, text, "5.5.4")


class DSNEhloHook:
    """Announces ``DSN`` in the EHLO and LHLO replies."""

    parameters = ()

    def ehlo_keywords(self, session):
        return ("DSN",)


class DSNMailParameterHook:
    """``RET=FULL|HDRS`` and ``ENVID=<xtext>`` on MAIL (RFC 3461 §4.3, §4.4)."""

    parameters = ()
    mail_parameters = ("RET", "ENVID")

    def on_mail_parameter(self, session, name, value):
        if name == "RET":
            if value is None or value.upper() not in ("FULL", "HDRS"):
                return _bad("Invalid RET parameter: must be FULL or HDRS")
            return None
        if value is None:
            return _bad("Invalid ENVID parameter: a value is required")
        try:
            decode_envid(value)
        except XtextError as exc:
            return _bad(f"Invalid ENVID parameter: {exc}")
        return None


def check_notify(value: str | None) -> str | None:
    """Why ``value`` is not a valid ``NOTIFY`` (RFC 3461 §4.1), or None when it is."""
    if not value:
        return "a value is required"
    words = [w.upper() for w in value.split(",")]
    if words == ["NEVER"]:
        return None
    if "NEVER" in words:
        return "NEVER cannot be combined with other values"
    for word in words:
        if word not in _NOTIFY_WORDS:
            return "must be NEVER or a list of SUCCESS, FAILURE, DELAY"
    if len(set(words)) != len(words):
        return "a value is listed twice"
    return None


class DSNRcptParameterHook:
    """``NOTIFY`` and ``ORCPT`` on RCPT (RFC 3461 §4.1, §4.2).  A valid recipient gets no
    verdict from here: the other ``on_rcpt`` hooks (relay check, ``ValidRcptHandler``) decide."""

    parameters = ()
    rcpt_parameters = ("NOTIFY", "ORCPT")

    def on_rcpt(self, session, parameters):
        if "NOTIFY" in parameters:
            problem = check_notify(parameters["NOTIFY"])
            if problem is not None:
                return _bad(f"Invalid NOTIFY parameter: {problem}")
        if "ORCPT" in parameters:
            value = parameters["ORCPT"]
            if value is None:
                return _bad("Invalid ORCPT parameter: a value is required")
            try:
                parse_orcpt(value)
            except XtextError as exc:
                return _bad(f"Invalid ORCPT parameter: {exc}")
        return None


class DSNMessageHook:
    """James stores the DSN parameters on the mail here.  chainmail needs no copy: the spool
    envelope keeps every MAIL and RCPT parameter, and the mail the container (and LMTP's
    delivery) works on is made from it.  Kept so that James's chains load unchanged."""

    parameters = ()
