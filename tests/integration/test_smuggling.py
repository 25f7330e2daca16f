"""SMTP smuggling, in and out: a real ``chainmail run`` with the shipped mailetcontainer.xml
(RemoteDelivery to a recording exchanger found through a fake DNS, LocalDelivery into
Maildirs), driven with both public scanners' fake end-of-data sequences (tests/smuggling.py).

Inbound every sequence is refused and nothing reaches the exchanger.  Outbound, mail holding
bare CRs, bare LFs and NULs reaches the writers the only way left -- a mailet writes them
(``DecodeOctetNames`` of the test plugin turns ``<CR>``, ``<LF>``, ``<NUL>`` into the
octets) -- and the bytes the exchanger's socket received, the Maildir files and the bounces
are checked for them.
"""

from __future__ import annotations

import email
import email.policy
import re
import socket

from ..conftest import raw_exchange, smtpserver_xml
from ..smuggling import ALL_SEQUENCES, bare_octets, sequence_id, smuggling_message
from .test_mailets import wait_for
from .test_remote_delivery import ALICE, container, env, world  # noqa: F401 (fixtures)

REMOTE = "victim@remote.example"
DECODE = '<mailet match="All" class="DecodeOctetNames"/>'
ROOT_PROCESSOR = '<processor state="root" enableJmx="true">'


def with_decoder(mailets: str) -> str:
    """The container with DecodeOctetNames first in root: what a careless mailet writes."""
    assert ROOT_PROCESSOR in mailets
    return mailets.replace(ROOT_PROCESSOR, ROOT_PROCESSOR + DECODE, 1)


def start(env, *, decoder: bool = False, smtp_body: str = "", **params):
    env.pick_port("127.0.0.2", "127.0.0.3")
    env.mx("remote.example", (10, "127.0.0.2"))
    mx = env.exchanger("127.0.0.2")
    mailets = container(env.port, **params)
    server = env.chainmail("sender", smtp=smtpserver_xml(smtp_body, hello="out.local.test"),
                           mailets=with_decoder(mailets) if decoder else mailets,
                           users=[ALICE, "bob@local.test"])
    return server, mx


def transaction(message: bytes, rcpt: str = REMOTE) -> bytes:
    return (b"EHLO scanner.test\r\nMAIL FROM:<test@scanner.test>\r\n"
            + f"RCPT TO:<{rcpt}>\r\n".encode() + b"DATA\r\n" + message + b"\r\n.\r\nQUIT\r\n")


def codes(data: bytes) -> list[str]:
    return [line[:3].decode() for line in data.split(b"\r\n") if line[:3].isdigit() and line[3:4] != b"-"]


def maildir_files(server, user: str) -> list[bytes]:
    new = server.var / "mail" / user / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


def test_every_scanner_sequence_is_refused_and_nothing_is_relayed(env):
    server, mx = start(env)
    for sequence in ALL_SEQUENCES:
        reply = raw_exchange(server.port, transaction(smuggling_message(sequence)))
        # greeting, EHLO, MAIL, RCPT, 354, then the refusal and the close
        assert codes(reply) == ["220", "250", "250", "250", "354", "500"], (sequence_id(sequence), reply)
        assert reply.endswith((b"500 5.0.0 line delimiter must be CRLF\r\n",
                               b"500 5.6.0 NUL character not allowed in message data\r\n"))
    # The server goes on serving: a clean message after all of them is relayed, alone.
    clean = b"From: test@scanner.test\r\nSubject: clean\r\n\r\nclean body"
    assert codes(raw_exchange(server.port, transaction(clean)))[-2:] == ["250", "221"]
    wait_for(lambda: mx.messages, what="the clean message at the exchanger")
    assert len(mx.messages) == 1 and b"clean body" in mx.messages[0]
    assert not [c for c in mx.commands if b"smuggled" in c]
    assert b"smuggled" not in b"".join(bytes(r) for r in mx.raw)
    assert server.log.count("refused, closing") >= 1


def test_normalize_option_accepts_and_relays_the_sequences_as_plain_text(env):
    """With forbidBareNewline=normalize the scanners' messages are accepted in canonical form:
    the fake end of data and the smuggled transaction are body text, relayed dot-stuffed."""
    server, mx = start(env, smtp_body="<forbidBareNewline>normalize</forbidBareNewline>")
    for sequence in ALL_SEQUENCES:
        reply = raw_exchange(server.port, transaction(smuggling_message(sequence)))
        assert codes(reply)[-2:] == ["250", "221"], (sequence_id(sequence), reply)
    wait_for(lambda: len(mx.messages) == len(ALL_SEQUENCES), timeout=20,
             what="every normalised message at the exchanger")
    assert bare_octets(b"".join(bytes(r) for r in mx.raw)) == []
    for payload in mx.messages:
        assert b"\r\nMAIL FROM:<smuggled@evil.test>\r\n" in payload
    # Only the real transactions reached the exchanger.
    assert [c for c in mx.commands if c.startswith(b"MAIL")] == \
        [b"MAIL FROM:<test@scanner.test>"] * len(ALL_SEQUENCES)


def names(data: bytes) -> bytes:
    """The bare CRs, bare LFs and NULs of ``data`` as ``<CR>``, ``<LF>``, ``<NUL>``: a clean
    message for SMTP, which the mailet turns back into ``data``."""
    return b"\r\n".join(line.replace(b"\r", b"<CR>").replace(b"\n", b"<LF>")
                         .replace(b"\x00", b"<NUL>") for line in data.split(b"\r\n"))


HIDDEN_FROM = b"X-Inject: x<CR>From: <ceo@example.org>"


