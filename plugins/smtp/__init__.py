"""The core SMTP handlers (James's ``CoreCmdHandlerLoader`` and ``NoAuthCmdHandlerLoader``)."""

from chainmail.chain import HandlersPackage

from .commands import (DataCmdHandler, EhloCmdHandler, ExpnCmdHandler, HeloCmdHandler,
                       HelpCmdHandler, MailCmdHandler, NoopCmdHandler, QuitCmdHandler,
                       RcptCmdHandler, RsetCmdHandler, UnknownCmdHandler, VrfyCmdHandler,
                       WelcomeMessageHandler)
from .received import ReceivedHeaderHandler
from .relay import PostmasterAbuseRcptHook, RelayCheckRcptHook
from .size import MailSizeEsmtpExtension
from .spool import SendMailHandler
from .starttls import StartTlsCmdHandler

__all__ = ["CoreCmdHandlerLoader", "NoAuthCmdHandlerLoader"]

_CORE = (
    WelcomeMessageHandler,
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
    PostmasterAbuseRcptHook,
    ReceivedHeaderHandler,
    SendMailHandler,
    StartTlsCmdHandler,
    UnknownCmdHandler,
)


class NoAuthCmdHandlerLoader(HandlersPackage):
    """The SMTP core without AUTH: for MX servers on port 25."""

    handlers = _CORE


class CoreCmdHandlerLoader(HandlersPackage):
    """The SMTP core.  AUTH and the identity checks join this set with the AUTH plugin;
    until then it equals :class:`NoAuthCmdHandlerLoader`."""

    handlers = _CORE
