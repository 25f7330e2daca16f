"""The shipped conf/ works as `make run` uses it: three servers, a keystore made on demand."""

from __future__ import annotations

import shutil
import smtplib
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from ..conftest import CHAINMAIL, NO_DNS, ROOT, ChainmailProcess


def ports_free(*ports: int) -> bool:
    for port in ports:
        with socket.socket() as s:
            # as the server binds: connections closing in TIME-WAIT do not count
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                return False
    return True


def test_shipped_configuration_serves_mta_smtps_and_submission(tmp_path):
    if not ports_free(2525, 4650, 5870):
        pytest.fail("ports 2525/4650/5870 are taken: stop the other chainmail (make run) first")
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf, ignore=shutil.ignore_patterns("keystore"))
    # The shipped dnsservice.xml asks the system resolver; the bounce of this test's mail
    # (postmaster@localhost is nobody) must not: it goes to a closed loopback port instead.
    assert "<autodiscover>true</autodiscover>" in (conf / "dnsservice.xml").read_text()
    (conf / "dnsservice.xml").write_text(NO_DNS)
    out = subprocess.run([*CHAINMAIL, "keystore", "--conf", str(conf)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "created a self-signed certificate" in out
    assert (conf / "keystore").stat().st_mode & 0o077 == 0
    again = subprocess.run([*CHAINMAIL, "keystore", "--conf", str(conf)], capture_output=True, text=True,
                           timeout=60, check=True).stdout
    assert "exists, kept" in again
    server = ChainmailProcess(conf, tmp_path / "var")
    try:
        assert sorted(server.ports) == [2525, 4650, 5870]
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE   # the self-signed certificate of `make run`
        with smtplib.SMTP("127.0.0.1", 2525, local_hostname="client.test", timeout=10) as s:
            assert not s.ehlo()[1].count(b"STARTTLS")
            assert s.sendmail("a@remote.example", ["postmaster@localhost"],
                              "From: a@remote.example\r\nSubject: x\r\n\r\ny\r\n") == {}
        with smtplib.SMTP("127.0.0.1", 5870, local_hostname="client.test", timeout=10) as s:
            s.ehlo()
            assert s.has_extn("starttls")
            s.starttls(context=insecure)
            assert s.ehlo()[0] == 250
        with smtplib.SMTP_SSL("127.0.0.1", 4650, local_hostname="client.test", timeout=10,
                              context=insecure) as s:
            assert s.noop()[0] == 250
    finally:
        assert server.stop() == 0
