"""The native trio SMTP client, against a real chainmail server and scripted loopback peers."""

from __future__ import annotations

from functools import partial

import pytest
import trio

from chainmail.remote.client import (
    SmtpClient, SmtpConnectionError, SmtpReplyError, SmtpTlsRequiredError, client_tls_context,
    dot_stuff,
)

from ..integration.test_tls import Material, tls_block
from .peers import Peer, start_peer

MESSAGE = b"Subject: hello\r\nFrom: a@local.test\r\n\r\nline one\r\n.dotted line\r\n..two dots\r\nend"


def test_dot_stuff():
    assert dot_stuff(b"a\r\n.b\r\n") == b"a\r\n..b\r\n.\r\n"
    assert dot_stuff(b".start") == b"..start\r\n.\r\n"
    assert dot_stuff(b"bare\nlf\n.x") == b"bare\r\nlf\r\n..x\r\n.\r\n"
    assert dot_stuff(b"") == b".\r\n"


# ------------------------------------------------------------------ against chainmail itself

async def test_send_to_chainmail(chainmail):
    client = await SmtpClient.connect("127.0.0.1", chainmail.port, helo_name="out.test",
                                      timeout=10, connect_timeout=5)
    assert client.greeting.code == 220 and client.esmtp
    assert "PIPELINING" in client.extensions
    result = await client.send("a@local.test", ["u@local.test", "v@remote.example"], MESSAGE)
    assert result.mail_reply.code == 250
    assert [r.reply.code for r in result.recipients] == [250, 250]
    assert result.data_reply.code == 250
    assert result.delivered == ["u@local.test", "v@remote.example"]
    # the same connection carries a second mail
    second = await client.send("", ["w@local.test"], b"Subject: two\r\n\r\nbody\r\n")
    assert second.delivered == ["w@local.test"]
    await client.quit()
    queued = sorted(chainmail.queued(), key=lambda m: m.queued_at)
    assert [m.envelope.recipients for m in queued] == [["u@local.test", "v@remote.example"], ["w@local.test"]]
    assert queued[1].envelope.sender == ""
    body = chainmail.queued_body(queued[0].id)
    assert body.endswith(b"\r\nline one\r\n.dotted line\r\n..two dots\r\nend\r\n")


async def test_size_and_8bitmime_parameters(chainmail_factory):
    server = chainmail_factory("<maxmessagesize>1</maxmessagesize>")
    client = await SmtpClient.connect("127.0.0.1", server.port, timeout=10)
    assert client.extensions.get("SIZE") == "1024"
    result = await client.send("a@local.test", ["u@local.test"], "Subject: é\r\n\r\ncafé\r\n".encode())
    assert result.delivered == ["u@local.test"]
    [msg] = server.queued()
    assert "SIZE" in msg.envelope.mail_params
    if "8BITMIME" in client.extensions:
        assert msg.envelope.mail_params.get("BODY") == "8BITMIME"
    # over the advertised limit: refused before sending, as a permanent error
    with pytest.raises(SmtpReplyError) as err:
        await client.send("a@local.test", ["u@local.test"], b"x" * 2000)
    assert err.value.permanent and err.value.reply.code == 552
    await client.quit()


async def test_refused_recipient_without_and_with_sendpartial(chainmail_factory):
    server = chainmail_factory(authorized="")
    client = await SmtpClient.connect("127.0.0.1", server.port, timeout=10)
    result = await client.send("a@remote.example", ["u@local.test", "b@remote.example"], MESSAGE)
    assert result.accepted == ["u@local.test"]
    [refused] = result.refused
    assert refused.address == "b@remote.example" and refused.reply.code == 550
    assert refused.reply.enhanced == "5.7.1"
    assert result.data_reply is None and result.delivered == []
    assert server.queued() == []
    result = await client.send("a@remote.example", ["u@local.test", "b@remote.example"], MESSAGE,
                               send_partial=True)
    assert result.delivered == ["u@local.test"]
    # nobody accepted: no DATA even with sendpartial
    result = await client.send("a@remote.example", ["b@remote.example"], MESSAGE, send_partial=True)
    assert result.accepted == [] and result.data_reply is None
    await client.quit()
    [msg] = server.queued()
    assert msg.envelope.recipients == ["u@local.test"]


async def test_starttls_opportunistic_and_required(chainmail_factory, tmp_path):
    material = Material(tmp_path)
    server = chainmail_factory(tls_block(material.keystore("ks.p12", "mx.test")))
    ctx = client_tls_context(cafile=str(material.ca_file))
    for mode in ("opportunistic", "required"):
        client = await SmtpClient.connect("127.0.0.1", server.port, timeout=10, tls_context=ctx,
                                          server_hostname="mx.test", starttls=mode)
        assert client.tls and "STARTTLS" not in client.extensions
        assert (await client.send("a@local.test", ["u@local.test"], MESSAGE)).delivered
        await client.quit()
    client = await SmtpClient.connect("127.0.0.1", server.port, timeout=10, starttls="never")
    assert not client.tls and "STARTTLS" in client.extensions
    await client.quit()
    assert len(server.queued()) == 2
    assert "using TLS" in server.queued_body(server.queued()[0].id).decode(errors="replace")


