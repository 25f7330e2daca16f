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

import pluggy

hookspec = pluggy.HookspecMarker("chainmail")
hookimpl = pluggy.HookimplMarker("chainmail")

__all__ = ["hookspec", "hookimpl", "HandlerSpec", "VERDICT_HOOKS", "COLLECTING_HOOKS"]


class HandlerSpec:
    """Hook specifications.  ``session`` is a :class:`chainmail.session.Session`; verdicts are
    :class:`chainmail.verdict.HookResult` (or ``None`` for no opinion)."""

    # -- low level ---------------------------------------------------------------------
    @hookspec
    def on_command(self, session, command):
        """Handle a command line.  Only called on handlers whose ``commands`` attribute names
        ``command.verb`` (``"*"`` for commands nobody else implements).  Return a
        :class:`chainmail.protocol.replies.Reply` to answer, or ``None`` to let the next
        handler of that verb answer.  The core SMTP commands are implemented this way, so
        a handler listed before the core package can take over any command."""

    # -- connection ----------------------------------------------------------------------
    @hookspec
    def on_connect(self, session):
        """A client connected (after the connection limits).  A DENY/DENYSOFT verdict is
        sent instead of the greeting; add ``disconnect=True`` to close right after it."""

    @hookspec
    def on_disconnect(self, session):
        """The connection is gone (any reason).  Return value ignored."""

    # -- HELO / EHLO / LHLO -----------------------------------------------------------------
    @hookspec
    def on_helo(self, session, helo):
        """HELO, EHLO or LHLO with a syntactically valid argument ``helo`` (verdict)."""

    @hookspec
    def ehlo_keywords(self, session):
        """Return EHLO/LHLO keywords to announce (``"SIZE 1000"``, ``"DSN"``...), or None."""

    # -- envelope ----------------------------------------------------------------------------
    @hookspec
    def on_mail(self, session, sender):
        """``MAIL FROM``.  ``sender`` is a :class:`chainmail.protocol.grammar.Address`, or
        ``None`` for the null reverse-path ``<>`` (verdict)."""

    @hookspec
    def on_mail_parameter(self, session, name, value):
        """One ESMTP parameter of MAIL (``name`` upper-cased, ``value`` or None).  Only called
        on handlers whose ``mail_parameters`` attribute lists ``name``.  A DENY/DENYSOFT
        verdict refuses the MAIL command.  Parameters nobody handles are ignored (James)."""

    @hookspec
    def on_rcpt(self, session, sender, recipient, parameters):
        """``RCPT TO``: ``recipient`` is an Address, ``parameters`` a dict of its ESMTP
        parameters (verdict).  A parameter not listed in any handler's ``rcpt_parameters``
        attribute is refused with 504 before hooks run."""

    # -- message -------------------------------------------------------------------------
    @hookspec
    def prepend_headers(self, session):
        """At the start of DATA: return header bytes (CRLF-terminated lines) to put on top of
        the message, e.g. ``Received:``.  Collected from every handler, in chain order."""

    @hookspec
    def on_message(self, session, message):
        """The whole message was received (``message`` is a
        :class:`chainmail.message.IncomingMessage`: envelope, size, body reader, spool
        writer).  The first decided verdict becomes the reply to DATA; the core spool
        hand-off is itself the last ``on_message`` hook, answering ``250 2.6.0``."""

    @hookspec
    def deliver_to_recipient(self, session, recipient, message):
        """LMTP: deliver the received ``message`` to one accepted ``recipient`` (verdict).
        Asked per recipient, in RCPT order; the first decided verdict is that recipient's
        reply (OK gives ``250 2.6.0 Message received <r>``).  Nobody answering gives
        ``451 4.0.0``.  The core LMTP chain delivers into the recipient's Maildir; a handler
        listed before it can deliver elsewhere."""

    # -- others --------------------------------------------------------------------------
    @hookspec
    def on_unknown(self, session, command):
        """A command no handler implements (verdict); all DECLINED gives
        ``500 5.5.1 Command X unrecognized.``"""

    @hookspec
    def on_quit(self, session):
        """QUIT (verdict; OK or DECLINED gives the normal 221)."""

    @hookspec
    def on_hook_result(self, session, hook, result, elapsed):
        """Called after every decided verdict of another hook (``hook`` is its name,
        ``elapsed`` seconds).  Return a HookResult to replace it (for logging, metrics,
        rewriting), or None to keep it."""


VERDICT_HOOKS = ("on_connect", "on_helo", "on_mail", "on_mail_parameter", "on_rcpt",
                 "on_message", "deliver_to_recipient", "on_unknown", "on_quit")
COLLECTING_HOOKS = ("ehlo_keywords", "prepend_headers", "on_disconnect")
