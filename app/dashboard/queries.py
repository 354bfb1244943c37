"""Reads only the dashboard's pages need (every write goes through app/admin/ops.py): orders
searched by several filters at once, a page at a time, and the price rules of the catalog.

The order search reads the same columns as `app.orders.queries`, into the same `OrderView`.
"""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from app.db import Database
from app.models import Customer, Order, PriceRule, Provider, Service
from app.orders.queries import _COLUMNS, OrderView, _view


@dataclass(frozen=True)
class OrderFilter:
    state: str | None = None
    status: str | None = None
    customer_id: int | None = None
    service_id: int | None = None
    provider_id: int | None = None
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before


def _where(f: OrderFilter) -> list:  # type: ignore[type-arg]
    where = []
    if f.state is not None:
        where.append(Order.state == f.state)
    if f.status is not None:
        where.append(Order.status == f.status)
    if f.customer_id is not None:
        where.append(Order.customer_id == f.customer_id)
    if f.service_id is not None:
        where.append(Order.service_id == f.service_id)
    if f.provider_id is not None:
        where.append(Order.provider_id == f.provider_id)
    if f.since is not None:
        where.append(Order.created_at >= f.since)
    if f.until is not None:
        where.append(Order.created_at < f.until)
    return where


async def search_orders(
    db: Database, f: OrderFilter, *, limit: int, offset: int
) -> tuple[list[OrderView], int]:
    """One page of the orders that match, newest first, and how many match in all."""
    where = _where(f)
    stmt = select(*_COLUMNS).where(*where).order_by(Order.id.desc()).limit(limit).offset(offset)
    async with db.read() as conn:
        total = await conn.scalar(select(func.count()).select_from(Order).where(*where))
        return [_view(tuple(row)) for row in await conn.execute(stmt)], int(total or 0)


@dataclass(frozen=True)
class Names:
    """Customers', services' and providers' names by id (as the operator sees them)."""

    customers: dict[int, str]
    services: dict[int, str]
    providers: dict[int, str]


async def names(db: Database) -> Names:
    """The names that label rows."""
    async with db.read() as conn:
        providers = {i: n for i, n in await conn.execute(select(Provider.id, Provider.name))}
        people = {i: n for i, n in await conn.execute(select(Customer.id, Customer.name))}
        services = {
            i: d or n
            for i, n, d in await conn.execute(
                select(Service.id, Service.name, Service.display_name)
            )
        }
    return Names(people, services, providers)


@dataclass(frozen=True)
class RuleRow:
    service_id: int
    customer_id: int | None  # None: the rule for everyone
    fixed_rate: int | None
    markup_bp: int | None
    below_cost_ok: bool


async def price_rules(db: Database, service_id: int | None = None) -> list[RuleRow]:
    stmt = select(
        PriceRule.service_id,
        PriceRule.customer_id,
        PriceRule.fixed_rate,
        PriceRule.markup_bp,
        PriceRule.below_cost_ok,
    ).order_by(PriceRule.service_id, PriceRule.customer_id)
    if service_id is not None:
        stmt = stmt.where(PriceRule.service_id == service_id)
    async with db.read() as conn:
        return [RuleRow(*row) for row in await conn.execute(stmt)]
