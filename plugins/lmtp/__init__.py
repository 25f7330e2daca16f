"""The LMTP handler packages.

- ``CoreCmdHandlerLoader`` (James's ``org.apache.james.lmtpserver.CoreCmdHandlerLoader``):
  LHLO, MAIL, RCPT, DATA with one reply per recipient, and delivery into Maildirs through
  the ``deliver_to_recipient`` hooks;
- ``MailetContainerCmdHandlerLoader`` (``org.apache.james.lmtpserver.MailetContainerCmdHandlerLoader``):
  the same commands, but DATA runs the mail through the mailet container
  (:class:`~chainmail_plugins.lmtp.mailet.MailetContainerHandler`).

See ``docs/lmtp.md``."""

from chainmail.chain import HandlersPackage
from chainmail_plugins.smtp.bdat import BdatCmdHandler
from chainmail_plugins.smtp.commands import (ExpnCmdHandler, LhloCmdHandler, MailCmdHandler,
                                             NoopCmdHandler, QuitCmdHandler, RcptCmdHandler,
                                             RsetCmdHandler, UnknownCmdHandler, VrfyCmdHandler,
                                             WelcomeMessageHandler)
from chainmail_plugins.smtp.received import ReceivedHeaderHandler
from chainmail_plugins.smtp.relay import PostmasterAbuseRcptHook, RelayCheckRcptHook
from chainmail_plugins.smtp.size import MailSizeEsmtpExtension
from chainmail_plugins.smtp.smtputf8 import SmtpUtf8MailHook, SmtpUtf8RcptHook
from chainmail_plugins.smtp.starttls import StartTlsCmdHandler
from chainmail_plugins.smtp.validrcpt import ValidRcptHandler

from .delivery import LmtpDataCmdHandler, MailboxDeliverToRecipientHandler
from .mailet import MailetContainerHandler

__all__ = ["CoreCmdHandlerLoader", "MailetContainerCmdHandlerLoader", "MailetContainerHandler"]


# The LMTP commands and RCPT checks both loaders share, in James's order.
_COMMON = (
    ExpnCmdHandler,
    LhloCmdHandler,
    SmtpUtf8MailHook,   # SMTPUTF8 announced; before MAIL and RCPT (553 5.6.7)
    SmtpUtf8RcptHook,
    BdatCmdHandler,
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
)


class CoreCmdHandlerLoader(HandlersPackage):
    """LMTP straight into mailboxes: no spool, no mailet container."""

    handlers = (WelcomeMessageHandler, LmtpDataCmdHandler, *_COMMON,
                MailboxDeliverToRecipientHandler, UnknownCmdHandler)


class MailetContainerCmdHandlerLoader(HandlersPackage):
    """LMTP into the mailet container, from ``root``, synchronously (no spool).  A
    ``<handler class="MailetContainerHandler">`` element listed before it (for example with
    ``<splitExecution>true</splitExecution>``) answers DATA in its place."""

    handlers = (WelcomeMessageHandler, *_COMMON, MailetContainerHandler, UnknownCmdHandler)
