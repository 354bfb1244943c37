"""Phase 1 of `add` (debit, order, ledger entry: one transaction) through SQLAlchemy Core with
prebuilt statements, as app/orders/placing.py did until issue 12, against the driver path it
uses now (app/orders/hot_writes.py: one data-modifying CTE on PostgreSQL; three prebuilt
statements on SQLite's stdlib connection). Same database, same values, alternating rounds;
CPU of this process and (PostgreSQL) of the server's backends for the bench database, per
phase 1.

    .venv/bin/python bench/phase_one.py --db sqlite|postgresql [--n 1000] [--rounds 4]
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import gateway as bench
from sqlalchemy import insert

from app import ledger
from app.customers import create_customer
from app.db import Database
from app.models import Order, Service, utcnow
from app.orders.hot_writes import commit_intent_row

_INSERT_ORDER = insert(Order.__table__)


def order_row(customer_id: int, now: object) -> dict[str, object]:
    return {
        "customer_id": customer_id,
        "service_id": 1,
        "state": "sending",
        "status": "Pending",
        "params": json.dumps({"service": "1", "link": "x", "quantity": "100"}),
        "quantity": 100,
        "rate": 1_000_000,
        "charge": 100_000,
        "cost": 90_000,
        "service_type": "Default",
        "settle_by": "remains",
        "refunded": 0,
        "announced": False,
        "idempotency_key": None,
        "request_hash": "0" * 64,
        "created_at": now,
        "updated_at": now,
    }


async def core(db: Database, customer_id: int) -> None:
    """The pre-issue-12 phase 1: SQLAlchemy Core, prebuilt statements, one transaction."""
    now = utcnow()
    async with db.write() as conn:
        result = await conn.execute(_INSERT_ORDER, order_row(customer_id, now))
        order_id = result.inserted_primary_key[0]
        assert await ledger.debit_for_order(conn, customer_id, order_id, 100_000)


async def driver(db: Database, customer_id: int) -> None:
    now = utcnow()
    await commit_intent_row(db, customer_id, 100_000, now, order_row(customer_id, now))


async def run(args: argparse.Namespace, url: str) -> None:
    db = Database(url)
    await db.migrate()
    customer_id, _ = await create_customer(db, "bench", "standard")
    await ledger.topup(db, customer_id, 10**15)
    async with db.write() as conn:
        await conn.execute(
            insert(Service).values(
                id=1, name="s", category="c", type="Default", rate=1, min=1, max=10**6
            )
        )
    totals = {"core": [0.0, 0.0, 0.0], "driver": [0.0, 0.0, 0.0]}  # cpu, server cpu, wall
    ways = {"core": core, "driver": driver}
    for i in range(args.rounds):
        for name in ("core", "driver") if i % 2 == 0 else ("driver", "core"):
            for _ in range(50):  # warm: connections, prepared statements
                await ways[name](db, customer_id)
            pg0 = bench.pg_backends_cpu() if not db.is_sqlite else {}
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for _ in range(args.n):
                await ways[name](db, customer_id)
            totals[name][0] += time.process_time() - cpu0
            totals[name][2] += time.perf_counter() - wall0
            if not db.is_sqlite:
                pg1 = bench.pg_backends_cpu()
                totals[name][1] += sum(v - pg0.get(pid, 0.0) for pid, v in pg1.items())
    await db.dispose()
    n = args.n * args.rounds
    print(f"\n#### phase 1 of `add`, {args.db}: {n:,} each, {args.rounds} alternating rounds\n")
    print("| path | client CPU µs | server CPU µs | total CPU µs | wall µs |")
    print("|---|---:|---:|---:|---:|")
    for name, label in (
        ("core", "SQLAlchemy Core, prebuilt statements"),
        ("driver", "driver (hot_writes)"),
    ):
        cpu, server, wall = (1e6 * v / n for v in totals[name])
        print(f"| {label} | {cpu:.0f} | {server:.0f} | {cpu + server:.0f} | {wall:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    if sys.platform.startswith("linux") and len(os.sched_getaffinity(0)) >= 2:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    with tempfile.TemporaryDirectory() as tmp, bench.database(args.db, Path(tmp)) as url:
        asyncio.run(run(args, url))


if __name__ == "__main__":
    main()
