"""Reading orders (for customers and operators) and the operator's resolution of unknown ones."""

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from app.db import Conn, Database
from app.errors import NotFound, OperatorError
from app.models import Order, utcnow
from app.orders.placing import PLACED, REJECTED, SENDING, UNKNOWN, reject_and_refund


@dataclass(frozen=True)
class OrderView:
    id: int
    customer_id: int
    service_id: int
    state: str
    status: str
    quantity: int
    rate: int
    charge: int
    refunded: int
    upstream_order_id: int | None
    upstream_status: str | None
    upstream_charge: int | None
    start_count: int | None
    remains: int | None
    error: str | None
    params: dict[str, str]
    created_at: datetime
    refreshed_at: datetime | None
    upstream_first_charge: int | None = None
    held: str | None = None  # why its settlement waits (a final status without its figures)
    settled_at: datetime | None = None
    provider_id: int = 1  # the provider it was sent to (`default`: 1)

    @property
    def current_charge(self) -> int:
        """What the customer now pays: the charge less any refund."""
        return self.charge - self.refunded


_COLUMNS = (
    Order.id,
    Order.customer_id,
    Order.service_id,
    Order.state,
    Order.status,
    Order.quantity,
    Order.rate,
    Order.charge,
    Order.refunded,
    Order.upstream_order_id,
    Order.upstream_status,
    Order.upstream_charge,
    Order.start_count,
    Order.remains,
    Order.error,
    Order.params,
    Order.created_at,
    Order.refreshed_at,
    Order.upstream_first_charge,
    Order.held,
    Order.settled_at,
    Order.provider_id,
)


def _view(row: tuple) -> OrderView:
    values = list(row)
    values[15] = json.loads(values[15])
    return OrderView(*values)


async def held_settlements(db: Database) -> list[int]:
    """Orders whose final status came without the figures to settle it: the operator's to see
    (a CLI warning, `ledger verify`, the smmgw_settlements_held gauge) until they arrive."""
    async with db.read() as conn:
        rows = await conn.execute(
            select(Order.id).where(Order.held.is_not(None), Order.settled_at.is_(None))
        )
        return sorted(rows.scalars())


@dataclass(frozen=True)
class OrderStatusView:
    """What `status` shows a customer about one of their orders."""

    id: int
    status: str
    quantity: int
    charge: int
    refunded: int
    start_count: int | None
    remains: int | None

    @property
    def current_charge(self) -> int:
        return self.charge - self.refunded


# A customer sees their orders that may exist upstream, and any whose id they were given; one
# refused while they waited was never an order to them.
CUSTOMER_VISIBLE_STATES = (SENDING, PLACED, UNKNOWN)
_VISIBLE = ", ".join(f"'{state}'" for state in CUSTOMER_VISIBLE_STATES)
_STATUS_SQL = (
    "SELECT id, status, quantity, charge, refunded, start_count, remains FROM orders "
    f"WHERE customer_id = {{}} AND (state IN ({_VISIBLE}) OR announced) AND id {{}}"
)
_STATUS_ONE_SQLITE = _STATUS_SQL.format("?", "= ?")
_STATUS_ONE_PG = _STATUS_SQL.format("$1", "= $2::bigint")


async def customer_orders(
    db: Database, customer_id: int, ids: list[int]
) -> dict[int, OrderStatusView]:
    """This customer's visible orders among `ids`, in one read (on every `status` request)."""
    if not ids:
        return {}
    if len(ids) == 1:  # `id = $2`: one index descent in every plan, stale statistics or not
        rows = await db.fetch(_STATUS_ONE_SQLITE, _STATUS_ONE_PG, customer_id, ids[0])
    else:
        rows = await db.fetch(
            _STATUS_SQL.format("?", f"IN ({', '.join('?' * len(ids))})"),
            _STATUS_SQL.format("$1", "= ANY($2::bigint[])"),
            customer_id,
            *(ids if db.is_sqlite else [ids]),
        )
    return {row[0]: OrderStatusView(*row) for row in rows}


async def get_order(db: Database, order_id: int) -> OrderView:
    async with db.read() as conn:
        row = (await conn.execute(select(*_COLUMNS).where(Order.id == order_id))).first()
    if row is None:
        raise NotFound(f"no order {order_id}")
    return _view(tuple(row))


async def list_orders(
    db: Database, *, state: str | None = None, customer_id: int | None = None, limit: int = 100
) -> list[OrderView]:
    stmt = select(*_COLUMNS).order_by(Order.id.desc()).limit(limit)
    if state is not None:
        stmt = stmt.where(Order.state == state)
    if customer_id is not None:
        stmt = stmt.where(Order.customer_id == customer_id)
    async with db.read() as conn:
        return [_view(tuple(row)) for row in await conn.execute(stmt)]


async def count_by_state(db: Database) -> dict[str, int]:
    async with db.read() as conn:
        rows = await conn.execute(select(Order.state, func.count()).group_by(Order.state))
        return {state: count for state, count in rows}


async def refuse_taken(conn: Conn, upstream_order_id: int, order_id: int) -> None:
    """An upstream order of a provider belongs to one of our orders at most (a rejected one
    let it go); the provider is this order's."""
    provider = select(Order.provider_id).where(Order.id == order_id).scalar_subquery()
    taken = await conn.scalar(
        select(Order.id).where(
            Order.upstream_order_id == upstream_order_id,
            Order.provider_id == provider,
            Order.id != order_id,
            Order.state != REJECTED,
        )
    )
    if taken is not None:
        raise OperatorError(f"upstream order {upstream_order_id} belongs to order {taken}")


async def resolve(
    db: Database, order_id: int, *, upstream_order_id: int | None = None, not_placed: bool = False
) -> OrderView:
    """An operator's verdict on an `unknown` order: it exists upstream as `upstream_order_id`,
    or it was never placed (refund in full)."""
    if (upstream_order_id is None) == (not not_placed):
        raise OperatorError("say either --upstream-order N or --not-placed")
    order = await get_order(db, order_id)
    if order.state != UNKNOWN:
        raise OperatorError(f"order {order_id} is {order.state}, only unknown orders resolve")
    if not_placed:
        if not await reject_and_refund(
            db, order_id, error="not placed (operator)", note="resolved by the operator"
        ):
            raise OperatorError(f"order {order_id} changed meanwhile; look again")
        return await get_order(db, order_id)
    try:
        async with db.write() as conn:
            await refuse_taken(conn, upstream_order_id, order_id)
            result = await conn.execute(
                update(Order)
                .where(Order.id == order_id, Order.state == UNKNOWN)
                .values(
                    state=PLACED,
                    upstream_order_id=upstream_order_id,
                    error=None,
                    updated_at=utcnow(),
                )
            )
            if result.rowcount != 1:
                raise OperatorError(f"order {order_id} changed meanwhile; look again")
    except IntegrityError:  # another order took it between the check and the write
        raise OperatorError(
            f"upstream order {upstream_order_id} belongs to another order"
        ) from None
    return await get_order(db, order_id)
