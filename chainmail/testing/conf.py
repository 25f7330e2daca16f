"""Configuration files for tests, written in the operator's formats (smtpserver.xml,
lmtpserver.xml, domainlist.xml, dnsservice.xml, mailetcontainer.xml), so that what a test
runs is loaded by the same code as a production configuration."""

from __future__ import annotations

import itertools
import re
from typing import Iterable

__all__ = ["SMTP_CORE", "LMTP_CORE", "server_xml", "handlerchain_xml", "domainlist_xml",
           "dnsservice_xml", "mailetcontainer_xml"]

SMTP_CORE = "org.apache.james.smtpserver.NoAuthCmdHandlerLoader"
LMTP_CORE = "org.apache.james.lmtpserver.CoreCmdHandlerLoader"

_names = itertools.count(1)


def handlerchain_xml(handlers: str = "", core: str = SMTP_CORE) -> str:
    """``handlers`` as a ``<handlerchain>``: a whole element is kept as written; ``<handler>``
    elements are put before the core package ``core``."""
    text = handlers.strip()
    if text.startswith("<handlerchain"):
        return text
    return f'<handlerchain coreHandlersPackage="{core}">{text}</handlerchain>'


def server_xml(handlers: str = "", *, kind: str = "smtp", options: str = "",
               bind: str = "127.0.0.1:0", hello_name: str = "mx.test",
               authorized_addresses: str | None = "127.0.0.0/8",
               core: str | None = None) -> str:
    """A whole ``smtpserver.xml`` (or ``lmtpserver.xml``) with one server block.

    Test defaults, each replaced when ``options`` (raw XML elements of the block) names the
    same element: loopback port 0, ``helloName`` ``mx.test``, ``authorizedAddresses``
    ``127.0.0.0/8`` (SMTP), ``verifyIdentity`` ``false`` and a 30 s ``connectiontimeout``.
    """
    if core is None:
        core = LMTP_CORE if kind == "lmtp" else SMTP_CORE
    defaults = {
        "jmxName": f"<jmxName>{kind}server-test{next(_names)}</jmxName>",
        "bind": f"<bind>{bind}</bind>",
        "helloName": f'<helloName autodetect="false">{hello_name}</helloName>',
        "connectiontimeout": "<connectiontimeout>30</connectiontimeout>",
    }
    if kind == "smtp":
        defaults["verifyIdentity"] = "<verifyIdentity>false</verifyIdentity>"
        if authorized_addresses is not None:
            defaults["authorizedAddresses"] = \
                f"<authorizedAddresses>{authorized_addresses}</authorizedAddresses>"
    given = set(re.findall(r"<([A-Za-z]+)[\s/>]", options))
    body = "\n    ".join(v for k, v in defaults.items() if k not in given)
    return (f'<{kind}servers>\n  <{kind}server enabled="true">\n    {body}\n    {options}\n'
            f"    {handlerchain_xml(handlers, core)}\n  </{kind}server>\n</{kind}servers>\n")


def domainlist_xml(domains: Iterable[str], default: str | None = None) -> str:
    names = list(domains)
    default = default or (names[0] if names else "localhost")
    entries = "".join(f"<domainname>{d}</domainname>" for d in names)
    return (f"<domainlist><domainnames>{entries}</domainnames><autodetect>false</autodetect>"
            f"<autodetectIP>false</autodetectIP><defaultDomain>{default}</defaultDomain>"
            "</domainlist>\n")


def dnsservice_xml(port: int) -> str:
    """Only the resolver on ``127.0.0.1:port``: never the system's."""
    return (f"<dnsservice><servers><server>127.0.0.1:{port}</server></servers>"
            "<autodiscover>false</autodiscover><timeout>2</timeout>"
            "<maxcachesize>0</maxcachesize></dnsservice>\n")


def mailetcontainer_xml(processors: str, *, postmaster: str = "postmaster",
                        error_repository: str = "file://var/mail/error/") -> str:
    """A ``mailetcontainer.xml`` around ``processors`` (``<processor>`` elements), or
    ``processors`` itself when it is a whole ``<mailetcontainer>``.  Without an ``error``
    processor, one storing mail in ``error_repository`` is added (mailets such as
    ``LocalDelivery`` send failures there)."""
    text = processors.strip()
    if text.startswith("<mailetcontainer") or text.startswith("<?xml"):
        return text
    if not re.search(r"""state\s*=\s*["']error["']""", text):
        text += ('<processor state="error"><mailet match="All" class="ToRepository">'
                 f"<repositoryPath>{error_repository}</repositoryPath></mailet></processor>")
    return (f"<mailetcontainer><context><postmaster>{postmaster}</postmaster></context>"
            f"<spooler><threads>4</threads><errorRepository>{error_repository}</errorRepository>"
            f"</spooler><processors>{text}</processors></mailetcontainer>\n")
