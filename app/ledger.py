"""The money ledger: append-only entries, each moving the customer's cached balance with it.

Every change of a balance is `post()`: one conditional UPDATE (never below zero) plus one entry,
inside the caller's transaction. A unique `ref` makes a charge or a settlement happen once per
order, whichever process tries.
"""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, bindparam, case, cast, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from app.db import SHARED_UPSTREAM_IDS, Conn, Database
from app.errors import NotFound, OperatorError
from app.models import DEFAULT_PROVIDER_ID, Customer, LedgerEntry, Order, utcnow
from app.money import MAX_AMOUNT, render
from app.settlement import settlement_problems

TOPUP = "topup"
CHARGE = "charge"
REFUND = "refund"
ADJUSTMENT = "adjustment"
KINDS = (TOPUP, CHARGE, REFUND, ADJUSTMENT)


CHARGE_REF_PREFIX = "charge:"  # + the order id (app/orders/hot_writes.py builds it in SQL)


def charge_ref(order_id: int) -> str:
    return f"{CHARGE_REF_PREFIX}{order_id}"


def refund_ref(order_id: int) -> str:
    return f"refund:{order_id}"


# Built once: every order runs these, and building a statement costs several times more than
# running a prebuilt one (bench/README.md).
_customers = Customer.__table__
_MOVE_BALANCE = (
    update(_customers)
    .where(
        _customers.c.id == bindparam("customer_id"),
        _customers.c.balance + bindparam("amount") >= 0,
    )
    .values(balance=_customers.c.balance + bindparam("amount"))
)
_ADD_ENTRY = insert(LedgerEntry.__table__)


async def post(
    conn: Conn,
    customer_id: int,
    amount: int,
    kind: str,
    *,
    order_id: int | None = None,
    ref: str | None = None,
    memo: str | None = None,
) -> bool:
    """Move `amount` (signed micros) in or out of a balance, with its entry.

    Returns False, changing nothing, when the balance would go below zero. A duplicate `ref`
    raises IntegrityError from the database: the caller's transaction must not commit.
    """
    result = await conn.execute(_MOVE_BALANCE, {"customer_id": customer_id, "amount": amount})
    if result.rowcount != 1:
        return False
    await _add_entry(conn, customer_id, amount, kind, order_id, ref, memo)
    return True


async def _add_entry(
    conn: Conn,
    customer_id: int,
    amount: int,
    kind: str,
    order_id: int | None,
    ref: str | None,
    memo: str | None,
) -> int:
    """The entry that goes with a balance's move; returns its id."""
    entry = await conn.execute(
        _ADD_ENTRY,
        {
            "customer_id": customer_id,
            "amount": amount,
            "kind": kind,
            "order_id": order_id,
            "ref": ref,
            "memo": memo,
            "created_at": utcnow(),
        },
    )
    return entry.inserted_primary_key[0]


async def debit_for_order(conn: Conn, customer_id: int, order_id: int, charge: int) -> bool:
    """The conditional debit an order takes in phase 1; False when funds are short."""
    return await post(
        conn, customer_id, -charge, CHARGE, order_id=order_id, ref=charge_ref(order_id)
    )


async def refund_order(conn: Conn, customer_id: int, order_id: int, amount: int) -> None:
    """The order's one settlement refund (IntegrityError if it was refunded already)."""
    await post(conn, customer_id, amount, REFUND, order_id=order_id, ref=refund_ref(order_id))


# An operator's reference (a payment id, a ticket) is kept as `<kind>:<REF>` in the unique `ref`
# column (64 characters), so a retried top-up finds the first one.
MAX_OPERATOR_REF = 48
_REF_PREFIX = {TOPUP: "topup:", ADJUSTMENT: "adjust:"}


@dataclass(frozen=True)
class Posted:
    """An operator's top-up or adjustment: `duplicate` when its ref had been posted before,
    in which case nothing moved now and `amount`/`entry_id` are the first posting's."""

    customer_id: int
    amount: int
    balance: int
    entry_id: int
    duplicate: bool = False


