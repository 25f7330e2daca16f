"""SMTP replies: one value type and the one table of codes, enhanced codes and texts.

Texts follow Apache James (the reference implementation this server models) unless
``docs/protocol.md`` gives a reason to differ.  Every reply the core sends is built here,
so a reader can audit the whole wire vocabulary in one screen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

__all__ = ["Reply", "R"]


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete SMTP reply: ``code``, optional RFC 3463 ``enhanced`` status, one or more lines.

    ``close`` asks the server to close the connection once the reply is sent.
    """

    code: int
    lines: tuple[str, ...]
    enhanced: str | None = None
    close: bool = False

    @classmethod
    def of(cls, code: int, text: str | Sequence[str], enhanced: str | None = None,
           close: bool = False) -> "Reply":
        lines = (text,) if isinstance(text, str) else tuple(text)
        return cls(code, lines or ("",), enhanced, close)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    def closing(self) -> "Reply":
        return Reply(self.code, self.lines, self.enhanced, True)

    def encode(self) -> bytes:
        """Wire form.  The enhanced code prefixes the first line only (James does the same;
        RFC 2034 allows it) so multi-line replies such as EHLO stay conventional."""
        code = str(self.code)
        lines = self.lines
        first = f"{self.enhanced} {lines[0]}" if self.enhanced else lines[0]
        if len(lines) == 1:
            return f"{code} {first}\r\n".encode("utf-8", "surrogateescape")
        out = [f"{code}-{first}"]
        out.extend(f"{code}-{line}" for line in lines[1:-1])
        out.append(f"{code} {lines[-1]}")
        return ("\r\n".join(out) + "\r\n").encode("utf-8", "surrogateescape")

    def __str__(self) -> str:
        return self.encode().decode("utf-8", "replace").rstrip("\r\n")


