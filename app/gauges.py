"""The database gauges of `/metrics`, read off the request path.

A scrape costs O(1): it renders the last snapshot. One background task per process reads the
snapshot every SMMGW_METRICS_REFRESH_SECONDS (it starts with the first scrape, so a gateway
nobody scrapes reads nothing), in one consistent read transaction that on SQLite runs in a
thread: however large the orders table, neither a scrape nor a customer request waits for it.
The gauges lag the database by at most one interval plus one read; their ages (sync lag,
catalog age, …) are computed at scrape time.

The gauges, whichever process or instance answers the scrape:

- `smmgw_database_up`: 1 when the last snapshot could be read (the others are absent otherwise).
- `smmgw_orders{state}`: orders by placement state (`sending`, `placed`, `rejected`, `unknown`).
- `smmgw_orders_unknown`: orders whose fate at the upstream is unknown (funds held; an operator
  resolves them: `smm-gateway orders resolve`); `smmgw_orders_unknown_oldest_age_seconds`.
- `smmgw_settlements_held`: final orders not settled because the upstream reported neither
  remains nor charge (listed by every CLI command and `ledger verify`).
- `smmgw_orders_active`: placed orders not final yet; `smmgw_sync_lag_seconds`: age of the
  oldest refresh among them (never refreshed: since created), 0 when there are none.
- `smmgw_catalog_sync_age_seconds` (+Inf before the first sync), `smmgw_catalog_sync_failing`
  (1 when the last catalog fetch failed and the last good catalog is being served),
  `smmgw_upstream_key_refused` (1 when that fetch failed because the upstream refused our key).
- `smmgw_upstream_balance{currency}` and `smmgw_upstream_balance_age_seconds`: the reseller's
  own balance at the upstream. Asked by the refresh at most once a minute for all processes
  and instances together (the claim is a row in the `kv` table), waiting at most 5 s; the value
  is kept in `kv`, so every process reports the same one. Absent until first known.
- `smmgw_metrics_snapshot_age_seconds`: how old the snapshot these gauges come from is.
- By provider (issue 13): `smmgw_provider_balance{provider,currency}` (our balance there as
  last heard: asked with the upstream balance above, for every enabled provider),
  `smmgw_provider_low_balance{provider}` (1 while below the operator's `--low-balance`),
  `smmgw_provider_enabled{provider}`, `smmgw_provider_orders_unknown{provider}` (unresolved
  orders on that provider).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Connection, func, select, text, update

from app import contract
from app.catalog import LAST_ERROR, SYNCED_AT, _set_kv, _upsert, upstream_state
from app.db import Database
from app.models import DEFAULT_PROVIDER_ID, DUE_WHERE, Order, Provider, Setting, as_utc, utcnow
from app.orders.placing import PLACED, STATES, UNKNOWN
from app.providers import ProviderClients, record_balance
from app.upstream import UpstreamClient

log = logging.getLogger("smm_gateway.metrics")

BALANCE_INTERVAL_SECONDS = 60.0
BALANCE_FETCH_SECONDS = 5.0
BALANCE_KEY = "upstream_balance"  # {"micros": …, "currency": …, "at": iso}
BALANCE_CHECKED_KEY = "upstream_balance_checked_at"


@dataclass
class DbState:
    """What the database said at one refresh."""

    up: bool = False
    orders_by_state: dict[str, int] = field(default_factory=dict)
    active: int = 0
    oldest_refresh: datetime | None = None
    unknown_oldest: datetime | None = None
    held: int = 0
    kv: dict[str, str] = field(default_factory=dict)
    # name, enabled, balance, currency, low-balance threshold; unknown orders by provider name
    providers: list[tuple[str, bool, int | None, str | None, int | None]] = field(
        default_factory=list
    )
    unknown_by_provider: dict[str, int] = field(default_factory=dict)
    read_at: float = field(default_factory=time.monotonic)  # when the read began


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return as_utc(datetime.fromisoformat(text))
    except ValueError:
        return None


def _age(now: datetime, then: datetime | None) -> float:
    return max(0.0, (now - as_utc(then)).total_seconds()) if then is not None else 0.0


_FINAL_SQL = ", ".join(f"'{status}'" for status in sorted(contract.FINAL_STATUSES))


def _unsettled_placed(conn: Connection) -> str:
    """FROM and WHERE of the reads of active orders: the partial index ix_orders_due holds
    exactly those (a tenth of the table or less), its condition written out so that a planner
    may use it. SQLite is told to (INDEXED BY): never analysed, it rates (state, created_at),
    which walks every placed order, just as good."""
    hint = " INDEXED BY ix_orders_due" if conn.dialect.name == "sqlite" else ""
    return f"FROM orders{hint} WHERE {DUE_WHERE}"


_KEYS = (SYNCED_AT, LAST_ERROR, BALANCE_KEY, BALANCE_CHECKED_KEY)


def _read(conn: Connection, state: DbState) -> None:
    """Every gauge query, fetched whole: on SQLite this whole function runs in a thread (a
    row fetched later, in the loop, could still be scanning)."""
    # By state without grouping the whole table: the few orders in states other than `placed`
    # by the (state, created_at) index's ranges either side of it, `placed` the rest of a plain
    # count (a count of every entry of the smallest index: at a million orders ~7 ms on SQLite,
    # where grouping them took ~250 ms in the gateway's own process).
    total = conn.scalar(select(func.count()).select_from(Order))
    others = {
        name: count
        for side in (Order.state < PLACED, Order.state > PLACED)
        for name, count in conn.execute(
            select(Order.state, func.count()).where(side).group_by(Order.state)
        )
    }
    state.orders_by_state = {**others, PLACED: total - sum(others.values())}
    state.active, state.oldest_refresh = conn.execute(
        text(
            "SELECT count(*), min(coalesce(refreshed_at, created_at))"
            f" {_unsettled_placed(conn)} AND status NOT IN ({_FINAL_SQL})"
        )
    ).one()
    state.unknown_oldest = conn.scalar(
        select(func.min(Order.created_at)).where(Order.state == UNKNOWN)
    )
    # Only a placed order's settlement is ever held (app.sync): those of the same index.
    state.held = conn.scalar(
        text(f"SELECT count(*) {_unsettled_placed(conn)} AND held IS NOT NULL")
    )
    rows = conn.execute(select(Setting.key, Setting.value).where(Setting.key.in_(_KEYS))).all()
    state.kv = {key: value for key, value in rows}
    columns = (
        Provider.name,
        Provider.enabled,
        Provider.balance,
        Provider.balance_currency,
        Provider.low_balance_threshold,
    )
    state.providers = [
        tuple(row) for row in conn.execute(select(*columns).order_by(Provider.id)).all()
    ]
    rows = conn.execute(
        select(Provider.name, func.count(Order.id))
        .join(Provider, Provider.id == Order.provider_id)
        .where(Order.state == UNKNOWN)
        .group_by(Provider.name)
    ).all()
    state.unknown_by_provider = {name: count for name, count in rows}


async def read_state(db: Database) -> DbState:
    """One consistent snapshot of the gauges' figures, read off the event loop."""
    state = DbState()
    try:
        async with db.snapshot() as conn:
            await conn.run_sync(_read, state)
    except Exception as exc:  # a scrape reports a database it cannot read; it never fails
        log.warning("metrics: database unreadable: %s", type(exc).__name__)
        return DbState(up=False, read_at=state.read_at)
    state.up = True
    return state


