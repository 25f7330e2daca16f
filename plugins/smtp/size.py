"""RFC 1870 SIZE: announce the limit, refuse declared sizes above it.  The limit on the
received body itself is enforced while streaming (see :mod:`.data`)."""

from __future__ import annotations

from chainmail.protocol.replies import R
from chainmail.verdict import HookResult


class MailSizeEsmtpExtension:
    parameters = ()

    mail_parameters = ("SIZE",)

    def ehlo_keywords(self, session):
        limit = session.config.max_message_size
        return (f"SIZE {limit}",) if limit > 0 else None

    def on_mail_parameter(self, session, name, value):
        try:
            declared = int(value or "")
            if declared < 0:
                raise ValueError
        except ValueError:
            return HookResult.reply(R.bad_size)
        limit = session.config.max_message_size
        if limit > 0 and declared > limit:
            return HookResult.reply(R.size_exceeded)
        session.transaction.state["declared_size"] = declared
        return None
