"""AUTH OAUTHBEARER and XOAUTH2 with OpenID Connect tokens (james.md §4, §8 items 66-73).

Two kinds of identity provider, both real HTTP servers on 127.0.0.1:

* ``oidc-provider-mock`` (a real OpenID Connect provider, from PyPI) run as a process;
  its tokens come from its own authorization and token endpoints;
* :class:`Idp`, a small threaded HTTP server of this file that serves a JWKS, an RFC 7662
  introspection endpoint and a userinfo endpoint whose answers each test sets, with keys
  and tokens made with joserfc for the edge cases (expired, wrong audience, wrong
  signature, key rotation, ...).

Clients: smtplib with hand-built payloads, and curl (``--oauth2-bearer``).  swaks has no
XOAUTH2 or OAUTHBEARER support, so it is not used here.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from joserfc import jwk, jwt

from chainmail.oidc import JWKS_REFETCH_FLOOR

from ..conftest import ChainmailProcess, smtpserver_xml, wait_for
from .test_tls import Material, tls_block

CORE = "org.apache.james.smtpserver.CoreCmdHandlerLoader"
AUD = "chainmail"
SCOPE = "openid profile email"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")

AUTH_OK = (235, b"2.7.0 Authentication Successful")
AUTH_FAILED = (535, b"5.7.8 Authentication Failed")
TEMPORARY = (451, b"4.7.0 Temporary authentication failure")
UNRECOGNIZED = (504, b"5.5.4 Unrecognized Authentication Type")


@pytest.fixture(scope="module", autouse=True)
def no_proxy():
    """Provider calls go straight to 127.0.0.1, whatever proxy the environment names."""
    with pytest.MonkeyPatch.context() as mp:
        for name in PROXY_VARIABLES:
            mp.delenv(name, raising=False)
        yield


# -- payloads ------------------------------------------------------------------------------
def b64(data: str) -> str:
    return base64.b64encode(data.encode()).decode()


def xoauth2(user: str, token: str) -> str:
    return b64(f"user={user}\x01auth=Bearer {token}\x01\x01")


def oauthbearer(user: str, token: str) -> str:
    user = user.replace("=", "=3D").replace(",", "=2C")
    return b64(f"n,a={user},\x01host=mx.test\x01port=587\x01auth=Bearer {token}\x01\x01")


def error_json(payload: bytes, discovery: str) -> dict:
    assert json.loads(base64.b64decode(payload)) == {
        "status": "invalid_token", "scope": SCOPE, "schemes": discovery}
    return json.loads(base64.b64decode(payload))


# -- a scriptable provider ---------------------------------------------------------------------
class Idp:
    """JWKS, introspection and userinfo on 127.0.0.1, answers set by the test."""

    def __init__(self):
        self.keys: list = []
        self.hits: dict[str, int] = {}
        self.requests: list[tuple[str, dict, str]] = []
        self.introspection: dict | int = {"active": True}   # JSON body, or an HTTP status
        self.userinfo: dict | int = {}
        self.delay = 0.0
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status, body=None):
                data = json.dumps(body if body is not None else {"error": "x"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method):
                path = urlsplit(self.path).path
                idp.hits[path] = idp.hits.get(path, 0) + 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                idp.requests.append((f"{method} {path}", dict(self.headers), body))
                if path == "/jwks":
                    return self._answer(200, {"keys": [k.as_dict(private=False) for k in idp.keys]})
                if path == "/.well-known/openid-configuration":
                    return self._answer(200, {"issuer": idp.url, "jwks_uri": idp.url + "/jwks"})
                answer = idp.introspection if path == "/introspect" else idp.userinfo
                if idp.delay:
                    time.sleep(idp.delay)
                if isinstance(answer, int):
                    return self._answer(answer)
                return self._answer(200, answer)

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    @property
    def discovery(self) -> str:
        return self.url + "/.well-known/openid-configuration"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def rsa(kid: str | None, **params):
    return jwk.RSAKey.generate_key(2048, parameters={"kid": kid, **params} if kid else params or None)


def mint(key, *, user="alice@local.test", alg="RS256", kid: str | None = "use-key", claim="email",
         **overrides) -> str:
    now = int(time.time())
    claims = {"iss": "https://idp.test", "sub": "0b1c", "aud": [AUD, "account"], "iat": now,
              "exp": now + 300, claim: user}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    header = {"alg": alg, "typ": "JWT"}
    kid = key.kid if kid == "use-key" else kid
    if kid:
        header["kid"] = kid
    return jwt.encode(header, claims, key, algorithms=[alg])


def unsigned(**claims) -> str:
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def oidc_block(idp_url: str, *, discovery: str | None = None, jwks: str | None = None,
               introspection: bool = False, userinfo: bool = False) -> str:
    extra = ""
    if introspection:
        extra += f"<introspection><url>{idp_url}/introspect</url><auth>Basic Y2hhaW5tYWlsOnNlY3JldA==</auth></introspection>"
    if userinfo:
        extra += f"<userinfo><url>{idp_url}/userinfo</url></userinfo>"
    return (f"<oidc><oidcConfigurationURL>{discovery or idp_url + '/.well-known/openid-configuration'}"
            f"</oidcConfigurationURL><jwksURL>{jwks or idp_url + '/jwks'}</jwksURL><claim>email</claim>"
            f"<scope>{SCOPE}</scope><aud>{AUD}</aud>{extra}</oidc>")


def start_server(base, material: Material, oidc: str, *, extra_auth: str = "",
                 identity: str = "true", options: str = "") -> ChainmailProcess:
    """A STARTTLS submission server (AUTH announced always, requireSSL, strict identity)."""
    conf, var = base / "conf", base / "var"
    conf.mkdir(parents=True)
    block = smtpserver_xml(tls_block(material.keystore("ks.p12", "mx.test")) +
                           f"<auth><announce>always</announce>{extra_auth}{oidc}</auth>"
                           f"<verifyIdentity>{identity}</verifyIdentity>{options}", core=CORE,
                           authorized="")
    (conf / "smtpserver.xml").write_text(f"<smtpservers>\n{block}\n</smtpservers>\n")
    (conf / "domainlist.xml").write_text(
        "<domainlist><domainnames><domainname>local.test</domainname></domainnames>"
        "<autodetect>false</autodetect><autodetectIP>false</autodetectIP>"
        "<defaultDomain>local.test</defaultDomain></domainlist>")
    server = ChainmailProcess(conf, var)
    server.material = material
    return server


def tls_session(server):
    s = server.smtp()
    s.ehlo("client.test")
    s.starttls(context=server.material.client_context())
    s.ehlo("client.test")
    return s


def auth(server, mechanism: str, payload: str, *, then: str | None = "AQ==") -> list[tuple[int, bytes]]:
    """One AUTH exchange on a fresh TLS session: the replies, including the one to ``then``
    after a ``334`` error challenge."""
    with tls_session(server) as s:
        replies = [s.docmd("AUTH", f"{mechanism} {payload}")]
        if replies[0][0] == 334 and then is not None:
            replies.append(s.docmd(then))
        return replies


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys():
    return {"rs": rsa("rs-1"), "es": jwk.ECKey.generate_key("P-256", parameters={"kid": "es-1"}),
            "ps": rsa("ps-1", alg="PS256"), "nokid": rsa(None)}


@pytest.fixture(scope="module")
def jwks_server(tmp_path_factory, keys):
    """One IdP serving RS256, ES256 and PS256 keys, and one chainmail checking its tokens."""
    idp = Idp()
    idp.keys = [keys["rs"], keys["es"], keys["ps"], keys["nokid"]]
    base = tmp_path_factory.mktemp("oidc-jwks")
    server = start_server(base / "node", Material(base), oidc_block(idp.url))
    server.idp = idp
    yield server
    server.stop()
    idp.close()


@pytest.fixture
def idp():
    provider = Idp()
    yield provider
    provider.close()


@pytest.fixture
def servers(tmp_path):
    started = []
    counter = iter(range(100))

    def start(oidc: str, **kwargs) -> ChainmailProcess:
        server = start_server(tmp_path / f"node{next(counter)}", Material(tmp_path), oidc, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# -- a real OpenID Connect provider -----------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    """``oidc-provider-mock`` on 127.0.0.1 (authorization code flow, RS256 ID tokens)."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("provider") / "provider.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "oidc_provider_mock", "--host", "127.0.0.1",
                             "--port", str(port), "--user", "alice@local.test"],
                            stdout=log, stderr=subprocess.STDOUT,
                            env={k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            config = httpx.get(url + "/.well-known/openid-configuration", timeout=1).json()
            break
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"oidc-provider-mock did not start: {log.name}")
            time.sleep(0.1)
    yield url, config
    proc.terminate()
    proc.wait(10)
    log.close()


