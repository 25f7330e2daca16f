"""SMTP AUTH (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms, and OAUTHBEARER
(RFC 7628) and XOAUTH2 for OpenID Connect bearer tokens.

Policy, in ``<auth>`` of the server block:

* ``announce``: whether EHLO lists ``AUTH`` (see :func:`.relay.auth_announced`);
* ``requireSSL`` (default true): without TLS, AUTH is not announced and the password
  mechanisms are refused with ``538 5.7.11`` (stricter than James, on purpose: no passwords
  in clear text);
* ``plainAuthEnabled=false``: PLAIN and LOGIN are neither announced nor accepted;
* ``required``: :class:`AuthRequiredHook` refuses MAIL from clients that neither
  authenticated nor connect from ``authorizedAddresses``.

Passwords are checked against the users repository in a worker thread (the hash is slow by
design) and never logged.  A client that fails too often is disconnected.

With ``<auth><oidc>``, the bearer-token mechanisms OAUTHBEARER and XOAUTH2 of
:mod:`.oauth` are offered too (after LOGIN and PLAIN, as James lists them); they need TLS
when ``requireSSL`` is true, and answer ``504`` instead of ``538`` where they are not
available, as James does.
"""

from __future__ import annotations

import logging

import trio

from chainmail import metrics
from chainmail.protocol.replies import R, Reply
from chainmail.store.users import UsersUnavailable
from chainmail.verdict import HookResult

from .oauth import MECHANISMS as OAUTH_MECHANISMS
from .relay import auth_announced
from .sasl import decode_response

log = logging.getLogger("chainmail.auth")

MAX_FAILURES = 3
PASSWORD_MECHANISMS = ("LOGIN", "PLAIN")   # James's order in EHLO


def password_mechanisms(session) -> tuple[str, ...]:
    return PASSWORD_MECHANISMS if session.config.auth.plain_auth_enabled else ()


def oauth_mechanisms(session) -> tuple:
    """The OAuth mechanisms usable on this session (``<oidc>`` set, channel allowed)."""
    return tuple(m for m in OAUTH_MECHANISMS if m.available(session))




