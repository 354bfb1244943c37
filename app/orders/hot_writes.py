"""Phases 1 and 3 of an order (app/orders/placing.py) as prebuilt statements, through the
driver: the fewest round trips and no per-statement SQLAlchemy work (bench/README.md).

PostgreSQL: phase 1 is one statement, a data-modifying CTE: debit the balance where it
suffices (ledger.post's rule: never below zero), insert the order, insert the ledger's charge
entry (ref `charge:<id>`: charged once); no row back means not enough funds, and nothing was
written. Phase 3 is one UPDATE guarded by the order's state. Each statement is its own
transaction. SQLite: the same statements, one BEGIN IMMEDIATE transaction on the stdlib
connection (app.db.Database.sqlite_write).

The order's columns are the caller's dict keys, so a statement is built once per set of
columns (and a new column needs no new SQL here).
"""

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import cache
from typing import Any

import asyncpg
from sqlalchemy import Column
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError

from app.db import Database
from app.ledger import CHARGE, CHARGE_REF_PREFIX
from app.models import LedgerEntry, Order

log = logging.getLogger("smm_gateway.orders")

_ORDERS = Order.__table__.c
_ENTRIES = LedgerEntry.__table__.c
_PG = postgresql.dialect()
_SQLITE = sqlite.dialect()


def _pg_type(column: Column[Any]) -> str:
    return column.type.compile(dialect=_PG)


def _sqlite_binder(column: Column[Any]) -> Callable[[Any], Any]:
    """How SQLAlchemy stores a value of this column on SQLite (datetimes as its text)."""
    process = column.type.dialect_impl(_SQLITE).bind_processor(_SQLITE)
    return process if process is not None else (lambda value: value)


# PostgreSQL aborts one statement of a lock cycle (a deadlock) or of a serialization conflict.
_LOCK_CYCLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
INTENT_DEADLOCK_RETRY_DELAYS = (0.01, 0.05, 0.2)


class NoFunds(Exception):
    """Phase 1 found the balance short: nothing was written."""


# --- phase 1 ----------------------------------------------------------------------------------


@cache
def _pg_intent(columns: tuple[str, ...]) -> str:
    """$1 the charge, $2 the customer, $3 the time, then the order's columns."""
    values = ", ".join(
        f"${n}::{_pg_type(_ORDERS[name])}" for n, name in enumerate(columns, start=4)
    )
    return (
        "WITH debit AS (UPDATE customers SET balance = balance - $1::bigint"
        " WHERE id = $2::integer AND balance - $1::bigint >= 0 RETURNING id),"
        f" placed AS (INSERT INTO orders ({', '.join(columns)}) SELECT {values} FROM debit"
        " RETURNING id),"
        " entry AS (INSERT INTO ledger_entries (customer_id, amount, kind, order_id, ref,"
        f" created_at) SELECT $2::integer, -$1::bigint, '{CHARGE}', id,"
        f" '{CHARGE_REF_PREFIX}' || id, $3::timestamptz FROM placed RETURNING order_id)"
        " SELECT order_id FROM entry"
    )


_SQLITE_DEBIT = "UPDATE customers SET balance = balance - ? WHERE id = ? AND balance - ? >= 0"
_SQLITE_ENTRY = (
    "INSERT INTO ledger_entries (customer_id, amount, kind, order_id, ref, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_entry_time = _sqlite_binder(_ENTRIES.created_at)


@cache
def _sqlite_insert(columns: tuple[str, ...]) -> tuple[str, tuple[Callable[[Any], Any], ...]]:
    marks = ", ".join("?" * len(columns))
    sql = f"INSERT INTO orders ({', '.join(columns)}) VALUES ({marks})"
    return sql, tuple(_sqlite_binder(_ORDERS[name]) for name in columns)


async def commit_intent_row(
    db: Database, customer_id: int, charge: int, now: datetime, order: Mapping[str, Any]
) -> int:
    """Debit `charge`, insert `order` (column → value) and its charge entry, atomically;
    returns the order's id. NoFunds (nothing written) when the balance is short."""
    columns = tuple(order)
    if not db.is_sqlite:
        sql = _pg_intent(columns)
        for delay in (*INTENT_DEADLOCK_RETRY_DELAYS, None):
            try:
                rows = await db.pg_write(sql, charge, customer_id, now, *order.values())
            except OperationalError as exc:
                # The server broke a lock cycle by aborting this statement: it wrote nothing
                # (one statement, its own transaction) and nothing was sent upstream yet, so
                # it is simply run again; the other side of the cycle has gone on meanwhile.
                if delay is None or not isinstance(exc.orig, _LOCK_CYCLE):
                    raise
                log.warning(
                    "phase 1 chosen to break a lock cycle (%s); again", type(exc.orig).__name__
                )
                await asyncio.sleep(delay)
                continue
            if not rows:
                raise NoFunds
            return rows[0][0]
        raise AssertionError("the last try raises")

    def run(raw: sqlite3.Connection) -> int:
        if raw.execute(_SQLITE_DEBIT, (charge, customer_id, charge)).rowcount != 1:
            raise NoFunds  # raised inside the transaction: it rolls back
        sql, binders = _sqlite_insert(columns)
        values = [bind(value) for bind, value in zip(binders, order.values(), strict=True)]
        order_id = raw.execute(sql, values).lastrowid
        assert order_id is not None
        entry = (customer_id, -charge, CHARGE, order_id, f"{CHARGE_REF_PREFIX}{order_id}")
        raw.execute(_SQLITE_ENTRY, (*entry, _entry_time(now)))
        return order_id

    return await db.sqlite_write(run)


# --- phase 3 ----------------------------------------------------------------------------------


@cache
def _pg_mark(columns: tuple[str, ...]) -> str:
    """$1 the order, $2 the states it may be in, then the new values."""
    sets = ", ".join(
        f"{name} = ${n}::{_pg_type(_ORDERS[name])}" for n, name in enumerate(columns, start=3)
    )
    return (
        f"UPDATE orders SET {sets} WHERE id = $1::integer AND state = ANY($2::text[]) RETURNING id"
    )


@cache
def _sqlite_mark(
    columns: tuple[str, ...], states: int
) -> tuple[str, tuple[Callable[[Any], Any], ...]]:
    sets = ", ".join(f"{name} = ?" for name in columns)
    marks = ", ".join("?" * states)
    sql = f"UPDATE orders SET {sets} WHERE id = ? AND state IN ({marks})"
    return sql, tuple(_sqlite_binder(_ORDERS[name]) for name in columns)


async def mark_row(
    db: Database, order_id: int, from_states: tuple[str, ...], values: Mapping[str, Any]
) -> bool:
    """Set `values` on the order if it is in one of `from_states`; False if it was not."""
    columns = tuple(values)
    if not db.is_sqlite:
        sql = _pg_mark(columns)
        return bool(await db.pg_write(sql, order_id, list(from_states), *values.values()))

    def run(raw: sqlite3.Connection) -> bool:
        sql, binders = _sqlite_mark(columns, len(from_states))
        bound = [bind(value) for bind, value in zip(binders, values.values(), strict=True)]
        return raw.execute(sql, (*bound, order_id, *from_states)).rowcount == 1

    return await db.sqlite_write(run)
