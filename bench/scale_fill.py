"""Fill a migrated smm-gateway database with a large, consistent data set, fast.

Bulk inserts straight into the tables (PostgreSQL: COPY through asyncpg's
`copy_records_to_table`; SQLite: `executemany` in one transaction, synchronous off), never
through the API: a million orders take minutes this way, days through `add`.

The data set (`--orders N`, 10,000 customers by default):

- the simulator's catalog as the services table (the gateway's catalog sync overwrites it with
  the same rows at start-up);
- customers, each with one API key (keys derived from the seed, so a run can use them) and one
  top-up; orders are spread over customers by a skewed draw (customer 1 holds ~1 % of all
  orders, the tail a few each), as a reseller's big and small clients would;
- 10 % of the orders active: `placed`, `Pending` or `In progress`, not settled, drawn among the
  newest 30 %, a tenth of them never refreshed yet; their upstream ids are the caller's (the
  simulator's own orders, see bench/scale.py) or made up;
- the rest final: `placed` and settled (Completed 80 %, Partial 12 % refunded by remains,
  Canceled 8 % refunded in full), 1 % `rejected` (refunded in full), 0.1 % `unknown` (funds
  held, not settled);
- the ledger: one charge per order, one refund per refunded order, one top-up per customer of
  what their orders cost plus a random balance left; so `ledger verify` holds.

PostgreSQL is left un-ANALYZEd (this machine runs with autovacuum off: the plans must hold on
stale statistics); the foreign-key triggers are skipped during the load
(`session_replication_role = replica`), the data being consistent by construction.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from app.db import Database
from app.money import charge_for, render
from app.settlement import remains_refund
from app.simulator.catalog import CATALOG

CUSTOMERS = 10_000
ACTIVE_SHARE = 0.10
SPAN = timedelta(days=180)  # orders were placed over the last half year
CHUNK = 50_000

ORDER_COLUMNS = (
    "id", "customer_id", "service_id", "state", "status", "params", "quantity", "rate", "charge",
    "cost", "refunded", "upstream_order_id", "upstream_charge", "upstream_first_charge",
    "service_type", "settle_by", "upstream_status", "start_count", "remains", "error",
    "announced", "idempotency_key", "request_hash", "created_at", "updated_at", "refreshed_at",
    "lease_until", "lease_owner", "held", "settled_at",
)  # fmt: skip
LEDGER_COLUMNS = ("id", "customer_id", "amount", "kind", "order_id", "ref", "memo", "created_at")
CUSTOMER_COLUMNS = ("id", "name", "markup_bp", "dialect", "balance", "disabled", "created_at")
KEY_COLUMNS = ("id", "customer_id", "prefix", "key_hash", "created_at", "revoked_at")
SERVICE_COLUMNS = (
    "id", "name", "category", "type", "rate", "min", "max", "dripfeed", "refill", "cancel",
    "description", "upstream_listed", "hidden", "display_name", "display_category", "updated_at",
)  # fmt: skip


def orderable_services() -> list:
    """The simulator's listed Default services without drip-feed: every order is one of them
    (an `add` of each needs only link and quantity, so the simulator can hold them too)."""
    return [s for s in CATALOG if s.type == "Default" and s.listed and not s.dripfeed]


def quantity_for(service, rng: random.Random) -> int:  # type: ignore[no-untyped-def]
    return rng.randint(service.min, max(service.min, min(service.max, service.min * 20)))


def customer_key(seed: int, customer_id: int) -> str:
    """The customer's API key (64 hex digits, like app.customers.new_key), from the seed."""
    return hashlib.sha256(f"smmgw-scale:{seed}:{customer_id}".encode()).hexdigest()


@dataclass
class Filled:
    """What a run needs to know about the data set it filled."""

    orders: int
    customers: int
    active: int
    seconds: float
    keys: dict[int, str]  # customer id → API key, for the customers a run uses
    heavy_customer: int  # the customer with the most orders
    heavy_orders: int
    heavy_active_order: int  # one of their active orders (the id a bot polls)
    rows: dict[str, int] = field(default_factory=dict)


