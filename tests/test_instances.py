"""Several instances on one database, and what the sync costs the upstream.

- Customers' `status` requests never reach the upstream; a pass over 250 active orders costs
  3 `status` calls.
- Two sync workers (own Database, own UpstreamClient) running passes at the same instants
  together poll every active order, none twice within a pass, and settle every order exactly
  once: in one process with asyncio.gather (both databases), and as two real processes against
  a simulator on a real port (PostgreSQL).
- A pass that starts while another instance's pass runs leaves alone what that one just refreshed
  (a regression test).
"""

import asyncio
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import _truncate_postgres, gateway_settings
from helpers import simulator_on_port
from sqlalchemy import select
from sync_helpers import SIM_KEY, Harness, UpstreamTap, settings_for

from app.contract import FINAL_STATUSES
from app.db import Database
from app.main import Gateway
from app.models import Order
from app.settings import Settings
from app.simulator import SimConfig
from app.sync import sync_pass
from app.upstream import UpstreamClient

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def settings(database_url: str, sim_config: SimConfig) -> Settings:
    return settings_for(database_url, sim_config)


def mixed_orders(count: int, salt: str) -> list[dict[str, str]]:
    """Orders of several types whose fates the simulator draws (80/12/8 %), plus one of each
    fate by marker so that every kind of settlement surely occurs."""
    kinds = [
        {"service": "9", "quantity": "600"},
        {"service": "14", "quantity": "250"},
        {"service": "17", "quantity": "1000"},
        {"service": "102"},
        {"service": "5", "quantity": "500", "runs": "2", "interval": "5"},  # drip-feed
    ]
    orders = [
        {**kinds[i % len(kinds)], "link": f"https://ig.test/{salt}/{i}"} for i in range(count)
    ]
    for fate in ("sim:complete", "sim:partial", "sim:cancel"):
        orders += [{**kind, "link": f"https://ig.test/{salt}/{fate}"} for kind in kinds]
    return orders


async def active_orders(db: Database) -> dict[int, int]:
    """Our active orders: upstream id -> our id."""
    async with db.read() as conn:
        rows = await conn.execute(
            select(Order.upstream_order_id, Order.id).where(
                Order.state == "placed",
                Order.settled_at.is_(None),
                Order.status.not_in(tuple(FINAL_STATUSES)),
            )
        )
        return dict(rows.all())


async def test_statuses_are_local_and_two_workers_settle_each_order_once(
    harness: Harness, database_url: str
) -> None:
    h = harness
    customers = [
        await h.customer(dialect="standard", markup_bp=2500),
        await h.customer(dialect="smartpanel", markup_bp=None),
    ]
    ids = []
    for n, who in enumerate(customers):
        ids.append(await h.place_many(who, mixed_orders(110, f"c{n}")))
    total = len(await h.placed_orders())
    assert total == 250

    # 1. The upstream economy. 200 customer `status` requests, single and multi: 0 calls.
    h.clock.advance(h.tick)
    before = await h.stats()
    for n in range(100):
        who, mine = customers[n % 2], ids[n % 2]
        reply = await h.status(who, mine[n % len(mine)])
        assert reply["status"] == "Pending"  # what we last knew, not a fresh upstream answer
    for n in range(100):
        who, mine = customers[n % 2], ids[n % 2]
        chunk = mine[n % 25 : n % 25 + 100]
        reply = await h.call(who.key, "status", orders=",".join(map(str, chunk)))
        assert list(reply) == [str(o) for o in chunk]
    assert await h.stats() == before
    # A pass over 250 active orders: ceil(250 / 100) = 3 `status` calls, nothing else.
    await h.reset_stats()
    result = await h.sync()
    assert (result.polled, result.upstream_calls, result.failed_batches) == (250, 3, 0)
    assert await h.stats() == {"status": 3}
    assert (await h.status(customers[0], ids[0][0]))["status"] == "In progress"

    # 2. Two workers (own Database, own UpstreamClient) running passes at the same instants.
    taps = [UpstreamTap(h.simulator), UpstreamTap(h.simulator)]
    clients = [
        UpstreamClient.from_settings(h.gw.settings, transport=httpx.ASGITransport(app=tap))
        for tap in taps
    ]
    second_db = Database(database_url)
    workers = [(h.db, clients[0]), (second_db, clients[1])]
    settled = 0
    rounds = 0
    twice = 0
    try:
        for _tick in range(3):
            h.clock.advance(h.tick)
            for _again in range(2):
                active = await active_orders(h.db)
                calls_before = (await h.stats()).get("status", 0)
                for tap in taps:
                    tap.status_calls.clear()
                results = await asyncio.gather(
                    *(sync_pass(db, up, sending_grace_seconds=h.grace) for db, up in workers)
                )
                rounds += 1
                asked = [[i for c in t.status_calls for i in c if i in active] for t in taps]
                # Within a pass no order is asked twice, and together they miss none.
                assert all(len(ids) == len(set(ids)) for ids in asked)
                assert set(asked[0]) | set(asked[1]) == set(active)
                # Asked by both only when one pass began after the other refreshed it (see
                # test_a_pass_does_not_repoll_what_another_instance_just_refreshed).
                both = set(asked[0]) & set(asked[1])
                twice += len(both)
                assert sum(r.polled for r in results) == len(active) + len(both)
                assert all(r.failed_batches == 0 and not r.anomalies for r in results)
                calls = (await h.stats()).get("status", 0) - calls_before
                assert calls == sum(r.upstream_calls for r in results)
                settled += sum(r.settled for r in results)
        assert rounds == 6 and not await active_orders(h.db)
    finally:
        for client in clients:
            await client.aclose()
        await second_db.dispose()

    assert settled == total  # each order settled once, by one worker, polled twice or not
    fates = await h.assert_settled_as_the_simulator_says(customers)
    assert set(fates) == {"Completed", "Partial", "Canceled"}
    assert sum(fates.values()) == total
    assert twice < total  # a rare overlap, not a second full poll


