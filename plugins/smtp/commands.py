"""The SMTP commands, each a handler whose ``on_command`` implements one or more verbs.

Each command follows James's flow: syntax and sequence checks, then the command's hooks in
chain order (first decided verdict wins), then the core action.
"""

from __future__ import annotations

from chainmail.protocol.grammar import GrammarError, is_valid_helo, parse_mail_argument, \
    parse_rcpt_argument
from chainmail.protocol.replies import R, Reply
from chainmail.verdict import Action, HookResult, to_reply

from .data import DataReceiver
from .relay import needs_relay

MAX_RECIPIENTS = 1000  # per transaction, as Postfix's smtpd_recipient_limit: bounds memory


def _verdict_reply(verdict: HookResult | None, ok: Reply) -> Reply | None:
    """The reply for a hook round: None when the core command should run."""
    if verdict is None:
        return None
    if verdict.action is Action.OK and verdict.code is None:
        return ok.closing() if verdict.disconnect else None
    return to_reply(verdict, ok)


class WelcomeMessageHandler:
    """The greeting: ``smtpGreeting`` verbatim, or the default naming ``helloName``."""

    parameters = ()

    def on_connect(self, session):
        cfg = session.config
        if cfg.smtp_greeting:
            return HookResult.ok(220, cfg.smtp_greeting)
        greeting = R.greeting(session.hostname, session.lmtp)
        return HookResult.ok(220, greeting.text)


class _Helo:
    parameters = ()

    verb = "HELO"
    mode = "HELO"

    async def on_command(self, session, command):
        arg = command.arg
        if not arg:
            return R.domain_required(self.verb)
        if not is_valid_helo(arg, ehlo=self.mode != "HELO"):
            return R.invalid_helo
        chain = session.server.chain
        session.reset_transaction()
        lines = [R.hello(session.hostname, arg, session.remote_ip)]
        if self.mode != "HELO":
            disabled = session.config.disabled_features
            for found in await chain.collect("ehlo_keywords", session):
                for keyword in ([found] if isinstance(found, str) else found):
                    if keyword.split(" ", 1)[0].upper() not in disabled:
                        lines.append(keyword)
        ok = Reply.of(250, lines)
        verdict = await chain.verdict("on_helo", session, arg)
        reply = _verdict_reply(verdict, ok)
        if reply is not None and not reply.is_positive:
            return reply
        session.helo_mode = self.mode
        session.helo_name = arg
        return reply or ok


class HeloCmdHandler(_Helo):
    commands = ("HELO",)





class EhloCmdHandler(_Helo):
    """EHLO, announcing the base extensions (RFC 2920, 2034, 6152)."""

    commands = ("EHLO",)
    verb = mode = "EHLO"
    mail_parameters = ("BODY",)

    def ehlo_keywords(self, session):
        return ("PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME")

    def on_mail_parameter(self, session, name, value):
        # RFC 6152: BODY=7BIT or BODY=8BITMIME; RFC 3030: BODY=BINARYMIME when BDAT is there
        # to carry it.  Anything else is not supported here.
        body = (value or "").upper()
        if body in ("7BIT", "8BITMIME"):
            return None
        if body == "BINARYMIME" and session.server.chain.implements("BDAT"):
            return None
        return HookResult.deny(501, "Unsupported BODY type", "5.5.4")


class LhloCmdHandler(EhloCmdHandler):
    """LMTP's greeting command (RFC 2033 §4.1): EHLO's reply and extensions, LHLO's name."""

    commands = ("LHLO",)
    verb = mode = "LHLO"


class MailCmdHandler:
    """MAIL FROM, with James's sequence rules: a refused or duplicate MAIL clears the sender."""

    parameters = ()

    commands = ("MAIL",)

    async def on_command(self, session, command):
        cfg = session.config
        tx = session.transaction
        if cfg.helo_ehlo_enforcement and session.helo_mode is None:
            return R.need_helo
        if tx.has_sender:
            session.reset_transaction()
            return R.sender_already
        try:
            parsed = parse_mail_argument(command.arg, cfg.address_brackets_enforcement)
        except GrammarError as err:
            return {"usage": R.mail_usage, "brackets": R.mail_syntax,
                    "parameters": R.bad_parameters}.get(err.kind, R.bad_sender)
        sender = parsed.address
        if sender is not None and sender.domain is None:
            sender = sender.with_domain(session.server.domains.default_domain)
        chain = session.server.chain
        for name, value in parsed.parameters.items():
            impls = chain.mail_parameters.get(name)
            if impls:
                verdict = await chain.verdict("on_mail_parameter", session, name, value, impls=impls)
                if verdict is not None and verdict.action is not Action.OK:
                    return to_reply(verdict)
        ok = R.sender_ok(str(sender) if sender is not None else "")
        reply = _verdict_reply(await chain.verdict("on_mail", session, sender), ok)
        if reply is not None and not reply.is_positive:
            return reply
        tx.sender = sender
        tx.has_sender = True
        # Only what a handler of the chain took (James ignores the others): a parameter no
        # handler checked, such as MT-PRIORITY without its hooks, does not travel with the mail.
        tx.mail_params = {name: value for name, value in parsed.parameters.items()
                          if name in chain.mail_parameters}
        return reply or ok


