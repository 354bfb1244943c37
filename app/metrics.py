"""Prometheus metrics at `/metrics` (text format), with the `prometheus-client` library.

Counted in the process that does the work (hot path: a cached labelled child, one increment):

- `smmgw_requests_total{action, outcome}`: contract requests. `action` is the action asked for
  (`services`, `add`, `status`, …) or `unknown`; `outcome` is `ok`, the class of the contract
  error answered (`invalid_key`, `incorrect_request`, `incorrect_service`, `bad_link`,
  `not_enough_funds`, `incorrect_order`, `incorrect_refill`, `not_refillable`,
  `quantity_too_low`, `quantity_too_high`, `missing_parameter`, `bad_parameter`,
  `too_many_ids`, `idempotency`, `temporarily_unavailable`, `other_error`), or `413`, `429`,
  `500`.
  For `refill`, `refill_status` and `cancel`, whose errors are inside the items, `outcome`
  is `ok` when at least one item succeeded, else the class of the first item's error.
- `smmgw_request_items_total{action, outcome}`: each item of those replies, `ok` or its
  error's class.
- `smmgw_request_duration_seconds{action}`: histogram, whole request (body read to reply sent).
- `smmgw_upstream_calls_total{action, outcome}`: every upstream call (`UpstreamClient.call`),
  `outcome` = `answer`, `refused:<reason>` or `ambiguous:<reason>` (app/upstream.py).
- `smmgw_upstream_call_duration_seconds{action, result}`: histogram, `result` = answer |
  refused | ambiguous.
- `smmgw_rate_limit_fail_open_total`: requests let through unlimited because the shared
  rate-limit store (Redis) could not be asked.

Read from the database at scrape time (a collector over one snapshot), so they are right
whichever process or instance answers the scrape:

- `smmgw_database_up`: 1 when the snapshot could be read (the others are absent otherwise).
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
  own balance at the upstream. Asked at scrape time at most once a minute for all processes and
  instances together (the claim is a row in the `kv` table), waiting at most 5 s; the value
  is kept in `kv`, so every process reports the same one. Absent until first known.

Several worker processes (`uvicorn --workers N`): set `PROMETHEUS_MULTIPROC_DIR` to an empty
directory, the same for all workers of one gateway, before they start; each process then
keeps its counters there and a scrape of any worker adds them all up (the client library's
multiprocess mode). `smm-gateway serve --workers N` (N > 1) makes a fresh temporary one by
itself and removes it on exit; a directory set by the operator is used as it is, and must be
emptied before each start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from app import contract
from app.models import Order, Setting, as_utc, utcnow

if TYPE_CHECKING:
    from app.db import Database
    from app.logs import RequestInfo
    from app.main import Gateway

log = logging.getLogger("smm_gateway.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
BALANCE_INTERVAL_SECONDS = 60.0
BALANCE_FETCH_SECONDS = 5.0
BALANCE_KEY = "upstream_balance"  # {"micros": …, "currency": …, "at": iso}
BALANCE_CHECKED_KEY = "upstream_balance_checked_at"
CATALOG_SYNCED_KEY = "catalog_synced_at"  # written by app/catalog.py
CATALOG_ERROR_KEY = "catalog_last_error"

REQUESTS = Counter(
    "smmgw_requests_total", "Contract requests by action and outcome.", ["action", "outcome"]
)
ITEMS = Counter(
    "smmgw_request_items_total",
    "Items of refill, refill_status and cancel replies, by action and outcome.",
    ["action", "outcome"],
)
REQUEST_SECONDS = Histogram(
    "smmgw_request_duration_seconds",
    "Contract request latency, body read to reply sent.",
    ["action"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
UPSTREAM_CALLS = Counter(
    "smmgw_upstream_calls_total",
    "Upstream calls by action and outcome (answer, refused:<reason>, ambiguous:<reason>).",
    ["action", "outcome"],
)
UPSTREAM_SECONDS = Histogram(
    "smmgw_upstream_call_duration_seconds",
    "Upstream call latency by action and result (answer, refused, ambiguous).",
    ["action", "result"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60),
)
RATE_LIMIT_FAIL_OPEN = Counter(
    "smmgw_rate_limit_fail_open_total",
    "Requests let through without a rate limit because Redis could not be asked.",
)


# --- the hot path ---------------------------------------------------------------------------

_ERROR_CLASSES = {
    contract.INVALID_KEY: "invalid_key",
    contract.INCORRECT_REQUEST: "incorrect_request",
    contract.INCORRECT_SERVICE: "incorrect_service",
    contract.BAD_LINK: "bad_link",
    contract.NOT_ENOUGH_FUNDS: "not_enough_funds",
    contract.INCORRECT_ORDER: "incorrect_order",
    contract.INCORRECT_REFILL: "incorrect_refill",
    contract.NOT_REFILLABLE: "not_refillable",
    contract.TEMPORARILY_UNAVAILABLE: "temporarily_unavailable",
}
_ERROR_PREFIXES = (
    ("Quantity less than minimal", "quantity_too_low"),
    ("Quantity more than maximum", "quantity_too_high"),
    ("Missing parameter", "missing_parameter"),
    ("Parameter ", "bad_parameter"),
    ("Too many ", "too_many_ids"),
    ("Idempotency-Key", "idempotency"),
)


def error_class(message: str) -> str:
    """A contract error string -> a label value from a small fixed set."""
    known = _ERROR_CLASSES.get(message)
    if known is not None:
        return known
    for prefix, name in _ERROR_PREFIXES:
        if message.startswith(prefix):
            return name
    return "other_error"


_request_children: dict[tuple[str, str], Any] = {}
_latency_children: dict[str, Any] = {}


def observe_request(info: RequestInfo, status: int, seconds: float) -> None:
    """The end of a request (RequestLogMiddleware's hook): counted when it was a contract call."""
    action = info.action
    if action is None:
        return
    outcome = info.outcome or ("ok" if status < 400 else str(status))
    counter = _request_children.get((action, outcome))
    if counter is None:
        counter = _request_children[(action, outcome)] = REQUESTS.labels(action, outcome)
    counter.inc()
    histogram = _latency_children.get(action)
    if histogram is None:
        histogram = _latency_children[action] = REQUEST_SECONDS.labels(action)
    histogram.observe(seconds)


def observe_items(action: str, errors: list[str | None]) -> None:
    """Each item of a refill / refill_status / cancel reply: `ok` (None) or its error's class."""
    for message in errors:
        ITEMS.labels(action, "ok" if message is None else error_class(message)).inc()


def observe_upstream(action: str, outcome: object, seconds: float) -> None:
    """One upstream call: `outcome` is an app.upstream Answer, Refused or Ambiguous."""
    result = type(outcome).__name__.lower()
    reason = getattr(outcome, "reason", None)
    UPSTREAM_CALLS.labels(action, f"{result}:{reason}" if reason else result).inc()
    UPSTREAM_SECONDS.labels(action, result).observe(seconds)


UPSTREAM_UNUSABLE = Counter(
    "smmgw_upstream_unusable_total",
    "Upstream items skipped: numbers out of range or malformed, unknown status words.",
    ["kind", "field"],
)


def count_unusable(kind: str, field: str, n: int = 1) -> None:
    UPSTREAM_UNUSABLE.labels(kind, field).inc(n)


def count_fail_open() -> None:
    RATE_LIMIT_FAIL_OPEN.inc()


# --- read at scrape time --------------------------------------------------------------------


@dataclass
class DbState:
    """What the database says at one scrape."""

    up: bool = False
    orders_by_state: dict[str, int] = field(default_factory=dict)
    active: int = 0
    oldest_refresh: datetime | None = None
    unknown_oldest: datetime | None = None
    held: int = 0
    kv: dict[str, str] = field(default_factory=dict)
    now: datetime = field(default_factory=utcnow)


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return as_utc(datetime.fromisoformat(text))
    except ValueError:
        return None


def _age(now: datetime, then: datetime | None) -> float:
    return max(0.0, (now - as_utc(then)).total_seconds()) if then is not None else 0.0


async def read_state(db: Database) -> DbState:
    from app.orders.placing import PLACED, UNKNOWN  # app.orders imports the upstream client

    state = DbState()
    active = (
        Order.state == PLACED,
        Order.status.not_in(tuple(contract.FINAL_STATUSES)),
        Order.settled_at.is_(None),
    )
    keys = (CATALOG_SYNCED_KEY, CATALOG_ERROR_KEY, BALANCE_KEY, BALANCE_CHECKED_KEY)
    try:
        async with db.read() as conn:
            rows = await conn.execute(select(Order.state, func.count()).group_by(Order.state))
            state.orders_by_state = {name: count for name, count in rows}
            count, oldest = (
                await conn.execute(
                    select(
                        func.count(), func.min(func.coalesce(Order.refreshed_at, Order.created_at))
                    ).where(*active)
                )
            ).one()
            state.active, state.oldest_refresh = count, oldest
            state.unknown_oldest = await conn.scalar(
                select(func.min(Order.created_at)).where(Order.state == UNKNOWN)
            )
            state.held = await conn.scalar(
                select(func.count()).where(Order.held.is_not(None), Order.settled_at.is_(None))
            )
            rows = await conn.execute(
                select(Setting.key, Setting.value).where(Setting.key.in_(keys))
            )
            state.kv = {key: value for key, value in rows}
    except Exception as exc:  # a scrape reports a database it cannot read; it never fails
        log.warning("metrics: database unreadable: %s", type(exc).__name__)
        return DbState(up=False)
    state.up = True
    state.now = utcnow()
    return state


def _oldest(value: object) -> datetime | None:
    """min() over a datetime column: a datetime, or SQLite's text of one."""
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, str):
        return _when(value.replace(" ", "T"))
    return None


