"""The core SMTP handlers (James's ``CoreCmdHandlerLoader`` and ``NoAuthCmdHandlerLoader``).

The order is James's: it decides EHLO keyword order, and which hook of a kind runs first.
Unlike James, SMTPUTF8 is part of the core (the grammar takes UTF-8 addresses anyway), so it
is announced by default.
"""

from chainmail.chain import HandlersPackage

from .auth import AuthCmdHandler, AuthRequiredHook
from .commands import (DataCmdHandler, EhloCmdHandler, ExpnCmdHandler, HeloCmdHandler,
                       HelpCmdHandler, MailCmdHandler, NoopCmdHandler, QuitCmdHandler,
                       RcptCmdHandler, RsetCmdHandler, UnknownCmdHandler, VrfyCmdHandler,
                       WelcomeMessageHandler)
from .identity import SenderAuthIdentifyVerificationHook
from .received import ReceivedHeaderHandler
from .relay import PostmasterAbuseRcptHook, RelayCheckRcptHook
from .size import MailSizeEsmtpExtension
from .smtputf8 import SmtpUtf8MailHook, SmtpUtf8RcptHook
from .spool import SendMailHandler
from .bdat import BdatCmdHandler
from .starttls import StartTlsCmdHandler

__all__ = ["CoreCmdHandlerLoader", "NoAuthCmdHandlerLoader"]


def _core(with_auth: bool) -> tuple[type, ...]:
    return tuple(h for h in (
        WelcomeMessageHandler,
        AuthCmdHandler if with_auth else None,
        DataCmdHandler,
        EhloCmdHandler,
        SmtpUtf8MailHook,   # before MAIL and RCPT: answers 553 5.6.7 for UTF-8 they refuse
        SmtpUtf8RcptHook,
        BdatCmdHandler,
        ExpnCmdHandler,
        HeloCmdHandler,
        HelpCmdHandler,
        MailCmdHandler,
        NoopCmdHandler,
        QuitCmdHandler,
        RcptCmdHandler,
        RsetCmdHandler,
        VrfyCmdHandler,
        MailSizeEsmtpExtension,
        RelayCheckRcptHook,
        SenderAuthIdentifyVerificationHook,
        AuthRequiredHook if with_auth else None,
        PostmasterAbuseRcptHook,
        ReceivedHeaderHandler,
        StartTlsCmdHandler,
        SendMailHandler,
        UnknownCmdHandler,
    ) if h is not None)


class CoreCmdHandlerLoader(HandlersPackage):
    """The SMTP core with AUTH: for submission servers."""

    handlers = _core(with_auth=True)


class NoAuthCmdHandlerLoader(HandlersPackage):
    """The SMTP core without AUTH (``AUTH`` answers ``500 5.5.1 Command AUTH
    unrecognized.``): for MX servers on port 25."""

    handlers = _core(with_auth=False)