class RcptCmdHandler:
    parameters = ()

    commands = ("RCPT",)

    async def on_command(self, session, command):
        tx = session.transaction
        if not tx.has_sender:
            return R.need_mail
        try:
            parsed = parse_rcpt_argument(command.arg, session.config.address_brackets_enforcement,
                                         utf8="SMTPUTF8" in tx.mail_params)
        except GrammarError as err:
            return {"usage": R.rcpt_usage, "brackets": R.rcpt_syntax,
                    "parameters": R.rcpt_syntax}.get(err.kind, R.bad_recipient)
        rcpt = parsed.address
        if rcpt.domain is None:
            rcpt = rcpt.with_domain(session.server.domains.default_domain)
        chain = session.server.chain
        for name in parsed.parameters:
            if name not in chain.rcpt_parameters:
                return R.unsupported_option(name)
        if len(tx.recipients) >= MAX_RECIPIENTS:
            return R.too_many_recipients
        ok = R.recipient_ok(str(rcpt))
        args = (session, tx.sender, rcpt, parsed.parameters)
        if needs_relay(session, rcpt):
            verdict = await _relay_safe_verdict(chain, args)
        else:
            verdict = await chain.verdict("on_rcpt", *args)
        reply = _verdict_reply(verdict, ok)
        if reply is not None and not reply.is_positive:
            return reply
        if verdict is not None and verdict.action is Action.OK and any(
                r.local == rcpt.local and r.domain_lower == rcpt.domain_lower for r in tx.recipients):
            return reply or ok   # a hook accepted a recipient already listed: not listed twice
        tx.recipients.append(rcpt)
        tx.rcpt_params.append(parsed.parameters)
        return reply or ok


async def _relay_safe_verdict(chain, args: tuple) -> HookResult | None:
    """The ``on_rcpt`` round for a recipient that would be relayed.  An OK from a handler not
    declared ``authorizes_relay`` (a greylister, an allow-list) does not end the round for the
    relay authorisers after it: they still decide, so no plugin opens the relay by accident."""
    impls = chain.hooks["on_rcpt"]
    for i, impl in enumerate(impls):
        verdict = await chain.verdict("on_rcpt", *args, impls=[impl])
        if verdict is None:
            continue
        if verdict.action is not Action.OK or getattr(impl.owner, "authorizes_relay", False):
            return verdict
        authorisers = [later for later in impls[i + 1:]
                       if getattr(later.owner, "authorizes_relay", False)]
        decision = await chain.verdict("on_rcpt", *args, impls=authorisers)
        return verdict if decision is None else decision
    return None


class DataCmdHandler:
    """DATA: checks the transaction, opens a spool writer, answers 354.  The body then
    streams into :class:`DataReceiver`, which runs the ``on_message`` hooks at the end."""

    parameters = ()

    commands = ("DATA",)
    receiver = DataReceiver

    async def on_command(self, session, command):
        if command.arg:
            return R.unexpected_argument("DATA")
        tx = session.transaction
        if not tx.has_sender:
            return R.no_sender
        if not tx.recipients:
            return R.no_recipients
        if session.data_receiver is not None:
            return R.data_after_bdat           # RFC 3030 §2: not both in one transaction
        if str(tx.mail_params.get("BODY") or "").upper() == "BINARYMIME":
            return R.binarymime_needs_bdat     # RFC 3030 §3
        session.data_receiver = await self.open_receiver(session)
        return R.start_data

    async def open_receiver(self, session):
        """A receiver for the transaction's message, with the ``prepend_headers`` on top
        (BDAT uses it too, so that both take the message the same way)."""
        receiver = self.receiver(session)
        headers = await session.server.chain.collect("prepend_headers", session)
        for header in headers:
            receiver.prepend(header)
        return receiver


class RsetCmdHandler:
    parameters = ()

    commands = ("RSET",)

    def on_command(self, session, command):
        if command.arg:
            return R.unexpected_argument("RSET")
        session.reset_transaction()
        return R.ok


class NoopCmdHandler:
    parameters = ()

    commands = ("NOOP",)

    def on_command(self, session, command):
        return R.ok


class QuitCmdHandler:
    parameters = ()

    commands = ("QUIT",)

    async def on_command(self, session, command):
        if command.arg:
            return R.unexpected_argument("QUIT").closing()
        ok = R.closing(session.hostname)
        verdict = await session.server.chain.verdict("on_quit", session)
        reply = _verdict_reply(verdict, ok)
        return (reply or ok).closing()


class _NotSupported:
    parameters = ()

    def on_command(self, session, command):
        return R.not_supported(command.verb)


class VrfyCmdHandler(_NotSupported):
    commands = ("VRFY",)


class ExpnCmdHandler(_NotSupported):
    commands = ("EXPN",)


class HelpCmdHandler(_NotSupported):
    commands = ("HELP",)


class UnknownCmdHandler:
    """Commands no handler implements: ``on_unknown`` hooks, else 500 5.5.1."""

    parameters = ()

    commands = ("*",)

    async def on_command(self, session, command):
        verdict = await session.server.chain.verdict("on_unknown", session, command.verb)
        if verdict is not None:
            reply = to_reply(verdict, R.unrecognized(command.verb))
            if reply is not None:
                return reply
        return R.unrecognized(command.verb)