def _oldest(value: object) -> datetime | None:
    """min() over a datetime column: a datetime, or SQLite's text of one."""
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, str):
        return _when(value.replace(" ", "T"))
    return None


class DbCollector(Collector):
    """The database-derived gauges of one snapshot; ages are counted at collection time."""

    def __init__(self, state: DbState) -> None:
        self.state = state

    def collect(self) -> Iterable[GaugeMetricFamily]:
        s, now = self.state, utcnow()
        yield GaugeMetricFamily(
            "smmgw_metrics_snapshot_age_seconds",
            "Seconds since the snapshot behind the database gauges was read.",
            value=max(0.0, time.monotonic() - s.read_at),
        )
        yield GaugeMetricFamily(
            "smmgw_database_up", "1 when the database answered the refresh.", value=1 if s.up else 0
        )
        if not s.up:
            return
        by_state = GaugeMetricFamily("smmgw_orders", "Orders by placement state.", labels=["state"])
        for name in sorted({*STATES, *s.orders_by_state}):
            by_state.add_metric([name], s.orders_by_state.get(name, 0))
        yield by_state
        yield GaugeMetricFamily(
            "smmgw_orders_unknown",
            "Orders whose fate at the upstream is unknown: funds held until an operator resolves.",
            value=s.orders_by_state.get(UNKNOWN, 0),
        )
        yield GaugeMetricFamily(
            "smmgw_orders_unknown_oldest_age_seconds",
            "Age of the oldest unresolved unknown order (0 when none).",
            value=_age(now, _oldest(s.unknown_oldest)),
        )
        yield GaugeMetricFamily(
            "smmgw_settlements_held",
            "Final orders not settled: the upstream reported neither remains nor charge.",
            value=s.held,
        )
        yield GaugeMetricFamily(
            "smmgw_orders_active", "Placed orders not final yet.", value=s.active
        )
        yield GaugeMetricFamily(
            "smmgw_sync_lag_seconds",
            "Age of the oldest status refresh among active orders (0 when none).",
            value=_age(now, _oldest(s.oldest_refresh)),
        )
        synced = _when(s.kv.get(SYNCED_AT))
        yield GaugeMetricFamily(
            "smmgw_catalog_sync_age_seconds",
            "Seconds since the catalog was last fetched from the upstream (+Inf: never).",
            value=_age(now, synced) if synced is not None else math.inf,
        )
        yield GaugeMetricFamily(
            "smmgw_catalog_sync_failing",
            "1 when the last catalog fetch failed (the last good catalog is served).",
            value=1 if s.kv.get(LAST_ERROR) else 0,
        )
        yield GaugeMetricFamily(
            "smmgw_upstream_key_refused",
            "1 when the upstream refused our key (SMMGW_UPSTREAM_KEY) at the last catalog fetch.",
            value=1 if upstream_state(s.kv) == "key_refused" else 0,
        )
        balance = _balance(s.kv.get(BALANCE_KEY))
        if balance is not None:
            micros, currency, at = balance
            gauge = GaugeMetricFamily(
                "smmgw_upstream_balance",
                "The reseller's own balance at the upstream panel.",
                labels=["currency"],
            )
            gauge.add_metric([currency], micros / 1_000_000)
            yield gauge
            yield GaugeMetricFamily(
                "smmgw_upstream_balance_age_seconds",
                "Seconds since the upstream balance was read.",
                value=_age(now, at),
            )

        yield from _provider_gauges(s)


