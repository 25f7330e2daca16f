"""What a sender reads in a delivery report: consistent Action/Status, the original queue
id, and never a server path or stack trace."""

from __future__ import annotations

import email
import email.policy

from chainmail.mailet.api import Mail
from chainmail.mailet.context import build_dsn, original_queue_id, public_reason

QID = "0190a1b2c3d4-0000a1b2c3d4e5f6a7b8"


def report(reason: str, name: str = QID, status: str | None = None):
    mail = Mail(name, "alice@remote.example", ["bob@local.test"],
                b"Subject: hi\r\n\r\nbody\r\n", queued_at=1.0)
    raw = build_dsn(mail, reason=reason, reporting_mta="mx.test",
                    postmaster="postmaster@local.test", status=status)
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    return raw.decode(), parsed.get_payload()[1].get_payload()


def test_a_temporary_status_that_was_given_up_on_is_reported_as_permanent():
    raw, status = report("451 4.3.0 Mailbox temporarily unavailable; gave up after 5 retries")
    assert (status[1]["Action"], status[1]["Status"]) == ("failed", "5.3.0")
    assert "The error was temporary, but retrying did not succeed" in raw
    raw, status = report("whatever", status="4.4.7")
    assert status[1]["Status"] == "5.4.7"


def test_a_permanent_failure_keeps_its_status():
    raw, status = report("550 5.1.1 Unknown user: <bob@local.test>")
    assert (status[1]["Action"], status[1]["Status"]) == ("failed", "5.1.1")
    assert "This is a permanent error" in raw


def test_the_report_names_the_original_queue_id_of_a_copy():
    _, status = report("550 5.1.1 Unknown user", name=f"{QID}-4-7")
    assert status[0]["X-chainmail-Queue-ID"] == QID
    assert original_queue_id("mail-3") == "mail-3"


def test_paths_and_tracebacks_never_reach_the_sender():
    reason = ("451 4.3.0 Mailbox write failed: [Errno 20] Not a directory: "
              "'/srv/chainmail/var/mail/bob@local.test/tmp/1.M2'")
    raw, status = report(reason)
    assert "/srv" not in raw and "var/mail" not in raw
    assert status[1]["Diagnostic-Code"] == "smtp; 451 4.3.0 Mailbox write failed: [Errno 20] Not a directory"
    assert public_reason("mailet X failed: [Errno 2] No such file: 'var/a' -> 'var/b'") == \
        "mailet X failed: [Errno 2] No such file"
    assert public_reason("cannot open /etc/chainmail/keystore now") == "cannot open [path] now"
    assert public_reason("see https://example.test/a/b") == "see https://example.test/a/b"
    assert public_reason('Traceback (most recent call last):\n  File "/x.py"') == \
        "Internal error while processing the message"
