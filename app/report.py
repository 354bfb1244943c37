"""Revenue, upstream cost and margin, per customer, per service and per provider, over a
period. An order's cost is its own provider's: what that provider charged (or its rate for
the order until it reports a charge)."""

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import ColumnElement, and_, case, func, select

from app.contract import CANCELED
from app.db import Database
from app.models import Customer, Order, Provider, Service
from app.orders.placing import PLACED, UNKNOWN


@dataclass(frozen=True)
class ReportLine:
    key: int
    name: str
    orders: int
    revenue: int  # what customers pay: charges less refunds
    upstream_cost: int  # what the upstream keeps (its reported charge, else catalog cost)
    margin: int


@dataclass(frozen=True)
class Report:
    since: datetime | None
    until: datetime | None
    by_customer: list[ReportLine]
    by_service: list[ReportLine]
    total: ReportLine
    by_provider: list[ReportLine] = field(default_factory=list)


def _period(since: datetime | None, until: datetime | None) -> list[ColumnElement[bool]]:
    where = [Order.state.in_((PLACED, UNKNOWN))]
    if since is not None:
        where.append(Order.created_at >= since)
    if until is not None:
        where.append(Order.created_at < until)
    return where


_GROUPED_BY = {
    Customer: Order.customer_id,
    Service: Order.service_id,
    Provider: Order.provider_id,
}


def _revenue() -> ColumnElement[int]:
    return func.sum(Order.charge - Order.refunded)


def _cost() -> ColumnElement[int]:
    # What the upstream keeps: nothing of an order settled Canceled (whatever it reported
    # before, and a SmartPanel drip-feed parent reports no charge at all); else its own
    # reported charge once heard; until then its catalog price.
    return func.sum(
        case(
            (and_(Order.settled_at.is_not(None), Order.status == CANCELED), 0),
            (Order.upstream_charge.is_not(None), Order.upstream_charge),
            else_=Order.cost,
        )
    )


async def _lines(
    db: Database,
    where: list[ColumnElement[bool]],
    by: type[Customer] | type[Service] | type[Provider],
) -> list[ReportLine]:
    revenue, cost = _revenue(), _cost()
    join_on = by.id == _GROUPED_BY[by]
    stmt = (
        select(by.id, by.name, func.count(Order.id), revenue, cost)
        .join(by, join_on)
        .where(*where)
        .group_by(by.id, by.name)
        .order_by(by.id)
    )
    async with db.read() as conn:
        return [
            ReportLine(k, n, c, int(r or 0), int(u or 0), int(r or 0) - int(u or 0))
            for k, n, c, r, u in await conn.execute(stmt)
        ]


async def build_report(
    db: Database, since: datetime | None = None, until: datetime | None = None
) -> Report:
    where = _period(since, until)
    by_customer = await _lines(db, where, Customer)
    by_service = await _lines(db, where, Service)
    total = ReportLine(
        0,
        "total",
        sum(line.orders for line in by_customer),
        sum(line.revenue for line in by_customer),
        sum(line.upstream_cost for line in by_customer),
        sum(line.margin for line in by_customer),
    )
    by_provider = await _lines(db, where, Provider)
    return Report(since, until, by_customer, by_service, total, by_provider)


@dataclass(frozen=True)
class DayLine:
    day: date
    orders: int
    revenue: int
    upstream_cost: int
    margin: int


async def daily(db: Database, first: date, last: date) -> list[DayLine]:
    """Each day (UTC) from `first` to `last`, both included, counted as `build_report` counts;
    a day without orders is a line of zeros."""
    since = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    until = datetime.combine(last + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    # The UTC day of each order: SQLite stores UTC text; PostgreSQL's date() of a timestamptz
    # would take the session's time zone.
    day = (
        func.date(Order.created_at)
        if db.is_sqlite
        else func.date(func.timezone("UTC", Order.created_at))
    )
    stmt = (
        select(day, func.count(Order.id), _revenue(), _cost())
        .where(*_period(since, until))
        .group_by(day)
    )
    async with db.read() as conn:
        found = {
            (d if isinstance(d, date) else date.fromisoformat(str(d))): (
                int(n),
                int(r or 0),
                int(c or 0),
            )
            for d, n, r, c in await conn.execute(stmt)
        }
    lines = []
    for offset in range((last - first).days + 1):
        today = first + timedelta(days=offset)
        n, revenue, cost = found.get(today, (0, 0, 0))
        lines.append(DayLine(today, n, revenue, cost, revenue - cost))
    return lines
