"""The core LMTP handlers (James's ``org.apache.james.lmtpserver.CoreCmdHandlerLoader``):
LHLO, MAIL, RCPT, DATA with one reply per recipient, and delivery into Maildirs."""

from chainmail.chain import HandlersPackage
from chainmail_plugins.smtp.commands import (ExpnCmdHandler, LhloCmdHandler, MailCmdHandler,
                                             NoopCmdHandler, QuitCmdHandler, RcptCmdHandler,
                                             RsetCmdHandler, UnknownCmdHandler, VrfyCmdHandler,
                                             WelcomeMessageHandler)
from chainmail_plugins.smtp.received import ReceivedHeaderHandler
from chainmail_plugins.smtp.relay import PostmasterAbuseRcptHook, RelayCheckRcptHook
from chainmail_plugins.smtp.size import MailSizeEsmtpExtension
from chainmail_plugins.smtp.starttls import StartTlsCmdHandler
from chainmail_plugins.smtp.validrcpt import ValidRcptHandler

from .delivery import LmtpDataCmdHandler, MailboxDeliverToRecipientHandler

__all__ = ["CoreCmdHandlerLoader"]


class CoreCmdHandlerLoader(HandlersPackage):
    """LMTP straight into mailboxes: no spool, no mailet container."""

    handlers = (
        WelcomeMessageHandler,
        LmtpDataCmdHandler,
        ExpnCmdHandler,
        LhloCmdHandler,
        MailCmdHandler,
        NoopCmdHandler,
        QuitCmdHandler,
        RcptCmdHandler,
        ValidRcptHandler,
        RsetCmdHandler,
        VrfyCmdHandler,
        MailSizeEsmtpExtension,
        StartTlsCmdHandler,
        RelayCheckRcptHook,
        PostmasterAbuseRcptHook,
        ReceivedHeaderHandler,
        MailboxDeliverToRecipientHandler,
        UnknownCmdHandler,
    )
