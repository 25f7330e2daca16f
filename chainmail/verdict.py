"""Hook verdicts and the one function that turns a verdict into an SMTP reply.

A verdict is a value, not a string: :class:`HookResult` carries an :class:`Action` (James's
``HookReturnCode``), whether to disconnect, and an optional code, enhanced status and text.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .protocol.replies import R, Reply

__all__ = ["Action", "HookResult", "to_reply", "OK", "DENY", "DENYSOFT", "DECLINED", "DISCONNECT"]


class Action(enum.Enum):
    OK = "ok"              # accept: skip the remaining hooks and run the core command
    DENY = "deny"          # permanent refusal (default 554)
    DENYSOFT = "denysoft"  # temporary refusal (default 451)
    DECLINED = "declined"  # no opinion: ask the next hook
    NONE = "none"          # only meaningful with disconnect=True


@dataclass(frozen=True, slots=True)
class HookResult:
    action: Action
    disconnect: bool = False
    code: int | None = None
    enhanced: str | None = None
    text: str | None = None

    @classmethod
    def ok(cls, code: int | None = None, text: str | None = None, enhanced: str | None = None,
           disconnect: bool = False) -> "HookResult":
        return cls(Action.OK, disconnect, code, enhanced, text)

    @classmethod
    def deny(cls, code: int | None = None, text: str | None = None, enhanced: str | None = None,
             disconnect: bool = False) -> "HookResult":
        return cls(Action.DENY, disconnect, code, enhanced, text)

    @classmethod
    def denysoft(cls, code: int | None = None, text: str | None = None,
                 enhanced: str | None = None, disconnect: bool = False) -> "HookResult":
        return cls(Action.DENYSOFT, disconnect, code, enhanced, text)

    @classmethod
    def reply(cls, reply: Reply) -> "HookResult":
        """A verdict that answers with exactly ``reply``."""
        action = Action.OK if reply.code < 400 else Action.DENYSOFT if reply.code < 500 else Action.DENY
        # "" (not None) marks "no enhanced code" so to_reply does not inherit one.
        return cls(action, reply.close, reply.code, reply.enhanced or "", "\n".join(reply.lines))

    @property
    def decided(self) -> bool:
        """Whether this verdict ends a hook round (anything but DECLINED)."""
        return self.action is not Action.DECLINED and not (
            self.action is Action.NONE and not self.disconnect)


OK = HookResult(Action.OK)
DENY = HookResult(Action.DENY)
DENYSOFT = HookResult(Action.DENYSOFT)
DECLINED = HookResult(Action.DECLINED)
DISCONNECT = HookResult(Action.NONE, disconnect=True)


def to_reply(result: HookResult, ok_reply: Reply | None = None) -> Reply | None:
    """Map a decided verdict to the reply the client sees (James's defaults).

    OK gives ``ok_reply`` (the core command's own reply) unless the hook set a code; DENY gives
    554 "Email rejected"; DENYSOFT 451 "Temporary problem. Please try again later"; a bare
    DISCONNECT gives 554 "Server disconnected".  ``None`` means "no reply from the verdict":
    the caller runs the core command.
    """
    action = result.action
    if action is Action.OK:
        base = ok_reply
    elif action is Action.DENY:
        base = R.hook_deny
    elif action is Action.DENYSOFT:
        base = R.hook_denysoft
    elif result.disconnect:
        base = R.hook_disconnect
    else:
        return None
    if result.code is not None:
        text = result.text if result.text is not None else (base.text if base else "")
        enhanced = result.enhanced if result.enhanced is not None else (
            base.enhanced if base and base.code == result.code else None)
        base = Reply.of(result.code, text.split("\n"), enhanced or None)
    elif result.text is not None and base is not None:
        enhanced = base.enhanced if result.enhanced is None else result.enhanced or None
        base = Reply.of(base.code, result.text.split("\n"), enhanced)
    elif result.enhanced is not None and base is not None:
        base = Reply(base.code, base.lines, result.enhanced or None)
    if base is None:
        return None
    return base.closing() if result.disconnect else base
