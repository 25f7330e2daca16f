"""STARTTLS (RFC 3207): announce it, answer it; the server core does the handshake."""

from __future__ import annotations

from chainmail.protocol.replies import R


class StartTlsCmdHandler:
    parameters = ()

    commands = ("STARTTLS",)

    def ehlo_keywords(self, session):
        if session.config.tls.start_tls and session.tls is None:
            return ("STARTTLS",)
        return None

    def on_command(self, session, command):
        if not session.config.tls.start_tls or session.server.tls is None:
            return None  # not offered: "500 5.5.1 Command STARTTLS unrecognized."
        if session.tls is not None:
            return R.tls_already_active
        if command.arg:
            return R.unable_to_process.closing()
        if session.auth_user:
            return R.tls_after_auth
        session.tls_requested = True
        return R.tls_ready
