"""OpenID Connect bearer tokens for SMTP AUTH (OAUTHBEARER, RFC 7628, and XOAUTH2).

:class:`OidcVerifier` does what James's ``OidcJwtTokenVerifier`` does, for one
``<auth><oidc>`` block:

1. the token is a signed JWT (JWS compact form) whose algorithm is an asymmetric one of
   :data:`ALGORITHMS` (``none`` and the HMAC algorithms are refused: a key set is public);
2. its signature verifies with a key of the provider's JWKS (``jwksURL``), chosen by ``kid``
   (a token without ``kid`` is tried against every key of the right type);
3. ``exp`` is present and not past, ``nbf`` and ``iat`` are not in the future, each with
   :data:`LEEWAY` seconds of clock skew; ``aud`` contains the configured audience;
4. the configured ``claim`` is a non-empty string: the user name;
5. then, when configured, RFC 7662 introspection (``active`` must be true and the
   response's claim equal to the token's) or else the userinfo endpoint (its claim must
   match).

The JWKS is cached (:class:`JwksCache`).  A token naming an unknown ``kid`` makes it
fetch the set again (key rotation), but never more often than once per
:data:`JWKS_REFETCH_FLOOR` seconds, so a flood of forged tokens cannot turn the mail
server into a load generator against the identity provider.

Every HTTP call goes through httpx's async client, which runs on trio: a slow provider
holds only the session that waits for it, and every call is bounded by ``timeout``.
Failures come out as two exceptions: :class:`InvalidToken` (the client's fault: SMTP
``535`` after the RFC 7628 error challenge) and :class:`ProviderUnavailable` (the
provider could not be asked, or answered with an error: SMTP ``451``, never an accept).
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

import trio
from joserfc import jwk, jws, jwt
from joserfc.errors import BadSignatureError, ExpiredTokenError, JoseError

if TYPE_CHECKING:  # pragma: no cover
    import httpx

__all__ = [
    "ALGORITHMS", "LEEWAY", "JWKS_REFETCH_FLOOR", "HTTP_TIMEOUT",
    "InvalidToken", "ProviderUnavailable", "VerifiedToken", "HttpClient", "JwksCache",
    "OidcVerifier", "error_challenge",
]

log = logging.getLogger("chainmail.oidc")

ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                        "ES256", "ES384", "ES512"})
"""Signature algorithms accepted on tokens.  Never ``none``, never ``HS*``."""
_KEY_TYPE = {"RS": "RSA", "PS": "RSA", "ES": "EC"}
_CURVE = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}

LEEWAY = 60
"""Seconds of clock skew allowed on ``exp``, ``nbf`` and ``iat``."""
JWKS_REFETCH_FLOOR = 10.0
"""Minimum seconds between two fetches of the JWKS (per server block)."""
JWKS_MAX_AGE = 3600.0
"""A cached JWKS older than this is fetched again on next use (keys may be withdrawn)."""
HTTP_TIMEOUT = 10.0
"""Seconds allowed for each call to the provider (connect, send, wait, read)."""
MAX_RESPONSE = 1 << 20
"""Largest provider response read (JWKS, introspection, userinfo)."""


class InvalidToken(Exception):
    """The token is not acceptable.  ``str(exc)`` says why (for the log, never the client)."""


class ProviderUnavailable(Exception):
    """The provider could not be reached, timed out or answered with an error."""


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    user: str
    """The value of the configured claim."""
    claims: Mapping[str, Any]


def error_challenge(scope: str, configuration_url: str) -> str:
    """RFC 7628 §3.2.2 error, base64 for the ``334`` challenge, as James sends it."""
    import base64
    body = json.dumps({"status": "invalid_token", "scope": scope, "schemes": configuration_url},
                      separators=(",", ":"))
    return base64.b64encode(body.encode("utf-8")).decode("ascii")


# -- HTTP -----------------------------------------------------------------------------------
class HttpClient:
    """The provider calls: one short-lived httpx client per request (no pool to close when
    the server stops), a TLS context built once with the system's trust store, a hard
    deadline per call and a bounded body."""

    def __init__(self, *, timeout: float = HTTP_TIMEOUT,
                 transport: "httpx.AsyncBaseTransport | None" = None):
        import httpx  # noqa: F401 - loaded with the configuration, not on the event loop

        # httpx logs every request at INFO; the outcomes are logged here, once.
        for name in ("httpx", "httpcore"):
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)
        self.timeout = timeout
        self.transport = transport
        self._ssl: ssl.SSLContext | None = None

    async def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            # Reading the CA bundle takes milliseconds: not on the event loop.
            self._ssl = await trio.to_thread.run_sync(ssl.create_default_context)
        return self._ssl

    async def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                      data: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        """``(status, body)``; :class:`ProviderUnavailable` when there is no answer."""
        import httpx   # servers without <oidc> never load it

        verify = await self._context() if self.transport is None else True
        try:
            with trio.fail_after(self.timeout):
                async with httpx.AsyncClient(timeout=self.timeout, verify=verify,
                                             transport=self.transport,
                                             trust_env=self.transport is None,
                                             follow_redirects=False) as client:
                    async with client.stream(method, url, headers=headers, data=data) as response:
                        body = bytearray()
                        async for chunk in response.aiter_bytes():
                            body += chunk
                            if len(body) > MAX_RESPONSE:
                                raise ProviderUnavailable(
                                    f"{method} {url}: response larger than {MAX_RESPONSE} bytes")
                        return response.status_code, bytes(body)
        except trio.TooSlowError:
            raise ProviderUnavailable(f"{method} {url}: no answer within {self.timeout:g} s") from None
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            raise ProviderUnavailable(f"{method} {url}: {type(exc).__name__}: {exc}") from None


def _json_object(url: str, status: int, body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ProviderUnavailable(f"{url}: HTTP {status} with a body that is not JSON") from None
    if not isinstance(value, dict):
        raise ProviderUnavailable(f"{url}: HTTP {status} with JSON that is not an object")
    return value


# -- JWKS -----------------------------------------------------------------------------------
class JwksCache:
    """The provider's keys, fetched on first use, on an unknown ``kid`` and when older than
    ``max_age``; fetches (successful or not) are at least ``floor`` seconds apart.

    Concurrent sessions that need a fetch share one: the others wait for its outcome.
    """

    def __init__(self, url: str, http: HttpClient, *, floor: float = JWKS_REFETCH_FLOOR,
                 max_age: float = JWKS_MAX_AGE, clock: Callable[[], float] = time.monotonic):
        self.url = url
        self.http = http
        self.floor = floor
        self.max_age = max_age
        self.clock = clock
        self.keys: list[Any] | None = None
        self.fetches = 0
        """Requests sent to ``url`` (for tests and the log)."""
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._error: ProviderUnavailable | None = None
        self._generation = 0
        self._lock = trio.Lock()

    async def current(self) -> list[Any]:
        """The cached keys, fetched first if there are none or they are too old.  A stale set
        is still used when its refresh fails; no set at all is :class:`ProviderUnavailable`."""
        keys = self.keys
        if keys is not None and self.clock() - self._fetched_at < self.max_age:
            return keys
        try:
            fetched = await self._fetch()
            if fetched is not None:
                return fetched
        except ProviderUnavailable:
            if keys is None:
                raise
        if keys is None:   # only a fetch with only_if_due=True returns None
            raise ProviderUnavailable(f"{self.url}: no keys")
        return keys

    async def refetch(self) -> list[Any] | None:
        """For an unknown ``kid``: fetch again, unless the last fetch is more recent than the
        floor (then None: the token is judged with the keys there are)."""
        return await self._fetch(only_if_due=True)

    async def _fetch(self, only_if_due: bool = False) -> list[Any] | None:
        seen = self._generation
        async with self._lock:
            if self._generation != seen:   # another session fetched while this one waited
                if self.keys is None:
                    raise self._error or ProviderUnavailable(f"{self.url}: no keys")
                return self.keys
            now = self.clock()
            if self._attempted_at is not None and now - self._attempted_at < self.floor:
                if only_if_due:
                    return None
                if self.keys is None:
                    raise self._error or ProviderUnavailable(f"{self.url}: no keys")
                return self.keys
            self._attempted_at = now
            self.fetches += 1
            try:
                keys = await self._download()
            except ProviderUnavailable as exc:
                self._error = exc
                self._generation += 1
                log.warning("JWKS %s could not be fetched: %s", self.url, exc)
                raise
            self.keys, self._fetched_at, self._error = keys, self.clock(), None
            self._generation += 1
            log.info("JWKS %s fetched: %d keys (%s)", self.url, len(keys),
                     ", ".join(str(k.kid) for k in keys) or "none")
            return keys

    async def _download(self) -> list[Any]:
        status, body = await self.http.request("GET", self.url, headers={"Accept": "application/json"})
        if status != 200:
            raise ProviderUnavailable(f"GET {self.url}: HTTP {status}")
        document = _json_object(self.url, status, body)
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise ProviderUnavailable(f"{self.url}: no \"keys\" list in the JWKS")
        keys = []
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC"):
                continue   # symmetric keys never verify a token here; unknown types are skipped
            if entry.get("use") not in (None, "sig"):
                continue
            public = {k: v for k, v in entry.items() if k not in ("d", "p", "q", "dp", "dq", "qi", "oth")}
            try:
                keys.append(jwk.import_key(public))
            except Exception as exc:  # noqa: BLE001 - one bad key must not hide the others
                log.warning("JWKS %s: key %r skipped: %s", self.url, entry.get("kid"), exc)
        return keys


def _candidates(keys: list[Any], kid: str | None, alg: str) -> list[Any]:
    key_type = _KEY_TYPE[alg[:2]]
    out = []
    for key in keys:
        if kid is not None and key.kid != kid:
            continue
        if key.key_type != key_type or key.get("alg") not in (None, alg):
            continue
        if key_type == "EC" and key.get("crv") != _CURVE[alg]:
            continue
        out.append(key)
    return out


def _reason(exc: JoseError) -> str:
    return getattr(exc, "description", None) or f"{type(exc).__name__}: {exc}"


# -- the verifier ---------------------------------------------------------------------------
class OidcVerifier:
    """Validates bearer tokens for one ``OidcConfig``.  Holds that server's JWKS cache."""

    def __init__(self, config: Any, *, http: HttpClient | None = None,
                 refetch_floor: float = JWKS_REFETCH_FLOOR, leeway: int = LEEWAY,
                 now: Callable[[], float] = time.time, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.http = http or HttpClient()
        self.jwks = JwksCache(config.jwks_url, self.http, floor=refetch_floor, clock=clock)
        self.leeway = leeway
        self.now = now

    @property
    def error_challenge(self) -> str:
        return error_challenge(self.config.scope, self.config.oidc_configuration_url)

    async def verify(self, token: str) -> VerifiedToken:
        """The token's user, or :class:`InvalidToken` / :class:`ProviderUnavailable`."""
        # Every call inside is bounded; this is the backstop for the sum of them (a JWKS
        # fetch waited for behind another session, then introspection).
        with trio.move_on_after(3 * self.http.timeout + 5) as budget:
            claims = await self._signed_claims(token)
            user = self._validate_claims(claims)
            await self._confirm_with_provider(token, user)
            return VerifiedToken(user, claims)
        assert budget.cancelled_caught
        raise ProviderUnavailable("token validation took too long")

    async def _signed_claims(self, token: str) -> dict[str, Any]:
        try:
            value = token.encode("ascii")
            header = jws.extract_compact(value).headers()
        except (UnicodeEncodeError, JoseError, ValueError, TypeError) as exc:
            raise InvalidToken(f"not a signed JWT ({type(exc).__name__})") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise InvalidToken(f"algorithm {alg!r} is not accepted")
        if "zip" in header:
            raise InvalidToken("compressed tokens are not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("kid is not a string")
        keys = await self.jwks.current()
        candidates = _candidates(keys, kid, alg)
        if not candidates and kid is not None and all(k.kid != kid for k in keys):
            fresh = await self.jwks.refetch()
            if fresh is None:
                raise InvalidToken(f"unknown kid {kid!r} (JWKS fetched less than "
                                   f"{self.jwks.floor:g} s ago)")
            candidates = _candidates(fresh, kid, alg)
        if not candidates:
            raise InvalidToken(f"no key for {alg} in the JWKS" + (f" with kid {kid!r}" if kid else ""))
        for key in candidates:
            try:
                return jwt.decode(value, key, algorithms=[alg]).claims
            except BadSignatureError:
                continue
            except JoseError as exc:
                raise InvalidToken(_reason(exc)) from None
        raise InvalidToken("bad signature")

    def _validate_claims(self, claims: dict[str, Any]) -> str:
        config = self.config
        options: dict[str, Any] = {"exp": {"essential": True}}
        if config.aud:
            options["aud"] = {"essential": True, "value": config.aud}
        registry = jwt.JWTClaimsRegistry(now=lambda: int(self.now()), leeway=self.leeway, **options)
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise InvalidToken("expired") from None
        except JoseError as exc:
            raise InvalidToken(_reason(exc)) from None
        user = claims.get(config.claim)
        if not isinstance(user, str) or not user.strip():
            raise InvalidToken(f"no {config.claim!r} claim")
        return user.strip()

    async def _confirm_with_provider(self, token: str, user: str) -> None:
        config = self.config
        claim = config.claim
        if config.introspection_url:
            headers = {"Accept": "application/json"}
            if config.introspection_auth:
                headers["Authorization"] = config.introspection_auth
            url = config.introspection_url
            status, body = await self.http.request("POST", url, headers=headers, data={"token": token})
            if status != 200:
                raise ProviderUnavailable(f"POST {url}: HTTP {status}")
            answer = _json_object(url, status, body)
            if answer.get("active") is not True:
                raise InvalidToken("introspection: token is not active")
            if answer.get(claim) != user:
                raise InvalidToken(f"introspection: {claim!r} does not match the token")
        elif config.userinfo_url:
            url = config.userinfo_url
            status, body = await self.http.request("GET", url, headers={
                "Accept": "application/json", "Authorization": f"Bearer {token}"})
            if status in (401, 403):   # RFC 6750 §3.1: the provider refuses this token
                raise InvalidToken(f"userinfo: HTTP {status}")
            if status != 200:
                raise ProviderUnavailable(f"GET {url}: HTTP {status}")
            answer = _json_object(url, status, body)
            if answer.get(claim) != user:
                raise InvalidToken(f"userinfo: {claim!r} does not match the token")
