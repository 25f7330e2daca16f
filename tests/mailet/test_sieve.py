"""Sieve (RFC 5228, 5429, 5230): compiling, evaluating, and the ``Sieve`` mailet with
``LocalDelivery`` filing into Maildir++ folders, on the test kit's mailet harness."""

from __future__ import annotations

import os
import time

import pytest

from chainmail.store.mailbox import MailboxError, MaildirStore, maildir_folder_for
from chainmail.store.sieve import SieveStore
from chainmail.testing import MailetHarness
from chainmail.testing.stores import read_maildir
from chainmail_plugins.mailets.sieve_eval import Envelope, SieveRuntimeError, evaluate, glob_match
from chainmail.sieve_script import SieveScriptError, compile_script

BOB, CAROL = "bob@local.test", "carol@local.test"
PROCESSOR = """<processor state="root">
  <mailet match="All" class="Sieve"/>
  <mailet match="All" class="LocalDelivery"/>
</processor>"""
MESSAGE = (b"From: Alice <alice@remote.example>\r\nTo: Bob <bob@local.test>\r\n"
           b"Cc: list@lists.example\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= from the Team\r\n"
           b"Message-ID: <m1@remote.example>\r\nX-Spam-Flag: YES\r\n\r\nhello\r\n")


@pytest.fixture
def harness():
    with MailetHarness(users={BOB: "a long password", CAROL: "a long password"}) as h:
        yield h


def script_for(h: MailetHarness, user: str, text: str) -> None:
    with SieveStore(h.var / "chainmail.db") as store:
        store.put(user, "main", text)
        assert store.activate(user, "main")


def folder(h: MailetHarness, user: str, name: str | None = None) -> list[bytes]:
    return read_maildir(h.stores.mailboxes.folder_path(user, name))


def env(headers=None, *, sender="alice@remote.example", recipient=BOB, size=100):
    fields = headers if headers is not None else [
        ("From", "Alice <alice@remote.example>"), ("To", "Bob <bob@local.test>"),
        ("Subject", "=?utf-8?q?Gr=C3=BC=C3=9Fe?= from the Team"), ("X-Spam-Flag", "YES")]
    return Envelope(sender, recipient, size, fields)


def folders_of(text: str, envelope=None) -> list[str]:
    return evaluate(compile_script(text), envelope or env()).delivered_to


# -------------------------------------------------------------------------- compiling


@pytest.mark.parametrize("text, reason", [
    ('require "body"; keep;', "extension 'body' is not supported"),
    ('require ["fileinto", "imap4flags"]; keep;', "'imap4flags' is not supported"),
    ('fileinto "Spam";', "extension 'fileinto' not loaded"),
    ('if header :regex "subject" "x" { keep; }', "extension 'regex' not loaded"),
    ('redirect "not an address";', "is not an address"),
    ('keep; require "fileinto";', "require must come before"),
    ('if true { keep; ', "end of script"),
    ('if header :comparator "i;unicode" "a" "b" { keep; }', "i;unicode"),
    ('require "envelope"; if envelope :is "auth" "x" { keep; }', "unknown part 'auth'"),
])
def test_scripts_that_cannot_run_are_refused_with_the_reason(text, reason):
    with pytest.raises(SieveScriptError) as err:
        compile_script(text)
    assert reason in str(err.value)


def test_script_size_is_bounded():
    big = "# " + "x" * (64 * 1024) + "\nkeep;"
    with pytest.raises(SieveScriptError, match="over the limit"):
        compile_script(big)


def test_strings_numbers_and_multiline_text_are_decoded():
    script = compile_script('require ["reject"];\nif size :over 1K { reject text:\n'
                            'Too big.\n..dotted\n.\n; }\nelsif header "subject" "a\\"b\\\\c" '
                            '{ discard; }')
    out = evaluate(script, env(size=1025))
    assert out.reject == ("reject", "Too big.\n.dotted\n")
    out = evaluate(script, env([("Subject", 'a"b\\c')], size=10))
    assert out.discarded and out.delivered_to == []


# -------------------------------------------------------------------------- evaluating


