"""Why an operation was refused: one message, an HTTP status and a command-line exit status.

The two do not always agree: adding an address that already exists is a conflict (409)
for WebAdmin but "nothing to do" (exit 1) or bad input (exit 2) for the command line,
so each error carries both."""

from __future__ import annotations

__all__ = ["AdminError", "Invalid", "NotFound", "Conflict"]


class AdminError(Exception):
    """An operation was refused; ``str(err)`` says why and what to do instead."""

    status = 400
    exit_status = 2

    def __init__(self, message: str, *, exit_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_status is not None:
            self.exit_status = exit_status


class Invalid(AdminError):
    """Bad input: an invalid name, a weak password, a domain that is not local."""


class NotFound(AdminError):
    """No such user, domain, queue, repository or mail."""

    status = 404
    exit_status = 1


class Conflict(AdminError):
    """The change contradicts the current state (already a user, still in use, a loop)."""

    status = 409
    exit_status = 2
