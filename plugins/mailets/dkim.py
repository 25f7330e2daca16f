"""James's DKIM mailets (``org.apache.james.jdkim.mailets``): ``DKIMSign`` signs outgoing
mail, ``DKIMVerify`` verifies incoming mail; and ``ARCSign``, which seals a message with an
ARC set (RFC 8617) for the next hop.

Signing and sealing are dkimpy's; verification is the SMTP handlers' (``mailauth_dkim``),
asking the DNS servers of ``dnsservice.xml`` beside the container's configuration.
"""

from __future__ import annotations

import logging
import os
import re

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from chainmail.mailet.api import GenericMailet, Mail, MailetError
from chainmail.remote.dns import DnsService, load_dnsservice
from chainmail_plugins.smtp.mailauth_dkim import verify_message
from chainmail_plugins.smtp.mailauth_results import HEADER, dkim_results, header_value

__all__ = ["DKIMSign", "DKIMVerify", "ARCSign", "ATTR_AUTHRESULT", "ATTR_AUTHRESULT_FLAG"]

log = logging.getLogger("chainmail.dkim")

#: James's DKIMVerify attributes: the result text and whether it passed.
ATTR_AUTHRESULT = "jDKIM.AUTHRESULT"
ATTR_AUTHRESULT_FLAG = "jDKIM.AUTHRESULT.FLAG"

MAIL_FROM = "%MAIL_FROM"
_TEMPLATE_TAGS = {"v", "a", "c", "d", "h", "i", "l", "q", "s", "t", "bh", "b"}


def _crlf(data: bytes) -> bytes:
    """Bare LF and bare CR made CRLF (James's ``forceCRLF``)."""
    return re.sub(rb"\r?\n|\r", b"\r\n", data)


def _key_file(path: str, conf_dir: str) -> str:
    """James's ``file://conf/x.pem`` (relative to the directory above ``conf``), an absolute
    ``file:///x.pem`` or a plain path (relative to the configuration directory)."""
    if path.startswith("file://"):
        rest = path[len("file://"):]
        if rest.startswith("/"):
            return rest
        return os.path.join(os.path.dirname(os.path.abspath(conf_dir)), rest)
    return path if os.path.isabs(path) else os.path.join(conf_dir, path)


def load_private_key(config, conf_dir: str) -> bytes:
    """The RSA key of ``privateKey`` (PEM inline) or ``privateKeyFilepath``, decrypted with
    ``privateKeyPassword`` when given, as the PKCS#1 PEM dkimpy reads."""
    inline = config.get("privateKey")
    if inline:
        pem, key = inline.strip().encode("ascii", "replace"), "privateKey"
        # an inline key may have been indented in the XML
        pem = b"\n".join(line.strip() for line in pem.splitlines()) + b"\n"
    else:
        path = config.get("privateKeyFilepath")
        if not path:
            raise config.error("privateKey", "a PEM private key is required: give <privateKey> "
                                             "or <privateKeyFilepath>")
        key, file = "privateKeyFilepath", _key_file(path, conf_dir)
        try:
            with open(file, "rb") as fh:
                pem = fh.read()
        except OSError as exc:
            raise config.error(key, f"cannot read {file}: {exc.strerror}") from None
    password = config.get("privateKeyPassword")
    try:
        loaded = serialization.load_pem_private_key(
            pem, password.encode("utf-8") if password else None)
    except (ValueError, TypeError) as exc:
        raise config.error(key, f"not a readable PEM private key ({exc}); expected an RSA key "
                                "in PKCS#1 or PKCS#8 PEM, with <privateKeyPassword> if it "
                                "is encrypted") from None
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise config.error(key, "expected an RSA private key (rsa-sha256)")
    return loaded.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())


