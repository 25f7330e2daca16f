"""Outgoing queue control from outside the server: queue directories and flush requests."""

from __future__ import annotations

import json
import logging
import os
import time

import pytest

from chainmail.remote.config import RemoteDeliveryConfig
from chainmail.remote.control import (
    FlushRequest,
    consume_flush_requests,
    normalise_domain,
    outgoing_queue_names,
    outgoing_root,
    pending_flush_requests,
    request_flush,
)
from chainmail.remote.dns import DnsService
from chainmail.remote.queue import OutgoingQueue
from chainmail.store.spool import DirectorySpool

MESSAGE = b"Subject: queued\r\n\r\nbody\r\n"


def make_queue(root) -> OutgoingQueue:
    async def bounce(b):
        raise AssertionError("nothing is delivered here")

    return OutgoingQueue(DirectorySpool(root), RemoteDeliveryConfig.from_params({}),
                         DnsService(nameservers=[("127.0.0.1", 9)]), bounce=bounce)


def flush_files(root) -> list[str]:
    return sorted(os.listdir(os.path.join(root, "flush")))


def test_outgoing_root_is_one_directory_per_queue(tmp_path):
    assert outgoing_root(tmp_path, "outgoing") == str(tmp_path / "outgoing" / "outgoing")
    assert outgoing_root(str(tmp_path), "relay-2") == str(tmp_path / "outgoing" / "relay-2")
    for bad in ("", ".", "..", "../spool", "a/b", ".hidden", "nul\0"):
        with pytest.raises(ValueError):
            outgoing_root(tmp_path, bad)


def test_queue_names_are_the_spool_directories(tmp_path):
    assert outgoing_queue_names(tmp_path) == []
    DirectorySpool(outgoing_root(tmp_path, "outgoing"))
    DirectorySpool(outgoing_root(tmp_path, "b-relay"))
    (tmp_path / "outgoing" / "not-a-spool").mkdir()
    (tmp_path / "outgoing" / "file").write_text("x")
    (tmp_path / "outgoing" / ".tmp").mkdir()
    assert outgoing_queue_names(tmp_path) == ["b-relay", "outgoing"]


def test_request_flush_writes_one_whole_file(tmp_path):
    root = outgoing_root(tmp_path, "outgoing")
    DirectorySpool(root)
    before = time.time()
    request = request_flush(root, "Example.COM.")
    assert request.domain == "example.com" and before <= request.at <= time.time()
    [name] = flush_files(root)
    assert name.endswith(".json")
    path = os.path.join(root, "flush", name)
    assert json.loads(open(path, "rb").read()) == {"at": request.at, "domain": "example.com"}
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert request_flush(root).domain is None
    assert len(flush_files(root)) == 2


def test_invalid_domain_writes_nothing(tmp_path):
    for bad in ("", " ", "a@b.example", "two words"):
        with pytest.raises(ValueError):
            request_flush(tmp_path, bad)
    assert not (tmp_path / "flush").exists() or flush_files(tmp_path) == []
    assert normalise_domain("@Example.Org") == "example.org"
    assert normalise_domain(None) is None


def test_consume_reads_in_order_and_deletes(tmp_path):
    first = request_flush(tmp_path)
    second = request_flush(tmp_path, "example.test")
    assert pending_flush_requests(tmp_path) == [first, second]
    assert len(flush_files(tmp_path)) == 2                    # pending leaves them
    assert consume_flush_requests(tmp_path) == [first, second]
    assert flush_files(tmp_path) == []
    assert consume_flush_requests(tmp_path) == []


def test_consume_without_a_flush_directory(tmp_path):
    assert consume_flush_requests(tmp_path) == []
    assert pending_flush_requests(tmp_path / "missing") == []


def test_unreadable_requests_are_deleted_with_a_warning(tmp_path, caplog):
    good = request_flush(tmp_path)
    flush = tmp_path / "flush"
    (flush / "1-bad.json").write_bytes(b"{not json")
    (flush / "2-bad.json").write_text(json.dumps({"at": "yesterday", "domain": None}))
    (flush / "3-bad.json").write_text(json.dumps({"at": 1.0, "domain": 7}))
    (flush / "4-bad.json").write_text(json.dumps([1, 2]))
    assert pending_flush_requests(tmp_path) == [good]
    assert len(flush_files(tmp_path)) == 5                    # only consuming deletes
    with caplog.at_level(logging.WARNING, logger="chainmail.remote.control"):
        assert consume_flush_requests(tmp_path) == [good]
    assert flush_files(tmp_path) == []
    assert sum("malformed flush request" in r.getMessage() for r in caplog.records) == 4


def test_temporary_files_are_left_to_their_writer_unless_stale(tmp_path):
    request_flush(tmp_path)
    fresh = tmp_path / "flush" / "9-fresh.tmp"
    stale = tmp_path / "flush" / "8-stale.tmp"
    fresh.write_text("{")
    stale.write_text("{")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    assert len(consume_flush_requests(tmp_path)) == 1
    assert flush_files(tmp_path) == ["9-fresh.tmp"]


async def test_matches_what_was_queued_before_it_for_its_domain(tmp_path):
    q = make_queue(tmp_path / "outgoing" / "outgoing")
    await q.enqueue("a@local.test", ["x@Example.TEST", "y@other.test"], MESSAGE,
                    next_attempt=time.time() + 3600, retry_count=1, last_error="421 busy")
    await q.enqueue("a@local.test", ["z@third.test"], MESSAGE)
    mixed, third = q.spool.list()
    request = request_flush(q.spool.root)
    assert request.matches(mixed) and request.matches(third)
    by_domain = request_flush(q.spool.root, "EXAMPLE.test")
    assert by_domain.matches(mixed) and not by_domain.matches(third)
    assert FlushRequest(request.at, "other.test").matches(mixed)
    # a retry queued after the request is not flushed again
    await q.enqueue("a@local.test", ["x@example.test"], MESSAGE, retry_count=2)
    later = q.spool.list()[-1]
    assert later.queued_at > request.at and not request.matches(later)
    assert FlushRequest(later.queued_at, None).matches(later)


async def test_a_flush_directory_does_not_disturb_the_spool(tmp_path):
    root = outgoing_root(tmp_path, "outgoing")
    q = make_queue(root)
    kept = await q.enqueue("a@local.test", ["x@example.test"], MESSAGE)
    gone = await q.enqueue("a@local.test", ["y@example.test"], MESSAGE)
    request = request_flush(root, "example.test")
    other = DirectorySpool(root)                 # a second process opening the directory
    assert other.recover() == 0
    assert other.ids() == [kept, gone]
    other.remove(gone)
    assert [e.id for e in q.spool.list()] == [kept]
    with q.spool.open_body(kept) as fh:
        assert fh.read() == MESSAGE
    assert outgoing_queue_names(tmp_path) == ["outgoing"]
    assert consume_flush_requests(root) == [request]