def provider_token(url: str, config: dict, user: str, client_id: str = AUD) -> str:
    """An ID token for ``user`` from the provider's authorization and token endpoints."""
    redirect = "http://127.0.0.1/callback"
    with httpx.Client(timeout=10) as http:
        answer = http.post(config["authorization_endpoint"], data={"sub": user}, params={
            "client_id": client_id, "redirect_uri": redirect, "response_type": "code",
            "scope": "openid email", "state": "s1", "nonce": "n1"})
        assert answer.status_code == 302, answer.text
        code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
        tokens = http.post(config["token_endpoint"], data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
            "client_id": client_id, "client_secret": "any"}).json()
    assert tokens["token_type"] == "Bearer"
    return tokens["id_token"]


def test_real_provider_token_over_starttls_then_relay(provider, servers):
    url, config = provider
    server = servers(oidc_block(url, discovery=url + "/.well-known/openid-configuration",
                                jwks=config["jwks_uri"]))
    token = provider_token(url, config, "alice@local.test")
    with tls_session(server) as s:
        auth_lines = [l for l in s.ehlo_resp.decode().split("\n") if l.startswith("AUTH")]
        assert auth_lines == ["AUTH LOGIN PLAIN OAUTHBEARER XOAUTH2", "AUTH=LOGIN PLAIN OAUTHBEARER XOAUTH2"]
        assert s.docmd("AUTH", "XOAUTH2 " + xoauth2("alice@local.test", token)) == AUTH_OK
        assert s.noop()[0] == 250
        # authenticated: may relay, as alice
        assert s.sendmail("alice@local.test", ["friend@remote.example"],
                          "From: alice@local.test\r\nSubject: with a token\r\n\r\nhello\r\n") == {}
    # OAUTHBEARER after a 334, with the gs2 payload; then XOAUTH2 initial response in the
    # gs2 style and OAUTHBEARER with the XOAUTH2 style: either mechanism takes either style
    for mechanism, payload in (("OAUTHBEARER", oauthbearer("Alice@Local.Test", token)),
                               ("XOAUTH2", oauthbearer("alice@local.test", token)),
                               ("OAUTHBEARER", xoauth2("alice@local.test", token))):
        with tls_session(server) as s:
            assert s.docmd("AUTH", mechanism) == (334, b"")
            assert s.docmd(payload) == AUTH_OK
    # the provider's token for someone else does not authenticate alice
    bob = provider_token(url, config, "bob@local.test")
    assert auth(server, "OAUTHBEARER", oauthbearer("alice@local.test", bob)) == [AUTH_FAILED]
    # a token the provider issued for another client (audience)
    other = provider_token(url, config, "alice@local.test", client_id="webmail")
    first, second = auth(server, "XOAUTH2", xoauth2("alice@local.test", other))
    assert first[0] == 334 and second == AUTH_FAILED
    error_json(first[1], url + "/.well-known/openid-configuration")
    [msg] = server.queued()
    assert msg.envelope.attributes["auth_user"] == "alice@local.test"
    assert token not in server.log