class DbCollector(Collector):
    """The database-derived gauges of one snapshot."""

    def __init__(self, state: DbState) -> None:
        self.state = state

    def collect(self) -> Iterable[GaugeMetricFamily]:
        from app.catalog import upstream_state
        from app.orders.placing import STATES, UNKNOWN

        s = self.state
        yield GaugeMetricFamily(
            "smmgw_database_up", "1 when the database answered the scrape.", value=1 if s.up else 0
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
            value=_age(s.now, _oldest(s.unknown_oldest)),
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
            value=_age(s.now, _oldest(s.oldest_refresh)),
        )
        synced = _when(s.kv.get(CATALOG_SYNCED_KEY))
        yield GaugeMetricFamily(
            "smmgw_catalog_sync_age_seconds",
            "Seconds since the catalog was last fetched from the upstream (+Inf: never).",
            value=_age(s.now, synced) if synced is not None else math.inf,
        )
        yield GaugeMetricFamily(
            "smmgw_catalog_sync_failing",
            "1 when the last catalog fetch failed (the last good catalog is served).",
            value=1 if s.kv.get(CATALOG_ERROR_KEY) else 0,
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
                value=_age(s.now, at),
            )


def _balance(text: str | None) -> tuple[int, str, datetime | None] | None:
    if not text:
        return None
    try:
        data = json.loads(text)
        return int(data["micros"]), str(data.get("currency") or ""), _when(data.get("at"))
    except (ValueError, KeyError, TypeError):
        return None


