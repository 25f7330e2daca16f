"""Java properties files (James's ``webadmin.properties``, ``postgres.properties``...): the
lines as written, with their line numbers, for the readers that check them."""

from __future__ import annotations

import os
from typing import Callable, Collection

from .errors import ConfigError, ConfigWarning

__all__ = ["parse_properties", "read_properties_file", "Properties"]


def parse_properties(text: str) -> list[tuple[int, str, str]]:
    """(line, key, value) of a Java properties text: ``key=value``, ``key: value`` or
    ``key value``; ``#`` and ``!`` start comments; a trailing backslash continues a line."""
    out: list[tuple[int, str, str]] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip() if not pending else raw.lstrip()
        if not pending and (not line or line[0] in "#!"):
            continue
        if not pending:
            start = number
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending += line[:-1]
            continue
        line, pending = pending + line, ""
        cut = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
        if cut < 0:
            parts = line.split(None, 1)
            key, value = parts[0], parts[1] if len(parts) > 1 else ""
        else:
            key, value = line[:cut].strip(), line[cut + 1:].strip()
        out.append((start, key, value))
    return out


def read_properties_file(path: str) -> str | None:
    """The text of the properties file ``path``; None when there is none (the feature it
    configures is off).  ``ConfigError`` when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, "", f"cannot read: {exc}") from None


class Properties:
    """The known keys of one properties file with the lines they stand on, read with checks
    whose errors name the file, the line and the key.  Keys neither known nor ``ignored``
    are warnings."""

    def __init__(self, text: str, path: str, known: Collection[str],
                 ignored: Callable[[str], bool] = lambda key: False) -> None:
        self.path = path
        self.values: dict[str, str] = {}
        self.lines: dict[str, int] = {}
        self.warnings: list[ConfigWarning] = []
        for line, key, value in parse_properties(text):
            if key in known:
                self.values[key], self.lines[key] = value, line
            elif not ignored(key):
                self.warnings.append(ConfigWarning(path, line, key, "unknown key, ignored "
                                                   "(known: " + ", ".join(sorted(known)) + ")"))

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.path, self.lines.get(key), key, message)

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        text = self.values.get(key, "")
        if not text:
            return default
        try:
            number = int(text)
        except ValueError:
            number = low - 1
        if not low <= number <= high:
            raise self.fail(key, f"{text!r}: expected a whole number from {low} to {high}")
        return number

    def boolean(self, key: str, default: bool) -> bool:
        text = self.values.get(key, "").strip().lower()
        if not text:
            return default
        if text not in ("true", "false"):
            raise self.fail(key, f"{self.values[key]!r}: expected true or false")
        return text == "true"

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        text = (self.values.get(key) or options[0]).lower()
        if text not in options:
            raise self.fail(key, f"{self.values[key]!r}: expected one of {', '.join(options)}")
        return text

    def pem_file(self, key: str, conf_dir: str) -> str | None:
        """The PEM file the key names (``file://`` and relative names as keystores are
        read), which must exist; None when the key is not set."""
        from .server import resolve_path
        value = self.values.get(key)
        if not value:
            return None
        try:
            resolved = resolve_path(value, conf_dir)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None
        if not os.path.isfile(resolved):
            raise self.fail(key, f"{resolved}: no such file (a PEM file is expected)")
        return resolved
