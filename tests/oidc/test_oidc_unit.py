"""chainmail.oidc and the OAuth payload parser, in process: the JWKS cache's floor and
single fetch, deadlines, and the verifier's provider calls, with httpx's mock transport
and a fake clock."""

from __future__ import annotations

import base64
import json
import time
from types import SimpleNamespace

import httpx
import pytest
import trio
from joserfc import jwk, jwt

from chainmail.config.server import OidcConfig
from chainmail.oidc import (HttpClient, InvalidToken, JwksCache, OidcVerifier, ProviderUnavailable,
                            error_challenge)
from chainmail_plugins.smtp.auth import AuthCmdHandler
from chainmail_plugins.smtp.oauth import OAuthPayload, parse_payload

KEY = jwk.RSAKey.generate_key(2048, parameters={"kid": "k1"})
CONFIG = OidcConfig(oidc_configuration_url="https://idp.test/.well-known/openid-configuration",
                    jwks_url="https://idp.test/jwks", claim="email", scope="openid email",
                    aud="chainmail")


def token(key=KEY, **claims) -> str:
    now = int(time.time())
    body = {"aud": "chainmail", "exp": now + 300, "iat": now, "email": "alice@local.test", **claims}
    return jwt.encode({"alg": "RS256", "kid": key.kid}, body, key, algorithms=["RS256"])


# -- payloads ---------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, expected", [
    (b"user=alice@local.test\x01auth=Bearer tok\x01\x01", OAuthPayload("alice@local.test", "tok")),
    (b"n,a=alice@local.test,\x01host=mx\x01port=587\x01auth=Bearer tok\x01\x01",
     OAuthPayload("alice@local.test", "tok")),
    (b"y,a=a=2Cb=3Dc@local.test,\x01auth=bearer tok\x01\x01", OAuthPayload("a,b=c@local.test", "tok")),
    (b"n,,\x01user=alice@local.test\x01auth=Bearer tok\x01\x01", OAuthPayload("alice@local.test", "tok")),
    (b"a=alice@local.test,\x01auth=Bearer tok\x01\x01", OAuthPayload("alice@local.test", "tok")),
])
def test_payload_forms(raw, expected):
    assert parse_payload(raw) == expected


@pytest.mark.parametrize("raw", [
    b"", b"\x01\x01", b"n,,\x01auth=Bearer tok\x01\x01",               # no user
    b"user=a@b\x01\x01", b"user=a@b\x01auth=Bearer \x01\x01",          # no token
    b"user=a@b\x01auth=Basic eHl6\x01\x01",                            # not a bearer token
    b"user=a@b\x01auth=Bearer t1\x01auth=Bearer t2\x01\x01",          # two tokens
    b"n,a=a@b,\x01user=c@d\x01auth=Bearer t\x01\x01",                  # two users
    b"n,a=a=ZZb,\x01auth=Bearer t\x01\x01",                            # bad saslname escape
    b"p=tls-unique,a=a@b,\x01auth=Bearer t\x01\x01",                   # channel binding
    b"n,x=a@b,\x01auth=Bearer t\x01\x01", b"user=a@b\x01noequals\x01auth=Bearer t\x01\x01",
    b"user=\xff@b\x01auth=Bearer t\x01\x01",
])
def test_malformed_payloads(raw):
    assert parse_payload(raw) is None


def test_payload_repr_hides_the_token():
    assert "secret" not in repr(OAuthPayload("a@b", "secret"))


def test_error_challenge_is_james_json():
    decoded = json.loads(base64.b64decode(error_challenge("openid", "https://idp/x")))
    assert decoded == {"status": "invalid_token", "scope": "openid", "schemes": "https://idp/x"}