def parse_template(text: str) -> dict[str, str]:
    """The tags of a signature template (``v=1; s=selector; d=example.com; h=from:to; ...``),
    names lower-cased, whitespace removed from values.  ``ValueError`` for a malformed one."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, eq, value = part.partition("=")
        name = name.strip().lower()
        if not eq or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"{part.strip()!r} is not a tag=value pair")
        if name not in _TEMPLATE_TAGS:
            raise ValueError(f"tag {name}= is not supported in a signature template")
        out[name] = re.sub(r"\s+", "", value)
    return out


class _Signer:
    """A DKIM-Signature template, ready to sign (``signatureTemplate``)."""

    def __init__(self, config, template: str) -> None:
        try:
            tags = parse_template(template)
        except ValueError as exc:
            raise config.error("signatureTemplate", str(exc)) from None
        for required in ("d", "s", "h"):
            if not tags.get(required):
                raise config.error("signatureTemplate", f"the template needs {required}=")
        if tags.get("v", "1") != "1":
            raise config.error("signatureTemplate", "v= must be 1")
        self.algorithm = tags.get("a", "rsa-sha256").lower()
        if self.algorithm not in ("rsa-sha256", "rsa-sha1"):
            raise config.error("signatureTemplate", f"a={self.algorithm}: expected rsa-sha256")
        canon = tags.get("c", "simple/simple").lower()
        header_c, _, body_c = canon.partition("/")
        body_c = body_c or "simple"
        if header_c not in ("simple", "relaxed") or body_c not in ("simple", "relaxed"):
            raise config.error("signatureTemplate", f"c={canon}: expected simple or relaxed")
        self.canonicalize = (header_c.encode(), body_c.encode())
        self.headers = [h.strip().lower().encode("ascii") for h in tags["h"].split(":") if h.strip()]
        if b"from" not in self.headers:
            raise config.error("signatureTemplate", "h= must list from (RFC 6376 §5.4)")
        self.domain, self.selector = tags["d"], tags["s"]
        self.identity = tags.get("i") or None
        self.length = "l" in tags

    def sign(self, content: bytes, key: bytes, domain: str) -> bytes:
        signer = dkim.DKIM(content, linesep=b"\r\n")
        signer.should_not_sign = {b"dkim-signature"}   # the operator's h= decides
        identity = self.identity.replace(MAIL_FROM, domain) if self.identity else None
        return signer.sign(self.selector.encode(), domain.encode(), key,
                           signature_algorithm=self.algorithm.encode(),
                           identity=identity.encode() if identity else None,
                           canonicalize=self.canonicalize, include_headers=self.headers,
                           length=self.length)


def _prepend(mail: Mail, field: bytes) -> None:
    """Put a header field (CRLF-folded) on top of the message, in the message's line ends."""
    if b"\r\n" not in mail.head and b"\n" in mail.head:
        field = field.replace(b"\r\n", b"\n")
    mail.set_content(field + mail.content)


class DKIMSign(GenericMailet):
    """Sign the mail with a DKIM-Signature made from ``signatureTemplate`` (James's: e.g.
    ``v=1; s=selector; d=example.com; h=from:to:received:received; a=rsa-sha256; bh=; b=;``;
    ``%MAIL_FROM`` in ``d=`` is the sender's domain, or ``defaultDomain`` for the null
    sender) and the RSA key of ``privateKey`` (PEM inline) or ``privateKeyFilepath``,
    decrypted with ``privateKeyPassword``.  ``forceCRLF`` (default true) signs bare line
    ends as CRLF, as they will be sent."""

    parameters = ("signatureTemplate", "privateKey", "privateKeyFilepath",
                  "privateKeyPassword", "forceCRLF", "defaultDomain")
    runs_on = "thread"   # RSA signing

    def configure(self, config):
        template = config.get("signatureTemplate")
        if not template:
            raise config.error("signatureTemplate", "is required, e.g. v=1; s=selector; "
                                                    "d=example.com; h=from:to; a=rsa-sha256; bh=; b=;")
        self.default_domain = config.get("defaultDomain")
        if MAIL_FROM in template and not self.default_domain:
            raise config.error("defaultDomain", "signatureTemplate contains %MAIL_FROM "
                                                "placeholder but defaultDomain is not configured")
        self.signer = _Signer(config, template)
        self.force_crlf = config.get_bool("forceCRLF", True)
        self.key = load_private_key(config, self.context.conf_dir)

    def service(self, mail):
        domain = self.signer.domain
        if MAIL_FROM in domain:
            domain = domain.replace(MAIL_FROM, mail.sender_domain or self.default_domain or "")
        content = _crlf(mail.content) if self.force_crlf else mail.content
        try:
            field = self.signer.sign(content, self.key, domain)
        except dkim.DKIMException as exc:
            raise MailetError(f"DKIM signing failed: {exc}") from exc
        _prepend(mail, field)