def _bounded_move(amount: int):  # type: ignore[no-untyped-def]
    """The balance moves only if it stays in [0, MAX_AMOUNT], written so that neither side of
    the comparison can overflow a BIGINT (PostgreSQL raises, SQLite turns it into a REAL)."""
    balance = _customers.c.balance
    room = balance <= MAX_AMOUNT - amount if amount > 0 else balance >= -amount
    return (
        update(_customers)
        .where(_customers.c.id == bindparam("customer_id"), room)
        .values(balance=balance + amount)
    )


async def _repeat(
    db: Database, customer_id: int, amount: int, kind: str, ref: str
) -> Posted | None:
    """The first posting under `ref`, if there is one and it is the same posting."""
    async with db.read() as conn:
        found = (
            await conn.execute(
                select(
                    LedgerEntry.id, LedgerEntry.customer_id, LedgerEntry.amount, LedgerEntry.kind
                ).where(LedgerEntry.ref == ref)
            )
        ).first()
        if found is None:
            return None
        entry_id, first_customer, first_amount, first_kind = found
        if first_customer != customer_id or first_amount != amount or first_kind != kind:
            raise OperatorError(
                f"ref {ref!r} was used already, for a {first_kind} of {render(first_amount)}"
                f" to customer {first_customer} (entry {entry_id}): one ref names one posting"
            )
        balance = await conn.scalar(select(Customer.balance).where(Customer.id == customer_id))
    return Posted(customer_id, first_amount, balance, entry_id, duplicate=True)


async def post_bounded(
    conn: Conn,
    customer_id: int,
    amount: int,
    kind: str,
    *,
    memo: str | None = None,
    ref: str | None = None,
    order_id: int | None = None,
) -> Posted:
    """One operator's entry inside the caller's transaction; the balance stays within
    0…MAX_AMOUNT, checked by the UPDATE itself. Raises OperatorError (NotFound), changing
    nothing; a duplicate `ref` raises IntegrityError (the transaction must not commit)."""
    if abs(amount) > MAX_AMOUNT:
        raise OperatorError(f"amount too large (at most {render(MAX_AMOUNT, 0)})")
    balance = await conn.scalar(select(Customer.balance).where(Customer.id == customer_id))
    if balance is None:
        raise NotFound(f"no customer {customer_id}")
    moved = await conn.execute(_bounded_move(amount), {"customer_id": customer_id})
    if moved.rowcount != 1:
        has = f"customer {customer_id} has {render(balance)}"
        if amount < 0:
            raise OperatorError(f"that would take the balance below zero ({has})")
        raise OperatorError(
            "that would take the balance above the most one customer may hold,"
            f" {render(MAX_AMOUNT, 0)} ({has})"
        )
    entry_id = await _add_entry(conn, customer_id, amount, kind, order_id, ref, memo)
    return Posted(customer_id, amount, balance + amount, entry_id)


async def post_by_operator(
    db: Database,
    customer_id: int,
    amount: int,
    kind: str,
    *,
    memo: str | None = None,
    ref: str | None = None,
) -> Posted:
    """An operator's top-up or adjustment, as one entry (`post_bounded`).

    With a `ref` (stored as given) the posting happens once: the same ref again answers the
    first posting and moves nothing; the same ref for another amount, kind or customer is
    refused.
    """
    if ref is not None and (first := await _repeat(db, customer_id, amount, kind, ref)):
        return first
    try:
        async with db.write() as conn:
            return await post_bounded(conn, customer_id, amount, kind, memo=memo, ref=ref)
    except IntegrityError:
        # The same ref committed meanwhile (a retry racing the first): answer that one.
        if ref is not None and (first := await _repeat(db, customer_id, amount, kind, ref)):
            return first
        raise