async def test_starttls_identity_is_verified(chainmail_factory, tmp_path):
    material = Material(tmp_path)
    server = chainmail_factory(tls_block(material.keystore("ks.p12", "mx.test")))
    ctx = client_tls_context(cafile=str(material.ca_file))
    with pytest.raises(SmtpConnectionError, match="TLS handshake"):
        await SmtpClient.connect("127.0.0.1", server.port, timeout=10, tls_context=ctx,
                                 server_hostname="other.test")
    # an unknown CA fails too, unless every certificate is trusted (sslTrustAllCerts)
    with pytest.raises(SmtpConnectionError):
        await SmtpClient.connect("127.0.0.1", server.port, timeout=10, server_hostname="mx.test")
    client = await SmtpClient.connect("127.0.0.1", server.port, timeout=10,
                                      tls_context=client_tls_context(trust_all=True),
                                      server_hostname="other.test")
    assert client.tls
    await client.quit()
    ctx = client_tls_context(cafile=str(material.ca_file), verify_identity=False)
    client = await SmtpClient.connect("127.0.0.1", server.port, timeout=10, tls_context=ctx,
                                      server_hostname="other.test")
    assert client.tls
    await client.quit()


async def test_starttls_required_but_not_offered(chainmail):
    with pytest.raises(SmtpTlsRequiredError):
        await SmtpClient.connect("127.0.0.1", chainmail.port, timeout=10, starttls="required")


# ------------------------------------------------------------------ scripted peers

async def test_helo_fallback_without_pipelining(nursery):
    peer = await start_peer(nursery, Peer(replies={
        "RCPT": lambda line: b"550 5.1.1 no such user\r\n" if b"bad@" in line else b"250 OK\r\n"}))
    client = await SmtpClient.connect("127.0.0.1", peer.port, helo_name="me.test", timeout=5)
    assert not client.esmtp and client.extensions == {}
    result = await client.send("a@x.test", ["ok@y.test", "bad@y.test"], b"hi\r\n", send_partial=True)
    assert result.delivered == ["ok@y.test"]
    assert result.refused[0].reply.enhanced == "5.1.1"
    await client.quit()
    assert peer.received[:2] == [b"EHLO me.test", b"HELO me.test"]
    assert b"MAIL FROM:<a@x.test>" in peer.received       # no SIZE/BODY without EHLO
    assert b"DATA:hi\r\n" in peer.received


async def test_auth_plain_and_login(nursery):
    ehlo = b"250-peer.test\r\n250-AUTH LOGIN\r\n250 PIPELINING\r\n"
    peer = await start_peer(nursery, Peer(replies={"EHLO": ehlo, "AUTH": b"334 VXNlcm5hbWU6\r\n",
                                                   "dXNlcg==": b"334 UGFzc3dvcmQ6\r\n",
                                                   "c2VjcmV0": b"235 2.7.0 OK\r\n"}))
    client = await SmtpClient.connect("127.0.0.1", peer.port, timeout=5)
    await client.login("user", "secret")
    assert client.authenticated
    await client.quit()
    assert b"AUTH LOGIN" in peer.received
    peer2 = await start_peer(nursery, Peer(replies={"EHLO": b"250-peer.test\r\n250 AUTH PLAIN LOGIN\r\n"}))
    client = await SmtpClient.connect("127.0.0.1", peer2.port, timeout=5)
    await client.login("user", "secret")
    await client.quit()
    assert b"AUTH PLAIN AHVzZXIAc2VjcmV0" in peer2.received
    peer3 = await start_peer(nursery, Peer(replies={"EHLO": b"250-peer.test\r\n250 AUTH PLAIN\r\n",
                                                    "AUTH": b"535 5.7.8 bad credentials\r\n"}))
    client = await SmtpClient.connect("127.0.0.1", peer3.port, timeout=5)
    with pytest.raises(SmtpReplyError) as err:
        await client.login("user", "wrong")
    assert err.value.permanent
    await client.aclose()


@pytest.mark.parametrize("greeting,permanent", [(b"421 4.3.2 busy\r\n", False),
                                                 (b"554 5.7.1 go away\r\n", True)])
async def test_greeting_refusal(nursery, greeting, permanent):
    peer = await start_peer(nursery, Peer(greeting=greeting))
    with pytest.raises(SmtpReplyError) as err:
        await SmtpClient.connect("127.0.0.1", peer.port, timeout=5)
    assert err.value.permanent is permanent


