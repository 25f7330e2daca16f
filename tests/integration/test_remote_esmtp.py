"""RemoteDelivery end to end with RFC 3030 and RFC 3461 NOTIFY=DELAY: a real ``chainmail
run`` relays binary mail received with BDAT onward (byte for byte, or a 5.6.3 bounce), and
tells a sender who asked NOTIFY=DELAY once that a mail is late.  The loopback world of
test_remote_delivery.py (fake DNS, exchangers on 127.0.0.x)."""

from __future__ import annotations

import socket
import time

from ..conftest import smtpserver_xml
from ..remote.peers import Peer, ehlo
from .test_remote_delivery import ALICE, container, dsn, env, make_message, outgoing, world  # noqa: F401

DSN_HANDLERS = "".join(f'<handler class="org.apache.james.smtpserver.dsn.{name}"/>'
                       for name in ("DSNEhloHook", "DSNMailParameterHook",
                                    "DSNRcptParameterHook", "DSNMessageHook"))
#: binary content: a bare LF, a bare CR, a NUL and a line of 2000 octets
BINARY = (b"From: alice@local.test\r\nSubject: binary\r\nMIME-Version: 1.0\r\n"
          b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n"
          b"\r\n\x00\x01\n\r" + b"\xfe" * 2000 + b"\r\nend")


def sender(env, **params):
    smtp = smtpserver_xml(hello="out.local.test", handlers=DSN_HANDLERS)
    return env.chainmail("sender", smtp=smtp, mailets=container(env.port, **params),
                         users=[ALICE])


def lines_until(sock: socket.socket, count: int) -> list[bytes]:
    """``count`` complete replies (last lines) read from ``sock``."""
    data = b""
    while data.count(b"\r\n") < 200:
        replies = [line for line in data.split(b"\r\n") if line[3:4] == b" "]
        if len(replies) >= count:
            return replies
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    raise AssertionError(data)


def submit_binary(server, rcpts: list[str]) -> None:
    """MAIL ... BODY=BINARYMIME, the recipients and one BDAT LAST, pipelined."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.recv(4096)
        sock.sendall(b"EHLO client.test\r\n")
        [ehlo_reply] = lines_until(sock, 1)
        assert ehlo_reply.startswith(b"250")
        commands = [f"MAIL FROM:<{ALICE}> BODY=BINARYMIME".encode(),
                    *(f"RCPT TO:<{r}>".encode() for r in rcpts)]
        sock.sendall(b"".join(c + b"\r\n" for c in commands)
                     + f"BDAT {len(BINARY)} LAST\r\n".encode() + BINARY)
        replies = lines_until(sock, len(commands) + 1)
        assert all(r.startswith(b"250") for r in replies), replies
        sock.sendall(b"QUIT\r\n")


def test_binary_mail_goes_byte_for_byte_or_bounces_with_5_6_3(env):
    env.pick_port("127.0.0.2", "127.0.0.3")
    env.mx("able.test", (10, "127.0.0.2"))
    env.mx("plain.test", (10, "127.0.0.3"))
    able = env.world.exchanger("127.0.0.2", env.port, Peer(replies={
        "EHLO": ehlo("PIPELINING", "8BITMIME", "CHUNKING", "BINARYMIME")}))
    plain = env.world.exchanger("127.0.0.3", env.port, Peer(replies={
        "EHLO": ehlo("PIPELINING", "8BITMIME")}))
    server = sender(env)
    submit_binary(server, ["bob@able.test", "carol@plain.test"])
    report, _, per_rcpt = dsn(server)
    block = per_rcpt["carol@plain.test"]
    assert block["Action"] == "failed" and block["Status"] == "5.6.3"
    assert "Conversion required but not supported" in block["Diagnostic-Code"]
    assert not any(r.startswith(b"MAIL") for r in plain.received)
    deadline = time.time() + 10
    while not any(r.startswith(b"DATA:") for r in able.received) and time.time() < deadline:
        time.sleep(0.05)
    [mail] = [r for r in able.received if r.startswith(b"MAIL")]
    assert b"BODY=BINARYMIME" in mail.split()
    [body] = [r[5:] for r in able.received if r.startswith(b"DATA:")]
    assert body.endswith(BINARY.partition(b"\r\n\r\n")[2])       # every byte of the body


def test_notify_delay_gets_one_delayed_report_then_the_bounce(env):
    env.pick_port("127.0.0.2")
    env.mx("busy.test", (10, "127.0.0.2"))
    busy = env.exchanger("127.0.0.2", greeting=b"421 4.3.2 Service busy, try later\r\n")
    server = sender(env, delayTime="1s, 1s, 1s", maxRetries="3", delayWarningTime="1500ms")
    text, _ = make_message("late")
    with server.smtp() as s:
        s.ehlo("client.test")
        assert s.has_extn("dsn")
        assert s.sendmail(ALICE, ["bob@busy.test", "dave@busy.test"], text,
                          rcpt_options=["NOTIFY=DELAY,FAILURE"]) == {}
    report, _, per_rcpt = dsn(server, count=1)
    assert report["Subject"].startswith("Delayed Mail")
    assert set(per_rcpt) == {"bob@busy.test", "dave@busy.test"}
    for block in per_rcpt.values():
        assert block["Action"] == "delayed" and block["Status"] == "4.3.2"
        assert "421" in block["Diagnostic-Code"]
    assert [p.get_content_type() for p in report.get_payload()][-1] == "text/rfc822-headers"
    report, _, per_rcpt = dsn(server, count=2)          # then the failure, and nothing else
    assert per_rcpt["bob@busy.test"]["Action"] == "failed"
    assert busy.connections == 4
    time.sleep(1.5)
    assert not outgoing(server)
