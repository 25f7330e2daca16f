"""Where log lines go and how they look: stderr, a file (``--log-file``) or syslog
(``--syslog``), as text or JSON lines (``--log-format``).

One event is one line in JSON (a traceback goes into the ``exc`` field), so a log shipper
never has to join lines.  A log file is opened in append mode and reopened by
:func:`reopen`, which the SIGHUP handlers of the server and of the supervisor call: after
logrotate has renamed the file, new lines go to a new file at the configured path.

Worker processes are forked with the handlers already set up: each writes whole lines
itself (a file in append mode, a syslog datagram per event); :func:`set_worker` records
the worker's index for the ``worker`` field of JSON lines.
"""

from __future__ import annotations

import errno
import json
import logging
import logging.handlers
import os
import socket
import sys
import time

from . import logctx

__all__ = ["TextFormatter", "JsonFormatter", "configure", "reopen", "set_worker",
           "LogSetupError", "DEFAULT_SYSLOG", "TEXT_FORMAT"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SYSLOG_TEXT_FORMAT = "chainmail[%(process)d]: %(levelname)s %(name)s: %(message)s"
DEFAULT_SYSLOG = "/dev/log"

_worker: int | None = None
_reopenable: list["ReopeningFileHandler"] = []


class LogSetupError(Exception):
    """A log destination that cannot be opened; the message names it and the reason."""


def set_worker(index: int | None) -> None:
    """Called in a forked worker process: its index goes into every JSON line."""
    global _worker
    _worker = index


class TextFormatter(logging.Formatter):
    """The standard format, with the date formatted once a second instead of per line (a
    busy server writes a few lines per message)."""

    _second = -1
    _text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
        return f"{self._text},{int(record.msecs):03d}"


class JsonFormatter(logging.Formatter):
    """One JSON object per event: time (ISO 8601, local, with offset), level, logger,
    message, pid, and when known worker, queue_id and exc (the formatted traceback)."""

    _second = -1
    _prefix = ""
    _offset = ""

    def _time(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            local = time.localtime(second)
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", local)
            offset = time.strftime("%z", local)
            self._offset = f"{offset[:3]}:{offset[3:]}" if len(offset) == 5 else "Z"
        return f"{self._prefix}.{int(record.msecs):03d}{self._offset}"

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": self._time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if _worker is not None:
            doc["worker"] = _worker
        queue_id = getattr(record, "queue_id", None) or logctx.queue_id.get()
        if queue_id:
            doc["queue_id"] = queue_id
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


class ReopeningFileHandler(logging.FileHandler):
    """A log file in append mode that :meth:`reopen` closes and opens again at its path."""

    def __init__(self, path: str) -> None:
        super().__init__(path, mode="a", encoding="utf-8", delay=False)

    def reopen(self) -> None:
        self.acquire()
        try:
            old, self.stream = self.stream, self._open()
            if old is not None:
                old.close()
        finally:
            self.release()


def _syslog_handler(address: str) -> logging.Handler:
    """``/dev/log`` (or another socket path), or ``HOST:PORT`` over UDP; a host must be an
    IP address: log set-up never asks the resolver."""
    target: str | tuple[str, int] = address
    if not address.startswith("/"):
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
            target = (host, int(port))
        except (OSError, ValueError):
            raise LogSetupError(f"--syslog-address {address}: expected a socket path such as "
                                "/dev/log or IP:PORT (UDP)") from None
    else:
        _check_unix_socket(address)
    try:
        return logging.handlers.SysLogHandler(
            address=target, facility=logging.handlers.SysLogHandler.LOG_MAIL)
    except OSError as exc:
        raise LogSetupError(f"cannot log to syslog at {address}: {exc.strerror or exc}") from None


def _check_unix_socket(address: str) -> None:
    """SysLogHandler ignores a socket it cannot connect to, then fails on every line: a
    missing or dead syslog socket is said once, at start."""
    error: OSError | None = None
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):   # as SysLogHandler tries them
        probe = socket.socket(socket.AF_UNIX, kind)
        try:
            probe.connect(address)
            return
        except OSError as exc:
            error = exc
            if exc.errno != errno.EPROTOTYPE:
                break
        finally:
            probe.close()
    assert error is not None
    raise LogSetupError(f"cannot log to syslog at {address}: {error.strerror or error} (is a "
                        "syslog daemon running? --syslog-address names another socket)")


def configure(*, level: int = logging.INFO, log_file: str | None = None,
              syslog: str | None = None, fmt: str = "text") -> logging.Handler:
    """Set up the root logger with one handler: syslog if ``syslog`` is given (or
    ``log_file`` is the word ``syslog``), else the file ``log_file``, else stderr."""
    if log_file == "syslog" and syslog is None:
        syslog, log_file = DEFAULT_SYSLOG, None
    if syslog is not None and log_file is not None:
        raise LogSetupError("--log-file and --syslog (or --syslog-address): choose one log "
                            "destination")
    handler: logging.Handler
    if syslog is not None:
        handler = _syslog_handler(syslog)
        formatter: logging.Formatter = JsonFormatter() if fmt == "json" \
            else logging.Formatter(SYSLOG_TEXT_FORMAT)
    else:
        if log_file is not None:
            try:
                handler = ReopeningFileHandler(os.path.abspath(log_file))
            except OSError as exc:
                raise LogSetupError(f"cannot open log file {log_file}: "
                                    f"{exc.strerror or exc}") from None
            _reopenable.append(handler)
        else:
            handler = logging.StreamHandler(sys.stderr)
        formatter = JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    return handler


def reopen() -> None:
    """Reopen every log file (SIGHUP, after logrotate moved it); an error is logged to the
    old file, which stays in use."""
    for handler in _reopenable:
        try:
            handler.reopen()
        except OSError as exc:
            logging.getLogger("chainmail").error("cannot reopen log file %s: %s; still writing "
                                                 "to the old one", handler.baseFilename,
                                                 exc.strerror or exc)