@pytest.mark.parametrize("test, expected", [
    ('header :contains "subject" "grüße"', True),            # RFC 2047 decoded
    ('header :contains "subject" "TEAM"', True),             # i;ascii-casemap by default
    ('header :comparator "i;octet" :contains "subject" "TEAM"', False),
    ('header :is "x-spam-flag" "yes"', True),
    ('header :is "x-spam-flag" "ye"', False),
    ('header :matches "subject" "*from the ?eam"', True),
    ('header :matches "subject" "from*"', False),
    ('header :matches "x-spam-flag" "Y\\\\*S"', False),      # \* is a literal star
    ('address :domain :is "from" "REMOTE.example"', True),
    ('address :localpart :is "to" "bob"', True),
    ('address :all :is "to" "bob@local.test"', True),
    ('address :is "to" "Bob"', False),
    ('envelope :domain :is "from" "remote.example"', True),
    ('envelope :localpart :matches "to" "b*"', True),
    ('exists ["From", "X-Spam-Flag"]', True),
    ('exists ["From", "X-Missing"]', False),
    ('size :over 99', True),
    ('size :under 100', False),
    ('allof (true, exists "From")', True),
    ('allof (true, false)', False),
    ('anyof (false, not false)', True),
    ('not anyof (false, false)', True),
])
def test_tests_comparators_and_address_parts(test, expected):
    text = f'require ["fileinto", "envelope"]; if {test} {{ fileinto "Hit"; }}'
    assert folders_of(text) == (["Hit"] if expected else ["INBOX"])


def test_envelope_from_of_the_null_sender_is_the_empty_string():
    text = 'require ["envelope", "fileinto"]; if envelope :all :is "from" "" { fileinto "Null"; }'
    assert folders_of(text, env(sender="")) == ["Null"]


def test_if_elsif_else_and_stop():
    text = ('require "fileinto"; if false { fileinto "A"; } elsif true { fileinto "B"; stop; } '
            'else { fileinto "C"; } fileinto "D";')
    assert folders_of(text) == ["B"]


def test_keep_fileinto_copy_and_implicit_keep():
    assert folders_of('require ["fileinto", "copy"]; fileinto :copy "Archive";') == ["Archive", "INBOX"]
    assert folders_of('require "fileinto"; fileinto "A"; keep; fileinto "A";') == ["A", "INBOX"]
    assert folders_of('discard;') == []
    assert folders_of('discard; keep;') == ["INBOX"]


def test_runtime_errors_are_reported():
    redirects = " ".join(f'redirect "u{i}@remote.example";' for i in range(6))
    with pytest.raises(SieveRuntimeError, match="more than 5 redirects"):
        evaluate(compile_script(redirects), env())
    with pytest.raises(SieveRuntimeError, match="cannot be combined"):
        evaluate(compile_script('require ["reject", "fileinto"]; reject "no"; fileinto "x";'), env())


def test_matches_is_a_safe_glob():
    assert glob_match("a*b?c", "axxxbyc") and glob_match("*", "") and glob_match("\\?", "?")
    assert not glob_match("a*b?c", "axxxbc") and not glob_match("\\?", "x")
    started = time.monotonic()
    assert not glob_match("*a" * 30 + "b", "a" * 5000)   # a regex would backtrack for ages
    assert time.monotonic() - started < 2


# -------------------------------------------------------------------------- folders


def test_folder_names_become_maildir_plus_plus_directories():
    assert maildir_folder_for("INBOX") == "" and maildir_folder_for(None) == ""
    assert maildir_folder_for("Spam") == ".Spam"
    assert maildir_folder_for("INBOX.Lists/python") == ".Lists.python"
    assert maildir_folder_for("Entwürfe") == ".Entw&APw-rfe"     # modified UTF-7
    assert maildir_folder_for("R&D") == ".R&-D"
    for bad in ("..", "../../etc", "A//B", "/abs", "a\nb", "x\x00y", "A." * 40):
        with pytest.raises(MailboxError):
            maildir_folder_for(bad)


