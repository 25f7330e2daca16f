"""Configuration reload on SIGHUP: real ``chainmail run`` processes (one process, and a
supervisor with worker processes), smtplib and raw sockets on loopback.

A session keeps the handler chain it started with while new sessions get the new one; a
broken file changes nothing and is logged with its file and line; ``<smtpserver>`` blocks
added and removed start and stop listening; a mailetcontainer.xml change applies to the
next mail; nothing accepted is lost while reloads happen under load.
"""

from __future__ import annotations

import re
import signal
import smtplib
import socket
import threading

import pytest

from chainmail.testing.conf import mailetcontainer_xml

from ..conftest import smtpserver_xml, wait_for, wait_for_log

REFUSE_SENDER = ("<handler class=\"org.apache.james.smtpserver.fastfail.AllowedUnauthenticatedSender\">"
                 "<allowedSenders><allowedSender>ok@remote.example</allowedSender></allowedSenders>"
                 "</handler>")
MESSAGE = "From: a@remote.example\r\nSubject: reload\r\n\r\nbody\r\n"
WORKERS = pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])


def block(name: str, handlers: str = "", workers: int = 1) -> str:
    return smtpserver_xml(f"<jmxName>{name}</jmxName><ioWorkerCount>{workers}</ioWorkerCount>",
                          handlers=handlers)


def write_servers(server, *blocks: str) -> None:
    (server.conf / "smtpserver.xml").write_text("<smtpservers>\n" + "\n".join(blocks)
                                                + "\n</smtpservers>\n")


def reload(server, generation: int, workers: int) -> None:
    """SIGHUP, then wait until every serving process has switched to ``generation``."""
    server.signal(signal.SIGHUP)
    wait_for_log(server, rf"configuration reloaded \(generation {generation}\)", count=workers,
                 timeout=20)


def port_of(server, name: str) -> int:
    found = re.findall(rf"smtpserver '{name}' listening on 127\.0\.0\.1:(\d+)", server.log)
    assert found, f"no listening line for {name}"
    return int(found[-1])


@WORKERS
def test_open_session_keeps_its_chain_and_a_new_one_gets_the_new_chain(chainmail_factory, workers):
    server = chainmail_factory(block("mx", workers=workers))
    port = server.port
    old = server.smtp()
    old.ehlo()
    write_servers(server, block("mx", REFUSE_SENDER, workers))
    reload(server, 1, workers)
    assert port_of(server, "mx") == port and server.log.count("listening on") == 1
    for _ in range(2 * workers):   # with workers, sessions land on either of them
        with server.smtp() as new:
            new.ehlo()
            code, reply = new.mail("bad@remote.example")
            assert (code, reply[:5]) == (550, b"5.7.1"), reply
    # The session opened before the reload still runs the chain it started with.
    assert old.mail("bad@remote.example")[0] == 250
    assert old.rcpt("u@local.test")[0] == 250
    assert old.data(MESSAGE)[0] == 250
    if workers == 1:   # the old configuration stays open while a session uses it
        assert "configuration generation 0 closed" not in server.log
    old.quit()
    wait_for_log(server, r"configuration generation 0 closed", count=workers)


@WORKERS
def test_a_broken_file_changes_nothing_and_names_file_and_line(chainmail_factory, workers):
    server = chainmail_factory(block("mx", workers=workers))
    good = (server.conf / "smtpserver.xml").read_text()
    # Unknown handler on a line of its own, in an otherwise good block of the new file.
    text = good.replace('coreHandlersPackage="org.apache.james.smtpserver.NoAuthCmdHandlerLoader">',
                        'coreHandlersPackage="org.apache.james.smtpserver.NoAuthCmdHandlerLoader">'
                        '\n<handler class="NoSuchHandler"/>\n' + REFUSE_SENDER)
    assert text != good
    (server.conf / "smtpserver.xml").write_text(text)
    line = text.splitlines().index('<handler class="NoSuchHandler"/>') + 1
    server.signal(signal.SIGHUP)
    log = wait_for_log(server, r"configuration reload refused", timeout=20)
    refused = [ln for ln in log.splitlines() if "configuration reload refused" in ln]
    assert any(f"smtpserver.xml:{line}" in ln and "NoSuchHandler" in ln for ln in refused), refused
    assert "configuration reloaded" not in log
    # The chain in force is the old one: the sender the new chain would refuse is accepted.
    for _ in range(2 * workers):
        with server.smtp() as s:
            assert s.sendmail("bad@remote.example", ["u@local.test"], MESSAGE) == {}
    # A malformed file (XML syntax) is refused the same way.
    (server.conf / "smtpserver.xml").write_text(good.replace("</smtpservers>", "</smtpserver"))
    server.signal(signal.SIGHUP)
    log = wait_for_log(server, r"configuration reload refused", count=2, timeout=20)
    assert re.search(r"configuration reload refused.*smtpserver\.xml:\d+", log)
    with server.smtp() as s:
        assert s.noop()[0] == 250
    # Fixed again: the next SIGHUP puts the new configuration in force.
    (server.conf / "smtpserver.xml").write_text(good.replace(
        'NoAuthCmdHandlerLoader">', 'NoAuthCmdHandlerLoader">' + REFUSE_SENDER))
    reload(server, 1, workers)
    with server.smtp() as s:
        s.ehlo()
        assert s.mail("bad@remote.example")[0] == 550