@dataclass
class _Plan:
    """The orders and ledger entries, generated in chunks; per-customer totals on the side."""

    orders: int
    customers: int
    seed: int
    upstream_ids: Sequence[int] | None
    now: datetime
    spent: list[int] = field(default_factory=list)  # customer → Σ (charge − refund)
    counts: list[int] = field(default_factory=list)
    last_active: list[int] = field(default_factory=list)
    entry_id: int = 0
    active: int = 0

    def __post_init__(self) -> None:
        self.spent = [0] * (self.customers + 1)
        self.counts = [0] * (self.customers + 1)
        self.last_active = [0] * (self.customers + 1)

    def active_ids(self) -> set[int]:
        """Exactly 10 % of the orders, drawn among the newest 30 % (ids from 1)."""
        rng = random.Random(f"{self.seed}:active")
        want = int(self.orders * ACTIVE_SHARE)
        first = self.orders - max(want, int(self.orders * 0.3)) + 1
        return set(rng.sample(range(first, self.orders + 1), want))

    def chunks(self) -> Iterator[tuple[list[tuple], list[tuple]]]:
        rng = random.Random(f"{self.seed}:orders")
        services = orderable_services()
        active = self.active_ids()
        upstream = iter(self.upstream_ids) if self.upstream_ids is not None else None
        start = self.now - SPAN
        step = SPAN / max(self.orders, 1)
        orders: list[tuple] = []
        entries: list[tuple] = []
        for oid in range(1, self.orders + 1):
            customer = 1 + int(self.customers * rng.random() ** 2)
            service = services[rng.randrange(len(services))]
            quantity = quantity_for(service, rng)
            charge = charge_for(service.rate_micros, quantity)
            created = start + step * (oid - 1)
            link = f"https://t.me/scale_{oid}"
            params = json.dumps(
                {"service": str(service.id), "link": link, "quantity": str(quantity)}
            )
            state, status, refunded, settled = "placed", "", 0, None
            remains: int | None = None
            upstream_id: int | None = None
            upstream_status: str | None = None
            refreshed: datetime | None = None
            error: str | None = None
            if oid in active:
                status = "Pending" if rng.random() < 0.3 else "In progress"
                upstream_status = status
                remains = quantity
                upstream_id = next(upstream) if upstream is not None else 2_000_000_000 + oid
                # A tenth are new (never polled); the rest were polled by earlier passes.
                if rng.random() >= 0.1:
                    refreshed = self.now - timedelta(seconds=rng.uniform(30, 600))
                self.active += 1
                self.last_active[customer] = oid
            else:
                draw = rng.random()
                settled = min(created + timedelta(hours=rng.uniform(1, 72)), self.now)
                refreshed = settled
                if draw < 0.01:
                    state, status, refunded = "rejected", "Canceled", charge
                    error = "Incorrect service ID"
                elif draw < 0.011:
                    state, status, settled, refreshed = "unknown", "Pending", None, None
                    error = "ambiguous: read_timeout"
                else:
                    upstream_id = 1_000_000_000 + oid
                    fate = rng.random()
                    if fate < 0.80:
                        status, remains = "Completed", 0
                    elif fate < 0.92:
                        status, remains = "Partial", rng.randint(1, quantity - 1)
                        refunded = remains_refund(charge, remains, quantity)
                    else:
                        status, remains, refunded = "Canceled", quantity, charge
                    upstream_status = status
            orders.append(
                (
                    oid, customer, service.id, state, status, params, quantity,
                    service.rate_micros, charge, charge, refunded, upstream_id,
                    None, None, "Default", "remains", upstream_status,
                    rng.randint(0, 50_000) if upstream_id is not None else None, remains, error,
                    state != "rejected", None, None, created, refreshed or created, refreshed,
                    None, None, None, settled,
                )
            )  # fmt: skip
            self.entry_id += 1
            entries.append(
                (self.entry_id, customer, -charge, "charge", oid, f"charge:{oid}", None, created)
            )
            if refunded:
                self.entry_id += 1
                entries.append(
                    (self.entry_id, customer, refunded, "refund", oid, f"refund:{oid}", None,
                     settled)
                )  # fmt: skip
            self.spent[customer] += charge - refunded
            self.counts[customer] += 1
            if len(orders) >= CHUNK:
                yield orders, entries
                orders, entries = [], []
        if orders:
            yield orders, entries

    def customer_rows(self) -> tuple[list[tuple], list[tuple], list[tuple]]:
        """Customers (with their final balances), their keys and their top-ups."""
        rng = random.Random(f"{self.seed}:customers")
        joined = self.now - SPAN - timedelta(days=1)
        customers, keys, topups = [], [], []
        prefixes: set[str] = set()
        for cid in range(1, self.customers + 1):
            left = rng.randint(0, 5_000) * 10_000  # 0.00 … 50.00 still on the balance
            customers.append((cid, f"scale-{cid:05d}", None, "standard", left, False, joined))
            key = customer_key(self.seed, cid)
            if key[:8] in prefixes:
                raise RuntimeError(f"key prefix collision at customer {cid}: change --seed")
            prefixes.add(key[:8])
            keys.append((cid, cid, key[:8], hashlib.sha256(key.encode()).hexdigest(), joined, None))
            self.entry_id += 1
            amount = self.spent[cid] + left
            if amount > 0:
                topups.append(
                    (self.entry_id, cid, amount, "topup", None, f"topup:scale-{cid}",
                     f"scale fill {render(amount)}", joined)
                )  # fmt: skip
            else:  # a customer with no orders and nothing left: no entry at all
                self.entry_id -= 1
        return customers, keys, topups


