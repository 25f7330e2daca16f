"""SMTPUTF8 (RFC 6531, RFC 6532): internationalised addresses and header fields.

The grammar already accepts UTF-8 addresses in a transaction whose MAIL carried
``SMTPUTF8``; these handlers announce the extension, check its parameter and give the
RFC 6531 §3.5 replies to a client that uses UTF-8 without asking for it:

- a non-ASCII address that would be valid with ``SMTPUTF8`` -> ``553 5.6.7``;
- a header section holding UTF-8 in a transaction without ``SMTPUTF8`` -> ``554 5.6.7``
  (8-bit octets that are not UTF-8, legacy mail, are left alone as before);
- octets that are not UTF-8 in a MAIL or RCPT address -> the core's syntax reply: an
  SMTPUTF8 address is UTF-8 (RFC 6531 §3.3).

Both handlers are part of the SMTP and LMTP core packages, so ``SMTPUTF8`` is announced by
default (James announces it only when these handlers are configured).  A James
configuration that also names them explicitly loads unchanged, and the keyword is
announced once.
"""

from __future__ import annotations

from chainmail.protocol.grammar import GrammarError, parse_mail_argument, parse_rcpt_argument
from chainmail.protocol.replies import R, Reply
from chainmail.verdict import HookResult

__all__ = ["SmtpUtf8MailHook", "SmtpUtf8RcptHook", "KEYWORD", "needs_smtputf8"]

KEYWORD = "SMTPUTF8"

ADDRESS_NEEDS_SMTPUTF8 = Reply.of(553, "Non-ASCII addresses not permitted without SMTPUTF8",
                                  "5.6.7")
HEADER_NEEDS_SMTPUTF8 = Reply.of(554, "Non-ASCII header fields need SMTPUTF8", "5.6.7")
PARAMETER_TAKES_NO_VALUE = Reply.of(501, "SMTPUTF8 takes no value", "5.5.4")


def needs_smtputf8(head: bytes) -> bool:
    """Whether a header section holds non-ASCII text that is valid UTF-8 (RFC 6532), which
    only an SMTPUTF8 transaction may carry.  A section cut short (the 64 KiB kept for
    checks) is judged on its complete lines, so a cut inside a character does not hide it."""
    if head.isascii():
        return False
    if not head.endswith(b"\n"):
        head = head[: head.rfind(b"\n") + 1]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False     # legacy 8-bit (Latin-1 and the like): accepted as before
    return not head.isascii()


def _is_utf8(text: str) -> bool:
    """False when the line held octets that are not UTF-8 (decoded as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class SmtpUtf8MailHook:
    """Announces ``SMTPUTF8``, takes the MAIL parameter (no value), and refuses UTF-8 the
    client did not ask for: in an address at MAIL or RCPT (``553 5.6.7``), in the header
    section at the end of DATA (``554 5.6.7``)."""

    parameters = ()

    commands = ("MAIL", "RCPT")
    mail_parameters = (KEYWORD,)

    _announces: bool | None = None

    def ehlo_keywords(self, session):
        if self._announces is None:
            self._announces = _first_of_its_kind(session, self)
        return (KEYWORD,) if self._announces else None

    def on_mail_parameter(self, session, name, value):
        if value is not None:
            return HookResult.reply(PARAMETER_TAKES_NO_VALUE)
        return None

    def on_command(self, session, command):
        """Only for a MAIL or RCPT line with non-ASCII text; otherwise (and whenever the
        core command would answer something else first) the core command answers."""
        arg = command.arg
        if not arg or arg.isascii():
            return None
        if command.verb == "MAIL":
            return _mail_reply(session, arg)
        return _rcpt_reply(session, arg)

    def on_message(self, session, message):
        if KEYWORD in message.transaction.mail_params:
            return None
        if needs_smtputf8(message.head):
            return HookResult.reply(HEADER_NEEDS_SMTPUTF8)
        return None


class SmtpUtf8RcptHook:
    """James's RCPT side of SMTPUTF8.  RFC 6531 defines no RCPT parameter, so there is
    nothing to accept: a recipient is UTF-8 when its transaction's MAIL said ``SMTPUTF8``.
    Kept so that James configurations naming it load unchanged."""

    parameters = ()


def _first_of_its_kind(session, handler) -> bool:
    """Whether ``handler`` is the first handler of its class in the chain: a configuration
    naming the handler besides the core package gets one announcement, not two."""
    for entry in session.server.chain.entries:
        if type(entry.handler) is type(handler):
            return entry.handler is handler
    return True


def _mail_reply(session, arg: str) -> Reply | None:
    cfg = session.config
    if cfg.helo_ehlo_enforcement and session.helo_mode is None:
        return None
    if session.transaction.has_sender:
        return None
    brackets = cfg.address_brackets_enforcement
    try:
        parsed = parse_mail_argument(arg, brackets)
    except GrammarError as err:
        if err.kind == "address" and _is_utf8(arg) and _valid(
                parse_mail_argument, f"{arg} {KEYWORD}", brackets):
            return ADDRESS_NEEDS_SMTPUTF8
        return None
    return _not_utf8(parsed, R.bad_sender)


def _rcpt_reply(session, arg: str) -> Reply | None:
    tx = session.transaction
    if not tx.has_sender:
        return None
    brackets = session.config.address_brackets_enforcement
    utf8 = KEYWORD in tx.mail_params
    try:
        parsed = parse_rcpt_argument(arg, brackets, utf8=utf8)
    except GrammarError as err:
        if not utf8 and err.kind == "address" and _is_utf8(arg) and _valid(
                parse_rcpt_argument, arg, brackets, True):
            return ADDRESS_NEEDS_SMTPUTF8
        return None
    return _not_utf8(parsed, R.bad_recipient)


def _valid(parse, *args) -> bool:
    try:
        parse(*args)
    except GrammarError:
        return False
    return True


def _not_utf8(parsed, address_reply: Reply) -> Reply | None:
    """The syntax reply for a line the grammar took but whose 8-bit octets are not UTF-8
    (only an SMTPUTF8 transaction gets that far)."""
    if parsed.address is not None and not _is_utf8(str(parsed.address)):
        return address_reply
    if not all(_is_utf8(v) for v in parsed.parameters.values() if v is not None):
        return R.bad_parameters
    return None