def test_relay_never_sends_a_bare_cr_lf_or_nul_whatever_a_mailet_wrote(env):
    """Each sequence, a header hiding a From: behind a bare CR, and a NUL in the body, written
    by a mailet: the exchanger's socket receives CRLF lines only, one transaction per mail."""
    server, mx = start(env, decoder=True)
    cases = [smuggling_message(s) for s in ALL_SEQUENCES]
    cases.append(b"From: a@local.test\r\n" + HIDDEN_FROM + b"\r\nSubject: hidden\r\n\r\nbody\r\n")
    cases.append(b"From: a@local.test\r\nSubject: nul\r\n\r\nbefore<NUL>after\r\n")
    with server.smtp() as s:
        for case in cases:
            assert s.sendmail("test@scanner.test", [REMOTE], names(case)) == {}
    wait_for(lambda: len(mx.messages) == len(cases), timeout=30, what="every mail at the exchanger")
    wire = b"".join(bytes(r) for r in mx.raw)
    assert bare_octets(wire) == []
    assert [c for c in mx.commands if c.startswith(b"MAIL")] == [b"MAIL FROM:<test@scanner.test>"] * len(cases)
    assert not [c for c in mx.commands if b"smuggled" in c]
    by_subject = {email.message_from_bytes(m, policy=email.policy.compat32)["Subject"]: m
                  for m in mx.messages}
    hidden = email.message_from_bytes(by_subject["hidden"], policy=email.policy.compat32)
    assert hidden.get_all("From") == ["a@local.test"]          # no second From: for anyone
    assert hidden["X-Inject"] == "x From: <ceo@example.org>"
    assert b"\r\nbeforeafter\r\n" in by_subject["nul"]


def test_maildir_keeps_the_header_boundary_and_never_writes_a_cr(env):
    server, _ = start(env, decoder=True)
    cases = {
        "hidden": b"From: a@local.test\r\n" + HIDDEN_FROM + b"\r\nSubject: hidden\r\n\r\nbody\r\n",
        # X-Inject: x CR, then the real CRLF: a reader taking CR LF LF as the end of the
        # header (CRLF turned into LF) must not find the body inside the header.
        "boundary": b"From: a@local.test\r\nSubject: boundary\r\nX-Inject: x<CR>\r\n\r\nbody line\r\n",
        "body": b"From: a@local.test\r\nSubject: body\r\n\r\nouter<CR>.<CR>inner<NUL>\r\n",
    }
    with server.smtp() as s:
        for case in cases.values():
            assert s.sendmail("test@scanner.test", ["bob@local.test"], names(case)) == {}
    files = wait_for(lambda: len(maildir_files(server, "bob@local.test")) == len(cases)
                     and maildir_files(server, "bob@local.test"), what="three deliveries")
    for data in files:
        assert b"\r" not in data and b"\x00" not in data
    parsed = {m["Subject"]: m for m in (email.message_from_bytes(f, policy=email.policy.compat32)
                                        for f in files)}
    assert parsed["hidden"].get_all("From") == ["a@local.test"]
    assert parsed["boundary"]["X-Inject"].strip() == "x" and parsed["boundary"].get_payload() == "body line\n"
    assert parsed["body"].get_payload() == "outer\n.\ninner\n"


def test_bounce_quotes_the_original_in_canonical_form_to_a_remote_sender(env):
    """A mail with bare octets refused by the next hop bounces to its (remote) sender: the
    report leaves through RemoteDelivery, and the original it quotes keeps its header fields
    where chainmail saw them."""
    env.pick_port("127.0.0.2", "127.0.0.3")
    env.mx("remote.example", (10, "127.0.0.2"))
    env.mx("refusing.example", (10, "127.0.0.3"))
    sender_mx = env.exchanger("127.0.0.2")
    env.exchanger("127.0.0.3", replies={"RCPT": b"550 5.1.1 no such user\r\n"})
    server = env.chainmail("sender", smtp=smtpserver_xml(hello="out.local.test"),
                           mailets=with_decoder(container(env.port)), users=[ALICE])
    original = (b"From: smuggler@remote.example\r\n" + HIDDEN_FROM + b"\r\nSubject: bounce me\r\n\r\n"
                b"outer<CR>.<CR>MAIL FROM:<smuggled@evil.test><CR><LF>inner<NUL>\r\n")
    with server.smtp() as s:
        assert s.sendmail("smuggler@remote.example", ["nobody@refusing.example"], original) == {}
    wait_for(lambda: sender_mx.messages, timeout=20, what="the bounce at the sender's exchanger")
    wire = b"".join(bytes(r) for r in sender_mx.raw)
    assert bare_octets(wire) == []
    assert [c for c in sender_mx.commands if c.startswith(b"MAIL")] == [b"MAIL FROM:<>"]
    report = email.message_from_bytes(sender_mx.messages[0].replace(b"\r\n..", b"\r\n."),
                                      policy=email.policy.default)
    [quoted] = [p for p in report.walk() if p.get_content_type() == "message/rfc822"]
    inner = quoted.get_payload()[0]
    assert inner.get_all("From") == ["smuggler@remote.example"]
    assert inner["X-Inject"] == "x From: <ceo@example.org>"
    assert re.search(rb"\r\nouter\r\n\.\.\r\nMAIL FROM:<smuggled@evil.test>\r\n", sender_mx.messages[0])


def test_a_cr_in_a_command_is_refused_and_the_session_goes_on(env):
    server, _ = start(env)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO a\rMAIL FROM:<x@evil.test>\r\nNOOP\r\n")
        assert f.readline() == b"500 5.5.2 Command contains characters that are not allowed\r\n"
        assert f.readline() == b"250 2.0.0 OK\r\n"