def _provider_gauges(s: DbState) -> Iterable[GaugeMetricFamily]:
    balance = GaugeMetricFamily(
        "smmgw_provider_balance",
        "Our balance at each provider, as last heard.",
        labels=["provider", "currency"],
    )
    low = GaugeMetricFamily(
        "smmgw_provider_low_balance",
        "1 while our balance at the provider is below the operator's threshold.",
        labels=["provider"],
    )
    enabled = GaugeMetricFamily(
        "smmgw_provider_enabled", "1 when the provider takes new orders.", labels=["provider"]
    )
    unknown = GaugeMetricFamily(
        "smmgw_provider_orders_unknown",
        "Unresolved orders (state unknown) on each provider.",
        labels=["provider"],
    )
    for name, on, micros, currency, threshold in s.providers:
        enabled.add_metric([name], 1 if on else 0)
        unknown.add_metric([name], s.unknown_by_provider.get(name, 0))
        if micros is not None:
            balance.add_metric([name, currency or ""], micros / 1_000_000)
            below = bool(on) and threshold is not None and micros < threshold
            low.add_metric([name], 1 if below else 0)
    yield from (balance, low, enabled, unknown)


def _balance(text: str | None) -> tuple[int, str, datetime | None] | None:
    if not text:
        return None
    try:
        data = json.loads(text)
        return int(data["micros"]), str(data.get("currency") or ""), _when(data.get("at"))
    except (ValueError, KeyError, TypeError):
        return None


# --- the upstream balance, at most once a minute for everyone -------------------------------


async def _claim_balance_check(db: Database) -> bool:
    """True for exactly one caller per interval, across processes and instances: the row is
    locked (FOR UPDATE; BEGIN IMMEDIATE on SQLite) while its time is compared and moved."""
    now = utcnow()
    async with db.write() as conn:
        await conn.execute(
            _upsert(conn)(Setting)
            .values(key=BALANCE_CHECKED_KEY, value="")
            .on_conflict_do_nothing(index_elements=["key"])
        )
        last = await conn.scalar(
            select(Setting.value).where(Setting.key == BALANCE_CHECKED_KEY).with_for_update()
        )
        checked = _when(last)
        if checked is not None and _age(now, checked) < BALANCE_INTERVAL_SECONDS:
            return False
        await conn.execute(
            update(Setting).where(Setting.key == BALANCE_CHECKED_KEY).values(value=now.isoformat())
        )
    return True


