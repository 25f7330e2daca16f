"""The durable directory spool: round trips, failure paths, memory bound, concurrency."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
import time
import tracemalloc

import pytest
import trio
import trio.testing

from chainmail.store import spool as spool_mod
from chainmail.store.spool import (
    BUFFER_LIMIT,
    DirectorySpool,
    Envelope,
    QueuedMessage,
    SpoolFormatError,
)


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

    assert _files(spool) == ([], [msg_id])
    [listed] = spool.list()
    got = spool.get(msg_id)
    assert listed == got
    assert isinstance(got, QueuedMessage)
    assert got.id == msg_id
    assert got.envelope == env
    assert got.envelope.sender == ""
    assert got.envelope.mail_params["SMTPUTF8"] is None
    assert got.size == len(body)
    assert got.path == os.path.join(spool.queue_dir, msg_id)
    assert before <= got.queued_at <= time.time()
    with spool.open_body(msg_id) as f:
        assert f.read() == body
        assert f.read() == b""
        f.seek(5)
        assert f.read(6) == body[5:11]


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


async def test_empty_body(spool):
    w = spool.open_writer()
    msg_id = await w.commit(_envelope())
    assert spool.get(msg_id).size == 0
    with spool.open_body(msg_id) as f:
        assert f.read() == b""


async def test_file_format_is_body_then_trailer_then_footer(spool):
    body = b"hello\r\n"
    w = spool.open_writer()
    msg_id = await w.commit(_envelope(sender="s@example.org"))  # empty first
    raw = open(spool.get(msg_id).path, "rb").read()
    assert raw.endswith(b"\n")
    w = spool.open_writer()
    w.write(body)
    msg_id = await w.commit(_envelope(sender="s@example.org"))
    raw = open(spool.get(msg_id).path, "rb").read()
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
    big.write(b"y" * (BUFFER_LIMIT + 1))
    assert os.listdir(spool.tmp_dir) == [big.id]  # flushed to its temp file
    big.abort()
    big.abort()  # idempotent
    never = spool.open_writer()
    never.abort()
    assert _files(spool) == ([], [])
    with pytest.raises(RuntimeError):
        big.write(b"more")
    with pytest.raises(RuntimeError):
        await big.commit(_envelope())
    assert _files(spool) == ([], [])


async def test_exception_mid_write_then_abort_leaves_nothing(spool):
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with spool.open_writer() as w:
            for _ in range(5):
                w.write(os.urandom(100_000))
            raise Boom
    assert _files(spool) == ([], [])


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


async def test_50_concurrent_commits_all_durable_and_listed(spool):
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
    # A fresh instance (as after a restart) reads every message back.
    again = DirectorySpool(spool.root)
    assert again.recover() == 0
    for m in again.list():
        with again.open_body(m.id) as f:
            assert f.read() == results[m.id]
        assert m.envelope.sender.startswith("s")


async def test_concurrent_commits_share_directory_fsyncs(spool, monkeypatch):
    calls = []
    real = spool_mod._sync_dir

    def counting(path):
        calls.append(path)
        real(path)

    monkeypatch.setattr(spool_mod, "_sync_dir", counting)

    async def one():
        w = spool.open_writer()
        w.write(b"x" * 1024)
        await w.commit(_envelope())

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(one)
    assert len(spool.ids()) == 50
    assert 1 <= len(calls) < 50


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


async def test_commit_cancelled_before_start_aborts(spool):
    w = spool.open_writer()
    w.write(b"x" * (BUFFER_LIMIT + 10))
    with trio.CancelScope() as scope:
        scope.cancel()
        await w.commit(_envelope())
    assert scope.cancelled_caught
    assert _files(spool) == ([], [])


# ------------------------------------------------------------------- recovery


async def test_recover_removes_tmp_leftovers(tmp_path):
    root = tmp_path / "spool"
    spool = DirectorySpool(root)
    kept = spool.open_writer()
    kept.write(b"accepted")
    kept_id = await kept.commit(_envelope())
    crashed = spool.open_writer()
    crashed.write(b"z" * (BUFFER_LIMIT + 1))  # on disk in tmp/, never committed
    (root / "tmp" / "stray").write_bytes(b"partial")
    os.close(crashed._fd)  # the process "dies": no abort
    crashed._fd = None

    restarted = DirectorySpool(root)
    assert restarted.recover() == 2
    assert restarted.recover() == 0
    assert _files(restarted) == ([], [kept_id])
    with restarted.open_body(kept_id) as f:
        assert f.read() == b"accepted"


# ------------------------------------------------------------ failure paths


async def test_commit_into_missing_queue_dir_raises_and_leaves_nothing(spool):
    os.rmdir(spool.queue_dir)
    for size in (10, BUFFER_LIMIT * 2):
        w = spool.open_writer()
        w.write(b"q" * size)
        with pytest.raises(OSError):
            await w.commit(_envelope())
        assert os.listdir(spool.tmp_dir) == []


async def test_missing_tmp_dir_fails_at_commit_not_write(spool):
    os.rmdir(spool.tmp_dir)
    w = spool.open_writer()
    w.write(b"a" * (BUFFER_LIMIT + 1))  # cannot create its file: kept, not raised
    assert isinstance(w.error, FileNotFoundError)
    w.write(b"more")  # the server keeps reading DATA
    assert w.size == BUFFER_LIMIT + 5
    assert w.buffered == 0
    with pytest.raises(FileNotFoundError):
        await w.commit(_envelope())
    assert os.listdir(spool.queue_dir) == []


@pytest.mark.parametrize("size", [100, BUFFER_LIMIT * 3])
async def test_enospc_while_writing_raises_at_commit_and_leaves_nothing(spool, monkeypatch, size):
    def full(fd, parts):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_mod, "_write_all", full)
    w = spool.open_writer()
    for _ in range(3):
        w.write(b"d" * size)
    with pytest.raises(OSError) as info:
        await w.commit(_envelope())
    assert info.value.errno == errno.ENOSPC
    assert _files(spool) == ([], [])


async def test_read_only_queue_raises_and_leaves_nothing(spool, monkeypatch):
    def erofs(src, dst):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(spool_mod.os, "rename", erofs)
    w = spool.open_writer()
    w.write(b"r" * (BUFFER_LIMIT + 1))
    with pytest.raises(OSError) as info:
        await w.commit(_envelope())
    assert info.value.errno == errno.EROFS
    monkeypatch.undo()
    assert _files(spool) == ([], [])


async def test_file_fsync_failure_raises_and_leaves_nothing(spool, monkeypatch):
    def eio(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool_mod, "_sync_file", eio)
    w = spool.open_writer()
    w.write(b"f")
    with pytest.raises(OSError):
        await w.commit(_envelope())
    assert _files(spool) == ([], [])


@pytest.mark.parametrize("concurrent", [1, 20])
async def test_directory_fsync_failure_raises_and_unqueues(spool, monkeypatch, concurrent):
    def eio(path):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool_mod, "_sync_dir", eio)
    failures = []

    async def one():
        w = spool.open_writer()
        w.write(b"m" * 500)
        try:
            await w.commit(_envelope())
        except OSError as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrent):
            nursery.start_soon(one)
    assert len(failures) == concurrent
    assert _files(spool) == ([], [])


async def test_unserialisable_envelope_raises_and_leaves_nothing(spool):
    w = spool.open_writer()
    w.write(b"x" * (BUFFER_LIMIT + 1))
    with pytest.raises(TypeError):
        await w.commit(_envelope(attributes={"obj": object()}))
    assert _files(spool) == ([], [])


# ------------------------------------------------------------- ids and modes


def test_ids_unique_and_sortable():
    ids = [spool_mod.new_id() for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(spool_mod._ID_RE.fullmatch(i) for i in ids)


async def test_writer_ids_sort_in_arrival_order_and_files_are_0600(spool):
    writers = [spool.open_writer() for _ in range(5)]
    assert [w.id for w in writers] == sorted(w.id for w in writers)
    writers[0].write(b"t" * (BUFFER_LIMIT + 1))
    tmp_file = os.path.join(spool.tmp_dir, writers[0].id)
    assert stat.S_IMODE(os.stat(tmp_file).st_mode) == 0o600
    for w in reversed(writers):
        w.write(b"body")
        await w.commit(_envelope())
    assert spool.ids() == [w.id for w in writers]
    for m in spool.list():
        assert stat.S_IMODE(os.stat(m.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(spool.queue_dir).st_mode) == 0o700


# ------------------------------------------------------- reading and removal


async def test_get_unknown_and_malformed_ids(spool):
    with pytest.raises(KeyError):
        spool.get("0123456789ab-00000000000000000000")
    with pytest.raises(KeyError):
        spool.get("../../etc/passwd")
    with pytest.raises(KeyError):
        spool.open_body("nope")
    with pytest.raises(KeyError):
        spool.remove("0123456789ab-00000000000000000000")


async def test_remove_is_durable_and_final(spool):
    ids = []
    for i in range(3):
        w = spool.open_writer()
        w.write(b"%d" % i)
        ids.append(await w.commit(_envelope()))
    spool.remove(ids[1])
    assert [m.id for m in spool.list()] == [ids[0], ids[2]]
    with pytest.raises(KeyError):
        spool.get(ids[1])


async def test_corrupt_file_is_skipped_by_list_and_refused_by_get(spool, caplog):
    w = spool.open_writer()
    w.write(b"good")
    good = await w.commit(_envelope())
    bad = spool_mod.new_id()
    with open(os.path.join(spool.queue_dir, bad), "wb") as f:
        f.write(b"truncated garbage")
    with open(os.path.join(spool.queue_dir, "README"), "wb") as f:
        f.write(b"not a message")
    with caplog.at_level(logging.WARNING, logger="chainmail.store.spool"):
        assert [m.id for m in spool.list()] == [good]
    assert bad in caplog.text
    with pytest.raises(SpoolFormatError):
        spool.get(bad)


async def test_open_writer_after_aclose_raises(spool):
    await spool.aclose()
    with pytest.raises(RuntimeError):
        spool.open_writer()