def test_a_folder_is_created_with_its_marker_and_counted_in_the_quota(tmp_path):
    store = MaildirStore(tmp_path / "mail", tmp_path / "db.sqlite")
    try:
        store.deliver(BOB, b"Subject: a\r\n\r\nbody\r\n", "Lists/python")
        path = store.folder_path(BOB, "Lists/python")
        assert path.endswith("/bob@local.test/.Lists.python")
        assert os.path.isfile(os.path.join(path, "maildirfolder"))
        assert len(read_maildir(path)) == 1 and store.folders(BOB) == [".Lists.python"]
        assert store.usage(BOB) == len(b"Subject: a\n\nbody\n")
        store.set_quota(BOB, store.usage(BOB) + 5)
        with pytest.raises(Exception, match="Over quota"):
            store.deliver(BOB, b"Subject: b\r\n\r\nbody\r\n", "Other")
    finally:
        store.close()


# -------------------------------------------------------------------------- the mailet


def test_fileinto_delivers_into_the_folder_and_others_keep_their_inbox(harness):
    script_for(harness, BOB, 'require "fileinto"; if header :is "X-Spam-Flag" "YES" '
                             '{ fileinto "Spam"; }')
    result = harness.process(PROCESSOR, harness.mail(MESSAGE, recipients=[BOB, CAROL]))
    [spam] = folder(harness, BOB, "Spam")
    assert spam.startswith(b"Return-Path: <alice@remote.example>\nDelivered-To: bob@local.test\n")
    assert folder(harness, BOB) == []
    assert len(folder(harness, CAROL)) == 1
    assert any("delivered to <bob@local.test> in Spam" in line for line in result.logs)


def test_discard_delivers_nothing_and_finishes_the_mail(harness):
    script_for(harness, BOB, "discard;")
    result = harness.process(PROCESSOR, harness.mail(MESSAGE))
    assert folder(harness, BOB) == [] and result.sent == []
    assert [m.recipients for m in result.finished] == [[]]


def test_redirect_sends_a_marked_copy_and_keeps_only_with_copy(harness):
    script_for(harness, BOB, 'redirect "dave@remote.example";')
    result = harness.process(PROCESSOR, harness.mail(MESSAGE))
    [copy] = result.sent
    assert copy.recipients == ["dave@remote.example"] and copy.sender == "alice@remote.example"
    assert copy.get_header("Delivered-To") == BOB and copy.state == "root"
    assert not any(k.startswith("DeliveryPath") for k in copy.attributes)
    assert folder(harness, BOB) == []

    script_for(harness, BOB, 'require "copy"; redirect :copy "dave@remote.example";')
    result = harness.process(PROCESSOR, harness.mail(MESSAGE))
    assert len(result.sent) == 1 and len(folder(harness, BOB)) == 1


def test_a_redirect_loop_is_kept_instead(harness):
    script_for(harness, BOB, 'redirect "carol@local.test";')
    looped = b"Delivered-To: bob@local.test\r\n" + MESSAGE
    result = harness.process(PROCESSOR, harness.mail(looped))
    assert result.sent == [] and len(folder(harness, BOB)) == 1
    assert any("a loop" in line for line in result.logs)


def test_reject_sends_an_mdn_to_the_sender_and_delivers_nothing(harness):
    script_for(harness, BOB, 'require "reject"; reject "I do not want this.";')
    result = harness.process(PROCESSOR, harness.mail(MESSAGE))
    [mdn] = result.sent
    assert mdn.sender == "" and mdn.recipients == ["alice@remote.example"]
    text = mdn.content.decode()
    assert mdn.message["Subject"] == "Rejected: Grüße from the Team"
    assert 'multipart/report; report-type="disposition-notification"' in text
    assert "Disposition: automatic-action/MDN-sent-automatically; deleted" in text
    assert "I do not want this." in text and "Message-ID: <m1@remote.example>" in text
    assert folder(harness, BOB) == []
    # never to the null sender
    result = harness.process(PROCESSOR, harness.mail(MESSAGE, sender=""))
    assert result.sent == [] and folder(harness, BOB) == []


def test_ereject_sends_a_delivery_status_notification(harness):
    script_for(harness, BOB, 'require "ereject"; ereject "No thanks";')
    result = harness.process(PROCESSOR, harness.mail(MESSAGE))
    [dsn] = result.sent
    text = dsn.content.decode()
    assert dsn.sender == "" and "delivery-status" in text
    assert "5.7.1" in text and "No thanks" in text and folder(harness, BOB) == []