async def test_a_pass_does_not_repoll_what_another_instance_just_refreshed(
    harness: Harness, database_url: str
) -> None:
    h = harness
    who = await h.customer()
    await h.place_many(
        who,
        [{"service": "9", "link": f"https://ig.test/{i}", "quantity": "500"} for i in range(60)],
    )
    first_tap = UpstreamTap(h.simulator, hold_after=1)  # its second batch waits for us
    second_tap = UpstreamTap(h.simulator)
    first = UpstreamClient.from_settings(
        h.gw.settings, transport=httpx.ASGITransport(app=first_tap)
    )
    second = UpstreamClient.from_settings(
        h.gw.settings, transport=httpx.ASGITransport(app=second_tap)
    )
    second_db = Database(database_url)
    try:
        h.clock.advance(h.tick)
        running = asyncio.create_task(
            sync_pass(h.db, first, sending_grace_seconds=h.grace, batch_size=20, min_age_seconds=60)
        )
        await asyncio.wait_for(first_tap.holding.wait(), 10)  # one batch done, one leased
        # As sync_forever runs it: what was refreshed within half an interval is left alone.
        other = await sync_pass(
            second_db, second, sending_grace_seconds=h.grace, batch_size=20, min_age_seconds=60
        )
        first_tap.release.set()
        result = await running
    finally:
        await first.aclose()
        await second.aclose()
        await second_db.dispose()
    asked = [{i for c in t.status_calls for i in c} for t in (first_tap, second_tap)]
    assert asked[0] | asked[1] == set(await h.sim_orders())
    assert result.polled + other.polled == 60
    assert not asked[0] & asked[1]


@pytest.fixture(scope="module")
def real_simulator() -> Iterator[str]:
    """The simulator on a real port (uvicorn in a thread), with real, fast time."""
    with simulator_on_port(SimConfig(key=SIM_KEY, tick_seconds=0.5, seed=7)) as url:
        yield url.removesuffix("/api/v1")


WORKER = """
import asyncio, json, sys, time
from sqlalchemy import func, select
from app.db import Database
from app.models import Order
from app.sync import sync_pass
from app.upstream import UpstreamClient

async def main(database_url, upstream_url, key, start_at):
    db = Database(database_url)
    upstream = UpstreamClient(upstream_url, key, connect_timeout=2, read_timeout=5)
    totals = dict(passes=0, polled=0, upstream_calls=0, settled=0, failed_batches=0)
    await asyncio.sleep(max(0.0, float(start_at) - time.time()))  # both start together
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result = await sync_pass(db, upstream, sending_grace_seconds=60)
        totals["passes"] += 1
        for name in ("polled", "upstream_calls", "settled", "failed_batches"):
            totals[name] += getattr(result, name)
        async with db.read() as conn:
            left = await conn.scalar(select(func.count()).select_from(Order).where(
                Order.state == "placed", Order.settled_at.is_(None)))
        if left == 0:
            break
        await asyncio.sleep(0.05)
    await upstream.aclose()
    await db.dispose()
    print(json.dumps(totals))

asyncio.run(main(*sys.argv[1:]))
"""


async def test_two_worker_processes_on_postgresql_settle_each_order_once(
    postgres_url: str, real_simulator: str
) -> None:
    fresh = Database(postgres_url)
    await _truncate_postgres(fresh)
    await fresh.dispose()
    gateway = Gateway(gateway_settings(postgres_url, upstream_url=f"{real_simulator}/api/v1"))
    db = gateway.db
    sim_client = httpx.AsyncClient(base_url=real_simulator)
    try:
        h = Harness(gateway, sim_client)
        await h.sync_catalog()
        customers = [await h.customer(markup_bp=2500), await h.customer(markup_bp=500)]
        for n, who in enumerate(customers):
            await h.place_many(who, mixed_orders(20, f"p{n}"))
        total = len(await h.placed_orders())
        await h.reset_stats()

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        start_at = str(time.time() + 2.5)  # after both interpreters have started
        args = [postgres_url, f"{real_simulator}/api/v1", SIM_KEY, start_at]
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                WORKER,
                *args,
                cwd=ROOT,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            for _ in range(2)
        ]
        outputs = [await p.communicate() for p in procs]
        assert all(p.returncode == 0 for p in procs), [o[1].decode()[-2000:] for o in outputs]
        totals = [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs]

        assert all(t["failed_batches"] == 0 for t in totals), totals
        assert not await active_orders(db)
        assert sum(t["settled"] for t in totals) == total, totals
        assert (await h.stats())["status"] == sum(t["upstream_calls"] for t in totals)
        fates = await h.assert_settled_as_the_simulator_says(customers)
        assert set(fates) == {"Completed", "Partial", "Canceled"}
    finally:
        await sim_client.aclose()
        await gateway.close()
