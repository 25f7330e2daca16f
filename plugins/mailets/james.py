"""Mailets of James's sample configuration that count mail and mark deliveries:
``MetricsMailet`` and ``AddDeliveredToHeader``.

James's own ``mailetcontainer.xml`` (its memory, JPA and distributed apps) uses both; they
are here so that an operator's copy of that file runs unchanged.
"""

from __future__ import annotations

import logging

from chainmail import metrics
from chainmail.mailet.api import GenericMailet

__all__ = ["MetricsMailet", "AddDeliveredToHeader"]

log = logging.getLogger("chainmail.mailet")


class MetricsMailet(GenericMailet):
    """Count every mail that reaches it in the process-wide counter ``metricName``
    (required), and log the new count.  The mail goes on unchanged."""

    parameters = ("metricName",)

    def configure(self, config):
        name = config.require("metricName").strip()
        if not name:
            raise config.error("metricName", "is empty; expected the name of the counter")
        self.counter = metrics.counter(name)

    def service(self, mail):
        count = self.counter.increment()
        log.info("%s: metric %s is now %d", mail.name, self.counter.name, count)


class AddDeliveredToHeader(GenericMailet):
    """James's mailet that has ``LocalDelivery`` write ``Delivered-To: <recipient>`` into each
    recipient's copy.  chainmail's ``LocalDelivery`` writes that field for every recipient
    already (as Postfix and Dovecot do), so this mailet leaves the mail as it is: adding the
    field to the shared message would give a mail to several recipients every recipient's
    address in every copy, and each copy a second ``Delivered-To``."""

    parameters = ()

    def service(self, mail):
        log.debug("%s: Delivered-To is written per recipient by LocalDelivery", mail.name)
