#!/usr/bin/env python3
"""Two ways to make a queue entry wait on RabbitMQ (a retry, a held mail), side by side.

    .venv-test/bin/python bench/delay_paths.py [--count 2000] [--delay 2] [--runs 3]

(Run with the test environment's Python: it starts RabbitMQ and PostgreSQL with the test
kit's starters, as the tests do, on 127.0.0.1 only.)

- ``ttl``: what chainmail does. ``Broker.publish_delayed`` parks the message in a TTL queue
  (``<queue>.delay.<ms>``) that dead-letters it into the queue when its time has come; a
  consumer takes it from there.
- ``table``: a schedule table in PostgreSQL. The entry is a committed row with its due time;
  a poller, every 100 ms, takes the due rows (``FOR UPDATE SKIP LOCKED``), publishes each to
  the queue with a confirm, deletes them and commits; a consumer takes them from the queue.

Measured per message: CPU of this process, of the broker's processes and of PostgreSQL's
(from /proc, user + system), and how late each message reaches the consumer after its due
time (median and 99th percentile).  Each run: ``--count`` messages due ``--delay`` seconds
after they were made to wait.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio
import trio_asyncio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from chainmail.store.amqp.broker import Broker  # noqa: E402
from chainmail.testing.rabbitmq import rabbitmq_node  # noqa: E402

TICK_US = 1_000_000 / os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    out = [pid]
    for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                text=True).stdout.split():
        out += _tree(int(child))
    return out


def ticks(pids: list[int], children: bool = False) -> int:
    """User + system ticks of ``pids``; with ``children``, also of their children that have
    exited (PostgreSQL's backends end with their connections)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
        if children:
            total += int(fields[13]) + int(fields[14])
    return total


async def consume(broker: Broker, queue: str, count: int, late: list[float]) -> None:
    async with broker.consume(queue, prefetch=200) as consumer:
        for _ in range(count):
            delivery = await consumer.__anext__()
            late.append(time.time() - float(delivery.headers["due"]))
            await delivery.ack()


async def ttl_run(config, count: int, delay: float, late: list[float]) -> None:
    async with trio_asyncio.open_loop(), Broker.connect(config) as broker:
        queue = f"bench.ttl.{time.monotonic_ns()}"
        await broker.declare(queue)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume, broker, queue, count, late)
            for i in range(count):
                await broker.publish_delayed(queue, b"x" * 1024,
                                             {"due": str(time.time() + delay)}, delay)


async def table_run(config, conninfo: str, count: int, delay: float, late: list[float]) -> None:
    import psycopg
    async with trio_asyncio.open_loop(), Broker.connect(config) as broker:
        queue = f"bench.table.{time.monotonic_ns()}"
        await broker.declare(queue)
        conn = psycopg.connect(conninfo, autocommit=True)
        conn.execute("CREATE TABLE IF NOT EXISTS schedule (key BIGSERIAL PRIMARY KEY, "
                     "due DOUBLE PRECISION NOT NULL, body BYTEA NOT NULL)")
        conn.execute("CREATE INDEX IF NOT EXISTS schedule_due ON schedule (due)")
        poller_conn = psycopg.connect(conninfo)
        done = trio.Event()

        async def poll() -> None:
            moved = 0
            while moved < count:
                def take() -> list:
                    rows = poller_conn.execute(
                        "SELECT key, due, body FROM schedule WHERE due <= %s ORDER BY due "
                        "LIMIT 500 FOR UPDATE SKIP LOCKED", (time.time(),)).fetchall()
                    return rows
                rows = await trio.to_thread.run_sync(take)
                async with trio.open_nursery() as publishing:   # confirms awaited together
                    for key, due, body in rows:
                        publishing.start_soon(broker.publish, queue, bytes(body),
                                              {"due": str(due)})
                if rows:
                    keys = [r[0] for r in rows]
                    await trio.to_thread.run_sync(lambda: (poller_conn.execute(
                        "DELETE FROM schedule WHERE key = ANY(%s)", (keys,)),
                        poller_conn.commit()))
                    moved += len(rows)
                else:
                    await trio.to_thread.run_sync(poller_conn.commit)
                    await trio.sleep(0.1)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume, broker, queue, count, late)
            nursery.start_soon(poll)
            for i in range(count):
                due = time.time() + delay
                await trio.to_thread.run_sync(
                    conn.execute, "INSERT INTO schedule (due, body) VALUES (%s, %s)",
                    (due, b"x" * 1024))
        conn.close()
        poller_conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--delay", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    from tests.integration.test_postgres_stores import Postgres, _free_port
    import shutil
    import tempfile
    base = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    os.chmod(base, 0o755)
    pg = Postgres(base, _free_port())
    pg.start()
    try:
        dbname = pg.new_database()
        from tests.integration.test_postgres_stores import PASSWORD, ROLE
        from psycopg.conninfo import make_conninfo
        conninfo = make_conninfo(host="127.0.0.1", port=pg.port, dbname=dbname, user=ROLE,
                                 password=PASSWORD)
        with rabbitmq_node() as rabbit:
            config = rabbit.config()
            results: dict[str, list[tuple[float, float, float, float, float]]] = {
                "ttl": [], "table": []}
            for run in range(args.runs):
                for path in ("ttl", "table") if run % 2 == 0 else ("table", "ttl"):
                    late: list[float] = []
                    watched = {"bench": [os.getpid()], "broker": _tree(rabbit.proc.pid),
                               "postgres": _tree(pg.proc.pid)}
                    before = {k: ticks(v, k == "postgres") for k, v in watched.items()}
                    start = time.monotonic()
                    if path == "ttl":
                        trio.run(ttl_run, config, args.count, args.delay, late)
                    else:
                        trio.run(table_run, config, conninfo, args.count, args.delay, late)
                    wall = time.monotonic() - start
                    time.sleep(0.3)   # the backends of the run's connections reaped
                    watched["postgres"] = _tree(pg.proc.pid)
                    cpu = {k: (ticks(v, k == "postgres") - before[k]) * TICK_US / args.count
                           for k, v in watched.items()}
                    late.sort()
                    results[path].append((cpu["bench"], cpu["broker"], cpu["postgres"],
                                          statistics.median(late) * 1000,
                                          late[int(len(late) * 0.99)] * 1000))
                    print(f"run {run + 1} {path:5} {wall:6.2f} s  bench {cpu['bench']:6.0f} "
                          f"broker {cpu['broker']:6.0f} postgres {cpu['postgres']:6.0f} "
                          f"µs/msg  late median {results[path][-1][3]:6.1f} ms  "
                          f"p99 {results[path][-1][4]:6.1f} ms", flush=True)
            print()
            print("| path | this process µs/msg | broker µs/msg | PostgreSQL µs/msg | "
                  "late, median ms | late, p99 ms |")
            print("|---|---|---|---|---|---|")
            for path, rows in results.items():
                cols = [statistics.median(r[i] for r in rows) for i in range(5)]
                print(f"| {path} | {cols[0]:.0f} | {cols[1]:.0f} | {cols[2]:.0f} | "
                      f"{cols[3]:.0f} | {cols[4]:.0f} |")
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