async def post_for_operator(
    db: Database,
    customer_id: int,
    amount: int,
    kind: str,
    *,
    memo: str | None = None,
    ref: str | None = None,
) -> Posted:
    """A top-up (positive) or an adjustment (signed, not zero) under the operator's own `ref`
    (kept as `topup:<ref>` / `adjust:<ref>`)."""
    if kind == TOPUP and amount <= 0:
        raise OperatorError("a top-up must be positive")
    if kind == ADJUSTMENT and amount == 0:
        raise OperatorError("an adjustment must not be zero")
    full_ref = None if ref is None else _REF_PREFIX[kind] + ref
    return await post_by_operator(db, customer_id, amount, kind, memo=memo, ref=full_ref)


async def topup(
    db: Database, customer_id: int, amount: int, memo: str | None = None, ref: str | None = None
) -> int:
    """Add money a customer paid; returns the new balance."""
    return (await post_for_operator(db, customer_id, amount, TOPUP, memo=memo, ref=ref)).balance


async def adjust(
    db: Database, customer_id: int, amount: int, memo: str | None = None, ref: str | None = None
) -> int:
    """A signed correction by the operator; returns the new balance."""
    return (
        await post_for_operator(db, customer_id, amount, ADJUSTMENT, memo=memo, ref=ref)
    ).balance


@dataclass(frozen=True)
class EntryView:
    id: int
    customer_id: int
    amount: int
    kind: str
    order_id: int | None
    ref: str | None
    memo: str | None
    created_at: datetime
    balance_after: int  # the sum of the customer's entries up to and including this one


async def history(db: Database, customer_id: int, limit: int = 100) -> list[EntryView]:
    """The newest entries first, each with the balance it left (a running sum over all the
    customer's entries, taken before the limit)."""
    return await entries(db, customer_id=customer_id, limit=limit)