def test_a_script_that_no_longer_loads_or_fails_keeps_the_mail(harness):
    script_for(harness, BOB, 'require "body"; discard;')   # stored behind the CLI's back
    result = harness.process(PROCESSOR, harness.mail(MESSAGE))
    assert len(folder(harness, BOB)) == 1
    assert any("does not load" in line and "'body'" in line for line in result.logs)
    redirects = " ".join(f'redirect "u{i}@remote.example";' for i in range(6))
    script_for(harness, BOB, redirects)
    result = harness.process(PROCESSOR, harness.mail(MESSAGE))
    assert result.sent == [] and len(folder(harness, BOB)) == 2
    assert any("failed (more than 5 redirects)" in line for line in result.logs)


def test_a_folder_name_that_leaves_the_maildir_goes_to_the_inbox(harness):
    script_for(harness, BOB, 'require "fileinto"; fileinto "../../../etc";')
    result = harness.process(PROCESSOR, harness.mail(MESSAGE))
    assert len(folder(harness, BOB)) == 1
    assert not (harness.var / "etc").exists() and not (harness.var.parent / "etc").exists()
    assert any("empty level" in line for line in result.logs)


def test_vacation_replies_once_per_sender_and_follows_rfc_3834(harness):
    script_for(harness, BOB, 'require "vacation"; vacation :days 3 :subject "Away" '
                             ':addresses ["list@lists.example"] "Back on Monday.";')
    first = harness.process(PROCESSOR, harness.mail(MESSAGE))
    [reply] = first.sent
    assert reply.sender == "" and reply.recipients == ["alice@remote.example"]
    assert reply.get_header("Auto-Submitted") == "auto-replied"
    assert reply.get_header("In-Reply-To") == "<m1@remote.example>"
    assert reply.get_header("Subject") == "Away" and reply.get_header("From") == BOB
    assert b"Back on Monday." in reply.content
    assert len(folder(harness, BOB)) == 1             # vacation keeps the mail
    assert harness.process(PROCESSOR, harness.mail(MESSAGE)).sent == []   # once per period
    other = harness.process(PROCESSOR, harness.mail(MESSAGE, sender="eve@remote.example"))
    assert len(other.sent) == 1
    listed = MESSAGE.replace(b"X-Spam-Flag", b"List-Id: <x.lists.example>\r\nX-Spam-Flag")
    assert harness.process(PROCESSOR, harness.mail(listed, sender="zed@remote.example")).sent == []


def test_vacation_only_for_mail_naming_the_user(harness):
    script_for(harness, BOB, 'require "vacation"; vacation "away";')
    blind = MESSAGE.replace(b"To: Bob <bob@local.test>", b"To: someone@else.example")
    result = harness.process(PROCESSOR, harness.mail(blind))
    assert result.sent == []
    assert any("not named in To, Cc or Bcc" in line for line in result.logs)


def test_without_a_script_the_mail_is_untouched(harness):
    mail = harness.mail(MESSAGE)
    run = harness.service(harness.mailet("Sieve"), mail)
    assert run.sent == [] and not any(k.startswith("DeliveryPath") for k in mail.attributes)
    assert mail.recipients == [BOB]


def test_local_delivery_honours_the_storage_directive_and_retries_only_unwritten_folders(harness):
    mailboxes = harness.stores.mailboxes
    open(os.path.join(mailboxes.ensure(BOB), ".Broken"), "w").close()   # cannot be a folder
    mail = harness.mail(MESSAGE, recipients=[BOB, CAROL], attributes={
        f"DeliveryPaths_{BOB}": ["INBOX", "Work", "Broken", "work"],
        f"DeliveryPath_{CAROL}": "Lists.python"})
    result = harness.process('<processor state="root"><mailet match="All" class="LocalDelivery"/>'
                             '</processor>', mail)
    assert len(folder(harness, BOB)) == 1 and len(folder(harness, BOB, "Work")) == 1
    assert len(folder(harness, CAROL, "Lists/python")) == 1 and folder(harness, CAROL) == []
    [retry] = result.sent
    assert retry.recipients == [BOB] and retry.attributes[f"DeliveryPaths_{BOB}"] == ["Broken"]
