"""Fixtures of the mail authentication tests: a fake DNS and sessions resolving through it."""

from __future__ import annotations

import itertools

import pytest

from .authkit import AuthDns, session


@pytest.fixture
def auth_dns():
    server = AuthDns()
    yield server
    server.close()


@pytest.fixture
def open_session(auth_dns, tmp_path):
    """``open_session(handlers, **settings)``: a SessionDriver whose DNS is ``auth_dns``."""
    drivers = []
    counter = itertools.count()

    def start(handlers, **settings):
        driver = session(auth_dns, tmp_path / f"s{next(counter)}", handlers, **settings)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.close()
