"""The plugin author's contract: every hook a handler can implement.

A *handler* is a class named in ``<handlerchain>`` and found through the ``chainmail.handlers``
entry-point group.  The server makes one instance per ``<smtpserver>``/``<lmtpserver>`` block
and registers it with pluggy, which checks every hook method against the specs below.  Any
method named like a hook is taken as its implementation (``@hookimpl`` also works).

Calling rules (James's, see ``docs/plugins.md``):

* Handlers are asked **in chain order**: the ``<handler>`` entries in XML order, then the
  handlers of the ``coreHandlersPackage``.
* For verdict hooks (``on_connect`` .. ``on_quit``) the first verdict that is not
  ``DECLINED`` (or ``None``) ends the round.  ``OK`` runs the core command at once and skips
  later hooks; ``DENY``/``DENYSOFT`` answer with the hook's code and text (defaults 554 and 451).
  The one exception: an OK from ``on_rcpt`` never bypasses the relay decision unless its
  handler declares ``authorizes_relay = True`` (see :meth:`HandlerSpec.on_rcpt`).
* Collecting hooks (``ehlo_keywords``, ``prepend_headers``, ``on_disconnect``) call every
  handler and gather what they return.
* A hook may be a plain function, an ``async def`` running on trio, or an ``async def``
  running on asyncio: set ``runs_on = "asyncio"`` on the handler class (the server opens one
  trio-asyncio loop per server block for it).  A blocking plain function can set
  ``runs_on = "thread"`` to run in a worker thread, bounded by ``maxExecutorCount``.
* Async hooks run under a time budget (``<handlerTimeout>``, default 30 s).  A hook that raises
  or overruns answers ``451 4.3.0 Unable to process request`` for that command; the session
  goes on.
* Arguments are pruned as pluggy does: declare only the parameters you use.

A handler receives its own ``<handler>`` element's parameters through an optional
``configure(self, config: chainmail.chain.HandlerConfig)`` method, called once before serving.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import pluggy

if TYPE_CHECKING:  # pragma: no cover - types only; the runtime modules import this one
    from .message import IncomingMessage
    from .protocol.engine import Command
    from .protocol.grammar import Address
    from .protocol.replies import Reply
    from .session import Session
    from .verdict import HookResult

hookspec = pluggy.HookspecMarker("chainmail")
hookimpl = pluggy.HookimplMarker("chainmail")

__all__ = ["hookspec", "hookimpl", "HandlerSpec", "COLLECTING_HOOKS"]


class HandlerSpec:
    """Hook specifications.  Every hook may also be ``async def`` (see the module docstring);
    a verdict hook returns a :class:`~chainmail.verdict.HookResult`, or ``None`` for no
    opinion (the same as ``DECLINED``)."""

    # -- low level ---------------------------------------------------------------------
    @hookspec
    def on_command(self, session: Session, command: Command) -> Reply | None:
        """Handle a command line: the core SMTP commands are implemented this way, so a
        handler listed before the core package can take over any command.

        :param session: the connection.
        :param command: the parsed line (``verb`` upper-cased, ``arg``, the raw ``line``).
        :returns: the :class:`~chainmail.protocol.replies.Reply` to send, or ``None`` to let
            the next handler of that verb answer.

        Calling rule: only handlers whose ``commands`` attribute names ``command.verb``
        (``"*"`` for commands nobody else implements), in chain order; the first ``Reply``
        stops the round.  No time budget: the command's own hooks each have theirs."""

    # -- connection ----------------------------------------------------------------------
    @hookspec
    def on_connect(self, session: Session) -> HookResult | None:
        """A client connected (after the connection limits).

        :param session: the new connection (no HELO yet).

        Calling rule: verdict, first decided wins.  DENY/DENYSOFT is sent instead of the
        greeting; add ``disconnect=True`` to close right after it."""

    @hookspec
    def on_disconnect(self, session: Session) -> None:
        """The connection is gone (any reason): release per-connection resources.

        :param session: the closed connection.

        Calling rule: collecting; every handler is called, return values are ignored."""

    # -- HELO / EHLO / LHLO -----------------------------------------------------------------
    @hookspec
    def on_helo(self, session: Session, helo: str) -> HookResult | None:
        """HELO, EHLO or LHLO with a syntactically valid argument.

        :param session: the connection (``helo_mode`` tells which command).
        :param helo: the argument as sent.

        Calling rule: verdict, first decided wins; a refusal leaves the session ungreeted."""

    @hookspec
    def ehlo_keywords(self, session: Session) -> Iterable[str] | None:
        """EHLO/LHLO keywords to announce (``"SIZE 1000"``, ``"DSN"``...).

        :param session: the connection being greeted.
        :returns: keywords, or ``None`` for none.

        Calling rule: collecting, every handler in chain order (this order is the EHLO
        reply's)."""

    # -- envelope ----------------------------------------------------------------------------
    @hookspec
    def on_mail(self, session: Session, sender: Address | None) -> HookResult | None:
        """``MAIL FROM``, after its syntax and sequence checks.

        :param session: the connection.
        :param sender: the reverse-path, ``None`` for the null sender ``<>``.

        Calling rule: verdict, first decided wins; OK accepts the sender at once."""

    @hookspec
    def on_mail_parameter(self, session: Session, name: str,
                          value: str | None) -> HookResult | None:
        """One ESMTP parameter of MAIL.

        :param session: the connection.
        :param name: the parameter name, upper-cased.
        :param value: its value, ``None`` for a bare keyword.

        Calling rule: only handlers whose ``mail_parameters`` attribute lists ``name``;
        verdict, first decided wins; DENY/DENYSOFT refuses the MAIL command.  Parameters
        nobody handles are ignored (James)."""

    @hookspec
    def on_rcpt(self, session: Session, sender: Address | None, recipient: Address,
                parameters: dict[str, str | None]) -> HookResult | None:
        """``RCPT TO``, after its syntax and sequence checks.

        :param session: the connection (``relaying_allowed``, ``auth_user``...).
        :param sender: the transaction's reverse-path (``None`` for ``<>``).
        :param recipient: the forward-path; a bare local part has the default domain.
        :param parameters: its ESMTP parameters, names upper-cased.

        Calling rule: verdict, first decided wins, with one exception that keeps the server
        from being an open relay: when the recipient would be relayed (outside the local
        domains, or routing in the local part) for a client that may not relay, an OK from
        a handler without ``authorizes_relay = True`` does not end the round for the relay
        authorisers after it (the core relay check), which still decide.  A parameter not
        listed in any handler's ``rcpt_parameters`` is refused with 504 before hooks run."""

    # -- message -------------------------------------------------------------------------
    @hookspec
    def prepend_headers(self, session: Session) -> bytes | None:
        """Header bytes (CRLF-terminated lines) to put on top of the message, e.g.
        ``Received:``.

        :param session: the connection; ``session.transaction`` is the envelope.

        Calling rule: collecting, at the start of DATA, in chain order."""

    @hookspec
    def on_message(self, session: Session, message: IncomingMessage) -> HookResult | None:
        """The whole message was received.

        :param session: the connection.
        :param message: envelope, size, the whole message (``message.read()``) and
            ``message.add_header(name, value)`` for result fields stored on top of it.

        Calling rule: verdict, first decided wins and becomes the DATA reply.  The core
        spool hand-off is itself the last ``on_message`` hook (``250 2.6.0``): an OK before
        it answers 250 without spooling."""

    @hookspec
    def deliver_to_recipient(self, session: Session, recipient: Address,
                             message: IncomingMessage) -> HookResult | None:
        """LMTP: deliver the received message to one accepted recipient.  The core LMTP
        chain delivers into the recipient's Maildir; a handler before it can deliver
        elsewhere.

        :param session: the LMTP connection.
        :param recipient: one accepted recipient.
        :param message: the received message.

        Calling rule: verdict per recipient, in RCPT order; the first decided verdict is
        that recipient's reply (OK gives ``250 2.6.0 Message received <r>``); nobody
        deciding gives ``451 4.0.0``."""

    # -- others --------------------------------------------------------------------------
    @hookspec
    def on_unknown(self, session: Session, command: Command) -> HookResult | None:
        """A command no handler implements.

        :param session: the connection.
        :param command: the unknown command.

        Calling rule: verdict, first decided wins; all DECLINED gives
        ``500 5.5.1 Command X unrecognized.``"""

    @hookspec
    def on_quit(self, session: Session) -> HookResult | None:
        """QUIT.

        :param session: the connection, about to close.

        Calling rule: verdict, first decided wins; OK or DECLINED gives the normal 221."""

    @hookspec
    def on_hook_result(self, session: Session, hook: str, result: HookResult,
                       elapsed: float) -> HookResult | None:
        """After every decided verdict of another hook: for logging, metrics, rewriting.

        :param session: the connection.
        :param hook: the hook's name (``"on_rcpt"``...).
        :param result: the decided verdict.
        :param elapsed: seconds the deciding hook took.
        :returns: a replacement verdict, or ``None`` to keep ``result``.

        Calling rule: every handler in chain order, each seeing the previous one's
        replacement."""


#: Hooks whose every implementation is called and whose results are gathered; the
#: others take the first decided verdict (or, for ``on_command``, the first reply).
COLLECTING_HOOKS: tuple[str, ...] = ("ehlo_keywords", "prepend_headers", "on_disconnect")
