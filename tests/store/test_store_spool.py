"""The durable spool: round trips, failure paths, memory bound, concurrency, the segment
log's crash and damage handling, removal and segment deletion."""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import logging
import os
import pkgutil
import stat
import struct
import time
import tracemalloc
import zlib

import pytest
import trio
import trio.testing

from chainmail.store import spool as spool_mod
from chainmail.store.durable import sync_dir
from chainmail.store.spool import fileio
from chainmail.store.spool.record import _ID_RE
from chainmail.store.spool import (
    BUFFER_LIMIT,
    DirectorySpool,
    Envelope,
    QueuedMessage,
    SpoolFormatError,
)

BIG = BUFFER_LIMIT + 1  # the smallest message that goes to queue/ instead of a segment

_SPOOL_MODULES = [
    importlib.import_module(f"{spool_mod.__name__}.{m.name}")
    for m in pkgutil.iter_modules(spool_mod.__path__)
]


def _patch(monkeypatch, name, value):
    """Replace ``name`` in every spool module that uses it (each holds its own binding)."""
    holders = [m for m in _SPOOL_MODULES if hasattr(m, name)]
    assert holders, name
    for module in holders:
        monkeypatch.setattr(module, name, value)


def _envelope(**overrides):
    fields = dict(
        sender="",
        recipients=["alice@example.org", "bob@example.net"],
        mail_params={"SIZE": "1234", "BODY": "8BITMIME", "SMTPUTF8": None},
        rcpt_params=[{"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;alice@example.org"}, {}],
        attributes={
            "remote_addr": "192.0.2.7",
            "remote_port": 51234,
            "helo": "client.example",
            "helo_mode": "EHLO",
            "session_id": "S1",
            "tls_protocol": None,
            "auth_user": "jöhn",
            "relaying_allowed": False,
            "server_name": "mx.example.org",
        },
        state="root",
        error_count=0,
    )
    fields.update(overrides)
    return Envelope(**fields)


def _files(spool: DirectorySpool) -> tuple[list[str], list[str]]:
    return sorted(os.listdir(spool.tmp_dir)), sorted(os.listdir(spool.queue_dir))


def _segments(spool: DirectorySpool) -> list[str]:
    return sorted(os.listdir(spool.segments_dir))


def _segment_paths(spool: DirectorySpool) -> list[str]:
    return [os.path.join(spool.segments_dir, n) for n in _segments(spool)]


async def _commit(spool: DirectorySpool, body: bytes, **env) -> str:
    w = spool.open_writer()
    w.write(body)
    return await w.commit(_envelope(**env))


def _reopen(spool: DirectorySpool, **kwargs) -> DirectorySpool:
    """A new instance on the same directory, as after a restart (or another process)."""
    return DirectorySpool(spool.root, **kwargs)


async def _crash(spool: DirectorySpool) -> None:
    """Let go of the segment the instance appends to, as a process that dies does."""
    await spool.aclose()


@pytest.fixture
def spool(tmp_path):
    return DirectorySpool(tmp_path / "spool")


# ---------------------------------------------------------------- round trips


async def test_roundtrip_envelope_and_body_exact(spool):
    body = b"Subject: hi\r\n\r\n.leading dot kept\r\nbinary \x00\xff\r\n"
    env = _envelope()
    before = time.time()
    w = spool.open_writer()
    w.write(body[:10])
    w.write(memoryview(body)[10:20])
    w.write(bytearray(body[20:]))
    assert w.size == len(body)
    msg_id = await w.commit(env)
    assert msg_id == w.id

    assert _files(spool) == ([], [])
    [segment] = _segment_paths(spool)
    [listed] = spool.list()
    got = spool.get(msg_id)
    assert listed == got
    assert isinstance(got, QueuedMessage)
    assert got.id == msg_id
    assert got.envelope == env
    assert got.envelope.sender == ""
    assert got.envelope.mail_params["SMTPUTF8"] is None
    assert got.size == len(body)
    assert got.path == segment
    with open(got.path, "rb") as f:
        f.seek(got.offset)
        assert f.read(got.size) == body
    assert before <= got.queued_at <= time.time()
    with spool.open_body(msg_id) as f:
        assert f.read() == body
        assert f.read() == b""
        f.seek(5)
        assert f.read(6) == body[5:11]
    again = _reopen(spool)
    assert again.get(msg_id) == got


