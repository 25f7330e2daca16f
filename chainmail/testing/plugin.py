"""The pytest plugin (entry point ``pytest11``: ``chainmail``): fixtures for any project
that installs chainmail.

- ``chainmail_session(handlers, **settings)``: a :class:`SessionDriver` (no socket);
- ``mailet_harness``: a :class:`MailetHarness` with temporary stores;
- ``chainmail_server(**options)``: a real ``chainmail run`` (:class:`ChainmailServer`);
- ``fake_dns``: a :class:`FakeDns` on loopback, to share between servers.

Everything a fixture starts is stopped when the test ends.
"""

from __future__ import annotations

import itertools

import pytest


@pytest.fixture
def chainmail_session(tmp_path):
    """``chainmail_session(handlers="", **settings) -> SessionDriver`` (see its docstring)."""
    from .driver import SessionDriver
    drivers: list[SessionDriver] = []
    counter = itertools.count()

    def open_session(handlers="", **settings) -> SessionDriver:
        settings.setdefault("var", tmp_path / f"session{next(counter)}" / "var")
        driver = SessionDriver(handlers, **settings)
        drivers.append(driver)
        return driver

    yield open_session
    for driver in drivers:
        driver.close()


@pytest.fixture
def mailet_harness(tmp_path):
    """A :class:`MailetHarness`: local domain ``local.test``, temporary stores."""
    from .harness import MailetHarness
    harness = MailetHarness(var=tmp_path / "mailets" / "var")
    yield harness
    harness.close()


@pytest.fixture
def fake_dns():
    """A :class:`FakeDns` on 127.0.0.1: ``fake_dns.add("example.org", "MX", (10, "mx.example.org"))``."""
    from .fakedns import FakeDns
    dns = FakeDns()
    yield dns
    dns.close()


@pytest.fixture
def chainmail_server(tmp_path):
    """``chainmail_server(**options) -> ChainmailServer`` (see its docstring); every server
    started is stopped at the end of the test."""
    from .server import ChainmailServer
    servers: list[ChainmailServer] = []
    counter = itertools.count()

    def start(**options) -> ChainmailServer:
        server = ChainmailServer(tmp_path / f"chainmail{next(counter)}", **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