class R:
    """The reply table.  Fixed replies are attributes; replies with variable parts are
    functions of those parts."""

    # -- connection ------------------------------------------------------------------
    @staticmethod
    def greeting(host: str, lmtp: bool = False) -> Reply:
        kind = "LMTP" if lmtp else "ESMTP"
        return Reply.of(220, f"{host} {kind} chainmail ready")

    @staticmethod
    def too_many_connections(host: str) -> Reply:
        return Reply.of(421, f"{host} Too many connections, try again later", "4.7.0", True)

    @staticmethod
    def too_many_connections_from_ip(host: str) -> Reply:
        return Reply.of(421, f"{host} Too many connections from your address, try again later",
                        "4.7.0", True)

    @staticmethod
    def idle_timeout(host: str) -> Reply:
        return Reply.of(421, f"{host} Error: timeout exceeded", "4.4.2", True)

    @staticmethod
    def shutting_down(host: str) -> Reply:
        return Reply.of(421, f"{host} Service shutting down, closing transmission channel",
                        "4.3.2", True)

    @staticmethod
    def closing(host: str) -> Reply:
        return Reply.of(221, f"{host} Service closing transmission channel", "2.0.0", True)

    unable_to_process = Reply.of(451, "Unable to process request", "4.3.0")
    line_too_long = Reply.of(500, "Line length exceeded. See RFC 2821 #4.5.3.1.", "5.5.2")
    bare_lf = Reply.of(500, "line delimiter must be CRLF", "5.5.2", True)
    bad_encoding = Reply.of(500, "Command contains characters that are not allowed", "5.5.2")

    @staticmethod
    def unrecognized(verb: str) -> Reply:
        return Reply.of(500, f"Command {verb} unrecognized.", "5.5.1")

    @staticmethod
    def unexpected_argument(verb: str) -> Reply:
        return Reply.of(500, f"Unexpected argument provided with {verb} command", "5.5.4")

    @staticmethod
    def not_supported(verb: str) -> Reply:
        return Reply.of(502, f"{verb} is not supported", "5.3.3")

    ok = Reply.of(250, "OK", "2.0.0")

    # -- HELO / EHLO -----------------------------------------------------------------
    @staticmethod
    def domain_required(verb: str) -> Reply:
        return Reply.of(501, f"Domain address required: {verb}", "5.5.4")

    invalid_helo = Reply.of(501, "Invalid domain name or ip supplied as HELO argument", "5.5.2")

    @staticmethod
    def hello(host: str, arg: str, ip: str) -> str:
        return f"{host} Hello {arg} [{ip}]"

    # -- MAIL ------------------------------------------------------------------------
    need_helo = Reply.of(503, "Need HELO or EHLO before MAIL", "5.5.0")
    sender_already = Reply.of(503, "Sender already specified", "5.5.0")
    mail_usage = Reply.of(501, "Usage: MAIL FROM:<sender>", "5.5.4")
    mail_syntax = Reply.of(501, "Syntax error in MAIL command", "5.1.7")
    bad_sender = Reply.of(501, "Syntax error in sender address", "5.1.7")
    bad_parameters = Reply.of(501, "Syntax error in parameters or arguments", "5.5.4")

    @staticmethod
    def sender_ok(sender: str) -> Reply:
        return Reply.of(250, f"Sender <{sender}> OK", "2.1.0")

    # -- RCPT ------------------------------------------------------------------------
    need_mail = Reply.of(503, "Need MAIL before RCPT", "5.5.0")
    rcpt_usage = Reply.of(501, "Usage: RCPT TO:<recipient>", "5.5.2")
    rcpt_syntax = Reply.of(501, "Syntax error in parameters or arguments", "5.5.2")
    bad_recipient = Reply.of(553, "Syntax error in recipient address", "5.1.3")
    relay_denied = Reply.of(550, "Requested action not taken: relaying denied", "5.7.1")
    auth_required = Reply.of(530, "Authentication Required", "5.7.1")
    too_many_recipients = Reply.of(452, "Too many recipients", "4.5.3")
    wrong_identity = Reply.of(503, "Incorrect Authentication for Specified Email Address", "5.7.1")
    missing_from = Reply.of(503, "Missing From header", "5.5.4")

    @staticmethod
    def unknown_user(rcpt: str) -> Reply:
        return Reply.of(550, f"Unknown user: {rcpt}", "5.1.1")

    @staticmethod
    def rcpt_lookup_failed(rcpt: str) -> Reply:
        return Reply.of(451, f"Unexpected error for {rcpt}", "4.0.0")

    @staticmethod
    def recipient_ok(rcpt: str) -> Reply:
        return Reply.of(250, f"Recipient <{rcpt}> OK", "2.1.5")

    @staticmethod
    def unsupported_option(name: str) -> Reply:
        return Reply.of(504, f"Unrecognized or unsupported option: {name}", "5.5.4")

    # -- SIZE (RFC 1870) ---------------------------------------------------------------
    bad_size = Reply.of(501, "Syntactically incorrect value for SIZE parameter", "5.5.4")
    size_exceeded = Reply.of(552, "Message size exceeds fixed maximum message size", "5.3.4")

    # -- DATA ------------------------------------------------------------------------
    no_sender = Reply.of(503, "No sender specified", "5.5.0")
    no_recipients = Reply.of(503, "No recipients specified", "5.5.0")
    start_data = Reply.of(354, "Ok Send data ending with <CRLF>.<CRLF>")
    message_received = Reply.of(250, "Message received", "2.6.0")

    @staticmethod
    def message_queued(queue_id: str) -> Reply:
        """After DATA: the id the operator finds the message by (logs, ``chainmail queue``)."""
        return Reply.of(250, f"Message received, queued as {queue_id}", "2.6.0")

    spool_error = Reply.of(451, "Error processing message.", "4.0.0")
    #: the shared queue (RabbitMQ) did not confirm the message: nothing was kept
    queue_unavailable = Reply.of(451, "Mail queue unavailable, try again later", "4.3.0")
    data_line_too_long = Reply.of(500, "Line length exceeded. See RFC 2821 #4.5.3.1.", "5.5.2")
    data_bare_lf = Reply.of(500, "line delimiter must be CRLF", "5.0.0", True)
    data_nul = Reply.of(500, "NUL character not allowed in message data", "5.6.0", True)

    # -- BDAT (RFC 3030) ------------------------------------------------------------------
    data_after_bdat = Reply.of(503, "DATA cannot follow BDAT in one transaction", "5.5.1")
    binarymime_needs_bdat = Reply.of(503, "BODY=BINARYMIME requires BDAT", "5.5.1")
    bdat_syntax = Reply.of(501, "Syntax: BDAT <size> [LAST]", "5.5.4", True)
    bdat_bare_line_end = Reply.of(550, "Message refused: bare CR or LF in message data",
                                  "5.6.0")
    bdat_nul = Reply.of(550, "Message refused: NUL character in message data", "5.6.0")

    @staticmethod
    def chunk_received(size: int) -> Reply:
        return Reply.of(250, f"{size} octets received", "2.0.0")

    # -- AUTH (RFC 4954) --------------------------------------------------------------------
    auth_already = Reply.of(503, "User has previously authenticated.  Further authentication is "
                                 "not required!", "5.5.0")
    auth_in_transaction = Reply.of(503, "AUTH command is not permitted during a mail transaction",
                                   "5.5.1")
    auth_usage = Reply.of(501, "Usage: AUTH (authentication type) <challenge>", "5.5.4")
    auth_unknown_mechanism = Reply.of(504, "Unrecognized Authentication Type", "5.5.4")
    auth_encryption_required = Reply.of(538, "Encryption required for requested authentication "
                                             "mechanism", "5.7.11")
    auth_aborted = Reply.of(501, "Authentication aborted", "5.7.1")
    auth_ok = Reply.of(235, "Authentication Successful", "2.7.0")
    auth_failed = Reply.of(535, "Authentication Failed", "5.7.8")

    @staticmethod
    def auth_challenge(payload: str) -> Reply:
        return Reply.of(334, payload)

    @staticmethod
    def auth_cannot_decode(mechanism: str) -> Reply:
        return Reply.of(501, f"Could not decode parameters for AUTH {mechanism}", "5.5.2")

    @staticmethod
    def auth_too_many_failures(host: str) -> Reply:
        return Reply.of(421, f"{host} Too many authentication failures, closing connection",
                        "4.7.0", True)

    # the identity provider (OIDC) could not be asked or answered with an error
    auth_temporary_failure = Reply.of(451, "Temporary authentication failure", "4.7.0")

    # -- STARTTLS (RFC 3207) -------------------------------------------------------------
    tls_ready = Reply.of(220, "Ready to start TLS", "2.0.0")
    tls_already_active = Reply.of(500, "TLS already active RFC2487 5.2", "5.5.1")
    tls_after_auth = Reply.of(501, "Syntax error (invalid command in this state) Already authenticated...",
                              "5.5.4")

    # -- LMTP (RFC 2033): one reply per recipient after DATA -------------------------------
    @staticmethod
    def lmtp_delivered(rcpt: str) -> Reply:
        return Reply.of(250, f"Message received <{rcpt}>", "2.6.0")

    @staticmethod
    def lmtp_over_quota(rcpt: str) -> Reply:
        return Reply.of(552, f"Over Quota error when delivering message to <{rcpt}>", "5.2.2")

    @staticmethod
    def lmtp_store_failure(rcpt: str) -> Reply:
        return Reply.of(451, f"Temporary error deliver message to <{rcpt}>", "4.3.0")

    @staticmethod
    def lmtp_temporary_failure(rcpt: str) -> Reply:
        return Reply.of(451, f"Temporary error deliver message to <{rcpt}>", "4.0.0")

    @staticmethod
    def lmtp_container_failure(rcpt: str) -> Reply:
        """Mailet-container mode: an exception came out of the container (James's text)."""
        return Reply.of(451, f"Temporary error deliver message <{rcpt}>", "4.0.0")

    # -- hook verdict defaults (James's HookResult mapping) -----------------------------
    hook_deny = Reply.of(554, "Email rejected")
    hook_denysoft = Reply.of(451, "Temporary problem. Please try again later")
    hook_disconnect = Reply.of(554, "Server disconnected", close=True)