async def entries(
    db: Database,
    *,
    customer_id: int | None = None,
    order_id: int | None = None,
    kind: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[EntryView]:
    """Entries newest first, of one customer, one order, one kind or all; each with the
    balance it left its customer (a running sum over all that customer's entries)."""
    running = select(
        LedgerEntry.id,
        LedgerEntry.customer_id,
        LedgerEntry.amount,
        LedgerEntry.kind,
        LedgerEntry.order_id,
        LedgerEntry.ref,
        LedgerEntry.memo,
        LedgerEntry.created_at,
        # Cast: PostgreSQL's sum of a bigint is a numeric.
        cast(
            func.sum(LedgerEntry.amount).over(
                partition_by=LedgerEntry.customer_id, order_by=LedgerEntry.id
            ),
            BigInteger,
        ).label("balance_after"),
    )
    if customer_id is not None:  # inside the running sum: it only needs this customer's rows
        running = running.where(LedgerEntry.customer_id == customer_id)
    sub = running.subquery()
    stmt = select(sub).order_by(sub.c.id.desc()).limit(limit).offset(offset)
    if order_id is not None:
        stmt = stmt.where(sub.c.order_id == order_id)
    if kind is not None:
        stmt = stmt.where(sub.c.kind == kind)
    async with db.read() as conn:
        return [EntryView(*row) for row in await conn.execute(stmt)]


async def verify(db: Database) -> list[str]:
    """Check every ledger invariant of DESIGN.md; returns one line per problem (empty: clean)."""
    problems: list[str] = []
    # One snapshot for the whole check, so concurrent writes cannot fake a mismatch.
    async with db.snapshot() as conn:
        sums = {
            cid: total
            for cid, total in await conn.execute(
                select(LedgerEntry.customer_id, func.sum(LedgerEntry.amount)).group_by(
                    LedgerEntry.customer_id
                )
            )
        }
        for cid, balance in await conn.execute(select(Customer.id, Customer.balance)):
            if balance < 0:
                problems.append(f"customer {cid}: balance {balance} is below zero")
            if balance != (sums.get(cid) or 0):
                problems.append(
                    f"customer {cid}: balance {balance} != sum of entries {sums.get(cid) or 0}"
                )

        balances_total = await conn.scalar(select(func.coalesce(func.sum(Customer.balance), 0)))
        entries_total = await conn.scalar(select(func.coalesce(func.sum(LedgerEntry.amount), 0)))
        if balances_total != entries_total:
            problems.append(
                f"all balances {balances_total} != top-ups + adjustments - charges + refunds"
                f" {entries_total}"
            )

        signs = {TOPUP: 1, CHARGE: -1, REFUND: 1}
        for kind, bad in await conn.execute(
            select(LedgerEntry.kind, func.count()).group_by(LedgerEntry.kind)
        ):
            if kind not in KINDS:
                problems.append(f"{bad} entries of unknown kind {kind!r}")
        for kind, sign in signs.items():
            wrong = await conn.scalar(
                select(func.count())
                .select_from(LedgerEntry)
                .where(LedgerEntry.kind == kind, LedgerEntry.amount * sign <= 0)
            )
            if wrong:
                problems.append(f"{wrong} {kind} entries with the wrong sign")
        orphans = await conn.scalar(
            select(func.count())
            .select_from(LedgerEntry)
            .where(LedgerEntry.kind.in_((CHARGE, REFUND)), LedgerEntry.order_id.is_(None))
        )
        if orphans:
            problems.append(f"{orphans} charge/refund entries name no order")

        per_order = (
            select(
                LedgerEntry.order_id.label("order_id"),
                func.sum(case((LedgerEntry.kind == CHARGE, 1), else_=0)).label("charges"),
                func.sum(case((LedgerEntry.kind == CHARGE, -LedgerEntry.amount), else_=0)).label(
                    "charged"
                ),
                func.sum(case((LedgerEntry.kind == REFUND, LedgerEntry.amount), else_=0)).label(
                    "refunded"
                ),
                func.min(LedgerEntry.customer_id).label("min_customer"),
                func.max(LedgerEntry.customer_id).label("max_customer"),
            )
            .where(LedgerEntry.order_id.is_not(None))
            .group_by(LedgerEntry.order_id)
            .subquery()
        )
        rows = await conn.execute(
            select(
                Order.id,
                Order.customer_id,
                Order.charge,
                Order.refunded,
                Order.settled_at,
                per_order.c.charges,
                per_order.c.charged,
                per_order.c.refunded,
                per_order.c.min_customer,
                per_order.c.max_customer,
            ).outerjoin(per_order, per_order.c.order_id == Order.id)
        )
        for oid, cid, charge, refunded, settled, charges, charged, refund_sum, min_c, max_c in rows:
            if (charges or 0) != 1:
                problems.append(f"order {oid}: {charges or 0} charge entries, expected 1")
                continue
            if charged != charge:
                problems.append(f"order {oid}: charged {charged} but the order says {charge}")
            if refund_sum > charged:
                problems.append(f"order {oid}: refunds {refund_sum} exceed the charge {charged}")
            if refund_sum != refunded:
                problems.append(f"order {oid}: refunds {refund_sum} but the order says {refunded}")
            if min_c != cid or max_c != cid:
                problems.append(f"order {oid}: entries belong to another customer")
            if refund_sum and settled is None:
                problems.append(f"order {oid}: refunded {refund_sum} before settlement")
        problems += await _shared_upstream_ids(conn)
        problems += await settlement_problems(conn)
    return problems


async def _shared_upstream_ids(conn: Conn) -> list[str]:
    """One upstream order, one order of ours (a database migrated with older data may have
    more: its index stayed plain, app.db.ensure_unique_upstream_ids)."""
    return [
        f"upstream order {uid} is attached to {count} orders ({first} … {last})"
        + ("" if provider == DEFAULT_PROVIDER_ID else f" on provider {provider}")
        for uid, first, last, count, provider in await conn.execute(text(SHARED_UPSTREAM_IDS))
    ]