def test_curl_sends_with_a_provider_token(provider, servers):
    """curl's SMTP client with ``--oauth2-bearer`` (it chooses OAUTHBEARER when offered)."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is not installed; .ci/run installs it")
    url, config = provider
    server = servers(oidc_block(url, jwks=config["jwks_uri"]))
    token = provider_token(url, config, "alice@local.test")
    message = server.conf.parent / "message.eml"
    message.write_text("From: alice@local.test\r\nTo: friend@remote.example\r\nSubject: curl\r\n\r\nhi\r\n")
    result = subprocess.run(
        [curl, "--silent", "--show-error", "--ssl-reqd", "--cacert", str(server.material.ca_file),
         f"smtp://127.0.0.1:{server.port}/client.test", "--mail-from", "alice@local.test",
         "--mail-rcpt", "friend@remote.example", "--upload-file", str(message),
         "--user", "alice@local.test:", "--oauth2-bearer", token],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "authenticated alice@local.test with OAUTHBEARER" in server.log
    [msg] = server.queued()
    assert msg.envelope.attributes["auth_user"] == "alice@local.test"


# -- edge cases with joserfc-made tokens -------------------------------------------------------
def test_not_offered_without_tls_or_without_oidc(jwks_server, servers, keys):
    token = mint(keys["rs"])
    with jwks_server.smtp() as s:   # clear channel, requireSSL (default true)
        s.ehlo("client.test")
        assert not s.has_extn("auth")
        assert s.docmd("AUTH", "OAUTHBEARER " + oauthbearer("alice@local.test", token)) == UNRECOGNIZED
        assert s.docmd("AUTH", "XOAUTH2") == UNRECOGNIZED
    plain_only = servers("")
    with tls_session(plain_only) as s:
        assert "AUTH LOGIN PLAIN" in s.ehlo_resp.decode().split("\n")
        assert b"XOAUTH2" not in s.ehlo_resp and b"OAUTHBEARER" not in s.ehlo_resp
        assert s.docmd("AUTH", "XOAUTH2 " + xoauth2("alice@local.test", token)) == UNRECOGNIZED
        assert s.docmd("AUTH", "OAUTHBEARER") == UNRECOGNIZED


def test_algorithms_and_key_selection(jwks_server, keys):
    for key, alg in ((keys["rs"], "RS256"), (keys["rs"], "RS512"), (keys["es"], "ES256"),
                     (keys["ps"], "PS256")):
        assert auth(jwks_server, "XOAUTH2", xoauth2("alice@local.test", mint(key, alg=alg))) == [AUTH_OK], alg
    # no kid: every key of the right type is tried
    assert auth(jwks_server, "OAUTHBEARER", oauthbearer("alice@local.test", mint(keys["nokid"], kid=None))) == [AUTH_OK]
    # the key's own "alg" (PS256) is respected: the same key signing RS256 is refused
    same = {k: v for k, v in keys["ps"].as_dict(private=True).items() if k != "alg"}
    first, _ = auth(jwks_server, "XOAUTH2", xoauth2("alice@local.test", mint(jwk.import_key(same), alg="RS256")))
    assert first[0] == 334


@pytest.mark.parametrize("case", [
    "expired", "not-yet-valid", "issued-in-the-future", "no-exp", "wrong-audience", "no-audience",
    "wrong-signature", "missing-claim", "empty-claim", "alg-none", "hs256", "garbage", "unknown-kid",
])
def test_invalid_tokens_get_the_error_challenge_then_535(jwks_server, keys, case):
    now = int(time.time())
    rs = keys["rs"]
    token = {
        "expired": lambda: mint(rs, exp=now - 120, iat=now - 600),
        "not-yet-valid": lambda: mint(rs, nbf=now + 600),
        "issued-in-the-future": lambda: mint(rs, iat=now + 600, exp=now + 900),
        "no-exp": lambda: mint(rs, exp=None),
        "wrong-audience": lambda: mint(rs, aud="webmail"),
        "no-audience": lambda: mint(rs, aud=None),
        "wrong-signature": lambda: mint(rsa(rs.kid)),          # same kid, another key
        "missing-claim": lambda: mint(rs, claim="preferred_username"),
        "empty-claim": lambda: mint(rs, user=""),
        "alg-none": lambda: unsigned(email="alice@local.test", aud=AUD, exp=now + 300),
        "hs256": lambda: mint(jwk.OctKey.import_key("k" * 64, {"kid": rs.kid}), alg="HS256"),
        "garbage": lambda: "not.a.jwt",
        "unknown-kid": lambda: mint(rsa("nobody-knows-me")),
    }[case]()
    first, second = auth(jwks_server, "XOAUTH2", xoauth2("alice@local.test", token))
    assert first[0] == 334
    error_json(first[1], jwks_server.idp.discovery)
    assert second == AUTH_FAILED
    assert token not in jwks_server.log


def test_payload_user_must_be_the_token_user(jwks_server, keys):
    token = mint(keys["rs"], user="alice@local.test")
    assert auth(jwks_server, "XOAUTH2", xoauth2("bob@local.test", token)) == [AUTH_FAILED]
    assert auth(jwks_server, "OAUTHBEARER", oauthbearer("ALICE+tag@local.test", token)) == [AUTH_OK]


def test_malformed_payloads_abort_and_failure_limit(jwks_server, keys):
    token = mint(keys["rs"])
    cannot = (501, b"5.5.2 Could not decode parameters for AUTH XOAUTH2")
    with tls_session(jwks_server) as s:
        assert s.docmd("AUTH", "XOAUTH2 not-base64!") == cannot
        assert s.docmd("AUTH", "XOAUTH2 " + b64(f"auth=Bearer {token}\x01\x01")) == cannot          # no user
        assert s.docmd("AUTH", "XOAUTH2 " + b64("user=alice@local.test\x01\x01")) == cannot           # no token
        assert s.docmd("AUTH", "XOAUTH2 " + b64(f"user=a@local.test\x01auth=Basic {token}\x01\x01")) == cannot
        assert s.docmd("AUTH", "OAUTHBEARER =") == (501, b"5.5.2 Could not decode parameters for AUTH OAUTHBEARER")
        assert s.docmd("AUTH", "OAUTHBEARER") == (334, b"")
        assert s.docmd("*") == (501, b"5.7.1 Authentication aborted")
        # an invalid token, then "*" instead of the dummy line: aborted, and counted
        bad = mint(keys["rs"], aud="webmail")
        assert s.docmd("AUTH", "XOAUTH2 " + xoauth2("alice@local.test", bad))[0] == 334
        assert s.docmd("*") == (501, b"5.7.1 Authentication aborted")
        assert s.docmd("AUTH", "XOAUTH2 " + xoauth2("alice@local.test", bad))[0] == 334
        assert s.docmd("AQ==") == AUTH_FAILED
        assert s.docmd("AUTH", "XOAUTH2 " + xoauth2("bob@local.test", token))[0] == 421
    assert "AUTH XOAUTH2 failed for 'alice@local.test' (1/3)" in jwks_server.log


def test_key_rotation_and_refetch_floor(idp, servers):
    old, new = rsa("2024-old"), rsa("2025-new")
    idp.keys = [old]
    # The floor holds per worker process (each has its own key cache): counted with one.
    server = servers(oidc_block(idp.url), options="<ioWorkerCount>1</ioWorkerCount>")
    assert auth(server, "XOAUTH2", xoauth2("alice@local.test", mint(old))) == [AUTH_OK]
    first_fetch = time.monotonic()
    assert idp.hits["/jwks"] == 1
    # a flood of tokens naming unknown keys: the provider is not asked again so soon
    with tls_session(server) as s:
        for i in range(2):
            assert s.docmd("AUTH", "XOAUTH2 " + xoauth2("alice@local.test", mint(rsa(f"forged-{i}"))))[0] == 334
            assert s.docmd("AQ==") == AUTH_FAILED
    for i in range(8):
        assert auth(server, "OAUTHBEARER", oauthbearer("alice@local.test", mint(new)))[-1] == AUTH_FAILED
    assert idp.hits["/jwks"] == 1
    # the provider rotates; once the floor has passed, the new kid makes chainmail refetch
    idp.keys = [new, old]
    # The floor is JWKS_REFETCH_FLOOR (10 s) in the server process: waiting it out is the scenario.
    time.sleep(max(0.0, first_fetch + JWKS_REFETCH_FLOOR + 0.5 - time.monotonic()))
    assert auth(server, "OAUTHBEARER", oauthbearer("alice@local.test", mint(new))) == [AUTH_OK]
    assert idp.hits["/jwks"] == 2
    # keys already known need no fetch; more unknown kids within the floor: none either
    assert auth(server, "XOAUTH2", xoauth2("alice@local.test", mint(old))) == [AUTH_OK]
    for i in range(5):
        assert auth(server, "XOAUTH2", xoauth2("alice@local.test", mint(rsa(f"again-{i}"))))[-1] == AUTH_FAILED
    assert idp.hits["/jwks"] == 2
    assert "JWKS fetched less than 10 s ago" in server.log


def test_introspection(idp, servers):
    key = rsa("k1")
    idp.keys = [key]
    server = servers(oidc_block(idp.url, introspection=True))
    token = mint(key)
    idp.introspection = {"active": True, "email": "alice@local.test", "scope": "openid"}
    assert auth(server, "XOAUTH2", xoauth2("alice@local.test", token)) == [AUTH_OK]
    what, headers, body = next(r for r in idp.requests if r[0] == "POST /introspect")
    assert headers["Authorization"] == "Basic Y2hhaW5tYWlsOnNlY3JldA=="
    assert headers["Accept"] == "application/json"
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert parse_qs(body) == {"token": [token]}
    # inactive (revoked): the error challenge, then 535
    idp.introspection = {"active": False}
    first, second = auth(server, "OAUTHBEARER", oauthbearer("alice@local.test", token))
    assert first[0] == 334 and second == AUTH_FAILED
    error_json(first[1], idp.discovery)
    # active, but for another user
    idp.introspection = {"active": True, "email": "mallory@local.test"}
    assert auth(server, "XOAUTH2", xoauth2("alice@local.test", token))[-1] == AUTH_FAILED
    # the endpoint fails: temporary, never an accept
    for status in (500, 503, 401):
        idp.introspection = status
        assert auth(server, "XOAUTH2", xoauth2("alice@local.test", token)) == [TEMPORARY]
    # an invalid token is refused before the provider is asked
    asked = idp.hits["/introspect"]
    assert auth(server, "XOAUTH2", xoauth2("alice@local.test", mint(key, aud="x")))[-1] == AUTH_FAILED
    assert idp.hits["/introspect"] == asked


def test_slow_provider_delays_only_its_session(idp, servers):
    key = rsa("k1")
    idp.keys = [key]
    server = servers(oidc_block(idp.url, introspection=True))
    idp.introspection = {"active": True, "email": "alice@local.test"}
    token = mint(key)
    assert auth(server, "XOAUTH2", xoauth2("alice@local.test", token)) == [AUTH_OK]   # JWKS cached
    idp.delay = 3.0
    slow = tls_session(server)
    outcome = []
    waiting = threading.Thread(target=lambda: outcome.append(
        slow.docmd("AUTH", "XOAUTH2 " + xoauth2("alice@local.test", token))))
    asked = idp.hits.get("/introspect", 0)
    started = time.monotonic()
    waiting.start()
    wait_for(lambda: idp.hits.get("/introspect", 0) > asked, what="the slow session at the provider")
    with tls_session(server) as other:     # a new session: greeting, EHLO, STARTTLS, EHLO
        assert other.noop()[0] == 250
    assert time.monotonic() - started < 2.0
    assert outcome == []
    waiting.join(10)
    assert outcome == [AUTH_OK] and time.monotonic() - started >= 3.0
    slow.quit()


def test_userinfo(idp, servers):
    key = rsa("k1")
    idp.keys = [key]
    server = servers(oidc_block(idp.url, userinfo=True))
    token = mint(key)
    idp.userinfo = {"sub": "0b1c", "email": "alice@local.test"}
    assert auth(server, "OAUTHBEARER", oauthbearer("alice@local.test", token)) == [AUTH_OK]
    what, headers, _ = next(r for r in idp.requests if r[0] == "GET /userinfo")
    assert headers["Authorization"] == f"Bearer {token}"
    idp.userinfo = {"sub": "0b1c", "email": "mallory@local.test"}
    first, second = auth(server, "OAUTHBEARER", oauthbearer("alice@local.test", token))
    assert first[0] == 334 and second == AUTH_FAILED
    idp.userinfo = 401          # the provider refuses the token itself
    assert auth(server, "XOAUTH2", xoauth2("alice@local.test", token))[-1] == AUTH_FAILED
    idp.userinfo = 502
    assert auth(server, "XOAUTH2", xoauth2("alice@local.test", token)) == [TEMPORARY]


def test_provider_down(servers, keys):
    closed = f"http://127.0.0.1:{free_port()}"
    server = servers(oidc_block(closed))
    token = mint(keys["rs"])
    with tls_session(server) as s:
        assert s.docmd("AUTH", "XOAUTH2 " + xoauth2("alice@local.test", token)) == TEMPORARY
        assert s.docmd("AUTH", "OAUTHBEARER") == (334, b"")
        assert s.docmd(oauthbearer("alice@local.test", token)) == TEMPORARY
        assert s.docmd("NOOP")[0] == 250     # 451 is not a failure: the session goes on
    assert "identity provider unavailable" in server.log
