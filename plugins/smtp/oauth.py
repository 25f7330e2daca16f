"""SASL OAUTHBEARER (RFC 7628) and XOAUTH2: bearer tokens from an OpenID Connect provider.

Both are mechanisms of the AUTH command (:class:`.auth.AuthCmdHandler`), present only when
the server block has ``<auth><oidc>``, and usable (and listed in EHLO, after LOGIN and
PLAIN) only where ``auth.requireSSL`` allows: over TLS, or anywhere when it is false.
Elsewhere they answer ``504 5.5.4 Unrecognized Authentication Type``, as in James.

Either mechanism accepts either payload style, in the initial response or after ``334``:

* XOAUTH2: ``user=<user>^Aauth=Bearer <token>^A^A``;
* OAUTHBEARER: ``n,a=<user>,^Ahost=...^Aport=...^Aauth=Bearer <token>^A^A`` (the gs2
  header; ``=2C`` and ``=3D`` in the user stand for ``,`` and ``=``).

Exactly one user and one token are required, else ``501 5.5.2 Could not decode
parameters``.  The token is validated by :class:`chainmail.oidc.OidcVerifier`; the user
named in the payload must be the token's user (the configured claim), compared as user
names are (case-insensitive, ``+detail`` ignored).

Outcomes, as James:

* valid: ``235 2.7.0 Authentication Successful``; the session is authenticated and may relay;
* invalid token: ``334 <base64 {"status":"invalid_token","scope":...,"schemes":...}>``
  (RFC 7628 §3.2.2); the client's next line ends the exchange with
  ``535 5.7.8 Authentication Failed`` (``*``: ``501 5.7.1 Authentication aborted``);
* payload user is not the token's user: ``535 5.7.8``;
* provider unreachable, too slow or answering with an error: ``451 4.7.0 Temporary
  authentication failure``.

Refusals count toward the AUTH failure limit of the session.  Tokens are never logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

from chainmail.protocol.replies import R, Reply
from chainmail.store.users import username_for

from .sasl import decode_response

__all__ = ["OAUTH_MECHANISMS", "OAuthPayload", "OAuthMechanism", "parse_payload"]

log = logging.getLogger("chainmail.auth")

OAUTH_MECHANISMS = ("OAUTHBEARER", "XOAUTH2")   # James's order, after LOGIN and PLAIN


@dataclass(frozen=True, slots=True)
class OAuthPayload:
    user: str
    token: str

    def __repr__(self) -> str:   # never show the token
        return f"OAuthPayload(user={self.user!r})"




def _saslname(value: str) -> str | None:
    """RFC 5801 ``saslname``: ``=2C`` is ``,`` and ``=3D`` is ``=``; any other ``=`` is an error."""
    out, i = [], 0
    while i < len(value):
        ch = value[i]
        if ch == "=":
            code = value[i + 1:i + 3].upper()
            if code == "2C":
                out.append(",")
            elif code == "3D":
                out.append("=")
            else:
                return None
            i += 3
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def parse_payload(data: bytes) -> OAuthPayload | None:
    """The user and the bearer token of an OAUTHBEARER or XOAUTH2 client response, or None
    when it is malformed (no user, no token, one of them twice, not ``Bearer``)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    fields = text.split("\x01")
    user: str | None = None
    head = fields[0]
    if head[:2] in ("n,", "y,"):
        # RFC 7628 gs2-header: gs2-cb-flag "," [ "a=" saslname ] ","
        authzid, comma, rest = head[2:].partition(",")
        if not comma or rest:
            return None
        if authzid:
            if not authzid.startswith("a="):
                return None
            user = _saslname(authzid[2:])
            if user is None:
                return None
        fields = fields[1:]
    token: str | None = None
    for field in fields:
        if not field:
            continue
        key, eq, value = field.partition("=")
        if not eq:
            return None
        if key == "auth":
            scheme, _, credentials = value.partition(" ")
            if token is not None or scheme.lower() != "bearer" or not credentials.strip():
                return None
            token = credentials.strip()
        elif key in ("user", "a"):          # XOAUTH2 style, or James's lenient "a=" field
            if user is not None:
                return None
            user = value[:-1] if key == "a" and value.endswith(",") else value
        # host=, port= and any other key=value pair: not needed here
    if not user or not user.strip() or not token:
        return None
    return OAuthPayload(user.strip(), token)


class OAuthMechanism:
    """One of OAUTHBEARER and XOAUTH2 (they differ only in name)."""

    def __init__(self, name: str):
        self.name = name

    @staticmethod
    def available(session) -> bool:
        """James's ``isAvailableOnTransport``: ``<oidc>`` set, and ``!requireSSL || TLS``."""
        auth = session.config.auth
        return auth.oidc is not None and (not auth.require_ssl or session.tls is not None)

    async def start(self, handler, session, initial: str | None) -> Reply:
        if initial is None:
            session.line_handler = partial(self.respond, handler)
            return R.auth_challenge("")
        return await self.respond(handler, session, initial)

    async def respond(self, handler, session, line: str) -> Reply:
        if line.strip() == "*":
            return R.auth_aborted
        data = decode_response(line)
        payload = None if data is None else parse_payload(data)
        if payload is None:
            return R.auth_cannot_decode(self.name)
        verifier = handler.oidc_verifier(session)
        # chainmail.oidc (joserfc, cryptography) is loaded only where <oidc> is configured
        from chainmail.oidc import InvalidToken, ProviderUnavailable
        try:
            verified = await verifier.verify(payload.token)
        except ProviderUnavailable as exc:
            log.error("%s: AUTH %s for %r: identity provider unavailable: %s", session, self.name,
                      payload.user, exc)
            return R.auth_temporary_failure
        except InvalidToken as exc:
            log.warning("%s: AUTH %s for %r: invalid token: %s", session, self.name, payload.user, exc)
            session.line_handler = partial(self._after_error, handler, payload.user)
            return R.auth_challenge(verifier.error_challenge)
        users = session.server.users
        normalize = users.username_for if users is not None else username_for
        name = normalize(verified.user)
        if normalize(payload.user) != name:
            log.warning("%s: AUTH %s as %r refused: the token is for %r", session, self.name,
                        payload.user, verified.user)
            return handler.auth_failed(session, self.name, payload.user)
        return handler.auth_succeeded(session, name, self.name)

    async def _after_error(self, handler, user: str, session, line: str) -> Reply:
        """RFC 7628 §3.2.3: the client acknowledges the error challenge with a dummy line."""
        return handler.auth_failed(session, self.name, user, aborted=line.strip() == "*")


MECHANISMS = tuple(OAuthMechanism(name) for name in OAUTH_MECHANISMS)