@WORKERS
def test_blocks_added_and_removed_start_and_stop_listening(chainmail_factory, workers):
    server = chainmail_factory(block("first", workers=workers))
    first = server.port
    write_servers(server, block("first", workers=workers), block("second", workers=workers))
    reload(server, 1, workers)
    second = port_of(server, "second")
    assert second != first and port_of(server, "first") == first
    for port in (first, second):
        with server.smtp(port) as s:
            assert s.sendmail("a@remote.example", ["u@local.test"], MESSAGE) == {}
    # Removing the first block closes its port; the second keeps its own.
    write_servers(server, block("second", workers=workers))
    reload(server, 2, workers)
    wait_for_log(server, rf"stopped listening on 127\.0\.0\.1:{first}", count=workers)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", first), timeout=5).close()
    with server.smtp(second) as s:
        assert s.sendmail("a@remote.example", ["u@local.test"], MESSAGE) == {}
    # A port taken by someone else refuses the whole new configuration.
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        busy = taken.getsockname()[1]
        write_servers(server, block("second", workers=workers),
                      smtpserver_xml(f"<jmxName>third</jmxName><ioWorkerCount>{workers}</ioWorkerCount>",
                                     bind=f"127.0.0.1:{busy}"))
        server.signal(signal.SIGHUP)
        log = wait_for_log(server, r"configuration reload refused.*cannot bind", timeout=20)
        assert "smtpserver 'third' listening" not in log
        with server.smtp(second) as s:
            assert s.noop()[0] == 250
    finally:
        taken.close()


def test_a_mailetcontainer_change_applies_to_the_next_mail(chainmail_factory):
    def container(repo: str) -> str:
        return mailetcontainer_xml(f'<processor state="root"><mailet match="All" class="ToRepository">'
                                   f"<repositoryPath>file://var/mail/{repo}/</repositoryPath>"
                                   "</mailet></processor>")
    server = chainmail_factory(files={"mailetcontainer.xml": container("first")})

    def stored(repo: str) -> list:
        path = server.var / "mail" / repo
        return [p for p in path.iterdir() if "-" in p.name] if path.is_dir() else []
    with server.smtp() as s:
        assert s.sendmail("a@remote.example", ["u@local.test"], MESSAGE) == {}
    wait_for(lambda: stored("first"), what="the first mail in the first repository")
    (server.conf / "mailetcontainer.xml").write_text(container("second"))
    reload(server, 1, 1)
    with server.smtp() as s:
        assert s.sendmail("a@remote.example", ["u@local.test"], MESSAGE) == {}
    wait_for(lambda: stored("second"), what="the next mail in the second repository")
    assert len(stored("first")) == 1
    # A broken container file keeps the engine in force.
    (server.conf / "mailetcontainer.xml").write_text(container("third").replace(
        "ToRepository", "NoSuchMailet"))
    server.signal(signal.SIGHUP)
    wait_for_log(server, r"configuration reload refused.*mailetcontainer\.xml:\d+.*NoSuchMailet",
                 timeout=20)
    with server.smtp() as s:
        assert s.sendmail("a@remote.example", ["u@local.test"], MESSAGE) == {}
    wait_for(lambda: len(stored("second")) == 2, what="the third mail in the second repository")


@WORKERS
def test_nothing_accepted_is_lost_while_reloading(chainmail_factory, workers):
    server = chainmail_factory(block("mx", workers=workers))
    port = server.port
    sent: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as s:
                    for _ in range(3):   # sessions with several mails span a reload
                        assert s.sendmail("ok@remote.example", ["u@local.test"],
                                          f"Subject: {n}-{i}\r\n\r\nbody\r\n") == {}
                        sent.append(1)
                        i += 1
            except BaseException as exc:   # a refused or dropped connection fails the test
                errors.append(exc)
                return
    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        for generation in range(1, 5):
            wait_for(lambda: len(sent) >= 10 * generation, what="mail sent between reloads")
            handlers = REFUSE_SENDER if generation % 2 else ""
            write_servers(server, block("mx", handlers, workers))
            reload(server, generation, workers)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert len(server.queued()) == len(sent) > 40
