"""The simulation's wider fault classes (issue 10), each switchable (`Options.faults`):

- `catalog`: the upstream changes its catalog while orders are live (type Default <-> Package,
  rate up or down, min/max, delisting and relisting), through `/_sim/catalog`;
- `poison`: one order's status or one service's entry answers unusable numbers ("1e+30",
  NaN, -5, text, a huge max), through `/_sim/overrides`, later healed;
- `statuses`: one order's status answers a word neither family defines ("Rejected", ...);
- `charge`: the upstream charges another rate than it lists, per order (link marker
  `sim:charge=P`), so its first charge differs from our catalog estimate;
- `db`: a real database fault at a phase boundary (before/after the upstream add, before/after a
  status call of a sync pass, after the catalog call): PostgreSQL drops the gateway's
  connections (pg_terminate_backend), SQLite is write-locked by another connection for a while;
- `lease`: a second gateway instance on the same database runs its sync pass while the first
  one's status call is outstanding and its lease has expired (the clock jumps past it);
- `providers`: a second provider, with provider `default` out of funds, down and restarted,
  killed mid-add, and the second one down (tests/simulation/providers.py).

Nothing of the gateway is mocked: every fault is a simulator knob or a real database fault.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import asyncpg
from sqlalchemy import select

from app.catalog import sync_catalog
from app.contract import ORDER_STATUSES
from app.models import Service as GatewayService
from app.simulator.catalog import CATALOG
from app.sync import sync_pass

if TYPE_CHECKING:
    from .harness import Node, Rec, Simulation

FAULT_CLASSES = ("catalog", "poison", "statuses", "charge", "db", "lease", "providers")
# The step kinds each class adds (a class switched off weighs its steps 0; `charge` is a marker).
CLASS_STEPS = {
    "catalog_change": "catalog",
    "poison": "poison",
    "unknown_status": "statuses",
    "db_fault": "db",
    "lease_race": "lease",
}
WIDE_WEIGHTS = {
    "catalog_change": 2,
    "poison": 3,
    "unknown_status": 2,
    "db_fault": 3,
    "lease_race": 2,
}

POISON_NUMBERS = {
    "charge": ("1e+30", "NaN", "-5", "abc", "1e400", "Infinity", "99999999999999999999"),
    "remains": ("1e+30", "NaN", "abc", "1e400", "Infinity", "99999999999999999999"),
}
POISON_SERVICE = (
    ("max", "1e20"),
    ("rate", "1e+30"),
    ("rate", "NaN"),
    ("min", "-5"),
    ("rate", "abc"),
    ("max", "Infinity"),
)
UNKNOWN_WORDS = ("Rejected", "Error", "Fail", "Awaiting", "Suspended")
CHARGE_PERCENTS = (50, 90, 110, 137, 200)
SQLITE_LOCK_SECONDS = (0.05, 0.2, 0.4)


class Hook:
    """A one-shot coroutine the Wire runs at the nth call of `action`, before the simulator
    sees it or after its answer was computed (and before the gateway reads it)."""

    def __init__(self, action: str, when: str, nth: int, run: Callable[[], Awaitable[None]]):
        self.action, self.when, self.nth, self.run = action, when, nth, run
        self.seen = 0

    def due(self, action: str, when: str) -> bool:
        if action != self.action:
            return False
        if when == "before":
            self.seen += 1
        return self.seen == self.nth and when == self.when


class WideSteps:
    """Steps and checks of the wider classes, mixed into `Simulation`."""

    poisoned: dict[int, dict[str, str]]  # upstream order id -> the fields it answers wrong
    poisoned_services: dict[int, dict[str, str]]
    node2: Node | None
    lock_threads: list[threading.Thread]
    pg_started: Any

    def wide_init(self: Simulation) -> None:
        self.poisoned, self.poisoned_services = {}, {}
        self.settled_poisoned: set[int] = set()  # known bugs' orders: their refund is off too
        self.node2, self.lock_threads, self.pg_started = None, [], None
        self.in_db_fault = self.answered_500 = False

    def charge_marker(self: Simulation) -> str:
        if "charge" in self.opts.faults and self.rng.random() < 0.25:
            self.outcomes["charge:differs"] += 1
            return f"/sim:charge={self.rng.choice(CHARGE_PERCENTS)}"
        return ""

    # -- catalog --

    async def step_catalog_change(self: Simulation) -> None:
        svc = self.rng.choice(CATALOG)
        now = self.sim.catalog.get(svc.id)
        roll = self.rng.random()
        change: dict[str, Any] | None
        if now is None:
            change = {k: v for k, v in dataclasses.asdict(svc).items() if k != "id"}
            what = "relisted"
        elif roll < 0.15:
            change, what = None, "delisted"
        elif roll < 0.45 and now.type in ("Default", "Package"):
            if now.type == "Default":
                change = {"type": "Package", "min": 1, "max": 1, "dripfeed": False}
                what = "-> Package"
            else:
                change, what = {"type": "Default", "min": 100, "max": 10_000}, "-> Default"
        elif roll < 0.75:
            percent = self.rng.choice((50, 80, 125, 200))
            rate = f"{now.rate_micros * percent // 100 / 10**6:.4f}"
            change, what = {"rate": rate}, f"rate {now.rate} -> {rate}"
        else:
            low = max(1, now.min * self.rng.choice((1, 2)))
            high = max(low, now.max // self.rng.choice((1, 2, 10)))
            change, what = {"min": low, "max": high}, f"min/max {low}/{high}"
        response = await self.sim_client.post("/_sim/catalog", json={str(svc.id): change})
        assert response.status_code == 200, response.text
        self.note(f"catalog change: service {svc.id} {what}")
        self.outcomes[f"catalog:{what.split(' ')[0]}"] += 1
        if self.rng.random() < 0.5:
            await self.step_catalog_sync()

    async def check_catalog(self: Simulation) -> None:
        """After a catalog sync: every usable listed service is priced as the upstream lists
        it, however many poison entries the listing held (one bad entry is never fatal)."""
        async with self.db.read() as conn:
            rows = dict(list(await conn.execute(select(GatewayService.id, GatewayService.rate))))
        for service in self.sim.listed_services():
            if service.id in self.poisoned_services:
                continue
            if rows.get(service.id) != service.rate_micros:
                self.fail(
                    f"catalog sync: service {service.id} costs {rows.get(service.id)} here, the"
                    f" upstream lists {service.rate_micros}"
                    f" (poison entries: {sorted(self.poisoned_services)})"
                )
                return

    # -- poison numbers and unknown words --

    async def override(
        self: Simulation, kind: str, item: int, fields: dict[str, str] | None
    ) -> None:
        response = await self.sim_client.post("/_sim/overrides", json={kind: {str(item): fields}})
        assert response.status_code == 200, response.text

    def live_upstream_ids(self: Simulation) -> list[int]:
        return sorted(
            r.upstream_order_id
            for i in self.live
            if (r := self.recs[i]).upstream_order_id is not None
            and not r.settled
            and r.provider_id == 1  # the knobs of provider `default`'s simulator
        )

    async def heal_one(self: Simulation) -> bool:
        if self.poisoned and self.rng.random() < 0.4:
            upstream_id = self.rng.choice(sorted(self.poisoned))
            del self.poisoned[upstream_id]
            await self.override("status", upstream_id, None)
            self.note(f"  healed upstream {upstream_id}")
            return True
        return False

    async def step_poison(self: Simulation) -> None:
        if await self.heal_one():
            return
        if self.rng.random() < 0.3:
            svc = self.rng.choice(CATALOG)
            if svc.id in self.poisoned_services:
                del self.poisoned_services[svc.id]
                await self.override("services", svc.id, None)
                self.note(f"poison: service {svc.id} healed")
            else:
                name, value = self.rng.choice(POISON_SERVICE)
                self.poisoned_services[svc.id] = {name: value}
                await self.override("services", svc.id, {name: value})
                self.note(f"poison: service {svc.id} answers {name}={value!r}")
                self.outcomes["poison:service"] += 1
            await self.step_catalog_sync()
            return
        live = self.live_upstream_ids()
        if not live:
            self.note("poison: nothing live")
            return
        upstream_id = self.rng.choice(live)
        name = self.rng.choice(("charge", "charge", "remains"))
        fields = {name: self.rng.choice(POISON_NUMBERS[name])}
        self.poisoned[upstream_id] = fields
        await self.override("status", upstream_id, fields)
        self.note(f"poison: upstream {upstream_id} answers {fields}")
        self.outcomes["poison:order"] += 1
        await self.step_sync()

    async def step_unknown_status(self: Simulation) -> None:
        if await self.heal_one():
            return
        live = self.live_upstream_ids()
        if not live:
            self.note("unknown status: nothing live")
            return
        upstream_id = self.rng.choice(live)
        fields = {"status": self.rng.choice(UNKNOWN_WORDS)}
        self.poisoned[upstream_id] = fields
        await self.override("status", upstream_id, fields)
        self.note(f"unknown status: upstream {upstream_id} answers {fields}")
        self.outcomes["poison:status-word"] += 1
        await self.step_sync()

    async def heal_all(self: Simulation) -> None:
        for upstream_id in sorted(self.poisoned):
            await self.override("status", upstream_id, None)
        for service_id in sorted(self.poisoned_services):
            await self.override("services", service_id, None)
        self.poisoned.clear()
        self.poisoned_services.clear()

    def check_wide_order(self: Simulation, rec: Rec, before: Rec | None, where: str) -> None:
        """The invariants of issue 10 that one order shows."""
        if rec.status not in ORDER_STATUSES:
            self.fail(
                f"{where} shows the customer status {rec.status!r}, not the contract's",
                bug="unknown-status-shown",
            )
        newly = rec.settled and (before is None or not before.settled)
        fields = self.poisoned.get(rec.upstream_order_id or -1) if rec.provider_id == 1 else None
        if newly and fields is not None:
            self.settled_poisoned.add(rec.id)
            self.fail(
                f"{where} settled ({rec.status}, refund {rec.refunded}) while the upstream"
                f" answered {fields}: an unknown status or unusable figures settled it",
                bug="unknown-status-settled" if "status" in fields else "poison-settled",
            )
        if rec.settled and rec.first_charge is not None:
            sim_order = self.sims[rec.provider_id].orders.get(rec.upstream_order_id or -1)
            # Exact for a plain order; a drip-feed parent's is the sum of the runs it showed.
            if (
                sim_order is not None
                and sim_order.kind == "plain"
                and (rec.first_charge != sim_order.initial_charge)
            ):
                self.fail(
                    f"{where} keeps {rec.first_charge} as upstream {rec.upstream_order_id}'s"
                    " first charge;"
                    f" the upstream first charged {sim_order.initial_charge}",
                    bug="first-charge-lost",
                )

    # -- database faults --

    async def db_fault(self: Simulation) -> None:
        if self.opts.db_kind == "postgresql":
            await self.drop_connections()
        else:
            await self.lock_sqlite()

    async def drop_connections(self: Simulation) -> None:
        """pg_terminate_backend of every connection the gateway opened (those of this run)."""
        url = self.opts.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        conn = await asyncpg.connect(url, timeout=10)
        try:
            if self.pg_started is None:
                self.pg_started = await conn.fetchval("SELECT now()")
            dropped = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND backend_start >= $1",
                self.pg_started,
            )
        finally:
            await conn.close()
        self.note(f"  dropped {dropped} database connections")

    async def lock_sqlite(self: Simulation) -> None:
        """Another process holds the write lock for a while; the gateway goes on meanwhile."""
        path = self.opts.database_url.split(":///", 1)[1]
        seconds = self.rng.choice(SQLITE_LOCK_SECONDS)
        held = threading.Event()

        def hold() -> None:
            conn = sqlite3.connect(path, timeout=30, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                held.set()
                threading.Event().wait(seconds)
                conn.execute("COMMIT")
            finally:
                held.set()
                conn.close()

        thread = threading.Thread(target=hold, daemon=True)
        thread.start()
        self.lock_threads.append(thread)
        await asyncio.to_thread(held.wait)
        self.note(f"  database write-locked for {seconds} s")

    async def join_locks(self: Simulation) -> None:
        threads, self.lock_threads = self.lock_threads, []
        for thread in threads:
            await asyncio.to_thread(thread.join)

    async def step_db_fault(self: Simulation) -> None:
        if self.pg_started is None and self.opts.db_kind == "postgresql":
            await self.drop_connections()  # notes the start; nothing of this run is dropped
        phase = self.rng.choice(
            (
                "before add",
                "after add",
                "after add",
                "before status",
                "after status",
                "after services",
            )
        )
        when, action = phase.split(" ")
        self.wire.hook = Hook(action, when, 1, self.db_fault)
        self.in_db_fault = True
        self.answered_500 = False
        try:
            await self.db_fault_phase(action)
            if self.answered_500:  # item 1 open: the order is left `sending`, as if crashed
                await self.crash_restart(f"database fault {phase} answered HTTP 500")
                await self.recover()
        except AssertionError:
            raise  # an invariant broke (SimulationFailure): no fault's doing
        except Exception as exc:
            # Item 1 open: the gateway does not survive the fault; it is restarted.
            self.fail(f"a database fault {phase} raised {exc!r}"[:300], bug="db-fault-fatal")
            await self.crash_restart(f"database fault {phase}")
            await self.recover()
        finally:
            self.in_db_fault = False
            self.wire.hook = None
            await self.join_locks()
        self.note(f"  (db fault {phase})")
        self.outcomes[f"db-fault:{phase}"] += 1

    async def db_fault_phase(self: Simulation, action: str) -> None:
        if action == "add":
            await self.step_add()
        elif action == "status":
            self.clock.advance(self.rng.choice((1, 2, 3)) * self.TICK)
            result = await self.sync_pass(batch_size=self.rng.choice((100, 3)))
            self.note(f"sync: polled {result.polled}, settled {result.settled}")
        else:
            await self.step_catalog_sync()

    # -- two instances, a lease that expires mid-pass --

    async def second_node(self: Simulation) -> Node:
        if self.node2 is None:
            self.node2 = await type(self.node).start(self.settings, self.wire)  # type: ignore[union-attr]
        return self.node2

    async def stop_second(self: Simulation) -> None:
        if self.node2 is not None:
            node, self.node2 = self.node2, None
            await node.stop()

    async def step_lease_race(self: Simulation) -> None:
        other = await self.second_node()

        async def the_other_instance() -> None:
            # The first instance's answer is computed; it arrives after its lease (the grace
            # and the longest an upstream call may take) ran out: its writes must then fail.
            self.clock.advance(self.grace + self.upstream.max_call_seconds + 3 * self.TICK)
            result = await sync_pass(
                other.db,
                other.providers,
                sending_grace_seconds=self.grace,
                batch_size=100,
                lease_seconds=self.grace,
            )
            self.note(f"  instance 2 meanwhile: polled {result.polled}, settled {result.settled}")
            if result.settled:
                self.outcomes["lease-race:settled-under-a-late-reply"] += 1

        self.wire.hook = Hook("status", "after", 1, the_other_instance)
        try:
            self.clock.advance(self.rng.choice((1, 2)) * self.TICK)
            result = await self.sync_pass(batch_size=self.rng.choice((100, 5)))
        finally:
            self.wire.hook = None
        self.note(f"lease race: instance 1 polled {result.polled}, settled {result.settled}")


async def catalog_sync_checked(sim: Simulation) -> None:
    try:
        result = await sync_catalog(sim.db, sim.upstream)
    except Exception as exc:
        if not sim.poisoned_services:
            raise
        sim.fail(
            f"one poison catalog entry raised out of the catalog sync: {exc!r}"[:300],
            bug="poison-catalog",
        )
        return
    sim.note(f"catalog sync: {'ok' if result.ok else result.error}")
    # (A fault of the services call itself may fail it: that is no poison's doing.)
    if sim.poisoned_services and not result.ok and not sim.sim.faults and not sim.wire.down:
        sim.fail(
            f"one poison catalog entry failed the whole catalog sync: {result.error}",
            bug="poison-catalog",
        )
    if result.ok:
        await sim.check_catalog()
