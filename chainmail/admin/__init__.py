"""Operations on chainmail's stores that the command line and WebAdmin both carry out.

Each operation checks what an operator could get wrong (an unknown domain, a name that is
already a user, a mapping that would loop) and raises an :class:`AdminError` saying so;
the command line prints it, WebAdmin answers it with James's status code.  Nothing here
prints or formats a listing.
"""

from .errors import AdminError, Conflict, Invalid, NotFound
from .stores import Stores

__all__ = ["AdminError", "Conflict", "Invalid", "NotFound", "Stores"]
