"""Keys, DNS and sessions for the mail authentication tests.

:class:`AuthDns` is the test kit's fake DNS server, able to answer TXT records longer than one
255-byte character-string (a 2048-bit DKIM key), split as a zone file would split them.
"""

from __future__ import annotations

import base64
from pathlib import Path

import dns.message
import dns.rdatatype
import dns.rrset
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from chainmail.testing import SessionDriver
from chainmail.testing.conf import dnsservice_xml
from chainmail.testing.fakedns import FakeDns

DATA = Path(__file__).parent / "data"

#: The public key of gmail.com's selector 20120113, which signed data/gmail-2013.eml (a real
#: message of 2013, kept in dkimpy's test data for its degenerate header folding).
GMAIL_2012_KEY = (
    "k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA1Kd87/UeJjenpabgbFwh"
    "+eBCsSTrqmwIYYvywlbhbqoo2DymndFkbjOVIPIldNs/m40KF+yzMn1skyoxcTUGCQ"
    "s8g3FgD2Ap3ZB5DekAo5wMmk4wimDO+U8QzI3SD07y2+07wlNWwIt8svnxgdxGkVbb"
    "hzY8i+RQ9DpSVpPbF7ykQxtKXkv/ahW3KjViiAH+ghvvIhkx4xYSIc9oSwVmAl5Oct"
    "MEeWUwg8Istjqz8BZeTWbf41fbNhte7Y+YqZOwq1Sd0DbvYAD9NOZK9vlfuac0598H"
    "Y+vtSBczUiKERHv1yRbcaQtZFh5wtiRrN04BLUTD21MycBX5jYchHjPY/wIDAQAB")

#: RFC 8463 Appendix A: the example message (data/rfc8463-signed.eml, from dkimpy's test
#: data) signed twice by football.example.com, with Ed25519 (selector brisbane) and RSA
#: (selector test), and the two public keys of A.2.
RFC8463_ED25519_KEY = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
RFC8463_RSA_KEY = (
    "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWRiGs5V6NpP3idY6Wk08a5qh"
    "dR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hs"
    "tT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB")


class AuthDns(FakeDns):
    """``add_txt(name, text)`` answers a TXT record of any length (split in 255-byte parts)."""

    def __init__(self) -> None:
        super().__init__()
        self.long_txt: dict[str, str] = {}

    def add_txt(self, name: str, text: str) -> "AuthDns":
        with self._lock:
            self.long_txt[name.rstrip(".").lower()] = text
        return self

    def answer(self, data: bytes):
        query = dns.message.from_wire(data)
        question = query.question[0] if query.question else None
        if question is not None and question.rdtype == dns.rdatatype.TXT:
            name = question.name.to_text().rstrip(".").lower()
            with self._lock:
                text = self.long_txt.get(name)
            if text is not None:
                with self._lock:
                    self.queries.append((name, "TXT"))
                chunks = [text[i:i + 250] for i in range(0, len(text), 250)]
                response = dns.message.make_response(query)
                rdata = " ".join('"' + c.replace('"', '\\"') + '"' for c in chunks)
                response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "TXT", rdata))
                return response.to_wire()
        return super().answer(data)


class Key:
    """An RSA key pair: ``pem`` for the signer, ``txt`` the DKIM key record (RFC 6376 §3.6.1)."""

    def __init__(self, bits: int = 1024) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        self.pem = self.private.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.TraditionalOpenSSL,
                                              serialization.NoEncryption())
        der = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.txt = "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")

    def dnsfunc(self, name: str, record: str | None = None):
        """A dkimpy ``dnsfunc`` knowing only ``name`` (``<s>._domainkey.<d>``)."""
        def lookup(asked, timeout=5):
            asked = asked.decode() if isinstance(asked, bytes) else asked
            return (record or self.txt).encode() if asked.rstrip(".") == name else None
        return lookup


def session(fake: FakeDns, base: Path, handlers, **settings) -> SessionDriver:
    """A socket-free session whose server resolves through ``fake`` only."""
    conf = base / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "dnsservice.xml").write_text(dnsservice_xml(fake.port))
    settings.setdefault("authorized_addresses", "")
    settings.setdefault("remote_ip", "192.0.2.10")
    settings.setdefault("helo", "mail.sender.example")
    return SessionDriver(handlers, var=base / "var", **settings)