async def test_roundtrip_body_larger_than_buffer_in_odd_chunks(spool):
    chunks = [os.urandom(n) for n in (1, 1000, BUFFER_LIMIT - 7, 3, BUFFER_LIMIT * 2 + 5, 77)]
    body = b"".join(chunks)
    w = spool.open_writer()
    for c in chunks:
        w.write(c)
        assert w.buffered <= BUFFER_LIMIT
    msg_id = await w.commit(_envelope(sender="a@example.org"))
    with spool.open_body(msg_id) as f:
        assert f.read() == body
    assert spool.get(msg_id).size == len(body)
    assert spool.get(msg_id).path == os.path.join(spool.queue_dir, msg_id)


async def test_message_of_exactly_the_buffer_limit_is_a_segment_record(spool):
    body = os.urandom(BUFFER_LIMIT)
    small = await _commit(spool, body)
    big = await _commit(spool, body + b"!")
    assert _files(spool) == ([], [big])
    assert spool.get(small).path == _segment_paths(spool)[0]
    with spool.open_body(small) as f:
        assert f.read() == body
    with spool.open_body(big) as f:
        assert f.read() == body + b"!"
    assert spool.ids() == [small, big]


async def test_empty_body(spool):
    w = spool.open_writer()
    msg_id = await w.commit(_envelope())
    assert spool.get(msg_id).size == 0
    with spool.open_body(msg_id) as f:
        assert f.read() == b""


async def test_segment_record_format(spool):
    body = b"hello\r\n"
    msg_id = await _commit(spool, body, sender="s@example.org")
    gone = await _commit(spool, b"x")
    spool.remove(gone)
    [path] = _segment_paths(spool)
    raw = open(path, "rb").read()
    magic, version, kind, ref, meta_len, body_len, raw_id, body_crc = struct.unpack_from(
        "<4sBBxQII33sI", raw
    )
    (head_crc,) = struct.unpack_from("<I", raw, 60)
    assert (magic, version, kind, ref) == (b"CMSR", 1, ord("M"), 0)
    assert raw_id.decode() == msg_id
    meta = raw[64 : 64 + meta_len]
    assert raw[64 + meta_len : 64 + meta_len + body_len] == body
    assert body_crc == zlib.crc32(body)
    assert head_crc == zlib.crc32(meta, zlib.crc32(raw[:60]))
    doc = json.loads(meta)
    assert doc["id"] == msg_id
    assert doc["envelope"]["sender"] == "s@example.org"
    # second record: the message "x", then its removal record (64 bytes, no meta, no body)
    second = 64 + meta_len + body_len
    _, _, _, _, meta2, body2, _, _ = struct.unpack_from("<4sBBxQII33sI", raw, second)
    removal = raw[second + 64 + meta2 + body2 :]
    # then nothing but the zeros reserved ahead of the next record (cut off at close)
    assert len(removal) >= 64 and removal[64:].count(0) == len(removal) - 64
    removal = removal[:64]
    _, _, kind, ref, m, b, raw_id, _ = struct.unpack_from("<4sBBxQII33sI", removal)
    assert (kind, m, b, raw_id.decode()) == (ord("D"), 0, 0, gone)
    assert ref == int(os.path.basename(path)[:16], 16)


async def test_large_message_file_format_is_body_then_trailer_then_footer(spool):
    body = b"h" * BIG
    msg_id = await _commit(spool, body, sender="s@example.org")
    path = spool.get(msg_id).path
    assert path == os.path.join(spool.queue_dir, msg_id)
    raw = open(path, "rb").read()
    footer = raw[-40:]
    assert footer.startswith(b"\nCMSPOOL 0001 ")
    magic, version, body_len, trailer_len = footer[1:-1].split(b" ")
    assert magic == b"CMSPOOL"
    assert int(version) == 1
    assert int(body_len, 16) == len(body)
    assert raw[: len(body)] == body
    trailer = json.loads(raw[len(body) : len(body) + int(trailer_len, 16)])
    assert trailer["id"] == msg_id
    assert trailer["envelope"]["sender"] == "s@example.org"


# ------------------------------------------------------------------- aborting


async def test_abort_leaves_nothing_small_and_flushed(spool):
    small = spool.open_writer()
    small.write(b"x" * 100)
    small.abort()
    big = spool.open_writer()
    big.write(b"y" * BIG)
    assert os.listdir(spool.tmp_dir) == [big.id]  # flushed to its temp file
    big.abort()
    big.abort()  # idempotent
    never = spool.open_writer()
    never.abort()
    assert _files(spool) == ([], [])
    assert _segments(spool) == []
    with pytest.raises(RuntimeError):
        big.write(b"more")
    with pytest.raises(RuntimeError):
        await big.commit(_envelope())
    assert _files(spool) == ([], [])
    assert _segments(spool) == []


