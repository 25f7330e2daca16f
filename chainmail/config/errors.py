"""Configuration errors and warnings.

Every problem found while reading a configuration file is reported as
``file:line: element: message`` so that an operator can jump straight to the
offending element. Messages say what was wrong *and* what is expected.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConfigError", "ConfigWarning", "format_location"]


def format_location(file: str, line: int | None, element: str, message: str) -> str:
    """Render ``file:line: element: message`` (``file: element: message`` without a line)."""
    where = f"{file}:{line}" if line is not None else f"{file}"
    if element:
        return f"{where}: {element}: {message}"
    return f"{where}: {message}"


class ConfigError(Exception):
    """A configuration file is invalid; the server must not start.

    ``str(err)`` is ``"{file}:{line}: {element}: {message}"``.
    """

    def __init__(self, file: str, line: int | None, element: str, message: str) -> None:
        super().__init__(file, line, element, message)
        self.file = str(file)
        self.line = line
        self.element = element
        self.message = message

    def __str__(self) -> str:
        return format_location(self.file, self.line, self.element, self.message)


@dataclass(frozen=True)
class ConfigWarning:
    """A non-fatal problem (unknown element, dropped network entry, ...)."""

    file: str
    line: int | None
    element: str
    message: str

    def __str__(self) -> str:
        return "warning: " + format_location(self.file, self.line, self.element, self.message)