async def test_mail_refused_and_data_refused(nursery):
    peer = await start_peer(nursery, Peer(replies={"MAIL": b"451 4.3.0 try later\r\n"}))
    client = await SmtpClient.connect("127.0.0.1", peer.port, timeout=5)
    with pytest.raises(SmtpReplyError) as err:
        await client.send("a@x.test", ["b@y.test"], b"x\r\n")
    assert not err.value.permanent and err.value.command == "MAIL"
    await client.aclose()
    peer = await start_peer(nursery, Peer(replies={"DATA": b"554 5.6.0 no thanks\r\n"}))
    client = await SmtpClient.connect("127.0.0.1", peer.port, timeout=5)
    result = await client.send("a@x.test", ["b@y.test"], b"x\r\n")
    assert result.data_reply.code == 554 and result.delivered == []
    await client.quit()


async def test_pipelined_mail_refusal_reads_every_reply(nursery):
    ehlo = b"250-peer.test\r\n250 PIPELINING\r\n"
    peer = await start_peer(nursery, Peer(replies={"EHLO": ehlo, "MAIL": b"550 5.7.1 sender refused\r\n",
                                                   "RCPT": b"503 5.5.1 need MAIL\r\n"}))
    client = await SmtpClient.connect("127.0.0.1", peer.port, timeout=5)
    with pytest.raises(SmtpReplyError) as err:
        await client.send("a@x.test", ["b@y.test", "c@y.test"], b"x\r\n")
    assert err.value.permanent
    # the connection is still in step: the next command gets its own reply
    assert (await client.rset()).code == 250
    await client.quit()


async def test_connection_refused():
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(SmtpConnectionError) as err:
        await SmtpClient.connect("127.0.0.1", port, timeout=5, connect_timeout=5)
    assert not err.value.permanent


async def test_stalled_server_times_out(nursery):
    peer = await start_peer(nursery, Peer(stall=True))
    with trio.fail_after(5):
        with pytest.raises(SmtpConnectionError, match="did not answer"):
            await SmtpClient.connect("127.0.0.1", peer.port, timeout=0.3)


async def test_server_closing_mid_session(nursery):
    peer = await start_peer(nursery, Peer(replies={"MAIL": b""}))

    async def closing(stream):
        await stream.send_all(b"220 hi\r\n")
        await stream.receive_some(1000)
        await stream.send_all(b"250 ok\r\n")
        await stream.aclose()

    peer.handle = closing
    client = await SmtpClient.connect("127.0.0.1", peer.port, timeout=5)
    with pytest.raises(SmtpConnectionError):
        await client.send("a@x.test", ["b@y.test"], b"x\r\n")
    await client.aclose()


async def test_malformed_reply(nursery):
    peer = await start_peer(nursery, Peer(greeting=b"hello there\r\n"))
    with pytest.raises(SmtpConnectionError, match="malformed"):
        await SmtpClient.connect("127.0.0.1", peer.port, timeout=5)


async def test_bind_local_address(nursery):
    seen = []

    async def handler(stream):
        seen.append(stream.socket.getpeername()[0])
        await stream.send_all(b"220 hi\r\n")
        await stream.receive_some(100)
        await stream.send_all(b"250 ok\r\n")
        await stream.receive_some(100)

    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    client = await SmtpClient.connect("127.0.0.1", port, timeout=5, bind="127.0.0.3")
    await client.aclose()
    assert seen == ["127.0.0.3"]


async def test_requiretls_is_never_sent_in_clear_text(nursery):
    peer = await start_peer(nursery, Peer(replies={"EHLO": b"250-peer.test\r\n250 REQUIRETLS\r\n"}))
    client = await SmtpClient.connect("127.0.0.1", peer.port, timeout=5, starttls="never")
    with pytest.raises(SmtpTlsRequiredError, match="REQUIRETLS"):
        await client.send("a@x.test", ["b@y.test"], b"x\r\n", require_tls=True)
    await client.quit()
    assert not any(r.startswith(b"MAIL") for r in peer.received)


async def test_dsn_values_that_would_break_the_command_are_dropped(nursery):
    peer = await start_peer(nursery, Peer(replies={"EHLO": b"250-peer.test\r\n250 DSN\r\n"}))
    client = await SmtpClient.connect("127.0.0.1", peer.port, timeout=5)
    await client.send("a@x.test", ["b@y.test"], b"x\r\n", dsn={"ret": "FULL", "ENVID": "a b\r\nRSET"},
                      rcpt_dsn={"b@y.test": {"notify": "NEVER"}})
    await client.quit()
    assert b"MAIL FROM:<a@x.test> RET=FULL" in peer.received
    assert b"RCPT TO:<b@y.test> NOTIFY=NEVER" in peer.received