# --- the upstream balance, at most once a minute for everyone -------------------------------


def _insert(conn: Any):  # type: ignore[no-untyped-def]
    return pg_insert if conn.dialect.name == "postgresql" else sqlite_insert


async def _claim_balance_check(db: Database) -> bool:
    """True for exactly one caller per interval, across processes and instances: the row is
    locked (FOR UPDATE; BEGIN IMMEDIATE on SQLite) while its time is compared and moved."""
    now = utcnow()
    async with db.write() as conn:
        await conn.execute(
            _insert(conn)(Setting)
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


async def refresh_upstream_balance(gateway: Gateway, state: DbState) -> bool:
    """Ask the upstream for our balance when nobody did in the last minute; True when a new
    value was stored."""
    checked = _when(state.kv.get(BALANCE_CHECKED_KEY))
    if checked is not None and _age(utcnow(), checked) < BALANCE_INTERVAL_SECONDS:
        return False
    if not await _claim_balance_check(gateway.db):
        return False
    try:
        async with asyncio.timeout(BALANCE_FETCH_SECONDS):
            result = await gateway.upstream.balance()
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
    async with gateway.db.write() as conn:
        await conn.execute(
            _insert(conn)(Setting)
            .values(key=BALANCE_KEY, value=value)
            .on_conflict_do_update(index_elements=["key"], set_={"value": value})
        )
    return True


# --- the endpoint ---------------------------------------------------------------------------


def render(state: DbState) -> bytes:
    """The exposition: this process's (or, in multiprocess mode, all workers') counters, then
    the database snapshot."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
        counted = generate_latest(registry)
    else:
        counted = generate_latest(REGISTRY)
    snapshot = CollectorRegistry(auto_describe=False)
    snapshot.register(DbCollector(state))
    return counted + generate_latest(snapshot)


async def scrape(gateway: Gateway) -> bytes:
    state = await read_state(gateway.db)
    if state.up:
        try:
            if await refresh_upstream_balance(gateway, state):
                state = await read_state(gateway.db)
        except Exception:  # the balance is a nicety; the scrape must answer
            log.exception("metrics: upstream balance refresh failed")
    return await asyncio.to_thread(render, state)


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics_endpoint(request: Request) -> Response:
    token = request.app.state.gateway.settings.metrics_token
    if token and not _bearer_is(request.headers.get("authorization", ""), token):
        return Response(
            "a valid metrics token is required\n",
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Response(await scrape(request.app.state.gateway), media_type=CONTENT_TYPE_LATEST)


def _bearer_is(header: str, token: str) -> bool:
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(
        given.strip().encode(), token.encode()
    )


# --- several worker processes ---------------------------------------------------------------


@contextmanager
def multiprocess_dir(workers: int) -> Iterator[str | None]:
    """For `serve`: with more than one worker and no PROMETHEUS_MULTIPROC_DIR, a fresh empty
    temporary directory, in the environment the workers inherit, removed on exit."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        yield given
        return
    if workers <= 1:
        yield None
        return
    path = tempfile.mkdtemp(prefix="smmgw-metrics-")
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)