def _service_rows(now: datetime) -> list[tuple]:
    return [
        (s.id, s.name, s.category, s.type, s.rate_micros, s.min, s.max, s.dripfeed, s.refill,
         s.cancel, s.desc, s.listed, False, None, None, now)
        for s in CATALOG
    ]  # fmt: skip


async def fill(
    url: str,
    orders: int,
    *,
    customers: int = CUSTOMERS,
    seed: int = 1,
    upstream_ids: Sequence[int] | None = None,
    progress: bool = False,
) -> Filled:
    """Migrate `url` (a fresh database) and fill it; returns what was filled and how long it
    took. `upstream_ids`: one per active order (10 % of `orders`), in order."""
    started = time.perf_counter()
    db = Database(url)
    try:
        await db.migrate()
    finally:
        await db.dispose()
    plan = _Plan(orders, customers, seed, upstream_ids, datetime.now(UTC))
    if upstream_ids is not None and len(upstream_ids) != int(orders * ACTIVE_SHARE):
        raise ValueError(f"{len(upstream_ids)} upstream ids for {int(orders * ACTIVE_SHARE)}")
    if url.startswith("sqlite"):
        rows = _fill_sqlite(url, plan, progress)
    else:
        rows = await _fill_postgres(url, plan, progress)
    heavy = max(range(1, customers + 1), key=lambda c: plan.counts[c])
    return Filled(
        orders=orders,
        customers=customers,
        active=plan.active,
        seconds=time.perf_counter() - started,
        keys={heavy: customer_key(seed, heavy), 1: customer_key(seed, 1)},
        heavy_customer=heavy,
        heavy_orders=plan.counts[heavy],
        heavy_active_order=plan.last_active[heavy],
        rows=rows,
    )


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"  fill: {text}", flush=True)


def _sqlite_value(value: object) -> object:
    # SQLAlchemy's SQLite DateTime format (naive UTC text); booleans as 0/1.
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    return value


def _sqlite_rows(rows: list[tuple]) -> Iterator[tuple]:
    return (tuple(_sqlite_value(v) for v in row) for row in rows)


def _fill_sqlite(url: str, plan: _Plan, progress: bool) -> dict[str, int]:
    path = url.split(":///", 1)[1]
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in ("synchronous=OFF", "cache_size=-400000", "temp_store=MEMORY"):
            conn.execute(f"PRAGMA {pragma}")
        conn.execute("BEGIN")

        def insert(table: str, columns: Sequence[str], rows: list[tuple]) -> None:
            marks = ", ".join("?" * len(columns))
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
            conn.executemany(sql, _sqlite_rows(rows))

        insert("services", SERVICE_COLUMNS, _service_rows(plan.now))
        done = 0
        for orders, entries in plan.chunks():
            insert("orders", ORDER_COLUMNS, orders)
            insert("ledger_entries", LEDGER_COLUMNS, entries)
            done += len(orders)
            _say(progress, f"{done:,} orders")
        customers, keys, topups = plan.customer_rows()
        insert("customers", CUSTOMER_COLUMNS, customers)
        insert("api_keys", KEY_COLUMNS, keys)
        insert("ledger_entries", LEDGER_COLUMNS, topups)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return _counts_sqlite(conn)
    finally:
        conn.close()


def _counts_sqlite(conn: sqlite3.Connection) -> dict[str, int]:
    return {
        t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
        for t in ("customers", "api_keys", "orders", "ledger_entries")
    }


async def _fill_postgres(url: str, plan: _Plan, progress: bool) -> dict[str, int]:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        # Consistent by construction: skip the per-row foreign-key triggers of the load.
        await conn.execute("SET session_replication_role = replica")
        async with conn.transaction():

            async def copy(table: str, columns: Sequence[str], rows: list[tuple]) -> None:
                await conn.copy_records_to_table(table, records=rows, columns=list(columns))

            await copy("services", SERVICE_COLUMNS, _service_rows(plan.now))
            done = 0
            for orders, entries in plan.chunks():
                await copy("orders", ORDER_COLUMNS, orders)
                await copy("ledger_entries", LEDGER_COLUMNS, entries)
                done += len(orders)
                _say(progress, f"{done:,} orders")
            customers, keys, topups = plan.customer_rows()
            await copy("customers", CUSTOMER_COLUMNS, customers)
            await copy("api_keys", KEY_COLUMNS, keys)
            await copy("ledger_entries", LEDGER_COLUMNS, topups)
            # Explicit ids were loaded: the app's next inserts must come after them.
            for table in ("customers", "api_keys", "orders", "ledger_entries"):
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                    f" GREATEST((SELECT MAX(id) FROM {table}), 1))"
                )
        return {
            t: await conn.fetchval(f"SELECT COUNT(*) FROM {t}")
            for t in ("customers", "api_keys", "orders", "ledger_entries")
        }
    finally:
        await conn.close()