# -- EHLO and availability ----------------------------------------------------------------------
def session(*, oidc=CONFIG, require_ssl=True, tls=False, plain=True):
    auth = SimpleNamespace(oidc=oidc, require_ssl=require_ssl, plain_auth_enabled=plain,
                           announce="always")
    server = SimpleNamespace(chain=SimpleNamespace(implements=lambda verb: verb == "AUTH"), users=None)
    return SimpleNamespace(config=SimpleNamespace(auth=auth, authorized_addresses=None), server=server,
                           tls=object() if tls else None)


def test_ehlo_keywords():
    handler = AuthCmdHandler()
    listed = "LOGIN PLAIN OAUTHBEARER XOAUTH2"
    assert handler.ehlo_keywords(session(tls=True)) == (f"AUTH {listed}", f"AUTH={listed}")
    assert handler.ehlo_keywords(session(require_ssl=False)) == (f"AUTH {listed}", f"AUTH={listed}")
    assert handler.ehlo_keywords(session()) is None
    assert handler.ehlo_keywords(session(tls=True, oidc=None)) == ("AUTH LOGIN PLAIN", "AUTH=LOGIN PLAIN")
    assert handler.ehlo_keywords(session(tls=True, plain=False)) == (
        "AUTH OAUTHBEARER XOAUTH2", "AUTH=OAUTHBEARER XOAUTH2")


# -- the JWKS cache -------------------------------------------------------------------------------
class Provider:
    """A mock transport: JWKS, introspection and userinfo answers, with request counts."""

    def __init__(self, keys=(KEY,)):
        self.keys = list(keys)
        self.calls: list[httpx.Request] = []
        self.delay = 0.0
        self.jwks_status = 200
        self.introspection: dict | int = {"active": True, "email": "alice@local.test"}
        self.userinfo: dict | int = {"email": "alice@local.test"}

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        if self.delay:
            await trio.sleep(self.delay)
        path = request.url.path
        if path == "/jwks":
            if self.jwks_status != 200:
                return httpx.Response(self.jwks_status)
            return httpx.Response(200, json={"keys": [k.as_dict(private=False) for k in self.keys]})
        answer = self.introspection if path == "/introspect" else self.userinfo
        if isinstance(answer, int):
            return httpx.Response(answer)
        return httpx.Response(200, json=answer)

    def count(self, path: str) -> int:
        return sum(1 for r in self.calls if r.url.path == path)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def verifier(provider: Provider, clock: Clock | None = None, config=CONFIG, timeout=10.0) -> OidcVerifier:
    return OidcVerifier(config, http=HttpClient(timeout=timeout, transport=httpx.MockTransport(provider)),
                        clock=clock or Clock())


async def test_unknown_kid_refetch_is_floored():
    provider, clock = Provider(), Clock()
    v = verifier(provider, clock)
    assert (await v.verify(token())).user == "alice@local.test"
    new = jwk.RSAKey.generate_key(2048, parameters={"kid": "k2"})
    for _ in range(20):
        with pytest.raises(InvalidToken, match="fetched less than 10 s ago"):
            await v.verify(token(new))
    assert provider.count("/jwks") == 1
    provider.keys.append(new)
    clock.now += 10
    assert (await v.verify(token(new))).user == "alice@local.test"
    assert provider.count("/jwks") == 2
    clock.now += 10   # a kid the provider does not have either: one fetch, then the floor
    stranger = jwk.RSAKey.generate_key(2048, parameters={"kid": "k3"})
    for _ in range(5):
        with pytest.raises(InvalidToken):
            await v.verify(token(stranger))
    assert provider.count("/jwks") == 3


async def test_concurrent_sessions_share_one_fetch(autojump_clock):
    # autojump_clock: the provider's delay passes in virtual time, as soon as all wait on it
    provider = Provider()
    provider.delay = 0.2
    v = verifier(provider)
    results = []

    async def one():
        results.append((await v.verify(token())).user)

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(one)
    assert results == ["alice@local.test"] * 10
    assert provider.count("/jwks") == 1


