"""TLS material and contexts: PKCS12 keystores and PEM pairs -> ``ssl.SSLContext``.

Keys never touch the disk unencrypted: ``SSLContext.load_cert_chain`` only reads files, so
the PEM chain is handed to it through an anonymous in-memory file (``memfd_create``), or,
where that does not exist, through a private temporary file whose key is encrypted with a
one-time password.  Several certificates per server are chosen by SNI.  ``TLSManager.reload``
(SIGHUP) swaps in fresh contexts for new connections; a broken keystore keeps the old ones.
"""

from __future__ import annotations

import logging
import os
import secrets
import ssl
import tempfile
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtensionOID, NameOID

from ..config.errors import ConfigError
from ..session import sni_name

__all__ = ["TLSManager", "KeyMaterial", "load_key_material", "build_server_context",
           "sni_name", "create_self_signed_keystore"]

log = logging.getLogger("chainmail.tls")


JKS_MAGIC = b"\xfe\xed\xfe\xed"
JCEKS_MAGIC = b"\xce\xce\xce\xce"


@dataclass
class KeyMaterial:
    key: PrivateKeyTypes
    certificate: x509.Certificate
    chain: list[x509.Certificate]

    def names(self) -> list[str]:
        """DNS names the certificate is for (SAN, else CN), lower-cased."""
        try:
            san = self.certificate.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
            names = san.value.get_values_for_type(x509.DNSName)   # type: ignore[attr-defined]
        except x509.ExtensionNotFound:
            names = [a.value for a in self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        return [str(n).lower() for n in names]

    def pem_chain(self, password: bytes | None) -> bytes:
        enc = (serialization.BestAvailableEncryption(password) if password
               else serialization.NoEncryption())
        return (self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
                + self.certificate.public_bytes(serialization.Encoding.PEM)
                + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain))


def _error(file: str, line: int, element: str, message: str) -> ConfigError:
    return ConfigError(file, line, element, message)