async def refresh_upstream_balance(
    db: Database, upstream: UpstreamClient, state: DbState, clients: ProviderClients | None = None
) -> bool:
    """Ask the upstream (and every other enabled provider in `clients`) for our balance when
    nobody did in the last minute; True when a new value was stored."""
    checked = _when(state.kv.get(BALANCE_CHECKED_KEY))
    if checked is not None and _age(utcnow(), checked) < BALANCE_INTERVAL_SECONDS:
        return False
    if not await _claim_balance_check(db):
        return False
    others = await refresh_provider_balances(db, clients) if clients is not None else False
    return await _default_balance(db, upstream) or others


async def _default_balance(db: Database, upstream: UpstreamClient) -> bool:
    try:
        async with asyncio.timeout(BALANCE_FETCH_SECONDS):
            result = await upstream.balance()
    except TimeoutError:
        log.warning("metrics: upstream balance not read within %.0f s", BALANCE_FETCH_SECONDS)
        return False
    if not isinstance(result, tuple):
        log.warning(
            "metrics: upstream balance unavailable (%s: %s)",
            type(result).__name__.lower(),
            result.reason,
        )
        return False
    micros, currency = result
    value = json.dumps({"micros": micros, "currency": currency, "at": utcnow().isoformat()})
    async with db.write() as conn:
        await _set_kv(conn, BALANCE_KEY, value)
    await record_balance(db, DEFAULT_PROVIDER_ID, micros, currency)
    return True


async def refresh_provider_balances(db: Database, clients: ProviderClients) -> bool:
    """Every other enabled provider's balance, with the upstream's (same claim, same bound):
    the low-balance warning and gauges read what this stores."""
    stored = False
    for provider_id, client in sorted(clients.enabled().items()):
        if provider_id == DEFAULT_PROVIDER_ID:
            continue
        try:
            async with asyncio.timeout(BALANCE_FETCH_SECONDS):
                result = await client.balance()
        except TimeoutError:
            continue
        if isinstance(result, tuple):
            await record_balance(db, provider_id, *result)
            stored = True
        else:
            log.warning("metrics: provider %s balance unavailable", client.provider)
    return stored


# --- the snapshot and its refresh -----------------------------------------------------------


class Gauges:
    """The last snapshot, refreshed by one task every `interval` seconds once first asked."""

    def __init__(
        self,
        db: Database,
        upstream: UpstreamClient,
        interval: float,
        clients: ProviderClients | None = None,
    ) -> None:
        self.db, self.upstream, self.interval = db, upstream, interval
        self.clients = clients  # the other providers, whose balances are asked alongside
        self.state: DbState | None = None
        self.refreshes = 0  # completed refreshes, for tests and curiosity
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reading: asyncio.Future[DbState] | None = None

    async def current(self) -> DbState:
        """The snapshot to render. Only the first scrape of a process waits, for the first read."""
        if self._task is None:
            self._task = asyncio.create_task(self._refresh_forever())
        if self.state is None:
            await self._ready.wait()
        assert self.state is not None
        return self.state

    async def _read(self) -> DbState:
        """read_state, shielded: a cancelled refresh must not leave a read running in a thread
        on a connection that `close` is about to dispose of (SQLite would crash)."""
        self._reading = asyncio.ensure_future(read_state(self.db))
        return await asyncio.shield(self._reading)

    async def refresh(self) -> None:
        state = await self._read()
        if state.up:
            try:
                if await refresh_upstream_balance(self.db, self.upstream, state, self.clients):
                    state = await self._read()
            except Exception:  # the balance is a nicety; the gauges must go on
                log.exception("metrics: upstream balance refresh failed")
        self.state = state
        self.refreshes += 1
        self._ready.set()

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # the loop must outlive any one bad refresh
                log.exception("metrics: gauge refresh failed")
                if self.state is None:  # the first scrape must not wait forever
                    self.state = DbState(up=False)
                    self._ready.set()
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._reading is not None and not self._reading.done():
            await self._reading  # finishes its statements before the database is disposed of
