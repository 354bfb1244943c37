"""Customers and their API keys. Keys are shown once and stored only as SHA-256 hashes."""

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, get_args

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from app.db import Database
from app.errors import NotFound, OperatorError
from app.models import ApiKey, Customer, utcnow
from app.settings import Dialect

KEY_BYTES = 32
PREFIX_LENGTH = 8


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return secrets.token_hex(KEY_BYTES)


@dataclass(frozen=True)
class Caller:
    """The customer behind a valid key, as the request path needs it."""

    customer_id: int
    dialect: str
    markup_bp: int | None
    balance: int


@dataclass(frozen=True)
class CustomerView:
    id: int
    name: str
    markup_bp: int | None
    dialect: str
    balance: int
    disabled: bool
    created_at: datetime


@dataclass(frozen=True)
class KeyView:
    prefix: str
    customer_id: int
    created_at: datetime
    revoked_at: datetime | None


# The key's live customer, as the first columns of a hot read (`keyed_select`): other reads
# join what they need to it (`status` its orders, `add` its priced service), one statement.
_CALLER_COLUMNS = "c.id, c.dialect, c.markup_bp, c.balance"
CALLER_WIDTH = 4
_KEYED_FROM = "api_keys k JOIN customers c ON c.id = k.customer_id"
_KEYED_WHERE = "k.key_hash = {key} AND k.revoked_at IS NULL AND NOT c.disabled"


def keyed_select(columns: str = "", joins: str = "") -> str:
    """SELECT the caller's columns (then `columns`) from the key's live customer (`c`), with
    `joins`; `{key}` is left for the key hash's placeholder: `.format(key="$1")`."""
    more = f", {columns}" if columns else ""
    return f"SELECT {_CALLER_COLUMNS}{more} FROM {_KEYED_FROM} {joins} WHERE {_KEYED_WHERE}"


def split_caller(row: Sequence[Any]) -> tuple[Caller, tuple[Any, ...]]:
    """A keyed_select row: the caller, and the columns the read added."""
    return Caller(*row[:CALLER_WIDTH]), tuple(row[CALLER_WIDTH:])


_AUTHENTICATE = keyed_select()
_AUTHENTICATE_SQLITE = _AUTHENTICATE.format(key="?")
_AUTHENTICATE_PG = _AUTHENTICATE.format(key="$1")


async def authenticate(db: Database, key: str) -> Caller | None:
    """One indexed read on every request: the key's live customer with its balance, or None.
    Nothing is cached, so a revocation or a disabling counts from the next request."""
    if not key:
        return None
    rows = await db.fetch(_AUTHENTICATE_SQLITE, _AUTHENTICATE_PG, hash_key(key))
    return Caller(*rows[0]) if rows else None


async def _insert_key(db: Database, customer_id: int) -> str:
    # A prefix collision (one in four billion) just draws again.
    for _ in range(5):
        key = new_key()
        try:
            async with db.write() as conn:
                await conn.execute(
                    insert(ApiKey).values(
                        customer_id=customer_id, prefix=key[:PREFIX_LENGTH], key_hash=hash_key(key)
                    )
                )
            return key
        except IntegrityError:
            continue
    raise RuntimeError("could not draw a unique key prefix")


def _check_dialect(dialect: str) -> None:
    if dialect not in get_args(Dialect):
        raise OperatorError(f"dialect must be one of {', '.join(get_args(Dialect))}")


async def create_customer(
    db: Database, name: str, dialect: str, markup_bp: int | None = None
) -> tuple[int, str]:
    """Create a customer with one key; returns (id, key). The key is never retrievable again."""
    name = name.strip()
    if not name:
        raise OperatorError("name must not be empty")
    _check_dialect(dialect)
    try:
        async with db.write() as conn:
            result = await conn.execute(
                insert(Customer).values(name=name, dialect=dialect, markup_bp=markup_bp)
            )
            customer_id = result.inserted_primary_key[0]
    except IntegrityError:
        raise OperatorError(f"a customer named {name!r} exists already") from None
    return customer_id, await _insert_key(db, customer_id)


async def issue_key(db: Database, customer_id: int) -> str:
    await get_customer(db, customer_id)
    return await _insert_key(db, customer_id)


async def revoke_key(db: Database, prefix: str) -> None:
    async with db.write() as conn:
        result = await conn.execute(
            update(ApiKey)
            .where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
    if result.rowcount != 1:
        raise NotFound(f"no live key with prefix {prefix!r}")


async def list_keys(db: Database, customer_id: int) -> list[KeyView]:
    stmt = (
        select(ApiKey.prefix, ApiKey.customer_id, ApiKey.created_at, ApiKey.revoked_at)
        .where(ApiKey.customer_id == customer_id)
        .order_by(ApiKey.id)
    )
    async with db.read() as conn:
        return [KeyView(*row) for row in await conn.execute(stmt)]


_CUSTOMER_COLUMNS = (
    Customer.id,
    Customer.name,
    Customer.markup_bp,
    Customer.dialect,
    Customer.balance,
    Customer.disabled,
    Customer.created_at,
)


async def get_customer(db: Database, customer_id: int) -> CustomerView:
    async with db.read() as conn:
        row = (
            await conn.execute(select(*_CUSTOMER_COLUMNS).where(Customer.id == customer_id))
        ).first()
    if row is None:
        raise NotFound(f"no customer {customer_id}")
    return CustomerView(*row)


async def list_customers(db: Database) -> list[CustomerView]:
    async with db.read() as conn:
        rows = await conn.execute(select(*_CUSTOMER_COLUMNS).order_by(Customer.id))
        return [CustomerView(*row) for row in rows]


_UNSET = object()


async def update_customer(
    db: Database,
    customer_id: int,
    *,
    name: str | None = None,
    dialect: str | None = None,
    markup_bp: int | object | None = _UNSET,
    disabled: bool | None = None,
) -> CustomerView:
    """Change what is given; `markup_bp=None` returns the customer to the default markup."""
    values: dict[str, object] = {}
    if name is not None:
        if not name.strip():
            raise OperatorError("name must not be empty")
        values["name"] = name.strip()
    if dialect is not None:
        _check_dialect(dialect)
        values["dialect"] = dialect
    if markup_bp is not _UNSET:
        values["markup_bp"] = markup_bp
    if disabled is not None:
        values["disabled"] = disabled
    if values:
        try:
            async with db.write() as conn:
                result = await conn.execute(
                    update(Customer).where(Customer.id == customer_id).values(**values)
                )
        except IntegrityError:
            raise OperatorError(f"a customer named {name!r} exists already") from None
        if result.rowcount != 1:
            raise NotFound(f"no customer {customer_id}")
    return await get_customer(db, customer_id)
