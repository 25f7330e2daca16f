"""``chainmail relaycheck``: the open-relay self-test, run as a real subprocess against real
``chainmail run`` servers (and small scripted servers for the client's own edge cases)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import socketserver
import subprocess
import threading

import pytest

from chainmail.relaycheck import UsageError, battery, parse_target

from ..conftest import CHAINMAIL, NO_DNS, ROOT, ChainmailProcess

AUTH_CORE = "org.apache.james.smtpserver.CoreCmdHandlerLoader"
TRICK_IDS = [t.id for t in battery("local.test")]

# Clients outside authorizedAddresses, each a way chainmail can be configured for an MX.
REFUSING = {
    "authorized-empty": dict(authorized=""),
    "authorized-elsewhere": dict(authorized="192.0.2.0/24"),
    "auth-announce-never": dict(servers="<auth><announce>never</announce></auth>",
                                authorized="", core=AUTH_CORE),
    "auth-announce-always": dict(servers="<auth><announce>always</announce>"
                                         "<requireSSL>false</requireSSL></auth>",
                                 authorized="", core=AUTH_CORE),
}

# Tricks that hide the foreign domain in the local part of a local-domain address: chainmail
# refuses them from clients that may not relay (sender-specified routing), like Postfix.
LOCAL_PART_ROUTING = {"percent", "bang", "bang-local", "quoted-local"}


def relaycheck(target: str, *args: str, local: str = "local.test", json_out: bool = True):
    cmd = [*CHAINMAIL, "relaycheck", target, "--local-domain", local, "--timeout", "5", *args]
    if json_out:
        cmd.append("--json")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    report = json.loads(proc.stdout) if json_out and proc.stdout.strip() else None
    return proc, report


def statuses(report) -> dict[str, str]:
    return {t["id"]: t["status"] for t in report["tricks"]}


def test_battery_has_every_trick_once_with_exact_lines():
    tricks = battery("local.test", "127.0.0.1")
    assert len(tricks) == len({t.id for t in tricks}) >= 20
    lines = {t.id: t.rcpt for t in tricks}
    assert lines["plain"] == "RCPT TO:<user@relay-test.invalid>"
    assert lines["percent"] == "RCPT TO:<user%relay-test.invalid@local.test>"
    assert lines["bang"] == "RCPT TO:<relay-test.invalid!user>"
    assert lines["route-2"] == "RCPT TO:<@local.test,@relay-test.invalid:user@relay-test.invalid>"
    assert lines["quoted-literal"] == 'RCPT TO:<"user@relay-test.invalid"@[127.0.0.1]>'
    assert lines["trailing-space"] == "RCPT TO:<user@relay-test.invalid> "
    assert lines["no-brackets"] == "RCPT TO:user@relay-test.invalid"
    assert battery("l.test", "::1")[[t.id for t in tricks].index("literal")].rcpt == \
        "RCPT TO:<user@[IPv6:::1]>"
    assert {t.id: t.sender for t in tricks if t.sender is not None} == {
        "null-sender": "", "local-sender": "postmaster@local.test",
        "foreign-sender": "relaycheck@relay-test.invalid"}


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:2525", ("127.0.0.1", 2525)),
    ("localhost:25", ("127.0.0.1", 25)),
    ("LOCALHOST", ("127.0.0.1", 25)),
    ("[::1]:587", ("::1", 587)),
    ("::1", ("::1", 25)),
    ("192.0.2.7", ("192.0.2.7", 25)),
])
def test_target_parsing(text, expected):
    assert parse_target(text) == expected


@pytest.mark.parametrize("text", ["mail.example.org:25", "127.1:25", "localhost.localdomain:25",
                                  "127.0.0.1:0", "127.0.0.1:http", "[::1", ""])
def test_target_parsing_refuses(text):
    with pytest.raises(UsageError):
        parse_target(text)


@pytest.mark.parametrize("config", REFUSING)
def test_chainmail_refuses_every_trick(chainmail_factory, config):
    server = chainmail_factory(**REFUSING[config])
    proc, report = relaycheck(f"127.0.0.1:{server.port}")
    assert list(statuses(report)) == TRICK_IDS
    assert {k: v for k, v in statuses(report).items() if v != "refused"} == {}
    assert all(t["code"] >= 500 for t in report["tricks"])
    assert report["summary"] == {"tricks": len(TRICK_IDS), "refused": len(TRICK_IDS),
                                 "accepted": 0, "errors": 0}
    assert proc.returncode == 0 and report["exit"] == 0
    # Every trick on one connection: chainmail never hangs up on a refused recipient.
    assert report["connections"] == 1
    policy = ("530 5.7.1 Authentication Required" if config == "auth-announce-always"
              else "550 5.7.1 Requested action not taken: relaying denied")
    refused_with = {t["reply"] for t in report["tricks"] if t["code"] in (530, 550)}
    assert refused_with == {policy}
    # The local-part routing tricks reach the relay policy (not a syntax error).
    assert {t["reply"] for t in report["tricks"] if t["id"] in LOCAL_PART_ROUTING} == {policy}
    assert server.queued() == []


def test_positive_control_authorized_client_is_reported_accepted(chainmail_factory):
    """From 127.0.0.0/8 we may relay: the check must say so, and fail."""
    server = chainmail_factory(authorized="127.0.0.0/8")
    proc, _ = relaycheck(f"127.0.0.1:{server.port}", json_out=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"relaycheck 127.0.0.1:{server.port}: local domain local.test")
    assert lines[1] == "greeting: 220 mx.test ESMTP chainmail ready"
    plain = next(line for line in lines if line.endswith("  RCPT TO:<user@relay-test.invalid>")
                 and "plain foreign recipient" in line)
    assert re.match(r"ACCEPTED 250 2\.1\.5 Recipient <user@relay-test\.invalid> OK +plain", plain)
    percent = next(line for line in lines if "RCPT TO:<user%relay-test.invalid@local.test>" in line)
    assert percent.startswith("ACCEPTED ")
    assert percent.endswith("(local part contains %/!, check your delivery does not route on it)")
    null = next(line for line in lines if " null sender " in line)
    assert null.endswith("RCPT TO:<user@relay-test.invalid>  (after MAIL FROM:<>)")
    assert sum(1 for line in lines if re.match(r"(refused |ACCEPTED|error   ) ", line)) == len(TRICK_IDS)
    summary = re.fullmatch(r"(\d+) tricks: (\d+) refused, (\d+) accepted", lines[-1])
    assert summary and int(summary[1]) == len(TRICK_IDS)
    assert int(summary[2]) + int(summary[3]) == len(TRICK_IDS) and int(summary[3]) > 0
    # Nothing was sent beyond the envelope.
    assert server.queued() == []

    _, report = relaycheck(f"localhost:{server.port}")
    by_id = {t["id"]: t for t in report["tricks"]}
    assert by_id["plain"]["status"] == "ACCEPTED"
    assert by_id["plain"]["reply"] == "250 2.1.5 Recipient <user@relay-test.invalid> OK"
    assert by_id["plain"]["note"] is None
    assert by_id["percent"]["note"] == "local part contains %/!, check your delivery does not route on it"
    assert report["exit"] == 1 and report["target"] == f"127.0.0.1:{server.port}"


def _shipped_copy(tmp_path):
    """conf/ as shipped, bound to free loopback ports, with authorizedAddresses moved off
    loopback so that this client counts as a stranger."""
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf, ignore=shutil.ignore_patterns("keystore"))
    (conf / "dnsservice.xml").write_text(NO_DNS)   # never the system resolver
    xml = (conf / "smtpserver.xml").read_text()
    xml = re.sub(r"<bind>0\.0\.0\.0:\d+</bind>", "<bind>127.0.0.1:0</bind>", xml)
    xml = xml.replace("<authorizedAddresses>127.0.0.0/8</authorizedAddresses>",
                      "<authorizedAddresses>192.0.2.0/24</authorizedAddresses>")
    assert xml.count("127.0.0.1:0") == 3 and xml.count("192.0.2.0/24") == 3
    (conf / "smtpserver.xml").write_text(xml)
    subprocess.run([*CHAINMAIL, "keystore", "--conf", str(conf)], capture_output=True, timeout=60,
                   check=True)
    return conf


def test_shipped_configuration_from_outside_authorized_addresses(tmp_path):
    server = ChainmailProcess(_shipped_copy(tmp_path), tmp_path / "var")
    try:
        ports = {m[1]: int(m[2]) for m in re.finditer(
            r"server '([^']+)' listening on 127\.0\.0\.1:(\d+)", server.log)}
        # The MTA: no AUTH, verifyIdentity true, local domain localhost.
        proc, report = relaycheck(f"127.0.0.1:{ports['smtpserver']}", local="localhost")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert set(statuses(report).values()) == {"refused"}
        local_sender = next(t for t in report["tricks"] if t["id"] == "local-sender")
        assert (local_sender["stage"], local_sender["reply"]) == ("MAIL", "530 5.7.1 Authentication Required")
        assert report["connections"] == 1
        # Submission: STARTTLS, then auth.required refuses MAIL itself.
        proc, report = relaycheck(f"127.0.0.1:{ports['smtpserver-submission']}", "--starttls",
                                  local="localhost")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert {t["stage"] for t in report["tricks"]} == {"MAIL"}
        assert {t["reply"] for t in report["tricks"]} == {"530 5.7.1 Authentication Required"}
        assert report["connections"] == 1
        assert server.queued() == []
    finally:
        assert server.stop() == 0


def test_dns_names_are_refused_without_lookup():
    proc, _ = relaycheck("mail.example.org:25", json_out=False)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "'mail.example.org' is not an IP address: relaycheck never resolves names" in proc.stderr


def test_connection_refused_is_exit_2():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]   # closed again before the check: nobody listens there
    proc, _ = relaycheck(f"127.0.0.1:{port}", json_out=False)
    assert proc.returncode == 2
    assert f"cannot connect to 127.0.0.1:{port}: Connection refused" in proc.stderr
    proc, report = relaycheck(f"127.0.0.1:{port}")
    assert proc.returncode == 2 and report["exit"] == 2 and "Connection refused" in report["error"]


# -- scripted servers for the client's edge cases ----------------------------------------

class _Scripted(socketserver.StreamRequestHandler):
    """A minimal SMTP server: no EHLO (502, so the client falls back to HELO), refuses every
    recipient, and misbehaves as ``server.mode`` says."""

    def handle(self):
        srv = self.server
        with srv.lock:
            srv.connections += 1
        self.wfile.write(b"220 scripted ESMTP\r\n")
        while True:
            line = self.rfile.readline()
            if not line:
                return
            with srv.lock:
                srv.lines.append(line)
            verb = line[:4].upper()
            if verb == b"EHLO":
                self.wfile.write(b"502 5.5.1 EHLO not implemented\r\n")
            elif verb in (b"HELO", b"MAIL", b"RSET"):
                self.wfile.write(b"250 OK\r\n")
            elif verb == b"RCPT":
                if srv.mode == "hangup-before-reply":
                    return
                self.wfile.write(b"550 5.7.1 Relaying denied\r\n")
                if srv.mode == "hangup-after-reply":
                    return
            elif verb == b"QUIT":
                self.wfile.write(b"221 Bye\r\n")
                return
            else:
                self.wfile.write(b"500 5.5.1 What?\r\n")


@pytest.fixture
def scripted():
    servers = []

    def start(mode: str):
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Scripted)
        server.daemon_threads = True
        server.mode, server.connections, server.lines = mode, 0, []
        server.lock = threading.Lock()
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_helo_fallback_and_reconnect_after_hangup(scripted):
    server = scripted("hangup-after-reply")
    proc, report = relaycheck(f"127.0.0.1:{server.server_address[1]}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(statuses(report).values()) == {"refused"}
    assert report["connections"] == len(TRICK_IDS)
    lines = [line.decode() for line in server.lines]
    assert lines.count("HELO relaycheck.invalid\r\n") == len(TRICK_IDS)
    assert "RCPT TO:<user@relay-test.invalid> \r\n" in lines      # sent exactly, trailing space
    assert "RCPT TO: <user@relay-test.invalid>\r\n" in lines
    assert not any(line.startswith(("DATA", "BDAT")) for line in lines)


def test_server_hanging_up_on_every_rcpt_is_an_error(scripted):
    server = scripted("hangup-before-reply")
    proc, report = relaycheck(f"127.0.0.1:{server.server_address[1]}", json_out=False)
    assert proc.returncode == 2
    assert proc.stdout.splitlines()[-1] == f"{len(TRICK_IDS)} tricks: 0 refused, 0 accepted, {len(TRICK_IDS)} errors"
    assert all(line.startswith("error    connection lost after RCPT")
               for line in proc.stdout.splitlines()[2:-1])
    # One retry per trick on a fresh connection.
    assert server.connections == 2 * len(TRICK_IDS)
