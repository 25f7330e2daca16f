"""``chainmail queue list|flush|remove`` as a separate process over a prepared var directory."""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from chainmail.remote.config import RemoteDeliveryConfig
from chainmail.remote.control import consume_flush_requests, outgoing_root
from chainmail.remote.dns import DnsService
from chainmail.remote.queue import OutgoingQueue
from chainmail.store.spool import DirectorySpool, Envelope

from ..conftest import CHAINMAIL, ROOT

MESSAGE = b"Subject: q\r\n\r\nbody\r\n"


@dataclass
class Prepared:
    var: Path
    spooled: str        # in <var>/spool
    due: str            # outgoing, next attempt passed
    waiting: str        # outgoing, retried twice, next attempt in 5 minutes, to example.test
    relay: str          # in the second outgoing queue "relay"


async def _enqueue(root: str, sender: str, recipients: list[str], **kwargs) -> str:
    async def bounce(b):
        raise AssertionError("nothing is delivered here")

    queue = OutgoingQueue(DirectorySpool(root), RemoteDeliveryConfig.from_params({}),
                          DnsService(nameservers=[("127.0.0.1", 9)]), bounce=bounce)
    return await queue.enqueue(sender, recipients, MESSAGE, **kwargs)


async def _prepare(var: Path) -> Prepared:
    with DirectorySpool(var / "spool").open_writer() as w:
        w.write(MESSAGE)
        spooled = await w.commit(Envelope(sender="alice@remote.example",
                                          recipients=["bob@local.test"]))
    outgoing = outgoing_root(var, "outgoing")
    due = await _enqueue(outgoing, "bob@local.test", ["carol@other.test"], next_attempt=1.0)
    waiting = await _enqueue(outgoing, "bob@local.test", ["x@Example.TEST", "y@example.test"],
                             retry_count=2, next_attempt=time.time() + 300,
                             last_error="421 4.3.2 Service busy, try later",
                             attributes={"chainmail.arrival": time.time() - 3 * 3600})
    relay = await _enqueue(outgoing_root(var, "relay"), "", ["postmaster@example.test"])
    return Prepared(var, spooled, due, waiting, relay)


@pytest.fixture
def prepared(tmp_path) -> Prepared:
    return trio.run(_prepare, tmp_path / "var")


def cli(var: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CHAINMAIL, "queue", *args, "--var", str(var)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def rows(out: str) -> dict[str, str]:
    return {line.split()[0]: line for line in out.splitlines() if re.match(r"[0-9a-f]{12}-", line)}


def test_list_shows_each_queue_with_next_attempt_tries_and_last_error(prepared):
    r = cli(prepared.var, "list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    found = rows(r.stdout)
    assert set(found) == {prepared.spooled, prepared.due, prepared.waiting, prepared.relay}
    assert re.search(r" now +0  <bob@local.test> -> <carol@other.test>$", found[prepared.due])
    # the age of a retry entry counts from the mail's arrival, not from the retry
    assert re.search(r" 3h +in [45]m +2  <bob@local.test> -> <x@Example.TEST>, <y@example.test>  "
                     r"\(421 4\.3\.2 Service busy, try later\)$", found[prepared.waiting])
    assert "<> -> <postmaster@example.test>" in found[prepared.relay]
    assert "2 message(s) waiting in outgoing queue outgoing" in lines
    assert "1 message(s) waiting in outgoing queue relay" in lines
    # the spool keeps its columns, and its count stays the last line (bench/run.py reads it)
    assert " root " in found[prepared.spooled]
    assert "<alice@remote.example> -> <bob@local.test>" in found[prepared.spooled]
    assert lines[-1] == "1 message(s) queued"
    assert cli(prepared.var).stdout.splitlines()[-1] == "1 message(s) queued"   # plain `queue`


def test_list_filters_by_queue_and_domain(prepared):
    r = cli(prepared.var, "list", "--queue", "outgoing", "--domain", "EXAMPLE.test")
    assert r.returncode == 0, r.stderr
    assert set(rows(r.stdout)) == {prepared.waiting}
    assert "message(s) queued" not in r.stdout                 # no spool section
    r = cli(prepared.var, "list", "--domain", "local.test")
    assert set(rows(r.stdout)) == {prepared.spooled}
    assert r.stdout.splitlines()[-1] == "1 message(s) queued"
    r = cli(prepared.var, "list", "--queue", "nope")
    assert r.returncode == 2 and "no outgoing queue 'nope'" in r.stderr


def test_flush_writes_requests_the_queue_consumes(prepared):
    r = cli(prepared.var, "flush", "--domain", "Example.Test")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "outgoing queue outgoing: flush requested for 1 message(s) to example.test",
        "outgoing queue relay: flush requested for 1 message(s) to example.test"]
    # the waiting entry now shows as due
    assert re.search(r" now +2  ", rows(cli(prepared.var, "list").stdout)[prepared.waiting])
    [request] = consume_flush_requests(outgoing_root(prepared.var, "outgoing"))
    assert request.domain == "example.test" and request.at <= time.time()
    [relay] = consume_flush_requests(outgoing_root(prepared.var, "relay"))
    assert relay.domain == "example.test"
    assert re.search(r" in [45]m +2  ", rows(cli(prepared.var, "list").stdout)[prepared.waiting])


def test_flush_one_queue_or_an_unknown_one(prepared):
    r = cli(prepared.var, "flush", "--queue", "outgoing")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "outgoing queue outgoing: flush requested for 2 message(s)\n"
    [request] = consume_flush_requests(outgoing_root(prepared.var, "outgoing"))
    assert request.domain is None
    assert consume_flush_requests(outgoing_root(prepared.var, "relay")) == []
    r = cli(prepared.var, "flush", "--queue", "outgong")
    assert r.returncode == 2
    assert "no outgoing queue 'outgong'" in r.stderr and "outgoing, relay" in r.stderr
    assert cli(prepared.var, "flush", "--domain", "a@b").returncode == 2


def test_flush_without_outgoing_queues(tmp_path):
    (tmp_path / "var").mkdir()
    r = cli(tmp_path / "var", "flush")
    assert r.returncode == 0 and "nothing to flush" in r.stdout


def test_remove_from_the_spool_and_from_an_outgoing_queue(prepared):
    # an instance held open meanwhile, as by a running server, sees the removals
    server_spool = DirectorySpool(prepared.var / "spool")
    assert server_spool.ids() == [prepared.spooled]
    r = cli(prepared.var, "remove", prepared.spooled, prepared.waiting)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"removed {prepared.spooled} from the spool: <alice@remote.example> -> <bob@local.test>",
        f"removed {prepared.waiting} from outgoing queue outgoing: "
        "<bob@local.test> -> <x@Example.TEST>, <y@example.test>"]
    assert server_spool.ids() == []
    assert DirectorySpool(outgoing_root(prepared.var, "outgoing")).ids() == [prepared.due]
    assert set(rows(cli(prepared.var, "list").stdout)) == {prepared.due, prepared.relay}


def test_remove_names_the_ids_not_found(prepared):
    unknown = "0190000000ff-0000aaaaaaaaaaaaaaaa"
    r = cli(prepared.var, "remove", unknown, prepared.relay, "not-an-id")
    assert r.returncode == 1
    assert r.stdout == (f"removed {prepared.relay} from outgoing queue relay: "
                        "<> -> <postmaster@example.test>\n")
    assert f"not queued: {unknown}, not-an-id" in r.stderr
    assert cli(prepared.var, "remove", prepared.relay).returncode == 1    # already gone
