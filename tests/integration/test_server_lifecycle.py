"""Listeners, limits, timeouts, shutdown and the command line, against real processes."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

from ..conftest import (CHAINMAIL, cli_on_conf, need, raw_exchange, read_line, serving_processes,
                       wait_for, wait_for_log, wait_for_recipients)


def test_connection_limit_answers_421(chainmail_factory):
    server = chainmail_factory("<connectionLimit>2</connectionLimit>")
    a = socket.create_connection(("127.0.0.1", server.port))
    b = socket.create_connection(("127.0.0.1", server.port))
    assert read_line(a).startswith(b"220 ") and read_line(b).startswith(b"220 ")
    c = socket.create_connection(("127.0.0.1", server.port))
    assert read_line(c) == b"421 4.7.0 mx.test Too many connections, try again later\r\n"
    assert c.recv(10) == b""
    a.close()
    b.close()

    def greeted() -> bool:   # a place frees once the server has seen a close
        with socket.create_connection(("127.0.0.1", server.port)) as d:
            return read_line(d).startswith(b"220 ")
    wait_for(greeted, what="a place freed by the closed connections")


def test_connection_limit_per_ip(chainmail_factory):
    server = chainmail_factory("<connectionLimitPerIP>1</connectionLimitPerIP>",
                               bind="127.0.0.1:0")
    a = socket.create_connection(("127.0.0.1", server.port))
    assert read_line(a).startswith(b"220 ")
    b = socket.create_connection(("127.0.0.1", server.port))
    assert read_line(b) == b"421 4.7.0 mx.test Too many connections from your address, try again later\r\n"
    # Another client address (127.0.0.2 is loopback too) is counted apart.
    c = socket.create_connection(("127.0.0.1", server.port), source_address=("127.0.0.2", 0))
    assert read_line(c).startswith(b"220 ")
    for s in (a, b, c):
        s.close()


def test_idle_timeout(chainmail_factory):
    server = chainmail_factory("<connectiontimeout>1</connectiontimeout>")
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        assert read_line(s).startswith(b"220 ")
        start = time.monotonic()
        assert read_line(s, timeout=5) == b"421 4.4.2 mx.test Error: timeout exceeded\r\n"
        assert 0.8 < time.monotonic() - start < 4
        assert s.recv(10) == b""


def test_sigterm_drains_gracefully(chainmail):
    idle = socket.create_connection(("127.0.0.1", chainmail.port))
    busy = socket.create_connection(("127.0.0.1", chainmail.port))
    assert read_line(idle).startswith(b"220") and read_line(busy).startswith(b"220")
    busy.sendall(b"EHLO t\r\nMAIL FROM:<a@local.test>\r\nRCPT TO:<u@local.test>\r\n")
    line = b""
    while not line.startswith(b"250 2.1.5"):   # EHLO's and MAIL's replies come first
        line = read_line(busy)
        assert line, "closed before the reply to RCPT"
    chainmail.signal(signal.SIGTERM)
    # the idle session is told at once
    assert read_line(idle) == b"421 4.3.2 mx.test Service shutting down, closing transmission channel\r\n"
    # no new connections, once every worker process has stopped accepting
    wait_for_log(chainmail, r"shutting down: no new connections", count=serving_processes(chainmail))
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", chainmail.port), timeout=2).recv(10) or (_ for _ in ()).throw(OSError())
    # the transaction in flight finishes
    busy.sendall(b"DATA\r\n")
    assert read_line(busy).startswith(b"354")
    busy.sendall(b"Subject: in flight\r\n\r\nstill here\r\n.\r\n")
    reply = read_line(busy)
    assert reply.startswith(b"250 2.6.0 Message received, queued as ")
    assert read_line(busy).startswith(b"421 4.3.2")
    assert chainmail.proc.wait(10) == 0
    assert [m.id for m in chainmail.queued()] == [reply.split()[-1].decode()]


def test_bad_configuration_names_file_and_line(tmp_path):
    result = cli_on_conf(
        tmp_path, "<smtpservers>\n<smtpserver>\n<bind>127.0.0.1:2x5</bind>\n</smtpserver>\n</smtpservers>\n",
        "run")
    assert result.returncode != 0
    assert "smtpserver.xml:3: bind:" in result.stderr
    assert "2x5" in result.stderr


def test_unknown_handler_is_a_configuration_error(tmp_path):
    result = cli_on_conf(
        tmp_path,
        '<smtpservers><smtpserver><bind>127.0.0.1:0</bind>\n<handlerchain>\n'
        '<handler class="org.apache.james.smtpserver.fastfail.NoSuchHandler"/>\n'
        '</handlerchain></smtpserver></smtpservers>\n', "check-config")
    assert result.returncode == 1
    assert "smtpserver.xml:3: handler: no installed handler provides " \
           "'org.apache.james.smtpserver.fastfail.NoSuchHandler'" in result.stderr
    assert "RecipientBlocker" in result.stderr and "SendMailHandler" in result.stderr


def test_check_config_prints_effective_values_and_chain(tmp_path):
    result = cli_on_conf(
        tmp_path,
        '<smtpservers><smtpserver><jmxName>mx</jmxName><bind>127.0.0.1:0</bind>'
        '<handlerchain><handler class="com.example.mail.RecipientBlocker"/></handlerchain>'
        '</smtpserver></smtpservers>', "check-config")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "connectiontimeout = 300" in out
    assert "auth/requireSSL = true" in out
    chain = [l.strip() for l in out.splitlines() if l.strip()[:3].strip().rstrip(".").isdigit()]
    assert chain[0] == "1. com.example.mail.RecipientBlocker -> chainmail_test_plugin:RecipientBlocker"
    assert chain[1].startswith("2. WelcomeMessageHandler -> chainmail_plugins.smtp.commands:WelcomeMessageHandler")
    assert chain[-1].startswith("18. UnknownCmdHandler ->") or "UnknownCmdHandler" in chain[-1]


def test_ipv6_and_multiple_binds(chainmail_factory):
    if not socket.has_ipv6:
        pytest.fail("this machine has no IPv6 support")
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError as exc:
        pytest.fail(f"::1 unusable here: {exc}")
    server = chainmail_factory(bind="127.0.0.1:0, [::1]:0")
    assert len(server.ports) == 2
    with socket.create_connection(("::1", server.ports[1])) as s:
        assert read_line(s).startswith(b"220 ")
        s.sendall(b"EHLO t\r\n")
        assert read_line(s) == b"250-mx.test Hello t [::1]\r\n"


def test_several_server_blocks(chainmail_factory):
    from ..conftest import smtpserver_xml
    server = chainmail_factory([smtpserver_xml("", hello="one.test"),
                                smtpserver_xml("<smtpGreeting>second</smtpGreeting>", hello="two.test")])
    assert len(server.ports) == 2
    assert raw_exchange(server.ports[0], b"QUIT\r\n").startswith(b"220 one.test")
    assert raw_exchange(server.ports[1], b"QUIT\r\n").startswith(b"220 second")


def test_swaks_sends_a_message(chainmail):
    swaks = need("swaks")
    result = subprocess.run([swaks, "--server", f"127.0.0.1:{chainmail.port}", "--to", "user@local.test",
                             "--from", "sender@remote.example", "--helo", "client.example",
                             "--header", "Subject: from swaks", "--body", "hello from swaks"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  250 2.6.0 Message received" in result.stdout
    [msg] = chainmail.queued()
    body = chainmail.queued_body(msg.id)
    assert b"Subject: from swaks" in body and b"hello from swaks" in body


def test_smtp_source_many_sessions(chainmail):
    smtp_source = need("smtp-source")
    result = subprocess.run([smtp_source, "-s", "5", "-m", "100", "-l", "2048", "-f", "s@remote.example",
                             "-t", "r@local.test", "-M", "client.example", f"127.0.0.1:{chainmail.port}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(chainmail.queued()) == 100


def test_domain_and_queue_commands(chainmail):
    env = ["--conf", str(chainmail.conf), "--var", str(chainmail.var)]
    run = lambda *a: subprocess.run([*CHAINMAIL, *a, *env], capture_output=True, text=True, timeout=30)
    assert run("domain", "list").stdout.split() == ["local.test"]
    # the running server refuses relaying to a domain it doesn't know (from outside 127/8 this
    # would be 550); add the domain while it runs and it becomes local within a second
    assert run("domain", "add", "New.Example").stdout.strip() == "added new.example"
    assert run("domain", "add", "new.example").returncode == 1
    assert run("domain", "add", "bad..name").returncode == 2
    assert sorted(run("domain", "list").stdout.split()) == ["local.test", "new.example"]
    with chainmail.smtp() as s:
        s.sendmail("a@remote.example", ["x@local.test", "y@local.test"], "Subject: q\r\n\r\nx\r\n")
    out = run("queue", "list").stdout
    assert "<a@remote.example> -> <x@local.test>, <y@local.test>" in out
    assert "1 message(s) queued" in out
    assert run("domain", "remove", "new.example").returncode == 0
    assert run("domain", "list").stdout.split() == ["local.test"]


def test_domain_added_while_running_is_local(chainmail_factory):
    server = chainmail_factory(authorized="")
    data = raw_exchange(server.port, b"EHLO t\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<u@later.example>\r\nQUIT\r\n")
    assert b"550 5.7.1" in data
    subprocess.run([*CHAINMAIL, "domain", "add", "later.example", "--conf", str(server.conf),
                    "--var", str(server.var)], check=True, capture_output=True, timeout=30)
    wait_for_recipients(server, "u@later.example")   # seen within a second
    data = raw_exchange(server.port, b"EHLO t\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<u@later.example>\r\nQUIT\r\n")
    assert b"250 2.1.5 Recipient <u@later.example> OK" in data


def test_python_dash_m_works(tmp_path):
    result = subprocess.run([sys.executable, "-m", "chainmail", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "check-config" in result.stdout


def test_keystore_command_names_a_directory_it_cannot_write(tmp_path):
    result = cli_on_conf(
        tmp_path,
        "<smtpservers><smtpserver><bind>127.0.0.1:0</bind>\n"
        '<tls socketTLS="true"><keystore>no/such/dir/keystore</keystore><secret>s</secret></tls>\n'
        "</smtpserver></smtpservers>\n", "keystore")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "smtpserver.xml:1: tls/keystore: cannot create " in result.stderr
    assert "no/such/dir/keystore: No such file or directory" in result.stderr
