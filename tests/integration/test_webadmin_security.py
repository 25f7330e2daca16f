"""WebAdmin's JWT authentication and HTTPS, against a running ``chainmail run``."""

from __future__ import annotations

import ssl
import time

import httpx
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from joserfc import jwt
from joserfc.jwk import import_key

from tests.integration.test_webadmin import properties, webadmin_url


def _pem_private(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_public(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def token(key, alg: str = "RS256", **claims) -> str:
    body = {"sub": "admin@local.test", "admin": True, "exp": int(time.time()) + 300, **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode({"alg": alg}, body, import_key(_pem_private(key), "RSA" if alg == "RS256" else "EC"))


@pytest.fixture(params=["RS256", "ES256"])
def jwt_server(request, chainmail_factory, tmp_path):
    alg = request.param
    key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg == "RS256"
           else ec.generate_private_key(ec.SECP256R1()))
    pub = tmp_path / "jwt_publickey"
    pub.write_bytes(_pem_public(key))
    proc = chainmail_factory(files={"webadmin.properties": properties(
        **{"jwt.enabled": "true", "jwt.publickeypem.url": f"file://{pub}"})})
    with httpx.Client(base_url=webadmin_url(proc), timeout=10) as client:
        yield client, key, alg


def test_jwt(jwt_server):
    c, key, alg = jwt_server
    other = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg == "RS256"
             else ec.generate_private_key(ec.SECP256R1()))

    def status(bearer: str | None, **headers) -> int:
        if bearer is not None:
            headers["Authorization"] = bearer
        r = c.get("/domains", headers=headers)
        if r.status_code == 401:
            assert r.json()["statusCode"] == 401
            assert r.headers["www-authenticate"].startswith("Bearer")
        return r.status_code

    assert status(None) == 401
    assert status("Bearer " + token(key, alg)) == 200
    assert status("Bearer " + token(key, alg, exp=int(time.time()) - 60)) == 401
    assert status("Bearer " + token(other, alg)) == 401
    assert status("Bearer " + token(key, alg, admin=None)) == 401
    assert status("Bearer " + token(key, alg, admin=False)) == 401
    assert status("Bearer " + token(key, alg, admin="true")) == 401
    assert status("Bearer " + token(key, alg, sub=None)) == 401
    assert status("Basic YWRtaW46YWRtaW4=") == 401
    assert status("Bearer not.a.token") == 401
    # a write is refused too, and nothing changes
    assert c.put("/domains/new.test").status_code == 401
    good = {"Authorization": "Bearer " + token(key, alg)}
    assert c.put("/domains/new.test", headers=good).status_code == 204
    assert c.get("/domains", headers=good).json() == ["local.test", "new.test"]


def trusting(cafile) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cafile))


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def test_https_with_a_pem_pair(chainmail_factory, tmp_path, ca):
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    proc = chainmail_factory(files={"webadmin.properties": properties(
        **{"https.enabled": "true", "https.certificates": str(tmp_path / "cert.pem"),
           "https.privateKey": str(tmp_path / "key.pem")})})
    url = webadmin_url(proc)
    assert url.startswith("https://")
    with httpx.Client(base_url=url, verify=trusting(tmp_path / "ca.pem"), timeout=10) as c:
        assert c.get("/domains").json() == ["local.test"]
        assert c.get("/users").json() == []   # keep-alive over TLS
    with pytest.raises(httpx.ConnectError):   # an untrusted certificate is refused
        httpx.get(url + "/domains", timeout=10)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)):
        httpx.get(url.replace("https://", "http://") + "/domains", timeout=10)
    with httpx.Client(base_url=url, verify=trusting(tmp_path / "ca.pem"), timeout=10) as c:
        assert c.get("/domains").status_code == 200   # still serving after the bad client


def test_https_with_a_pkcs12_keystore(chainmail_factory, tmp_path, ca):
    cert = ca.issue_cert("127.0.0.1")
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), None)
    from cryptography import x509
    leaf = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    (tmp_path / "keystore").write_bytes(pkcs12.serialize_key_and_certificates(
        b"james", key, leaf, None, serialization.BestAvailableEncryption(b"changeit")))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    proc = chainmail_factory(files={"webadmin.properties": properties(
        **{"https.enabled": "true", "https.keystore": str(tmp_path / "keystore"),
           "https.password": "changeit"})})
    with httpx.Client(base_url=webadmin_url(proc), verify=trusting(tmp_path / "ca.pem"), timeout=10) as c:
        assert c.get("/domains").json() == ["local.test"]


def test_https_without_key_material_is_a_configuration_error(tmp_path):
    import subprocess
    from tests.conftest import CHAINMAIL, DOMAINLIST, smtpserver_xml
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "smtpserver.xml").write_text(f"<smtpservers>{smtpserver_xml()}</smtpservers>")
    (conf / "domainlist.xml").write_text(DOMAINLIST.format(names="", default="local.test"))
    (conf / "webadmin.properties").write_text("enabled=true\nport=0\nhttps.enabled=true\n")
    r = subprocess.run([*CHAINMAIL, "run", "--conf", str(conf), "--var", str(tmp_path / "var")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "webadmin.properties:3: https.enabled:" in r.stderr
    (conf / "webadmin.properties").write_text(
        f"enabled=true\nport=0\nhttps.enabled=true\nhttps.keystore={tmp_path}/missing.p12\n")
    r = subprocess.run([*CHAINMAIL, "run", "--conf", str(conf), "--var", str(tmp_path / "var")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "webadmin.properties:4: https.keystore: cannot read" in r.stderr
