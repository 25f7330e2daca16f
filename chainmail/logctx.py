"""What a log line is about, for formats that record it as a field (``--log-format json``).

Code that handles one message sets :data:`queue_id` while it works on it (the spool id the
250 reply announced); the log formatters read it, so a log call does not have to pass it.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

__all__ = ["queue_id", "about_message"]

#: The queue id of the message the current task is working on, or None.
queue_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("chainmail_queue_id",
                                                                     default=None)


@contextlib.contextmanager
def about_message(mail_id: str | None) -> Iterator[None]:
    """Mark the log lines written inside the block as being about ``mail_id``."""
    token = queue_id.set(mail_id)
    try:
        yield
    finally:
        queue_id.reset(token)
