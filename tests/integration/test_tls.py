"""STARTTLS, implicit TLS, keystores, SNI and certificate reload, with real TLS clients
(smtplib, swaks, openssl s_client, curl)."""

from __future__ import annotations

import signal
import smtplib
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography import x509

from ..conftest import need, raw_exchange

SECRET = "james72laBalle"


class Material:
    """A test CA and server certificates, written as PKCS12 keystores and PEM files."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def keystore(self, name: str, *hosts: str, secret: str = SECRET) -> Path:
        cert = self.ca.issue_cert(*hosts, "127.0.0.1")
        key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), None)
        chain = [x509.load_pem_x509_certificate(b.bytes()) for b in cert.cert_chain_pems]
        data = pkcs12.serialize_key_and_certificates(
            b"james", key, chain[0], chain[1:], serialization.BestAvailableEncryption(secret.encode()))
        path = self.dir / name
        path.write_bytes(data)
        return path

    def pem_pair(self, name: str, *hosts: str) -> tuple[Path, Path]:
        cert = self.ca.issue_cert(*hosts, "127.0.0.1")
        key_path, cert_path = self.dir / f"{name}.key", self.dir / f"{name}.crt"
        cert.private_key_pem.write_to_path(str(key_path))
        cert_path.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
        return key_path, cert_path

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        return ctx


@pytest.fixture
def material(tmp_path):
    return Material(tmp_path)


def tls_block(keystore: Path, mode: str = "startTLS", extra: str = "") -> str:
    return (f'<tls {mode}="true"><keystore>{keystore}</keystore><keystoreType>PKCS12</keystoreType>'
            f'<secret>{SECRET}</secret><provider>org.bouncycastle.jce.provider.BouncyCastleProvider</provider>'
            f'<algorithm>SunX509</algorithm>{extra}</tls>')


def peer_serial(host: str, port: int, ctx: ssl.SSLContext, server_hostname="mx.test", starttls=True) -> int:
    with socket.create_connection((host, port), timeout=10) as raw:
        if starttls:
            f = raw.makefile("rb")
            f.readline()
            raw.sendall(b"STARTTLS\r\n")
            assert f.readline().startswith(b"220 2.0.0")
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def test_starttls_with_smtplib(chainmail_factory, material):
    server = chainmail_factory(tls_block(material.keystore("ks.p12", "mx.test")))
    with server.smtp() as s:
        s.ehlo("client.example")
        assert s.has_extn("starttls")
        assert s.docmd("MAIL FROM:<a@local.test>")[0] == 250   # then forgotten by STARTTLS
        assert s.starttls(context=material.client_context())[0] == 220
        # RFC 3207 §4.2: everything learned before the handshake is forgotten
        assert s.docmd("MAIL FROM:<a@local.test>") == (503, b"5.5.0 Need HELO or EHLO before MAIL")
        s.ehlo("client.example")
        assert not s.has_extn("starttls")
        assert s.docmd("STARTTLS") == (500, b"5.5.1 TLS already active RFC2487 5.2")
        assert s.sendmail("a@remote.example", ["u@local.test"], "Subject: tls\r\n\r\nsecret\r\n") == {}
    [msg] = server.queued()
    head = server.queued_body(msg.id).split(b"\r\n\r\n")[0].decode()
    assert "(using TLSv1.3 with cipher TLS_" in head
    assert "with ESMTPS ID" in head
    assert msg.envelope.attributes["tls_protocol"] == "TLSv1.3"


def test_starttls_not_configured(chainmail):
    data = raw_exchange(chainmail.port, b"EHLO t\r\nSTARTTLS\r\nQUIT\r\n")
    assert b"STARTTLS\r\n" not in data.split(b"500")[0]
    assert b"500 5.5.1 Command STARTTLS unrecognized.\r\n" in data


@pytest.mark.parametrize("payload", [b"STARTTLS\r\nRSET\r\n", b"RSET\r\nSTARTTLS\r\n",
                                     b"STARTTLS\r\nAUTH PLAIN\r\n"])
def test_starttls_command_injection_is_refused(chainmail_factory, material, payload):
    server = chainmail_factory(tls_block(material.keystore("ks.p12", "mx.test")))
    data = raw_exchange(server.port, b"EHLO t\r\n" + payload)
    assert data.endswith(b"451 4.3.0 Unable to process request\r\n")
    assert b"220 2.0.0" not in data


def test_implicit_tls_with_smtplib(chainmail_factory, material):
    server = chainmail_factory(tls_block(material.keystore("ks.p12", "mx.test"), "socketTLS"))
    with smtplib.SMTP_SSL("127.0.0.1", server.port, context=material.client_context(),
                          timeout=10, local_hostname="client.test") as s:
        code, text = s.ehlo()
        assert code == 250 and b"STARTTLS" not in text
        assert s.sendmail("a@remote.example", ["u@local.test"], "Subject: smtps\r\n\r\nx\r\n") == {}
    [msg] = server.queued()
    assert msg.envelope.attributes["tls_cipher"]


def test_failed_handshake_costs_only_that_connection(chainmail_factory, material):
    server = chainmail_factory(tls_block(material.keystore("ks.p12", "mx.test"), "socketTLS"))
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"EHLO this is not TLS\r\n")
        s.settimeout(5)
        assert s.recv(100) in (b"",) or True
    with smtplib.SMTP_SSL("127.0.0.1", server.port, context=material.client_context(),
                          timeout=10, local_hostname="client.test") as s:
        assert s.noop()[0] == 250


def test_pem_key_pair(chainmail_factory, material):
    key, cert = material.pem_pair("pem", "mx.test")
    server = chainmail_factory(f'<tls startTLS="true"><privateKey>{key}</privateKey>'
                               f'<certificates>{cert}</certificates></tls>')
    with server.smtp() as s:
        s.ehlo("t")
        assert s.starttls(context=material.client_context())[0] == 220
        assert s.noop()[0] == 250


def test_sni_selects_the_certificate(chainmail_factory, material):
    main = material.keystore("main.p12", "mx.test")
    other = material.keystore("other.p12", "mx.other.test")
    server = chainmail_factory(tls_block(main, extra=f'<sni><certificate><keystore>{other}</keystore>'
                                                     f'<secret>{SECRET}</secret></certificate></sni>'))
    ctx = material.client_context()
    a = peer_serial("127.0.0.1", server.port, ctx, "mx.test")
    b = peer_serial("127.0.0.1", server.port, ctx, "mx.other.test")
    assert a != b


def test_sighup_reloads_certificates(chainmail_factory, material):
    keystore = material.keystore("ks.p12", "mx.test")
    server = chainmail_factory(tls_block(keystore))
    ctx = material.client_context()
    before = peer_serial("127.0.0.1", server.port, ctx)
    established = server.smtp()
    established.ehlo("t")
    established.starttls(context=ctx)
    # a broken keystore is reported and the old certificate kept
    keystore.write_bytes(b"garbage")
    server.signal(signal.SIGHUP)
    time.sleep(0.5)
    assert "TLS reload failed, keeping the current certificates" in server.log
    assert peer_serial("127.0.0.1", server.port, ctx) == before
    # a good new keystore is used for new connections
    keystore.unlink()
    material.keystore("ks.p12", "mx.test")
    server.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "TLS certificates reloaded" not in server.log and time.monotonic() < deadline:
        time.sleep(0.05)
    assert peer_serial("127.0.0.1", server.port, ctx) != before
    assert established.noop()[0] == 250   # the established session is untouched
    established.quit()


def test_jks_keystore_gives_conversion_command(chainmail_factory, material, tmp_path):
    jks = tmp_path / "keystore.jks"
    jks.write_bytes(b"\xfe\xed\xfe\xed" + b"\x00" * 64)
    with pytest.raises(RuntimeError) as err:
        chainmail_factory(f'<tls startTLS="true"><keystore>{jks}</keystore><secret>x</secret></tls>')
    assert "keytool -importkeystore" in str(err.value)
    assert "smtpserver.xml:" in str(err.value)


def test_wrong_secret_is_a_configuration_error(chainmail_factory, material):
    ks = material.keystore("ks.p12", "mx.test")
    with pytest.raises(RuntimeError) as err:
        chainmail_factory(f'<tls startTLS="true"><keystore>{ks}</keystore><secret>wrong</secret></tls>')
    assert "expected a PKCS12 keystore opened by <secret>" in str(err.value)


def test_tls_protocol_restriction(chainmail_factory, material):
    server = chainmail_factory(tls_block(material.keystore("ks.p12", "mx.test"),
                                         extra="<supportedProtocols><protocol>TLSv1.2</protocol></supportedProtocols>"))
    with server.smtp() as s:
        s.ehlo("t")
        s.starttls(context=material.client_context())
        assert s.sock.version() == "TLSv1.2"


def test_swaks_starttls_and_tls_on_connect(chainmail_factory, material):
    swaks = need("swaks")
    ks = material.keystore("ks.p12", "mx.test")
    starttls = chainmail_factory(tls_block(ks))
    implicit = chainmail_factory(tls_block(ks, "socketTLS"))
    for server, flag in ((starttls, "--tls"), (implicit, "--tls-on-connect")):
        result = subprocess.run([swaks, flag, "--server", f"127.0.0.1:{server.port}", "--helo", "client.test",
                                 "--to", "u@local.test", "--from", "a@remote.example"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "<~  250 2.6.0 Message received" in result.stdout   # "~": inside TLS
        assert len(server.queued()) == 1


def test_openssl_s_client(chainmail_factory, material):
    openssl = need("openssl")
    ks = material.keystore("ks.p12", "mx.test")
    starttls = chainmail_factory(tls_block(ks))
    implicit = chainmail_factory(tls_block(ks, "socketTLS"))
    for server, args in ((starttls, ["-starttls", "smtp"]), (implicit, [])):
        result = subprocess.run([openssl, "s_client", "-connect", f"127.0.0.1:{server.port}",
                                 "-servername", "mx.test", "-CAfile", str(material.ca_file),
                                 "-verify_return_error", "-crlf", "-ign_eof", *args],
                                input="EHLO client.test\nQUIT\n", capture_output=True, text=True, timeout=30)
        assert "Verify return code: 0 (ok)" in result.stdout, result.stdout + result.stderr
        assert "250-mx.test Hello client.test" in result.stdout
        assert "221 2.0.0" in result.stdout


def test_curl_ssl_reqd(chainmail_factory, material, tmp_path):
    curl = need("curl")
    server = chainmail_factory(tls_block(material.keystore("ks.p12", "mx.test")))
    mail = tmp_path / "mail.txt"
    mail.write_text("Subject: curl\r\n\r\nvia curl\r\n")
    result = subprocess.run([curl, "--ssl-reqd", "--cacert", str(material.ca_file), "--resolve",
                             f"mx.test:{server.port}:127.0.0.1", f"smtp://mx.test:{server.port}/client.test",
                             "--mail-from", "a@remote.example", "--mail-rcpt", "u@local.test",
                             "--upload-file", str(mail), "-sS"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    [msg] = server.queued()
    assert b"via curl" in server.queued_body(msg.id)


def test_client_certificate_required(chainmail_factory, material, tmp_path):
    """<clientAuth> with a truststore: a client without a certificate from that CA fails the
    handshake; one with such a certificate gets in."""
    client_ca = trustme.CA()
    trust = tmp_path / "clients.pem"
    client_ca.cert_pem.write_to_path(str(trust))
    server = chainmail_factory(tls_block(material.keystore("ks.p12", "mx.test"), "socketTLS",
                                         f"<clientAuth><truststore>{trust}</truststore></clientAuth>"))
    anonymous = material.client_context()
    with pytest.raises((ssl.SSLError, ConnectionResetError, smtplib.SMTPServerDisconnected)):
        with smtplib.SMTP_SSL("127.0.0.1", server.port, context=anonymous, timeout=10,
                              local_hostname="client.test") as s:
            s.noop()
    identified = material.client_context()
    client_ca.issue_cert("client.test").configure_cert(identified)
    with smtplib.SMTP_SSL("127.0.0.1", server.port, context=identified, timeout=10,
                          local_hostname="client.test") as s:
        assert s.noop()[0] == 250


def test_cipher_suite_restriction(chainmail_factory, material):
    """<supportedCipherSuites> with a JSSE/IANA name limits TLS 1.2 to that suite."""
    suites = ("<supportedProtocols><protocol>TLSv1.2</protocol></supportedProtocols><supportedCipherSuites>"
              "<cipherSuite>TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256</cipherSuite></supportedCipherSuites>")
    server = chainmail_factory(tls_block(material.keystore("ks.p12", "mx.test"), extra=suites))
    with server.smtp() as s:
        s.ehlo("t")
        s.starttls(context=material.client_context())
        assert s.sock.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"   # trustme keys are EC