class AuthCmdHandler:
    """The AUTH command, its EHLO keywords and the MAIL ``AUTH=`` parameter."""

    parameters = ()

    commands = ("AUTH",)
    mail_parameters = ("AUTH",)

    def __init__(self):
        self._verifiers: dict = {}   # OidcConfig -> OidcVerifier (JWKS cache per server block)

    def configure(self, config) -> None:
        server = getattr(config, "server", None)
        if server is not None and server.config.auth.oidc is not None:
            self._verifier_for(server.config.auth.oidc)

    def _verifier_for(self, oidc):
        verifier = self._verifiers.get(oidc)
        if verifier is None:
            from chainmail.oidc import OidcVerifier
            verifier = self._verifiers[oidc] = OidcVerifier(oidc)
        return verifier

    def oidc_verifier(self, session):
        """The token verifier of this session's ``<auth><oidc>``."""
        return self._verifier_for(session.config.auth.oidc)

    def ehlo_keywords(self, session):
        mechanisms = password_mechanisms(session) + tuple(m.name for m in oauth_mechanisms(session))
        if not mechanisms or not auth_announced(session):
            return None
        listed = " ".join(mechanisms)
        return (f"AUTH {listed}", f"AUTH={listed}")

    def on_mail_parameter(self, session, name, value):
        return None  # RFC 4954 §5: accepted; the submitter's identity is not relayed on

    async def on_command(self, session, command):
        if session.auth_user:
            return R.auth_already
        if session.transaction.has_sender:
            return R.auth_in_transaction
        if not command.arg:
            return R.auth_usage
        mechanism, _, initial = command.arg.partition(" ")
        mechanism = mechanism.upper()
        if mechanism not in password_mechanisms(session):
            for oauth in oauth_mechanisms(session):
                if oauth.name == mechanism:
                    return await oauth.start(self, session, initial.strip() or None)
            return R.auth_unknown_mechanism
        if session.config.auth.require_ssl and session.tls is None:
            return R.auth_encryption_required
        initial = initial.strip() or None
        if mechanism == "PLAIN":
            if initial is None:
                session.line_handler = self._plain_response
                return R.auth_challenge("")
            return await self._plain_response(session, initial)
        if initial is None:
            session.line_handler = self._login_username
            return R.auth_challenge("VXNlcm5hbWU6")  # "Username:"
        return await self._login_username(session, initial)

    # -- PLAIN --------------------------------------------------------------------------
    async def _plain_response(self, session, line: str) -> Reply:
        if line.strip() == "*":
            return R.auth_aborted
        data = decode_response(line)
        if data is None:
            return R.auth_cannot_decode("PLAIN")
        parts = data.split(b"\x00")
        if len(parts) == 4 and parts[3] == b"":   # legacy trailing NUL
            parts = parts[:3]
        if len(parts) == 2:
            parts = [b""] + parts
        if len(parts) != 3 or not parts[1]:
            return R.auth_cannot_decode("PLAIN")
        try:
            authzid, authcid, password = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            return R.auth_cannot_decode("PLAIN")
        return await self._check(session, "PLAIN", authcid, password, authzid or None)

    # -- LOGIN --------------------------------------------------------------------------
    async def _login_username(self, session, line: str) -> Reply:
        if line.strip() == "*":
            return R.auth_aborted
        data = decode_response(line)
        if data is None:
            return R.auth_cannot_decode("LOGIN")
        try:
            username = data.decode("utf-8")
        except UnicodeDecodeError:
            return R.auth_cannot_decode("LOGIN")

        async def password_step(session, line: str) -> Reply:
            if line.strip() == "*":
                return R.auth_aborted
            secret = decode_response(line)
            if secret is None:
                return R.auth_cannot_decode("LOGIN")
            try:
                password = secret.decode("utf-8")
            except UnicodeDecodeError:
                return R.auth_cannot_decode("LOGIN")
            return await self._check(session, "LOGIN", username, password, None)

        session.line_handler = password_step
        return R.auth_challenge("UGFzc3dvcmQ6")  # "Password:"

    # -- verification ---------------------------------------------------------------------
    async def _check(self, session, mechanism: str, username: str, password: str,
                     authzid: str | None) -> Reply:
        users = session.server.users
        if users is None:
            log.error("%s: AUTH without a users repository", session)
            return R.unable_to_process
        try:
            ok = await trio.to_thread.run_sync(users.verify, username, password,
                                               limiter=session.server.limiter)
        except UsersUnavailable as exc:
            log.warning("%s: AUTH %s for %r not checked: %s", session, mechanism, username, exc)
            return R.auth_temporary_failure
        name = users.username_for(username) if ok else username
        if ok and authzid is not None and users.username_for(authzid) != name:
            ok = False  # acting as another user (delegation) is not granted
            log.warning("%s: AUTH %s as %r for %r refused: delegation is not allowed", session,
                        mechanism, username, authzid)
        if ok:
            return self.auth_succeeded(session, name, mechanism)
        return self.auth_failed(session, mechanism, username)

    # -- outcomes, shared by every mechanism -------------------------------------------------
    def auth_succeeded(self, session, name: str, mechanism: str) -> Reply:
        session.auth_user = name
        session.relaying_allowed = True
        session.state.pop("auth_failures", None)
        metrics.auth_attempt(mechanism, True)
        log.info("%s: authenticated %s with %s", session, name, mechanism)
        return R.auth_ok

    def auth_failed(self, session, mechanism: str, username: str, *, aborted: bool = False) -> Reply:
        """A refusal: counted toward :data:`MAX_FAILURES` (then 421 and close); ``aborted``
        answers ``501 Authentication aborted`` instead of ``535``."""
        failures = session.state.get("auth_failures", 0) + 1
        session.state["auth_failures"] = failures
        metrics.auth_attempt(mechanism, False)
        log.warning("%s: AUTH %s failed for %r (%d/%d)", session, mechanism, username, failures,
                    MAX_FAILURES)
        if failures >= MAX_FAILURES:
            return R.auth_too_many_failures(session.hostname)
        return R.auth_aborted if aborted else R.auth_failed


class AuthRequiredHook:
    """``auth.required``: MAIL only from authenticated clients or ``authorizedAddresses``."""

    parameters = ()

    def on_mail(self, session):
        if session.config.auth.required and not session.relaying_allowed:
            return HookResult.reply(R.auth_required)
        return None
