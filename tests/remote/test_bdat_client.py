"""RFC 3030 on the way out: the content in BDAT chunks to servers offering CHUNKING, and
binary (BODY=BINARYMIME) mail only where it can go, against scripted loopback peers."""

from __future__ import annotations

import pytest

from chainmail.remote.client import SmtpClient, SmtpConversionError, fits_in_lines
from chainmail.remote.config import RemoteDeliveryConfig
from chainmail.remote.delivery import PERMANENT, SUCCESS, Target, deliver, is_binarymime

from .fakedns import FakeDns, fake_dns
from .peers import Peer, ehlo, start_peer
from .test_delivery import patch_targets, setup

MESSAGE = b"Subject: hello\r\n\r\nline one\r\n.dotted line\r\n..two dots\r\nend\r\n"
#: binary content: a bare LF, a bare CR, a NUL and a line of 2000 octets
BINARY = b"Subject: bin\r\nContent-Transfer-Encoding: binary\r\n\r\n\x00\x01\n\r" + b"\xff" * 2000


def chunking(*more: str, **replies) -> Peer:
    return Peer(replies={"EHLO": ehlo("PIPELINING", "8BITMIME", "CHUNKING", *more), **replies})


async def connect(peer: Peer) -> SmtpClient:
    return await SmtpClient.connect("127.0.0.1", peer.port, helo_name="out.test", timeout=5,
                                    connect_timeout=5)


def commands(peer: Peer, verb: bytes) -> list[bytes]:
    return [r for r in peer.received if r.split(b" ")[0].upper() == verb]


def bodies(peer: Peer) -> list[bytes]:
    return [r[5:] for r in peer.received if r.startswith(b"DATA:")]


async def test_one_bdat_last_without_dot_stuffing(nursery):
    peer = await start_peer(nursery, chunking())
    client = await connect(peer)
    result = await client.send("a@out.test", ["b@example.test"], MESSAGE)
    await client.quit()
    assert result.delivered == ["b@example.test"] and result.data_reply.code == 250
    assert commands(peer, b"BDAT") == [f"BDAT {len(MESSAGE)} LAST".encode()]
    assert commands(peer, b"DATA") == []
    assert bodies(peer) == [MESSAGE]                     # the dots as they are


async def test_large_content_in_pipelined_chunks(nursery):
    peer = await start_peer(nursery, chunking())
    client = await connect(peer)
    client.chunk_size = 10
    content = b"Subject: x\r\n\r\n" + b"0123456789" * 3 + b"\r\n"     # 46 octets
    result = await client.send("a@out.test", ["b@example.test"], content)
    await client.quit()
    assert result.delivered == ["b@example.test"]
    assert commands(peer, b"BDAT") == [b"BDAT 10", b"BDAT 10", b"BDAT 10", b"BDAT 10",
                                       b"BDAT 6 LAST"]
    assert bodies(peer) == [content]


async def test_content_is_canonical_and_ends_with_crlf_as_with_data(nursery):
    peer = await start_peer(nursery, chunking())
    client = await connect(peer)
    result = await client.send("a@out.test", ["b@example.test"], b"Subject: x\n\nbare\nlf\x00")
    await client.quit()
    assert result.delivered
    assert bodies(peer) == [b"Subject: x\r\n\r\nbare\r\nlf\r\n"]


async def test_empty_content_is_bdat_0_last(nursery):
    peer = await start_peer(nursery, chunking())
    client = await connect(peer)
    assert (await client.send("a@out.test", ["b@example.test"], b"")).delivered
    await client.quit()
    assert commands(peer, b"BDAT") == [b"BDAT 0 LAST"]


@pytest.mark.parametrize("pipelining", [True, False])
async def test_a_refused_chunk_fails_the_transaction_and_the_session_goes_on(nursery, pipelining):
    seen = []

    def bdat(line):
        seen.append(line)
        return b"552 5.3.4 too big for me\r\n" if len(seen) == 2 else b"250 2.0.0 OK\r\n"

    keywords = ("PIPELINING",) if pipelining else ()
    peer = await start_peer(nursery, Peer(replies={"EHLO": ehlo(*keywords, "CHUNKING"),
                                                   "BDAT": bdat}))
    client = await connect(peer)
    client.chunk_size = 10
    result = await client.send("a@out.test", ["b@example.test"], b"x" * 45)
    assert result.data_reply.code == 552 and result.data_reply.enhanced == "5.3.4"
    assert result.delivered == []
    # nothing sent after the refusal but what was already in the pipeline
    assert len(commands(peer, b"BDAT")) == (3 if pipelining else 2)
    assert commands(peer, b"RSET")
    seen.extend([b"", b""])   # the next transaction's chunks are all accepted
    again = await client.send("a@out.test", ["b@example.test"], MESSAGE)
    await client.quit()
    assert again.delivered == ["b@example.test"] and bodies(peer) == [MESSAGE]


