"""Hook verdicts and the verdict -> reply mapping (James's HookResult defaults)."""

from __future__ import annotations

import pytest

from chainmail.protocol.replies import R, Reply
from chainmail.verdict import (
    DECLINED, DENY, DENYSOFT, DISCONNECT, OK, Action, HookResult, to_reply,
)

CORE = Reply.of(250, "Sender <a@b.example> OK", "2.1.0")


# -- OK --------------------------------------------------------------------------------------------

def test_ok_without_code_gives_the_core_reply():
    assert to_reply(OK, CORE) is CORE
    assert to_reply(HookResult.ok(), CORE) == CORE


def test_ok_without_core_reply_gives_none():
    assert to_reply(OK) is None
    assert to_reply(OK, None) is None


def test_ok_with_disconnect_closes_after_the_core_reply():
    reply = to_reply(HookResult.ok(disconnect=True), CORE)
    assert reply == CORE.closing()
    assert reply.close and reply.code == 250 and reply.lines == CORE.lines


def test_ok_with_custom_code_and_text():
    reply = to_reply(HookResult.ok(code=220, text="custom greeting"), CORE)
    assert reply == Reply.of(220, "custom greeting")
    assert reply.encode() == b"220 custom greeting\r\n"


def test_ok_with_custom_code_keeps_core_text_and_enhanced_of_the_same_code():
    assert to_reply(HookResult.ok(code=250), CORE) == CORE
    assert to_reply(HookResult.ok(code=251), CORE) == Reply.of(251, CORE.lines)


def test_ok_with_custom_text_only_keeps_the_core_code():
    assert to_reply(HookResult.ok(text="Fine"), CORE) == Reply.of(250, "Fine", "2.1.0")


# -- DENY / DENYSOFT -------------------------------------------------------------------------------

def test_deny_default():
    reply = to_reply(DENY)
    assert reply == Reply.of(554, "Email rejected")
    assert reply == R.hook_deny
    assert not reply.close
    assert reply.encode() == b"554 Email rejected\r\n"
    # the core reply plays no part
    assert to_reply(DENY, CORE) == R.hook_deny


def test_denysoft_default():
    reply = to_reply(DENYSOFT, CORE)
    assert reply == Reply.of(451, "Temporary problem. Please try again later")
    assert not reply.close
    assert reply.encode() == b"451 Temporary problem. Please try again later\r\n"


@pytest.mark.parametrize("factory", [HookResult.deny, HookResult.denysoft, HookResult.ok])
def test_custom_code_text_and_enhanced_are_kept(factory):
    result = factory(code=550, text="Unknown user: <x@y.example>", enhanced="5.1.1")
    reply = to_reply(result, CORE)
    assert reply == Reply.of(550, "Unknown user: <x@y.example>", "5.1.1")
    assert reply.encode() == b"550 5.1.1 Unknown user: <x@y.example>\r\n"


def test_custom_code_only_keeps_the_default_text():
    assert to_reply(HookResult.deny(code=550)) == Reply.of(550, "Email rejected")
    assert to_reply(HookResult.denysoft(code=450)) == \
        Reply.of(450, "Temporary problem. Please try again later")


def test_custom_text_only_keeps_the_default_code():
    assert to_reply(HookResult.deny(text="Go away")) == Reply.of(554, "Go away")
    assert to_reply(HookResult.denysoft(text="Later")) == Reply.of(451, "Later")


def test_custom_enhanced_only_keeps_the_default_code_and_text():
    assert to_reply(HookResult.deny(enhanced="5.7.1")) == Reply.of(554, "Email rejected", "5.7.1")
    assert to_reply(HookResult.denysoft(enhanced="4.7.0")) == \
        Reply.of(451, "Temporary problem. Please try again later", "4.7.0")


def test_multi_line_text_becomes_reply_lines():
    reply = to_reply(HookResult.deny(code=550, text="first\nsecond\nthird", enhanced="5.7.0"))
    assert reply.lines == ("first", "second", "third")
    assert reply.encode() == b"550-5.7.0 first\r\n550-second\r\n550 third\r\n"


@pytest.mark.parametrize("result,expected", [
    (HookResult.deny(disconnect=True), Reply.of(554, "Email rejected", close=True)),
    (HookResult.denysoft(disconnect=True),
     Reply.of(451, "Temporary problem. Please try again later", close=True)),
    (HookResult.deny(code=521, text="Closing connection", disconnect=True),
     Reply.of(521, "Closing connection", close=True)),
    (HookResult.denysoft(code=421, text="Try later", enhanced="4.7.0", disconnect=True),
     Reply.of(421, "Try later", "4.7.0", close=True)),
    (HookResult.ok(code=250, text="Bye", disconnect=True), Reply.of(250, "Bye", close=True)),
])
def test_disconnect_flag_closes(result, expected):
    reply = to_reply(result, None)
    assert reply == expected
    assert reply.close


# -- DISCONNECT / DECLINED -------------------------------------------------------------------------

def test_disconnect_alone():
    reply = to_reply(DISCONNECT, CORE)
    assert reply == Reply.of(554, "Server disconnected", close=True)
    assert reply == R.hook_disconnect
    assert reply.close
    assert reply.encode() == b"554 Server disconnected\r\n"


def test_disconnect_with_custom_reply():
    result = HookResult(Action.NONE, disconnect=True, code=421, text="Bye", enhanced="4.3.2")
    assert to_reply(result) == Reply.of(421, "Bye", "4.3.2", close=True)


def test_declined_gives_none():
    assert to_reply(DECLINED) is None
    assert to_reply(DECLINED, CORE) is None
    assert to_reply(HookResult(Action.DECLINED, code=550, text="ignored")) is None


def test_none_without_disconnect_gives_none():
    assert to_reply(HookResult(Action.NONE), CORE) is None


# -- decided ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("result,decided", [
    (OK, True), (DENY, True), (DENYSOFT, True), (DISCONNECT, True), (DECLINED, False),
    (HookResult(Action.NONE), False), (HookResult.deny(disconnect=True), True),
])
def test_decided(result, decided):
    assert result.decided is decided


def test_constants():
    assert OK == HookResult(Action.OK)
    assert DENY == HookResult(Action.DENY)
    assert DENYSOFT == HookResult(Action.DENYSOFT)
    assert DECLINED == HookResult(Action.DECLINED)
    assert DISCONNECT == HookResult(Action.NONE, disconnect=True)


# -- HookResult.reply: "a verdict that answers with exactly reply" --------------------------------

@pytest.mark.parametrize("reply", [
    Reply.of(550, "Unknown user", "5.1.1"),
    Reply.of(451, "Later"),
    Reply.of(554, ["one", "two"], "5.7.1", close=True),
    Reply.of(421, "Bye", close=True),
    Reply.of(220, "custom greeting"),
    Reply.of(252, "Cannot VRFY user"),
])
def test_hook_result_reply_round_trips(reply):
    result = HookResult.reply(reply)
    assert result.action is (Action.OK if reply.code < 400 else
                             Action.DENYSOFT if reply.code < 500 else Action.DENY)
    assert to_reply(result) == reply
    assert to_reply(result, CORE) == reply


@pytest.mark.parametrize("reply,core", [
    (Reply.of(250, "Command accepted"), R.message_received),
    (Reply.of(250, "Fine"), R.ok),
])
def test_hook_result_reply_without_enhanced_code_gets_none_added(reply, core):
    # A hook answering with a reply that has no enhanced status code must not inherit the
    # core reply's one just because the codes match.
    assert to_reply(HookResult.reply(reply), core) == reply
