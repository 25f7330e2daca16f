"""Mailets of the example package."""

from __future__ import annotations

from chainmail.mailet.api import GenericMailet, Mail, MailetConfig


class SubjectTag(GenericMailet):
    """Puts ``<tag>`` in front of the subject of mail that has the header ``<header>`` (any
    value; every mail when no header is named), once.

    ``<mailet match="All" class="SubjectTag"><header>X-Spam-Flag</header><tag>[SPAM]</tag></mailet>``
    """

    parameters = ("tag", "header")

    def configure(self, config: MailetConfig) -> None:
        self.tag = config.require("tag").strip()
        self.header = config.get("header")

    def service(self, mail: Mail) -> None:
        if self.header and not mail.has_header(self.header):
            return
        subject = mail.get_header("Subject", "") or ""
        if subject.startswith(self.tag):
            return
        mail.set_header("Subject", f"{self.tag} {subject}".strip())
        mail.attributes["subject_tagged"] = True