async def test_421_to_a_chunk_is_the_answer_even_when_the_server_closes(nursery):
    peer = await start_peer(nursery, chunking(BDAT=b"421 4.3.0 shutting down\r\n"))
    client = await connect(peer)
    result = await client.send("a@out.test", ["b@example.test"], MESSAGE)
    await client.aclose()
    assert result.data_reply.code == 421 and result.delivered == []


async def test_data_without_chunking_or_when_turned_off(nursery):
    plain = await start_peer(nursery, Peer(replies={"EHLO": ehlo("PIPELINING")}))
    client = await connect(plain)
    assert (await client.send("a@out.test", ["b@example.test"], MESSAGE)).delivered
    await client.quit()
    offered = await start_peer(nursery, chunking())
    client = await connect(offered)
    assert (await client.send("a@out.test", ["b@example.test"], MESSAGE, chunking=False)).delivered
    await client.quit()
    for peer in (plain, offered):
        assert commands(peer, b"DATA") and not commands(peer, b"BDAT")
        assert bodies(peer) == [MESSAGE]


# ------------------------------------------------------------------ BINARYMIME

def test_fits_in_lines():
    assert fits_in_lines(MESSAGE)
    assert fits_in_lines(b"x" * 998 + b"\r\n" + "é".encode())
    assert not fits_in_lines(b"x" * 999 + b"\r\n")
    assert not fits_in_lines(b"a\nb") and not fits_in_lines(b"a\rb") and not fits_in_lines(b"a\0")
    assert not fits_in_lines(BINARY)


def test_is_binarymime():
    assert is_binarymime({"BODY": "BINARYMIME"}) and is_binarymime({"body": "binarymime"})
    assert not is_binarymime({"BODY": "8BITMIME"}) and not is_binarymime(None)


async def test_binary_content_goes_byte_for_byte(nursery):
    peer = await start_peer(nursery, chunking("BINARYMIME"))
    client = await connect(peer)
    result = await client.send("a@out.test", ["b@example.test"], BINARY, binarymime=True)
    await client.quit()
    assert result.delivered == ["b@example.test"]
    [mail] = commands(peer, b"MAIL")
    assert b"BODY=BINARYMIME" in mail.split()
    assert bodies(peer) == [BINARY]


@pytest.mark.parametrize("keywords", [("CHUNKING",), ("BINARYMIME",), ()])
async def test_binary_content_is_not_sent_to_a_server_lacking_binarymime_or_chunking(
        nursery, keywords):
    peer = await start_peer(nursery, Peer(replies={"EHLO": ehlo("PIPELINING", "8BITMIME",
                                                                 *keywords)}))
    client = await connect(peer)
    with pytest.raises(SmtpConversionError) as err:
        await client.send("a@out.test", ["b@example.test"], BINARY, binarymime=True)
    await client.quit()
    assert err.value.permanent and err.value.reply.code == 554
    assert err.value.reply.enhanced == "5.6.3"
    assert "Conversion required but not supported" in str(err.value.reply)
    assert commands(peer, b"MAIL") == []


async def test_binary_mail_made_of_lines_goes_as_8bitmime_anywhere(nursery):
    content = "Subject: lines\r\n\r\ncafé\r\n".encode()
    peer = await start_peer(nursery, Peer(replies={"EHLO": ehlo("PIPELINING", "8BITMIME")}))
    client = await connect(peer)
    assert (await client.send("a@out.test", ["b@example.test"], content, binarymime=True)).delivered
    await client.quit()
    [mail] = commands(peer, b"MAIL")
    assert b"BODY=8BITMIME" in mail.split() and b"BODY=BINARYMIME" not in mail.split()
    assert bodies(peer) == [content]


async def test_binary_mail_with_chunking_turned_off_is_not_sent(nursery):
    peer = await start_peer(nursery, chunking("BINARYMIME"))
    client = await connect(peer)
    with pytest.raises(SmtpConversionError):
        await client.send("a@out.test", ["b@example.test"], BINARY, binarymime=True,
                          chunking=False)
    await client.quit()


