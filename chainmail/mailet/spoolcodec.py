"""A :class:`Mail` to and from its spool entry: the envelope fields and the attributes the
container keeps there (error message, hops, arrival, retry time, queue id).

Its own module so that the spooler, the outgoing queue and the CLI read spool entries the
way the context writes them, without importing the context.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Mapping

from .api import ATTR_ARRIVAL, ATTR_ERROR, ATTR_HOPS, ATTR_RETRY_AT, ROOT, Mail

if TYPE_CHECKING:  # pragma: no cover
    from chainmail.store.spool import Envelope, QueuedMessage

__all__ = ["ATTR_QUEUE_ID", "mail_from_queued", "envelope_of", "queue_id_of",
           "original_queue_id"]

#: The queue id a mail was given when it was first spooled (the one the 250 reply named).
#: A mail keeps it however often it is re-spooled (retries, deferrals, the outgoing queue),
#: so the operator follows one id; a spool entry without it is its own first entry.
ATTR_QUEUE_ID = "chainmail.queue_id"
#: Names :class:`Mail` gives itself when it is created without one (a new mail: its queue
#: id is the spool id it gets when it is committed).
_UNNAMED = re.compile(r"mail-\d+(?:-\d+)*")

_COPY_OF = re.compile(r"([0-9a-f]{12}-[0-9a-f]{20})[-.].*")


def original_queue_id(name: str) -> str:
    """The queue id a mail's copies (``<id>-<n>``, made when a matcher splits it or a mailet
    sends it on) descend from; ``name`` itself for anything else."""
    m = _COPY_OF.fullmatch(name)
    return m.group(1) if m else name


def queue_id_of(envelope: Any, spool_id: str) -> str:
    """The queue id of the spool entry ``spool_id`` whose envelope is ``envelope``."""
    value = envelope.attributes.get(ATTR_QUEUE_ID)
    return value if isinstance(value, str) and value else spool_id


def mail_from_queued(queued: QueuedMessage, content: bytes) -> Mail:
    """A :class:`Mail` from a spool entry (``QueuedMessage``) and its body."""
    env = queued.envelope
    attributes = dict(env.attributes)
    error_message = attributes.pop(ATTR_ERROR, None)
    hops = int(attributes.pop(ATTR_HOPS, 0) or 0)
    attributes.pop(ATTR_RETRY_AT, None)
    name = attributes.pop(ATTR_QUEUE_ID, None)
    arrival = attributes.pop(ATTR_ARRIVAL, None)
    queued_at = float(arrival) if isinstance(arrival, (int, float)) else queued.queued_at
    rcpt_params = {r: p for r, p in zip(env.recipients, env.rcpt_params)}
    return Mail(name if isinstance(name, str) and name else queued.id, env.sender, env.recipients, content, state=env.state or ROOT,
                attributes=attributes, error_message=error_message, mail_params=env.mail_params,
                rcpt_params=rcpt_params, queued_at=queued_at, error_count=env.error_count,
                hops=hops)


def envelope_of(mail: Mail, *, extra: Mapping[str, Any] | None = None) -> Envelope:
    """The spool ``Envelope`` that stores ``mail`` (state, error count, attributes)."""
    from chainmail.store.spool import Envelope
    attributes = dict(mail.attributes)
    if mail.error_message:
        attributes[ATTR_ERROR] = mail.error_message
    if mail.hops:
        attributes[ATTR_HOPS] = mail.hops
    if mail.queued_at:
        attributes[ATTR_ARRIVAL] = mail.queued_at
    if mail.name and not _UNNAMED.fullmatch(mail.name):
        attributes[ATTR_QUEUE_ID] = mail.name
    if extra:
        attributes.update(extra)
    return Envelope(sender=mail.sender, recipients=list(mail.recipients),
                    mail_params=dict(mail.mail_params),
                    rcpt_params=[dict(mail.rcpt_params.get(r, {})) for r in mail.recipients],
                    attributes=attributes, state=mail.state, error_count=mail.error_count)
