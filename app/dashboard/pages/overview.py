"""The overview: the business at a glance, and what waits for the operator.

Money today and this month (counted as `report` counts it), the daily margin of the last 30
days, our balance at each provider, orders by state, the orders and anomalies that need a decision
(each linking to the page where it is made), sync lag and catalog age; one sync pass on demand.
"""

import asyncio
from datetime import UTC, date, datetime, timedelta

from fastapi import APIRouter, Request, Response

from app import report
from app.admin import ops
from app.admin.schemas import ProviderBalanceOut
from app.catalog import LAST_ERROR, SYNCED_AT, upstream_state
from app.dashboard.auth import DashboardRoute, act
from app.dashboard.chart import margin_chart
from app.dashboard.pages.common import clients_of, db_of, settings_of, stored_moment
from app.dashboard.render import page
from app.errors import OperatorError
from app.gauges import read_state
from app.orders.placing import STATES, UNKNOWN
from app.orders.queries import held_settlements

router = APIRouter(prefix="/dashboard", route_class=DashboardRoute)

CHART_DAYS = 30
BALANCE_WAIT_SECONDS = 3.0  # the page does not wait on a slow upstream longer than this


async def _balances(request: Request) -> tuple[list[ProviderBalanceOut], bool]:
    """Our balance at every enabled provider, asked now; when they do not all answer within
    BALANCE_WAIT_SECONDS, what was last heard of each (and False)."""
    db = db_of(request)
    try:
        asked = ops.provider_balance(db, clients_of(request))
        return await asyncio.wait_for(asked, BALANCE_WAIT_SECONDS), True
    except TimeoutError:
        heard = [
            ProviderBalanceOut(
                provider=p.name,
                balance=p.balance,
                currency=p.balance_currency,
                error=None if p.balance is not None else "never heard",
                low_balance=p.low_balance,
            )
            for p in await ops.list_providers(db)
            if p.enabled
        ]
        return heard, False


@router.get("")
async def overview(request: Request) -> Response:
    db, settings = db_of(request), settings_of(request)
    today = datetime.now(UTC).date()
    state, (balances, asked_now) = await asyncio.gather(read_state(db), _balances(request))
    day = await ops.report(db, settings, today, today)
    month = await ops.report(db, settings, today.replace(day=1), today)
    days = await report.daily(db, today - timedelta(days=CHART_DAYS - 1), today)
    services = await ops.list_services(db, settings)
    now = datetime.now(UTC)
    oldest = stored_moment(state.oldest_refresh)
    synced_at = stored_moment(state.kv.get(SYNCED_AT))
    last_error = state.kv.get(LAST_ERROR) or None
    return page(
        request,
        "overview.html",
        day=day,
        month=month,
        chart=margin_chart(days, settings.currency),
        balances=balances,
        asked_now=asked_now,
        balance_wait=BALANCE_WAIT_SECONDS,
        by_state={s: state.orders_by_state.get(s, 0) for s in STATES},
        active=state.active,
        sync_lag=None if oldest is None else max(0, int((now - oldest).total_seconds())),
        synced_at=synced_at,
        catalog_error=last_error,
        key_refused=upstream_state(state.kv) == "key_refused",
        unknown=await ops.list_orders(db, state=UNKNOWN, limit=20),
        unknown_count=state.orders_by_state.get(UNKNOWN, 0),
        held=await held_settlements(db),
        suspended=[s for s in services if s.suspended or s.suspended_for_customers],
    )


@router.post("/sync")
async def sync_now(request: Request) -> Response:
    async def run() -> str:
        done = await ops.run_sync_pass(db_of(request), clients_of(request), settings_of(request))
        said = (
            f"Sync pass: {done.polled} orders polled in {done.upstream_calls} upstream calls,"
            f" {done.settled} settled, {done.failed_batches} batches failed"
        )
        if done.anomalies:
            said += "; anomalies: " + "; ".join(done.anomalies[:5])
        return said

    return await act(request, "/dashboard", run)


@router.get("/report")
async def period_report(request: Request, since: str = "", until: str = "") -> Response:
    """`smm-gateway report --since --until`: by customer and by service (UTC days, both
    included); this month by default."""
    today = datetime.now(UTC).date()
    problems, days = [], []
    for text, default in ((since, today.replace(day=1)), (until, today)):
        try:
            days.append(date.fromisoformat(text.strip()) if text.strip() else default)
        except ValueError:
            problems.append(f"{text.strip()!r} is not a day (YYYY-MM-DD)")
            days.append(default)
    first, last = days
    try:
        done = await ops.report(db_of(request), settings_of(request), first, last)
    except OperatorError as exc:
        problems.append(str(exc))
        done = await ops.report(db_of(request), settings_of(request), first, first)
    return page(request, "report.html", r=done, since=first, until=last, problems=problems)