async def test_exception_mid_write_then_abort_leaves_nothing(spool):
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with spool.open_writer() as w:
            for _ in range(5):
                w.write(os.urandom(100_000))
            raise Boom
    assert _files(spool) == ([], [])
    assert _segments(spool) == []


async def test_abort_after_commit_is_a_no_op(spool):
    with spool.open_writer() as w:
        w.write(b"kept")
        msg_id = await w.commit(_envelope())
    w.abort()
    assert spool.ids() == [msg_id]
    with pytest.raises(RuntimeError):
        await w.commit(_envelope())


# -------------------------------------------------------------- memory bound


async def test_50_mb_body_keeps_writer_memory_bounded(spool):
    chunk_size = 64 * 1024
    total = 50 * 1024 * 1024
    digest = hashlib.sha256()
    w = spool.open_writer()
    tracemalloc.start()
    try:
        for i in range(total // chunk_size):
            chunk = i.to_bytes(4, "big") * (chunk_size // 4)
            digest.update(chunk)
            w.write(chunk)
            assert w.buffered <= BUFFER_LIMIT
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, f"writer held {peak} bytes"
    msg_id = await w.commit(_envelope())
    got = spool.get(msg_id)
    assert got.size == total
    check = hashlib.sha256()
    with spool.open_body(msg_id) as f:
        while block := f.read(1 << 20):
            check.update(block)
    assert check.hexdigest() == digest.hexdigest()


# ---------------------------------------------------------------- concurrency


async def test_50_concurrent_commits_all_durable_and_listed(spool, monkeypatch):
    syncs = []
    real = fileio._sync_file

    def counting(fd):
        syncs.append(fd)
        real(fd)

    _patch(monkeypatch, "_sync_file", counting)
    results: dict[str, bytes] = {}

    async def one(i: int) -> None:
        body = f"message {i}\r\n".encode() * (i * 997 % 5000 + 1)
        w = spool.open_writer()
        for start in range(0, len(body), 4096):
            w.write(body[start : start + 4096])
            await trio.sleep(0)
        msg_id = await w.commit(_envelope(sender=f"s{i}@example.org"))
        results[msg_id] = body

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(one, i)

    assert len(results) == 50
    listed = spool.list()
    assert [m.id for m in listed] == sorted(results)
    assert os.listdir(spool.tmp_dir) == []
    assert len(_segments(spool)) == 1
    assert 1 <= len(syncs) < 50  # group commit: fdatasyncs are shared
    # A fresh instance (as after a restart) reads every message back.
    await _crash(spool)
    again = _reopen(spool)
    assert again.recover() == 0
    assert [m.id for m in again.list()] == sorted(results)
    for m in again.list():
        with again.open_body(m.id) as f:
            assert f.read() == results[m.id]
        assert m.envelope.sender.startswith("s")


async def test_lone_commit_is_one_thread_hop(spool, monkeypatch):
    hops = []
    real = trio.to_thread.run_sync

    async def counting(fn, *args, **kwargs):
        hops.append(fn)
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(trio.to_thread, "run_sync", counting)
    for _ in range(3):
        await _commit(spool, b"x" * 1000)
    assert len(hops) == 3


async def test_concurrent_large_commits_share_directory_fsyncs(spool, monkeypatch):
    calls = []
    real = sync_dir

    def counting(path):
        calls.append(path)
        real(path)

    _patch(monkeypatch, "_sync_dir", counting)

    async def one():
        w = spool.open_writer()
        w.write(b"x" * BIG)
        await w.commit(_envelope())

    async with trio.open_nursery() as nursery:
        for _ in range(30):
            nursery.start_soon(one)
    assert len(spool.ids()) == 30
    assert 1 <= calls.count(spool.queue_dir) < 30


async def test_commit_is_shielded_once_started(spool):
    w = spool.open_writer()
    w.write(b"body")
    done = []

    async def commit():
        done.append(await w.commit(_envelope()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(commit)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert done == [w.id]
    assert spool.ids() == [w.id]


@pytest.mark.parametrize("size", [10, BIG])
async def test_commit_cancelled_before_start_aborts(spool, size):
    w = spool.open_writer()
    w.write(b"x" * size)
    with trio.CancelScope() as scope:
        scope.cancel()
        await w.commit(_envelope())
    assert scope.cancelled_caught
    assert _files(spool) == ([], [])
    assert spool.ids() == []


async def test_appends_from_threads_and_the_event_loop_do_not_interleave(spool):
    # Removals may be appended from worker threads while commits append on the loop.
    ids = [await _commit(spool, b"r%d" % i) for i in range(40)]

    async def remover(chunk):
        for msg_id in chunk:
            await trio.to_thread.run_sync(spool.remove, msg_id)

    kept = []

    async def committer():
        for i in range(40):
            kept.append(await _commit(spool, b"k%d" % i * 50))

    async with trio.open_nursery() as nursery:
        for k in range(4):
            nursery.start_soon(remover, ids[k::4])
        nursery.start_soon(committer)
    assert spool.ids() == sorted(kept)
    await _crash(spool)
    again = _reopen(spool)
    assert again.ids() == sorted(kept)
    for msg_id in kept[:3]:
        with again.open_body(msg_id) as f:
            assert f.read().startswith(b"k")


# ------------------------------------------------------------------- recovery


async def test_recover_removes_tmp_leftovers(tmp_path):
    root = tmp_path / "spool"
    spool = DirectorySpool(root)
    kept = spool.open_writer()
    kept.write(b"accepted")
    kept_id = await kept.commit(_envelope())
    crashed = spool.open_writer()
    crashed.write(b"z" * BIG)  # on disk in tmp/, never committed
    (root / "tmp" / "stray").write_bytes(b"partial")
    os.close(crashed._fd)  # the process "dies": no abort
    crashed._fd = None
    await _crash(spool)

    restarted = DirectorySpool(root)
    assert restarted.recover() == 2
    assert restarted.recover() == 0
    assert _files(restarted) == ([], [])
    assert restarted.ids() == [kept_id]
    with restarted.open_body(kept_id) as f:
        assert f.read() == b"accepted"


async def test_segment_space_is_reserved_ahead_and_given_back_at_close(spool):
    ids = [await _commit(spool, b"message %d\r\n" % i) for i in range(3)]
    [path] = _segment_paths(spool)
    data = open(path, "rb").read()
    end = len(data.rstrip(b"\0"))
    assert len(data) >= end + spool_mod.PREALLOCATE // 2     # allocated ahead of the records
    assert _reopen(spool).ids() == ids                        # another reader sees them all
    await spool.aclose()
    assert os.path.getsize(path) == end                       # nothing reserved is left


async def test_reserved_space_left_by_a_crash_is_not_an_interrupted_write(spool, caplog):
    ids = [await _commit(spool, b"message %d\r\n" % i) for i in range(3)]
    [path] = _segment_paths(spool)
    await _crash(spool)
    # A process killed while appending leaves its reservation: zeros after the last record.
    os.truncate(path, os.path.getsize(path) + spool_mod.PREALLOCATE)
    with caplog.at_level(logging.INFO, logger="chainmail.store.spool"):
        again = _reopen(spool)
        assert again.ids() == ids
    assert "interrupted write" not in caplog.text and "unreadable" not in caplog.text
    new = await _commit(again, b"after")
    assert again.get(new).path != path and again.ids() == [*ids, new]


async def test_restart_never_appends_to_an_old_segment(spool):
    first = await _commit(spool, b"one")
    [old_path] = _segment_paths(spool)
    await _crash(spool)
    old_size = os.path.getsize(old_path)
    again = _reopen(spool)
    again.recover()
    second = await _commit(again, b"two")
    assert os.path.getsize(old_path) == old_size
    assert len(_segments(again)) == 2
    assert again.ids() == [first, second]


async def test_torn_tail_is_ignored_and_earlier_records_are_intact(spool, caplog):
    ids = [await _commit(spool, b"message %d\r\n" % i * 20) for i in range(3)]
    [path] = _segment_paths(spool)
    third = spool.get(ids[2])
    await _crash(spool)
    # The crash cut the last append short: keep half of its body.
    os.truncate(path, third.offset + third.size // 2)
    with caplog.at_level(logging.INFO, logger="chainmail.store.spool"):
        again = _reopen(spool)
    assert "interrupted write" in caplog.text
    assert again.ids() == ids[:2]
    for i, msg_id in enumerate(ids[:2]):
        with again.open_body(msg_id) as f:
            assert f.read() == b"message %d\r\n" % i * 20
    # New commits go to a new segment: nothing is written after the torn tail.
    new = await _commit(again, b"after")
    assert again.get(new).path != path
    assert os.path.getsize(path) == third.offset + third.size // 2
    await _crash(again)
    assert _reopen(spool).ids() == [*ids[:2], new]


@pytest.mark.parametrize("cut", [1, 30, 63, 64, 100])
async def test_tail_torn_inside_the_header_or_envelope(spool, cut):
    ids = [await _commit(spool, b"b%d" % i) for i in range(2)]
    [path] = _segment_paths(spool)
    first = spool.get(ids[0])
    start = first.offset + first.size  # where the second record's header begins
    await _crash(spool)
    os.truncate(path, start + cut)
    assert _reopen(spool).ids() == ids[:1]


async def test_zero_filled_tail_is_ignored(spool):
    # After a crash, ext4 can show a grown file whose last blocks read as zeros.
    ids = [await _commit(spool, b"z%d" % i) for i in range(2)]
    [path] = _segment_paths(spool)
    await _crash(spool)
    with open(path, "ab") as f:
        f.write(b"\0" * 5000)
    assert _reopen(spool).ids() == ids


async def test_record_with_a_flipped_body_byte_is_skipped(spool, caplog):
    ids = [await _commit(spool, b"body %d\r\n" % i * 10) for i in range(3)]
    [path] = _segment_paths(spool)
    victim = spool.get(ids[1])
    await _crash(spool)
    with open(path, "r+b") as f:
        f.seek(victim.offset + 3)
        byte = f.read(1)
        f.seek(victim.offset + 3)
        f.write(bytes([byte[0] ^ 0x01]))
    with caplog.at_level(logging.WARNING, logger="chainmail.store.spool"):
        again = _reopen(spool)
    assert again.ids() == [ids[0], ids[2]]
    assert "CRC" in caplog.text and ids[1] in caplog.text
    with again.open_body(ids[2]) as f:
        assert f.read() == b"body 2\r\n" * 10


async def test_record_with_a_flipped_envelope_byte_is_skipped(spool, caplog):
    ids = [await _commit(spool, b"body %d" % i, sender=f"s{i}@example.org") for i in range(3)]
    [path] = _segment_paths(spool)
    await _crash(spool)
    raw = bytearray(open(path, "rb").read())
    where = raw.index(b"s1@example.org")
    raw[where] ^= 0x20
    open(path, "wb").write(raw)
    with caplog.at_level(logging.WARNING, logger="chainmail.store.spool"):
        again = _reopen(spool)
    assert again.ids() == [ids[0], ids[2]]
    assert "header CRC" in caplog.text


async def test_damage_that_hides_later_records_keeps_the_segment(spool, caplog):
    ids = [await _commit(spool, b"body %d" % i) for i in range(3)]
    [path] = _segment_paths(spool)
    second = spool.get(ids[1])
    first = spool.get(ids[0])
    header_of_second = first.offset + first.size
    await _crash(spool)
    with open(path, "r+b") as f:  # the magic of the second record: its length is lost
        f.seek(header_of_second)
        f.write(b"XXXX")
    with caplog.at_level(logging.ERROR, logger="chainmail.store.spool"):
        again = _reopen(spool)
    assert again.ids() == [ids[0]]
    assert "unreadable record" in caplog.text
    assert second.id not in again.ids()
    # Once its readable messages are removed, the file is set aside rather than deleted.
    again.remove(ids[0])
    await _crash(again)
    third = _reopen(spool)
    third.recover()
    assert os.path.basename(path) + ".damaged" in _segments(third)
    assert os.path.basename(path) not in _segments(third)


# ------------------------------------------------------------ failure paths


async def test_commit_into_missing_directories_raises_and_leaves_nothing(spool):
    os.rmdir(spool.queue_dir)
    os.rmdir(spool.segments_dir)
    for size in (10, BUFFER_LIMIT * 2):
        w = spool.open_writer()
        w.write(b"q" * size)
        with pytest.raises(OSError):
            await w.commit(_envelope())
        assert os.listdir(spool.tmp_dir) == []


async def test_missing_tmp_dir_fails_at_commit_not_write(spool):
    os.rmdir(spool.tmp_dir)
    w = spool.open_writer()
    w.write(b"a" * BIG)  # cannot create its file: kept, not raised
    assert isinstance(w.error, FileNotFoundError)
    w.write(b"more")  # the server keeps reading DATA
    assert w.size == BUFFER_LIMIT + 5
    assert w.buffered == 0
    with pytest.raises(FileNotFoundError):
        await w.commit(_envelope())
    assert os.listdir(spool.queue_dir) == []
    assert spool.ids() == []


@pytest.mark.parametrize("size", [100, BUFFER_LIMIT * 3])
async def test_enospc_while_writing_raises_at_commit_and_leaves_nothing(spool, monkeypatch, size):
    def full(fd, parts):
        raise OSError(errno.ENOSPC, "No space left on device")

    _patch(monkeypatch, "_write_all", full)
    w = spool.open_writer()
    for _ in range(3):
        w.write(b"d" * size)
    with pytest.raises(OSError) as info:
        await w.commit(_envelope())
    assert info.value.errno == errno.ENOSPC
    assert _files(spool) == ([], [])
    assert spool.list() == []
    assert all(os.path.getsize(p) == 0 for p in _segment_paths(spool))
    monkeypatch.undo()
    await _crash(spool)
    assert _reopen(spool).list() == []


async def test_partial_append_is_cut_off_and_the_segment_goes_on(spool, monkeypatch):
    first = await _commit(spool, b"first")
    [path] = _segment_paths(spool)
    size = len(open(path, "rb").read().rstrip(b"\0"))   # the record, not the reserved space
    real = fileio._write_all

    def half_then_full(fd, parts):
        data = b"".join(parts)
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    _patch(monkeypatch, "_write_all", half_then_full)
    with pytest.raises(OSError):
        await _commit(spool, b"second" * 100)
    assert os.path.getsize(path) == size
    _patch(monkeypatch, "_write_all", real)
    third = await _commit(spool, b"third")
    assert _segment_paths(spool) == [path]
    await _crash(spool)
    again = _reopen(spool)
    assert again.ids() == [first, third]
    with again.open_body(third) as f:
        assert f.read() == b"third"


async def test_read_only_queue_raises_and_leaves_nothing(spool, monkeypatch):
    def erofs(src, dst):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "rename", erofs)
    w = spool.open_writer()
    w.write(b"r" * BIG)
    with pytest.raises(OSError) as info:
        await w.commit(_envelope())
    assert info.value.errno == errno.EROFS
    monkeypatch.undo()
    assert _files(spool) == ([], [])


@pytest.mark.parametrize("size", [1, BIG])
async def test_file_fsync_failure_raises_and_leaves_nothing(spool, monkeypatch, size):
    def eio(fd):
        raise OSError(errno.EIO, "Input/output error")

    _patch(monkeypatch, "_sync_file", eio)
    w = spool.open_writer()
    w.write(b"f" * size)
    with pytest.raises(OSError):
        await w.commit(_envelope())
    assert _files(spool) == ([], [])
    assert spool.list() == []
    monkeypatch.undo()
    await _crash(spool)
    assert _reopen(spool).list() == []


@pytest.mark.parametrize("concurrent", [1, 20])
async def test_segment_fdatasync_failure_fails_its_commits_and_rotates(spool, monkeypatch, concurrent):
    kept = await _commit(spool, b"durable before the failure")
    [first_segment] = _segment_paths(spool)
    real = fileio._sync_file
    fail = [True]

    def eio_once(fd):
        if fail:
            fail.clear()
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    _patch(monkeypatch, "_sync_file", eio_once)
    failures = []

    async def one():
        try:
            await _commit(spool, b"m" * 500)
        except OSError as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrent):
            nursery.start_soon(one)
    assert len(failures) == concurrent
    assert spool.ids() == [kept]
    # The failed segment is not used again: later commits go to a new one, which also
    # holds removal records cancelling the failed messages.
    after = await _commit(spool, b"after")
    assert spool.get(after).path != first_segment
    assert spool.ids() == [kept, after]
    await _crash(spool)
    again = _reopen(spool)
    assert again.ids() == [kept, after]


@pytest.mark.parametrize("concurrent", [1, 20])
@pytest.mark.parametrize("size", [500, BIG])
async def test_directory_fsync_failure_raises_and_unqueues(spool, monkeypatch, concurrent, size):
    def eio(path):
        raise OSError(errno.EIO, "Input/output error")

    _patch(monkeypatch, "_sync_dir", eio)
    failures = []

    async def one():
        w = spool.open_writer()
        w.write(b"m" * size)
        try:
            await w.commit(_envelope())
        except OSError as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrent):
            nursery.start_soon(one)
    assert len(failures) == concurrent
    assert _files(spool) == ([], [])
    assert spool.list() == []


@pytest.mark.parametrize("size", [10, BIG])
async def test_unserialisable_envelope_raises_and_leaves_nothing(spool, size):
    w = spool.open_writer()
    w.write(b"x" * size)
    with pytest.raises(TypeError):
        await w.commit(_envelope(attributes={"obj": object()}))
    assert _files(spool) == ([], [])
    assert _segments(spool) == []


# ------------------------------------------------------------- ids and modes


def test_ids_unique_and_sortable():
    ids = [spool_mod.new_id() for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(_ID_RE.fullmatch(i) for i in ids)


async def test_writer_ids_sort_in_arrival_order_and_files_are_0600(tmp_path):
    spool = DirectorySpool(tmp_path / "spool", segment_size=2048)
    writers = [spool.open_writer() for _ in range(6)]
    assert [w.id for w in writers] == sorted(w.id for w in writers)
    writers[0].write(b"t" * BIG)
    tmp_file = os.path.join(spool.tmp_dir, writers[0].id)
    assert stat.S_IMODE(os.stat(tmp_file).st_mode) == 0o600
    for w in reversed(writers):
        w.write(b"body" * 300)
        await w.commit(_envelope())
    assert spool.ids() == [w.id for w in writers]
    assert len(_segments(spool)) > 1
    for m in spool.list():
        assert stat.S_IMODE(os.stat(m.path).st_mode) == 0o600
    for root, dirs, files in os.walk(spool.root):
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) == 0o600


# ------------------------------------------------------- reading and removal


async def test_get_unknown_and_malformed_ids(spool):
    await _commit(spool, b"something")
    with pytest.raises(KeyError):
        spool.get("0123456789ab-00000000000000000000")
    with pytest.raises(KeyError):
        spool.get("../../etc/passwd")
    with pytest.raises(KeyError):
        spool.open_body("nope")
    with pytest.raises(KeyError):
        spool.open_body("0123456789ab-00000000000000000000")
    with pytest.raises(KeyError):
        spool.remove("0123456789ab-00000000000000000000")
    with pytest.raises(KeyError):
        await spool.aremove("0123456789ab-00000000000000000000")


async def test_remove_is_durable_and_final(spool):
    ids = [await _commit(spool, b"%d" % i) for i in range(3)]
    big = await _commit(spool, b"B" * BIG)
    spool.remove(ids[1])
    await spool.aremove(big)
    assert [m.id for m in spool.list()] == [ids[0], ids[2]]
    with pytest.raises(KeyError):
        spool.get(ids[1])
    with pytest.raises(KeyError):
        spool.remove(ids[1])
    with pytest.raises(KeyError):
        spool.open_body(ids[1])
    assert _files(spool) == ([], [])
    await _crash(spool)
    again = _reopen(spool)
    assert again.ids() == [ids[0], ids[2]]
    with pytest.raises(KeyError):
        again.get(ids[1])


async def test_concurrent_aremoves_share_fdatasyncs(spool, monkeypatch):
    ids = [await _commit(spool, b"x" * 100) for _ in range(30)]
    syncs = []
    real = fileio._sync_file

    def counting(fd):
        syncs.append(fd)
        real(fd)

    _patch(monkeypatch, "_sync_file", counting)
    async with trio.open_nursery() as nursery:
        for msg_id in ids:
            nursery.start_soon(spool.aremove, msg_id)
    assert spool.ids() == []
    assert 1 <= len(syncs) < 30
    await _crash(spool)
    assert _reopen(spool).ids() == []


async def test_corrupt_file_is_skipped_by_list_and_refused_by_get(spool, caplog):
    w = spool.open_writer()
    w.write(b"good")
    good = await w.commit(_envelope())
    bad = spool_mod.new_id()
    with open(os.path.join(spool.queue_dir, bad), "wb") as f:
        f.write(b"truncated garbage")
    with open(os.path.join(spool.queue_dir, "README"), "wb") as f:
        f.write(b"not a message")
    with open(os.path.join(spool.segments_dir, "README"), "wb") as f:
        f.write(b"not a segment")
    with caplog.at_level(logging.WARNING, logger="chainmail.store.spool"):
        assert [m.id for m in spool.list()] == [good]
    assert bad in caplog.text
    with pytest.raises(SpoolFormatError):
        spool.get(bad)


async def test_open_writer_after_aclose_raises(spool):
    await spool.aclose()
    with pytest.raises(RuntimeError):
        spool.open_writer()


# ------------------------------------------------- segment rotation and deletion


async def test_segments_rotate_at_their_size(tmp_path, monkeypatch):
    dir_syncs = []
    real = sync_dir

    def counting(path):
        dir_syncs.append(path)
        real(path)

    _patch(monkeypatch, "_sync_dir", counting)
    spool = DirectorySpool(tmp_path / "spool", segment_size=8192)
    dir_syncs.clear()
    bodies = {}
    for i in range(20):
        body = os.urandom(1000 + i)
        bodies[await _commit(spool, body)] = body
    paths = _segment_paths(spool)
    assert len(paths) >= 3
    assert all(os.path.getsize(p) <= 8192 for p in paths)
    assert [int(os.path.basename(p)[:16], 16) for p in paths] == list(range(1, len(paths) + 1))
    # One directory fsync per new segment, none per message.
    assert dir_syncs.count(spool.segments_dir) == len(paths)
    # A record larger than a whole segment gets a segment of its own.
    huge = os.urandom(20000)
    bodies[await _commit(spool, huge)] = huge
    await _crash(spool)
    again = _reopen(spool)
    assert again.ids() == sorted(bodies)
    for msg_id, body in bodies.items():
        with again.open_body(msg_id) as f:
            assert f.read() == body


async def test_segments_are_deleted_oldest_first_once_empty(tmp_path):
    spool = DirectorySpool(tmp_path / "spool", segment_size=3000)
    ids = [await _commit(spool, b"%d" % i * 1000) for i in range(7)]
    by_segment: dict[str, list[str]] = {}
    for msg_id in ids:
        by_segment.setdefault(spool.get(msg_id).path, []).append(msg_id)
    segs = sorted(by_segment)
    assert len(segs) >= 4
    first, second, third = segs[0], segs[1], segs[2]
    # Emptying a newer segment deletes nothing while an older one holds a message:
    # that message keeps every newer segment on disk.
    for msg_id in by_segment[second] + by_segment[third]:
        spool.remove(msg_id)
    assert os.path.exists(second) and os.path.exists(third)
    # Emptying the oldest deletes it and the empty ones after it, in order.
    for msg_id in by_segment[first]:
        await spool.aremove(msg_id)
    assert not os.path.exists(first)
    assert not os.path.exists(second)
    assert not os.path.exists(third)
    rest = [i for s in segs[3:] for i in by_segment[s]]
    assert spool.ids() == rest
    await _crash(spool)
    again = _reopen(spool)
    assert again.ids() == rest


async def test_recover_deletes_segments_left_empty(spool):
    ids = [await _commit(spool, b"m%d" % i) for i in range(3)]
    for msg_id in ids:
        spool.remove(msg_id)
    [path] = _segment_paths(spool)  # the current segment is never deleted while in use
    await _crash(spool)
    again = _reopen(spool)
    assert again.recover() == 0
    assert _segments(again) == []
    assert again.ids() == []


async def test_removal_record_is_never_older_than_its_message(tmp_path):
    # Two writers share the directory.  A's segment is older than B's; when A removes
    # a message of B's, the removal must not go into A's older segment, which could be
    # deleted before B's and bring the message back.
    root = tmp_path / "spool"
    a = DirectorySpool(root)
    b = DirectorySpool(root)
    a_msg = await _commit(a, b"from a")
    b_msg = await _commit(b, b"from b")
    a_seg, b_seg = _segment_paths(a)
    assert a.get(a_msg).path == a_seg and b.get(b_msg).path == b_seg
    assert a.ids() == b.ids() == [a_msg, b_msg]  # each reads the other's segment
    a.remove(b_msg)
    assert len(_segments(a)) == 3  # A started a segment newer than B's for the removal
    assert a.ids() == [a_msg]
    assert b.ids() == [a_msg]  # B reads A's removal
    await _crash(a)
    await _crash(b)
    c = DirectorySpool(root)
    c.recover()
    assert c.ids() == [a_msg]
    assert os.path.exists(a_seg)
    c.remove(a_msg)
    assert c.ids() == []
    await _crash(c)
    d = DirectorySpool(root)
    d.recover()
    assert d.ids() == []
    assert _segments(d) == []


async def test_reader_does_not_treat_a_live_writers_tail_as_torn(spool, caplog):
    await _commit(spool, b"one")
    [path] = _segment_paths(spool)
    # Another process reads while a record is only half visible.
    with open(path, "ab") as f:
        f.write(b"CMSR\x01M")
    with caplog.at_level(logging.INFO, logger="chainmail.store.spool"):
        reader = _reopen(spool)
        assert len(reader.ids()) == 1
    assert "interrupted" not in caplog.text
    assert reader._segments[1].final is False
