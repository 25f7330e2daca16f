"""An OK from a plugin's ``on_rcpt`` never opens the relay.

A greylister that says OK once a client has passed its retry (``PassedGreylist`` of the test
plugin package) sits before the core relay check.  The relay decision must still refuse a
recipient outside the local domains from a client that may not relay, against a real
``chainmail run`` and with the ``chainmail relaycheck`` battery.  Only a handler declared
``authorizes_relay = True`` may accept such a recipient.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from chainmail.chain import Chain, ChainEntry
from chainmail.config.netmatch import NetworkSet
from chainmail.protocol.engine import Command
from chainmail.session import Transaction
from chainmail.verdict import HookResult
from chainmail_plugins.smtp.commands import RcptCmdHandler
from chainmail_plugins.smtp.relay import PostmasterAbuseRcptHook, RelayCheckRcptHook

from .test_relaycheck import TRICK_IDS, relaycheck, statuses

GREYLIST = '<handler class="PassedGreylist"/>'
AUTH_CORE = "org.apache.james.smtpserver.CoreCmdHandlerLoader"


def rcpt(server, *recipients: str) -> list[tuple[int, bytes]]:
    with server.smtp() as s:
        s.ehlo()
        assert s.mail("sender@elsewhere.example")[0] == 250
        return [s.rcpt(r) for r in recipients]


def test_greylister_ok_does_not_relay_for_an_unauthorised_client(chainmail_factory):
    server = chainmail_factory(handlers=GREYLIST, authorized="")
    outside, routed, postmaster, local = rcpt(
        server, "user@outside.example", "user%outside.example@local.test",
        "postmaster@outside.example", "user@local.test")
    assert outside == (550, b"5.7.1 Requested action not taken: relaying denied")
    assert routed == outside
    assert postmaster == outside
    assert local[0] == 250


def test_greylister_ok_with_auth_announced_asks_to_authenticate(chainmail_factory):
    server = chainmail_factory("<auth><announce>always</announce><requireSSL>false</requireSSL></auth>",
                               handlers=GREYLIST, authorized="", core=AUTH_CORE)
    outside, local = rcpt(server, "user@outside.example", "user@local.test")
    assert outside == (530, b"5.7.1 Authentication Required")
    assert local[0] == 250


def test_greylister_ok_still_relays_for_an_authorised_client(chainmail_factory):
    server = chainmail_factory(handlers=GREYLIST, authorized="127.0.0.0/8")
    (outside,) = rcpt(server, "user@outside.example")
    assert outside[0] == 250


def test_relaycheck_battery_finds_no_open_relay_behind_the_greylister(chainmail_factory):
    server = chainmail_factory(handlers=GREYLIST, authorized="")
    proc, report = relaycheck(f"127.0.0.1:{server.port}")
    assert {k: v for k, v in statuses(report).items() if v != "refused"} == {}
    assert list(statuses(report)) == TRICK_IDS
    assert proc.returncode == 0
    assert server.queued() == []


# -- the declaration, on a chain built in process -------------------------------------------
class _Accept:
    """Says OK to every recipient; ``authorizes_relay`` set per test."""

    def __init__(self, authorizes: bool):
        self.authorizes_relay = authorizes

    def on_rcpt(self, recipient):
        return HookResult.ok()


class _Refuse:
    """A relay authoriser that refuses everything with its own reply."""

    authorizes_relay = True

    def on_rcpt(self, recipient):
        return HookResult.deny(554, "Authoriser says no", "5.7.1")


def _session(*handlers):
    entries = [ChainEntry(type(h).__name__, h, "test") for h in
               (*handlers, RcptCmdHandler(), PostmasterAbuseRcptHook())]
    chain = Chain(entries)
    server = SimpleNamespace(chain=chain, is_local_domain=lambda d: d == "local.test",
                             domains=SimpleNamespace(default_domain="local.test"))
    config = SimpleNamespace(address_brackets_enforcement=True, authorized_addresses=NetworkSet([]),
                             auth=SimpleNamespace(require_ssl=False, announce="never"))
    tx = Transaction(has_sender=True)
    return SimpleNamespace(server=server, config=config, transaction=tx, relaying_allowed=False,
                           tls=None, remote_ip="192.0.2.1"), tx


async def _rcpt(session, address: str):
    return await RcptCmdHandler().on_command(session, Command("RCPT", f"TO:<{address}>",
                                                              f"RCPT TO:<{address}>"))


@pytest.mark.parametrize("authorizes, code", [(False, 550), (True, 250)])
async def test_only_a_declared_authoriser_ok_accepts_an_outside_recipient(authorizes, code):
    session, tx = _session(_Accept(authorizes), RelayCheckRcptHook())
    reply = await _rcpt(session, "user@outside.example")
    assert reply.code == code
    assert len(tx.recipients) == (1 if authorizes else 0)


async def test_a_later_authoriser_verdict_replaces_the_ok():
    session, _ = _session(_Accept(False), _Refuse())
    reply = await _rcpt(session, "user@outside.example")
    assert (reply.code, reply.enhanced) == (554, "5.7.1")


async def test_local_recipient_ok_skips_the_authorisers():
    session, tx = _session(_Accept(False), _Refuse())
    reply = await _rcpt(session, "user@local.test")
    assert reply.code == 250 and [str(r) for r in tx.recipients] == ["user@local.test"]


async def test_postmaster_of_an_outside_domain_is_not_relayed():
    session, _ = _session(PostmasterAbuseRcptHook(), RelayCheckRcptHook())
    reply = await _rcpt(session, "postmaster@outside.example")
    assert reply.code == 550
