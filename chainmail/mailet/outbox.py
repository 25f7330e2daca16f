"""Where mail that mailets send goes while the engine services a mail.

A leaf module (it imports nothing of the container) so that both the engine, which sets the
outbox around one mail's processing, and the context, whose ``send_mail`` fills it, can use it
without importing each other.
"""

from __future__ import annotations

import contextvars
from typing import Any

__all__ = ["current_outputs"]

#: The mails (:class:`chainmail.mailet.api.Mail`) sent during the current processing run,
#: per trio task; ``None`` outside one, where ``send_mail`` commits to the spool at once.
current_outputs: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "chainmail_mailet_outputs", default=None)