# ------------------------------------------------------------------ one delivery attempt

async def test_delivery_skips_an_exchanger_without_binarymime(nursery):
    lacking = await start_peer(nursery, Peer(replies={"EHLO": ehlo("PIPELINING", "8BITMIME")}))
    able = await start_peer(nursery, chunking("BINARYMIME"))
    targets = [Target("mx1.example.test", "127.0.0.1", lacking.port),
               Target("mx2.example.test", "127.0.0.1", able.port)]
    async with fake_dns(FakeDns()) as dns:
        config, svc = setup(dns, 25)
        with patch_targets(targets):
            out = await deliver("a@out.test", ["b@example.test"], BINARY, config=config,
                                dns=svc, mail_params={"BODY": "BINARYMIME"})
    assert out.kind == SUCCESS and out.remote_mta == "mx2.example.test"
    assert commands(lacking, b"MAIL") == [] and commands(lacking, b"QUIT")
    assert bodies(able) == [BINARY]


async def test_delivery_fails_for_good_when_no_exchanger_takes_binary_mail(nursery):
    lacking = await start_peer(nursery, Peer(replies={"EHLO": ehlo("PIPELINING", "8BITMIME")}))
    dns = FakeDns().add("example.test", "MX", (10, "mx.example.test")).add(
        "mx.example.test", "A", "127.0.0.1")
    async with fake_dns(dns) as server:
        config, svc = setup(server, lacking.port)
        out = await deliver("a@out.test", ["b@example.test"], BINARY, config=config, dns=svc,
                            mail_params={"BODY": "BINARYMIME"})
    assert out.kind == PERMANENT and out.code == 554
    assert out.failed["b@example.test"].startswith("554 5.6.3 Conversion required but not supported")
    assert out.remote_mta == "mx.example.test" and commands(lacking, b"MAIL") == []


async def test_chunking_parameter_reaches_the_client(nursery):
    peer = await start_peer(nursery, chunking())
    dns = FakeDns().add("example.test", "MX", (10, "mx.example.test")).add(
        "mx.example.test", "A", "127.0.0.1")
    async with fake_dns(dns) as server:
        for value in ("false", "true"):
            config, svc = setup(server, peer.port, chunking=value)
            out = await deliver("a@out.test", ["b@example.test"], MESSAGE, config=config, dns=svc)
            assert out.kind == SUCCESS
    assert len(commands(peer, b"DATA")) == 1 and len(commands(peer, b"BDAT")) == 1
    assert bodies(peer) == [MESSAGE, MESSAGE]


def test_config_chunking_and_delay_warning_time():
    default = RemoteDeliveryConfig.from_params({})
    assert default.chunking and default.delay_warning_ms == 4 * 3600 * 1000
    config = RemoteDeliveryConfig.from_params({"chunking": "false", "delayWarningTime": "30 min"})
    assert not config.chunking and config.delay_warning_ms == 30 * 60 * 1000
    assert RemoteDeliveryConfig.from_params({"delayWarningTime": "0"}).delay_warning_ms == 0
    bad = RemoteDeliveryConfig.from_params({"delayWarningTime": "soon"})
    assert bad.delay_warning_ms == 4 * 3600 * 1000
    assert any("delayWarningTime" in str(w) for w in bad.warnings)


# ------------------------------------------------------------------ against chainmail itself

async def test_bdat_and_binarymime_to_chainmail(chainmail):
    client = await SmtpClient.connect("127.0.0.1", chainmail.port, helo_name="out.test",
                                      timeout=10, connect_timeout=5)
    assert {"CHUNKING", "BINARYMIME", "PIPELINING"} <= set(client.extensions)
    client.chunk_size = 1000
    text = MESSAGE + b"x" * 5000 + b"\r\n"
    assert (await client.send("a@local.test", ["u@local.test"], text)).delivered
    assert (await client.send("a@local.test", ["v@local.test"], BINARY, binarymime=True)).delivered
    await client.quit()
    queued = sorted(chainmail.queued(), key=lambda m: m.queued_at)
    assert [m.envelope.recipients for m in queued] == [["u@local.test"], ["v@local.test"]]
    assert chainmail.queued_body(queued[0].id).endswith(b"x" * 5000 + b"\r\n")
    assert queued[1].envelope.mail_params.get("BODY") == "BINARYMIME"
    assert chainmail.queued_body(queued[1].id).endswith(BINARY.partition(b"\r\n\r\n")[2])
