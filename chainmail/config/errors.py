"""Configuration errors and warnings.

Every problem found while reading a configuration file is reported as
``file:line: element: message`` so that an operator can jump straight to the
offending element. Messages say what was wrong *and* what is expected.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConfigError", "ConfigErrors", "ConfigWarning", "format_location", "every_error"]


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


class ConfigErrors(ConfigError):
    """Several errors found in one pass; the server must not start.

    It is the first error (``file``, ``line``, ``element``, ``message`` are the first's)
    so that code written for one error still works; ``errors`` holds them all and
    ``str()`` gives one ``file:line: element: message`` line per error."""

    def __init__(self, errors: list[ConfigError]) -> None:
        flat = every_error(errors)
        if not flat:
            raise ValueError("ConfigErrors needs at least one error")
        first = flat[0]
        super().__init__(first.file, first.line, first.element, first.message)
        self.errors: tuple[ConfigError, ...] = tuple(flat)

    def __str__(self) -> str:
        return "\n".join(format_location(e.file, e.line, e.element, e.message) for e in self.errors)

    @staticmethod
    def of(errors: list[ConfigError]) -> ConfigError:
        """The one error itself, or a :class:`ConfigErrors` of several."""
        flat = every_error(errors)
        return flat[0] if len(flat) == 1 else ConfigErrors(flat)


def every_error(errors: "list[ConfigError] | tuple[ConfigError, ...]") -> list[ConfigError]:
    """``errors`` with every :class:`ConfigErrors` replaced by the errors it holds."""
    out: list[ConfigError] = []
    for error in errors:
        out.extend(error.errors if isinstance(error, ConfigErrors) else (error,))
    return out


@dataclass(frozen=True)
class ConfigWarning:
    """A non-fatal problem (unknown element, dropped network entry, ...)."""

    file: str
    line: int | None
    element: str
    message: str

    def __str__(self) -> str:
        return "warning: " + format_location(self.file, self.line, self.element, self.message)