class DKIMVerify(GenericMailet):
    """Verify the mail's DKIM signatures and set James's attributes ``jDKIM.AUTHRESULT``
    (``pass (identity @d)``, ``fail (...)`` or ``neutral (no signatures)``) and
    ``jDKIM.AUTHRESULT.FLAG`` (true/false; absent for no signatures), and add
    ``Authentication-Results: <authservId>; dkim=...`` (``authservId`` defaults to the
    server's name; ``addHeader`` false leaves the message alone).  ``forceCRLF`` (default
    true) verifies bare line ends as CRLF."""

    parameters = ("forceCRLF", "authservId", "addHeader", "minimumKeyBits")

    def configure(self, config):
        self.force_crlf = config.get_bool("forceCRLF", True)
        self.authserv_id = config.get("authservId") or self.context.hostname
        self.add_header = config.get_bool("addHeader", True)
        self.minkey = config.get_int("minimumKeyBits", 1024, minimum=512)
        dns_config = load_dnsservice(os.path.join(self.context.conf_dir, "dnsservice.xml"))
        for warning in dns_config.warnings:
            log.warning("%s", warning)
        self.dns = DnsService(dns_config)

    async def service(self, mail):
        content = _crlf(mail.content) if self.force_crlf else mail.content
        verification = await verify_message(self.dns, content, arc=False, minkey=self.minkey)
        sigs = verification.signatures
        passing = verification.passing()
        if not sigs:
            mail.attributes[ATTR_AUTHRESULT] = "neutral (no signatures)"
            mail.attributes.pop(ATTR_AUTHRESULT_FLAG, None)
        elif passing:
            mail.attributes[ATTR_AUTHRESULT] = "pass" + "".join(
                f" (identity {s.identity or '@' + s.domain})" for s in passing)
            mail.attributes[ATTR_AUTHRESULT_FLAG] = True
        else:
            last = sigs[-1]
            mail.attributes[ATTR_AUTHRESULT] = (
                f"fail (identity{last.identity or '@' + last.domain}:{last.reason})")
            mail.attributes[ATTR_AUTHRESULT_FLAG] = False
        log.info("%s: DKIM signature %s", mail.name, mail.attributes[ATTR_AUTHRESULT])
        if self.add_header:
            mail.add_header(HEADER, header_value(self.authserv_id, dkim_results(sigs),
                                                 fold=False), top=True)


class ARCSign(GenericMailet):
    """Seal the mail with the next ARC set (RFC 8617): ARC-Authentication-Results from this
    server's ``Authentication-Results`` fields (those of ``authservId``, default the
    server's name, as ``DKIMHandler`` writes them), ARC-Message-Signature and ARC-Seal,
    signed with ``selector``/``domain`` and the key of ``privateKey`` or
    ``privateKeyFilepath`` (``privateKeyPassword``).  ``headers`` (comma list) are the fields
    the message signature covers (default dkimpy's choice).  A mail without this server's
    Authentication-Results is left unsealed."""

    parameters = ("selector", "domain", "privateKey", "privateKeyFilepath",
                  "privateKeyPassword", "authservId", "headers")
    runs_on = "thread"

    def configure(self, config):
        self.selector = config.require("selector").strip()
        self.domain = config.require("domain").strip()
        self.authserv_id = config.get("authservId") or self.context.hostname
        self.headers = [h.lower().encode("ascii") for h in config.get_list("headers")] or None
        if self.headers is not None and b"from" not in self.headers:
            raise config.error("headers", "must list from (RFC 6376 §5.4)")
        self.key = load_private_key(config, self.context.conf_dir)

    def service(self, mail):
        try:
            fields = dkim.arc_sign(_crlf(mail.content), self.selector.encode(),
                                   self.domain.encode(), self.key,
                                   self.authserv_id.encode(), include_headers=self.headers)
        except dkim.DKIMException as exc:
            raise MailetError(f"ARC sealing failed: {exc}") from exc
        if not fields:
            log.info("%s: no Authentication-Results of %s: not sealed", mail.name,
                     self.authserv_id)
            return
        _prepend(mail, b"".join(fields))
