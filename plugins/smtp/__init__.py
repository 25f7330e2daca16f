"""The core SMTP handlers (James's ``CoreCmdHandlerLoader`` and ``NoAuthCmdHandlerLoader``).

The order is James's: it decides EHLO keyword order, and which hook of a kind runs first.
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
from .spool import SendMailHandler
from .starttls import StartTlsCmdHandler

__all__ = ["CoreCmdHandlerLoader", "NoAuthCmdHandlerLoader"]


def _core(with_auth: bool) -> tuple[type, ...]:
    return tuple(h for h in (
        WelcomeMessageHandler,
        AuthCmdHandler if with_auth else None,
        DataCmdHandler,
        EhloCmdHandler,
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
