"""Reading orders (for customers and operators) and the operator's resolution of unknown ones."""

import json
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import Select, func, select, update
from sqlalchemy.exc import IntegrityError

from app.customers import (
    CALLER_WIDTH,
    Caller,
    authenticate,
    hash_key,
    keyed_select,
    split_caller,
)
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


class OrderStatusView(NamedTuple):
    """What `status` shows a customer about one of their orders (a tuple: a 100-id `status`
    builds 100 of them per request, and a frozen dataclass costs several times more)."""

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


# `status` in one read: the key's customer (app.customers.authenticate's join) and, joined to
# it, its visible orders among the ids. No orders found: one row, the order columns NULL; a
# key that is not live: no row. Numbered placeholders, so both dialects take the arguments in
# one order: the key hash, then the ids.
#
# PostgreSQL: the orders are read by id alone, in a CTE kept apart from the customer join
# (MATERIALIZED), then matched to the customer. Joined directly, the planner is free to reach
# them through the customer ("customer_id = c.id", then filter by id): on statistics nobody
# gathered it guesses a customer has one order and takes that plan, reading all of a big
# customer's orders (tests/test_query_plans.py saw it, through the (customer_id,
# idempotency_key) index). By id alone only the primary key descends to them: ≤ 100 rows.
_STATUS_COLUMNS = "o.id, o.status, o.quantity, o.charge, o.refunded, o.start_count, o.remains"
_KEYED_STATUS = keyed_select(
    _STATUS_COLUMNS,
    "LEFT JOIN orders o ON o.customer_id = c.id AND o.id IDS"
    f" AND (o.state IN ({_VISIBLE}) OR o.announced)",
)
_KEYED_STATUS_PG = (
    f"WITH o AS MATERIALIZED (SELECT o.customer_id, {_STATUS_COLUMNS} FROM orders o"
    f" WHERE o.id IDS AND (o.state IN ({_VISIBLE}) OR o.announced)) "
) + keyed_select(_STATUS_COLUMNS, "LEFT JOIN o ON o.customer_id = c.id")
_KEYED_ONE_SQLITE = _KEYED_STATUS.replace("IDS", "= ?2").format(key="?1")
_KEYED_ONE_PG = _KEYED_STATUS_PG.replace("IDS", "= $2::bigint").format(key="$1")
_KEYED_MANY_PG = _KEYED_STATUS_PG.replace("IDS", "= ANY($2::bigint[])").format(key="$1")
_keyed_many_sqlite: dict[int, str] = {}  # by the number of ids: each one prepared once


def _keyed_many_sqlite_sql(count: int) -> str:
    sql = _keyed_many_sqlite.get(count)
    if sql is None:
        marks = ", ".join(f"?{n}" for n in range(2, count + 2))
        sql = _keyed_many_sqlite[count] = _KEYED_STATUS.replace("IDS", f"IN ({marks})").format(
            key="?1"
        )
    return sql


async def caller_and_orders(
    db: Database, key: str, ids: list[int]
) -> tuple[Caller | None, dict[int, OrderStatusView]]:
    """The key's live customer (None: no such key) and their visible orders among `ids`,
    in one statement: the whole database work of a `status` request."""
    if not key:
        return None, {}
    if not ids:
        return await authenticate(db, key), {}
    digest = hash_key(key)
    if len(ids) == 1:
        rows = await db.fetch(_KEYED_ONE_SQLITE, _KEYED_ONE_PG, digest, ids[0])
    elif db.is_sqlite:
        distinct = list(dict.fromkeys(ids))
        sql = _keyed_many_sqlite_sql(len(distinct))
        rows = await db.fetch(sql, sql, digest, *distinct)
    else:
        rows = await db.fetch(_KEYED_MANY_PG, _KEYED_MANY_PG, digest, ids)
    if not rows:
        return None, {}
    caller, _ = split_caller(rows[0])
    at = CALLER_WIDTH  # where each row's order columns start (NULL: none found)
    return caller, {row[at]: OrderStatusView(*row[at:]) for row in rows if row[at] is not None}


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


def list_orders_statement(
    *, state: str | None = None, customer_id: int | None = None, limit: int = 100
) -> Select:
    """The newest orders first; for one customer, a backward walk of the (customer_id, id)
    index, which yields them in order (tests/test_query_plans.py)."""
    stmt = select(*_COLUMNS).order_by(Order.id.desc()).limit(limit)
    if state is not None:
        stmt = stmt.where(Order.state == state)
    if customer_id is not None:
        stmt = stmt.where(Order.customer_id == customer_id)
    return stmt


async def list_orders(
    db: Database, *, state: str | None = None, customer_id: int | None = None, limit: int = 100
) -> list[OrderView]:
    stmt = list_orders_statement(state=state, customer_id=customer_id, limit=limit)
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