def load_key_material(*, keystore: str | None, keystore_type: str, secret: str,
                      private_key: str | None, certificates: str | None,
                      file: str = "", line: int = 0) -> KeyMaterial:
    """Read a PKCS12 keystore, or a PEM private key + certificate chain."""
    if keystore:
        try:
            with open(keystore, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise _error(file, line, "tls/keystore", f"cannot read {keystore}: {exc.strerror}") from None
        if data[:4] in (JKS_MAGIC, JCEKS_MAGIC) or keystore_type.upper() in ("JKS", "JCEKS") \
                and data[:1] != b"\x30":
            raise _error(file, line, "tls/keystore",
                         f"{keystore} is a Java {keystore_type.upper() or 'JKS'} keystore, which only Java "
                         f"reads; expected PKCS12. Convert it with: keytool -importkeystore "
                         f"-srckeystore {keystore} -destkeystore {keystore}.p12 -deststoretype PKCS12 "
                         f"and set <keystore> to the .p12 file and <keystoreType>PKCS12</keystoreType>")
        try:
            key, cert, extra = pkcs12.load_key_and_certificates(data, secret.encode() or None)
        except ValueError as exc:
            raise _error(file, line, "tls/keystore",
                         f"{keystore}: {exc}; expected a PKCS12 keystore opened by <secret>") from None
        if key is None or cert is None:
            raise _error(file, line, "tls/keystore",
                         f"{keystore} holds no private key entry; expected a key pair "
                         f"(keytool -genkey -alias james -keyalg RSA -storetype PKCS12)")
        return KeyMaterial(key, cert, list(extra or []))
    if not private_key or not certificates:
        raise _error(file, line, "tls", "expected <keystore>, or <privateKey> and <certificates>")
    try:
        with open(private_key, "rb") as f:
            key_pem = f.read()
        with open(certificates, "rb") as f:
            certs_pem = f.read()
    except OSError as exc:
        raise _error(file, line, "tls/privateKey", f"cannot read {exc.filename}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(key_pem, secret.encode() or None)
    except (ValueError, TypeError) as exc:
        raise _error(file, line, "tls/privateKey",
                     f"{private_key}: {exc}; expected a PEM private key (encrypted with <secret> if "
                     f"one is given)") from None
    try:
        certs = x509.load_pem_x509_certificates(certs_pem)
    except ValueError as exc:
        raise _error(file, line, "tls/certificates", f"{certificates}: {exc}; expected PEM "
                     f"certificates, the server's first") from None
    return KeyMaterial(key, certs[0], certs[1:])


def _load_chain_into(ctx: ssl.SSLContext, material: KeyMaterial) -> None:
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        fd = memfd("chainmail-tls", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(fd, material.pem_chain(None))
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
            return
        except OSError:
            pass  # /proc not mounted: fall back below
        finally:
            os.close(fd)
    password = secrets.token_bytes(32)
    with tempfile.NamedTemporaryFile(prefix="chainmail-tls-", suffix=".pem") as f:
        os.chmod(f.name, 0o600)
        f.write(material.pem_chain(password))
        f.flush()
        ctx.load_cert_chain(f.name, password=password)


_PROTOCOLS = {
    "TLSV1": ssl.TLSVersion.TLSv1, "TLSV1.1": ssl.TLSVersion.TLSv1_1,
    "TLSV1.2": ssl.TLSVersion.TLSv1_2, "TLSV1.3": ssl.TLSVersion.TLSv1_3,
}


def _openssl_cipher(name: str) -> str | None:
    """JSSE/IANA suite names (``TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256``) to OpenSSL's
    (``ECDHE-RSA-AES128-GCM-SHA256``); OpenSSL names pass through.  TLS 1.3 suites
    (``TLS_AES_*``, ``TLS_CHACHA20_*``) return None: OpenSSL enables them apart."""
    if not name.startswith("TLS_"):
        return name
    if "_WITH_" not in name:
        return None
    kx, cipher = name[4:].split("_WITH_", 1)
    cipher = (cipher.replace("AES_128", "AES128").replace("AES_256", "AES256")
              .replace("CHACHA20_POLY1305", "CHACHA20-POLY1305").replace("_", "-"))
    if cipher.startswith("CHACHA20") and cipher.endswith("-SHA256"):
        cipher = cipher[: -len("-SHA256")]
    kx = kx.replace("_", "-")
    return cipher if kx == "RSA" else f"{kx}-{cipher}"


def _base_context(tls, file: str, line: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.supported_protocols:
        versions = []
        for p in tls.supported_protocols:
            v = _PROTOCOLS.get(p.upper())
            if v is None:
                raise _error(file, line, "tls/supportedProtocols",
                             f"unknown protocol {p!r}; expected TLSv1.2 or TLSv1.3")
            versions.append(v)
        ctx.minimum_version = min(versions)
        ctx.maximum_version = max(versions)
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.supported_cipher_suites:
        names = [n for n in (_openssl_cipher(s) for s in tls.supported_cipher_suites) if n]
        if names:
            try:
                ctx.set_ciphers(":".join(names))
            except ssl.SSLError:
                raise _error(file, line, "tls/supportedCipherSuites",
                             f"none of {', '.join(tls.supported_cipher_suites)} is available; "
                             f"expected IANA or OpenSSL cipher suite names") from None
    if tls.client_auth:
        ctx.verify_mode = ssl.CERT_REQUIRED
        if not tls.truststore:
            raise _error(file, line, "tls/clientAuth", "clientAuth needs a <truststore>")
        ctx.load_verify_locations(cadata=_truststore_pem(tls).decode())
    return ctx


def _truststore_pem(tls) -> bytes:
    with open(tls.truststore, "rb") as f:
        data = f.read()
    if b"-----BEGIN CERTIFICATE-----" in data:
        return data
    try:
        _, cert, extra = pkcs12.load_key_and_certificates(data, tls.truststore_secret.encode() or None)
    except ValueError as exc:
        raise _error(tls.file, tls.line, "tls/clientAuth/truststore",
                     f"{tls.truststore}: {exc}; expected PEM certificates or a PKCS12 truststore") from None
    certs = ([cert] if cert else []) + list(extra or [])
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def build_server_context(tls) -> ssl.SSLContext:
    """The server's context, with one sub-context per SNI certificate."""
    file, line = tls.file, tls.line
    ctx = _base_context(tls, file, line)
    main = load_key_material(keystore=tls.keystore, keystore_type=tls.keystore_type, secret=tls.secret,
                             private_key=tls.private_key, certificates=tls.certificates,
                             file=file, line=line)
    _load_chain_into(ctx, main)
    by_name: dict[str, ssl.SSLContext] = {}
    for entry in tls.sni:
        material = load_key_material(keystore=entry.keystore, keystore_type=entry.keystore_type,
                                     secret=entry.secret, private_key=entry.private_key,
                                     certificates=entry.certificates, file=entry.file, line=entry.line)
        sub = _base_context(tls, entry.file, entry.line)
        _load_chain_into(sub, material)
        for host in entry.hosts or material.names():
            by_name[host.lower()] = sub

    def choose(sslobj, server_name, _ctx):
        sni_name.set(server_name)
        if server_name:
            name = server_name.lower().rstrip(".")
            chosen = by_name.get(name)
            if chosen is None and "." in name:
                chosen = by_name.get("*." + name.split(".", 1)[1])
            if chosen is not None:
                sslobj.context = chosen
        return None

    ctx.sni_callback = choose
    for sub in set(by_name.values()):
        sub.sni_callback = choose
    return ctx


class TLSManager:
    """The current TLS context of one server block."""

    def __init__(self, tls):
        self.tls = tls
        self.context = build_server_context(tls)

    def reload(self) -> bool:
        try:
            context = build_server_context(self.tls)
        except (ConfigError, ssl.SSLError, OSError) as exc:
            log.error("TLS reload failed, keeping the current certificates: %s", exc)
            return False
        self.context = context
        log.info("TLS certificates reloaded (%s)", self.tls.keystore or self.tls.certificates)
        return True


def create_self_signed_keystore(path: str, secret: str, hostnames: list[str], days: int = 825) -> None:
    """A PKCS12 keystore with a self-signed EC certificate for ``hostnames``, mode 0600."""
    import datetime

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hostnames]), False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .sign(key, hashes.SHA256()))
    encryption = (serialization.BestAvailableEncryption(secret.encode()) if secret
                  else serialization.NoEncryption())
    data = pkcs12.serialize_key_and_certificates(b"james", key, cert, None, encryption)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
