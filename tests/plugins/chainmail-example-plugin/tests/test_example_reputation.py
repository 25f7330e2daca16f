"""The HTTP reputation handler against a real HTTP service on loopback."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from chainmail.testing import SessionDriver

from chainmail_example_plugin.reputation import ReputationCheck


class Service:
    """Answers each check with ``verdicts[sender]`` (default accept) and records the query."""

    def __init__(self) -> None:
        self.verdicts: dict[str, dict] = {}
        self.queries: list[dict[str, str]] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                query = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
                service.queries.append(query)
                body = json.dumps(service.verdicts.get(query.get("sender"), {"verdict": "accept"}))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                return None   # keep the test output quiet

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/check"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def service():
    s = Service()
    yield s
    s.close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_service_verdicts_become_replies(service):
    service.verdicts["spam@bad.example"] = {"verdict": "reject", "reason": "Listed as a spam source"}
    service.verdicts["new@odd.example"] = {"verdict": "defer", "reason": "New sender, try later"}
    xml = f'<handler class="ReputationCheck"><url>{service.url}</url></handler>'
    with SessionDriver(xml, remote_ip="198.51.100.7", helo="c.example") as s:
        assert str(s.mail("spam@bad.example")) == "550 5.7.1 Listed as a spam source"
        assert str(s.mail("new@odd.example")) == "451 4.7.1 New sender, try later"
        assert s.mail("fine@good.example").code == 250
        assert s.session.state["reputation"] == "accept"
    assert service.queries[0] == {"ip": "198.51.100.7", "sender": "spam@bad.example"}


def test_authenticated_clients_are_not_checked(service):
    with SessionDriver([(ReputationCheck, {"url": service.url})], auth_user="alice@local.test",
                       helo="c.example") as s:
        assert s.mail("alice@local.test").code == 250
    assert service.queries == []


@pytest.mark.parametrize("fail_open, expected", [("true", "250"), ("false", "451 4.7.0")])
def test_an_unreachable_service_fails_open_or_defers(fail_open, expected):
    url = f"http://127.0.0.1:{closed_port()}/check"
    with SessionDriver([(ReputationCheck, {"url": url, "failOpen": fail_open})],
                       helo="c.example") as s:
        assert str(s.mail("a@remote.example")).startswith(expected)