async def test_jwks_failures():
    provider, clock = Provider(), Clock()
    provider.jwks_status = 503
    v = verifier(provider, clock)
    with pytest.raises(ProviderUnavailable, match="HTTP 503"):
        await v.verify(token())
    with pytest.raises(ProviderUnavailable):      # within the floor: not asked again
        await v.verify(token())
    assert provider.count("/jwks") == 1
    provider.jwks_status = 200
    clock.now += 10
    assert (await v.verify(token())).user == "alice@local.test"
    # a stale set is refreshed; when that fails, the old keys still serve
    provider.jwks_status = 500
    clock.now += 3600
    assert (await v.verify(token())).user == "alice@local.test"
    assert provider.count("/jwks") == 3


async def test_jwks_skips_unusable_keys():
    cache = JwksCache("https://idp.test/jwks", HttpClient(transport=httpx.MockTransport(
        lambda request: httpx.Response(200, json={"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "kid": "broken", "n": "abc", "e": "AQAB"},
            {**KEY.as_dict(private=False), "use": "enc", "kid": "enc"},
            KEY.as_dict(private=False)]}))))
    keys = await cache.current()
    assert [k.kid for k in keys] == ["k1"]


async def test_provider_call_has_a_deadline(autojump_clock):
    # autojump_clock: the 5 s answer and the 0.2 s deadline run in virtual time
    provider = Provider()
    provider.delay = 5
    v = verifier(provider, timeout=0.2)
    started = trio.current_time()
    with pytest.raises(ProviderUnavailable, match="no answer within 0.2 s"):
        await v.verify(token())
    assert trio.current_time() - started < 1


# -- introspection and userinfo -----------------------------------------------------------------
async def test_introspection_request_and_answers():
    provider = Provider()
    config = OidcConfig(**{**CONFIG.__dict__, "introspection_url": "https://idp.test/introspect",
                           "introspection_auth": "Basic eHl6"})
    v = verifier(provider, config=config)
    jwt_text = token()
    assert (await v.verify(jwt_text)).user == "alice@local.test"
    request = next(r for r in provider.calls if r.url.path == "/introspect")
    assert request.method == "POST"
    assert request.headers["authorization"] == "Basic eHl6"
    assert request.headers["accept"] == "application/json"
    assert request.content == f"token={jwt_text}".encode()
    for answer, error in (({"active": False}, InvalidToken), ({"active": "true", "email": "alice@local.test"}, InvalidToken),
                          ({"active": True}, InvalidToken), (500, ProviderUnavailable),
                          (404, ProviderUnavailable)):
        provider.introspection = answer
        with pytest.raises(error):
            await v.verify(jwt_text)


async def test_userinfo_answers():
    provider = Provider()
    config = OidcConfig(**{**CONFIG.__dict__, "userinfo_url": "https://idp.test/userinfo"})
    v = verifier(provider, config=config)
    jwt_text = token()
    assert (await v.verify(jwt_text)).user == "alice@local.test"
    request = next(r for r in provider.calls if r.url.path == "/userinfo")
    assert request.headers["authorization"] == f"Bearer {jwt_text}"
    for answer, error in (({"email": "bob@local.test"}, InvalidToken), (401, InvalidToken),
                          (500, ProviderUnavailable)):
        provider.userinfo = answer
        with pytest.raises(error):
            await v.verify(jwt_text)


async def test_claims():
    v = verifier(Provider())
    now = int(time.time())
    assert (await v.verify(token(exp=now - 30))).user == "alice@local.test"     # within the leeway
    for claims, reason in (({"exp": now - 90}, "expired"), ({"aud": ["a", "b"]}, "aud"),
                           ({"email": 42}, "'email' claim"), ({"nbf": now + 120}, "not yet valid")):
        with pytest.raises(InvalidToken, match=reason):
            await v.verify(token(**claims))
    assert (await v.verify(token(aud=["account", "chainmail"]))).user == "alice@local.test"
