"""The ledger: every balance change has its entry, nothing overdraws (even under 50 concurrent
debits), an order is charged once and settled once, and `verify` catches each broken invariant.

Runs on SQLite and PostgreSQL. Orders are written here the way phase 1 of placing an order
writes them (insert the order and debit in one transaction), so the ledger is tested on its own.
"""

import asyncio

import pytest
from sqlalchemy import insert, select, text, update
from sqlalchemy.exc import IntegrityError

from app import ledger
from app.customers import create_customer, get_customer
from app.db import Database
from app.errors import NotFound, OperatorError
from app.models import LedgerEntry, Order, Service, utcnow
from app.money import parse_micros

SERVICE_ID = 5


class _ShortOfFunds(Exception):
    pass


@pytest.fixture
async def service(db: Database) -> int:
    async with db.write() as conn:
        await conn.execute(
            insert(Service).values(
                id=SERVICE_ID,
                name="Followers",
                category="Instagram",
                type="Default",
                rate=parse_micros("1.02"),
                min=10,
                max=10_000,
            )
        )
    return SERVICE_ID


@pytest.fixture
async def customer(db: Database) -> int:
    customer_id, _ = await create_customer(db, "Alice", "standard")
    return customer_id


async def place_order(db: Database, customer_id: int, service_id: int, charge: int) -> int | None:
    """Phase 1 of an order: insert it and debit, in one transaction; None when funds are short
    (and then nothing was written)."""
    try:
        async with db.write() as conn:
            result = await conn.execute(
                insert(Order).values(
                    customer_id=customer_id,
                    service_id=service_id,
                    state="placed",
                    status="Pending",
                    params="{}",
                    quantity=1000,
                    rate=charge,
                    charge=charge,
                    cost=charge,
                    service_type="Default",
                    settle_by="remains",
                )
            )
            order_id = result.inserted_primary_key[0]
            if not await ledger.debit_for_order(conn, customer_id, order_id, charge):
                raise _ShortOfFunds
            return order_id
    except _ShortOfFunds:
        return None


async def settle_refund(db: Database, customer_id: int, order_id: int, amount: int) -> None:
    """The one settlement of an order: refund entry plus the order's refunded total, settled
    as a Partial whose upstream kept what the customer keeps (charge = cost here), so that
    DESIGN.md's charge ratio gives exactly `amount`."""
    async with db.write() as conn:
        await ledger.refund_order(conn, customer_id, order_id, amount)
        await conn.execute(
            update(Order)
            .where(Order.id == order_id)
            .values(
                refunded=Order.refunded + amount,
                status="Partial",
                upstream_charge=Order.charge - Order.refunded - amount,
                settled_at=utcnow(),
            )
        )


async def balance_of(db: Database, customer_id: int) -> int:
    return (await get_customer(db, customer_id)).balance


async def entries(db: Database) -> list[tuple]:
    async with db.read() as conn:
        rows = await conn.execute(
            select(
                LedgerEntry.id,
                LedgerEntry.customer_id,
                LedgerEntry.amount,
                LedgerEntry.kind,
                LedgerEntry.order_id,
                LedgerEntry.ref,
            ).order_by(LedgerEntry.id)
        )
        return [tuple(r) for r in rows]


async def count_orders(db: Database) -> int:
    async with db.read() as conn:
        return len((await conn.execute(select(Order.id))).all())


# --- top-ups, adjustments, history ----------------------------------------------------------


async def test_topup_adjust_and_history(db: Database, customer: int) -> None:
    ten, three, half = parse_micros("10"), parse_micros("3"), parse_micros("0.5")
    assert await ledger.topup(db, customer, ten, memo="paid by card") == ten
    assert await ledger.adjust(db, customer, -three, memo="correction") == ten - three
    assert await ledger.adjust(db, customer, half) == ten - three + half
    assert await balance_of(db, customer) == ten - three + half

    history = await ledger.history(db, customer)
    assert [(e.kind, e.amount, e.memo) for e in history] == [
        ("adjustment", half, None),
        ("adjustment", -three, "correction"),
        ("topup", ten, "paid by card"),
    ]  # newest first
    assert all(e.customer_id == customer for e in history)
    assert [e.kind for e in await ledger.history(db, customer, limit=1)] == ["adjustment"]
    assert sum(e.amount for e in history) == await balance_of(db, customer)
    assert await ledger.verify(db) == []


async def test_history_is_per_customer(db: Database, customer: int) -> None:
    other, _ = await create_customer(db, "Bob", "standard")
    await ledger.topup(db, customer, 1_000_000)
    await ledger.topup(db, other, 2_000_000)
    assert [e.amount for e in await ledger.history(db, customer)] == [1_000_000]
    assert [e.amount for e in await ledger.history(db, other)] == [2_000_000]


@pytest.mark.parametrize("amount", [0, -1, -1_000_000])
async def test_topup_must_be_positive(db: Database, customer: int, amount: int) -> None:
    with pytest.raises(OperatorError):
        await ledger.topup(db, customer, amount)
    assert await entries(db) == []


async def test_adjustment_must_not_be_zero_nor_overdraw(db: Database, customer: int) -> None:
    await ledger.topup(db, customer, 5_000_000)
    before = await entries(db)
    with pytest.raises(OperatorError):
        await ledger.adjust(db, customer, 0)
    with pytest.raises(OperatorError):
        await ledger.adjust(db, customer, -5_000_001)
    assert await entries(db) == before
    assert await balance_of(db, customer) == 5_000_000
    # Down to exactly zero is allowed.
    assert await ledger.adjust(db, customer, -5_000_000) == 0
    assert await ledger.verify(db) == []


async def test_unknown_customer(db: Database) -> None:
    with pytest.raises(NotFound):
        await ledger.topup(db, 404, 1_000_000)
    with pytest.raises(NotFound):
        await ledger.adjust(db, 404, 1_000_000)
    assert await entries(db) == []


# --- debits ---------------------------------------------------------------------------------


async def test_debit_cannot_overdraw(db: Database, customer: int, service: int) -> None:
    one, charge = parse_micros("1"), parse_micros("0.6")
    await ledger.topup(db, customer, one)

    first = await place_order(db, customer, service, charge)
    assert first is not None
    assert await balance_of(db, customer) == one - charge

    before = await entries(db)
    assert await place_order(db, customer, service, charge) is None
    assert await balance_of(db, customer) == one - charge
    assert await entries(db) == before  # no entry, no order
    assert await count_orders(db) == 1

    # The exact remaining balance can be spent, to zero.
    assert await place_order(db, customer, service, one - charge) is not None
    assert await balance_of(db, customer) == 0
    assert await ledger.verify(db) == []


async def test_fifty_concurrent_debits_against_a_balance_for_twenty(
    db: Database, customer: int, service: int
) -> None:
    charge = parse_micros("0.36")
    await ledger.topup(db, customer, 20 * charge)

    results = await asyncio.gather(*(place_order(db, customer, service, charge) for _ in range(50)))

    placed = [r for r in results if r is not None]
    assert len(placed) == 20
    assert len(set(placed)) == 20
    assert await balance_of(db, customer) == 0
    charges = [e for e in await entries(db) if e[3] == ledger.CHARGE]
    assert len(charges) == 20
    assert {e[4] for e in charges} == set(placed)
    assert await count_orders(db) == 20
    assert await ledger.verify(db) == []


async def test_concurrent_debits_of_two_customers_do_not_mix(db: Database, service: int) -> None:
    a, _ = await create_customer(db, "A", "standard")
    b, _ = await create_customer(db, "B", "standard")
    charge = 250_000
    await ledger.topup(db, a, 4 * charge)
    await ledger.topup(db, b, 6 * charge)
    results = await asyncio.gather(*(place_order(db, who, service, charge) for who in [a, b] * 10))
    assert sum(r is not None for r in results[0::2]) == 4
    assert sum(r is not None for r in results[1::2]) == 6
    assert await balance_of(db, a) == 0
    assert await balance_of(db, b) == 0
    assert await ledger.verify(db) == []


# --- one charge, one settlement per order ---------------------------------------------------


async def test_a_second_refund_for_one_order_is_impossible(
    db: Database, customer: int, service: int
) -> None:
    charge = parse_micros("1.5")
    await ledger.topup(db, customer, parse_micros("10"))
    order_id = await place_order(db, customer, service, charge)
    assert order_id is not None
    await settle_refund(db, customer, order_id, charge // 2)
    balance = await balance_of(db, customer)
    before = await entries(db)

    with pytest.raises(IntegrityError):
        await settle_refund(db, customer, order_id, charge // 2)

    assert await balance_of(db, customer) == balance
    assert await entries(db) == before
    async with db.read() as conn:
        assert await conn.scalar(select(Order.refunded).where(Order.id == order_id)) == charge // 2
    assert await ledger.verify(db) == []


async def test_a_second_charge_for_one_order_is_impossible(
    db: Database, customer: int, service: int
) -> None:
    charge = parse_micros("1.5")
    await ledger.topup(db, customer, parse_micros("10"))
    order_id = await place_order(db, customer, service, charge)
    assert order_id is not None
    balance, before = await balance_of(db, customer), await entries(db)

    with pytest.raises(IntegrityError):
        async with db.write() as conn:
            await ledger.debit_for_order(conn, customer, order_id, charge)

    assert await balance_of(db, customer) == balance
    assert await entries(db) == before
    assert await ledger.verify(db) == []


async def test_concurrent_refunds_settle_exactly_once(
    db: Database, customer: int, service: int
) -> None:
    charge = parse_micros("2")
    await ledger.topup(db, customer, charge)
    order_id = await place_order(db, customer, service, charge)
    assert order_id is not None

    results = await asyncio.gather(
        *(settle_refund(db, customer, order_id, charge) for _ in range(10)),
        return_exceptions=True,
    )

    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, IntegrityError) for r in results if r is not None)
    assert await balance_of(db, customer) == charge
    refunds = [e for e in await entries(db) if e[3] == ledger.REFUND]
    assert len(refunds) == 1 and refunds[0][5] == ledger.refund_ref(order_id)
    assert await ledger.verify(db) == []


async def test_verify_is_clean_after_a_mixed_scenario(db: Database, service: int) -> None:
    a, _ = await create_customer(db, "A", "standard")
    b, _ = await create_customer(db, "B", "smartpanel")
    await ledger.topup(db, a, parse_micros("25"))
    await ledger.topup(db, b, parse_micros("7.5"))
    await ledger.adjust(db, b, -parse_micros("0.25"), memo="fee")

    completed = await place_order(db, a, service, parse_micros("3.06"))
    canceled = await place_order(db, a, service, parse_micros("1.02"))
    partial = await place_order(db, b, service, parse_micros("5.1"))
    assert None not in (completed, canceled, partial)
    await settle_refund(db, a, canceled, parse_micros("1.02"))  # type: ignore[arg-type]
    await settle_refund(db, b, partial, parse_micros("2.55"))  # type: ignore[arg-type]

    assert await ledger.verify(db) == []
    assert await balance_of(db, a) == parse_micros("25") - parse_micros("3.06")
    assert await balance_of(db, b) == parse_micros("7.5") - parse_micros("0.25") - parse_micros(
        "2.55"
    )
    total = sum(e[2] for e in await entries(db))
    assert total == await balance_of(db, a) + await balance_of(db, b)


# --- verify can fail: break each invariant on purpose with raw SQL --------------------------

# Copies created_at from the customer row, so the statement is the same on both databases.
_INSERT_ENTRY = text(
    "INSERT INTO ledger_entries (customer_id, amount, kind, order_id, ref, memo, created_at)"
    " SELECT :cid, :amount, :kind, :oid, :ref, 'tampered', created_at"
    " FROM customers WHERE id = :cid"
)
_MOVE_BALANCE = text("UPDATE customers SET balance = balance + :amount WHERE id = :cid")


async def _break(db: Database, how: str, ids: dict[str, int]) -> None:
    cid, oid, charge, other = ids["customer"], ids["order"], ids["charge"], ids["other"]
    async with db.write() as conn:
        if how == "balance differs from the entries":
            await conn.execute(_MOVE_BALANCE, {"amount": 1, "cid": cid})
        elif how == "negative balance":
            # Entries and balance agree: only the sign is wrong.
            await conn.execute(
                _INSERT_ENTRY,
                {"cid": cid, "amount": -(10**9), "kind": "adjustment", "oid": None, "ref": None},
            )
            await conn.execute(_MOVE_BALANCE, {"amount": -(10**9), "cid": cid})
        elif how == "two charges for one order":
            await conn.execute(
                _INSERT_ENTRY,
                {"cid": cid, "amount": -charge, "kind": "charge", "oid": oid, "ref": "x:1"},
            )
            await conn.execute(_MOVE_BALANCE, {"amount": -charge, "cid": cid})
        elif how == "refund exceeds the charge":
            more = charge + 1
            await conn.execute(
                _INSERT_ENTRY,
                {"cid": cid, "amount": more, "kind": "refund", "oid": oid, "ref": f"refund:{oid}"},
            )
            await conn.execute(_MOVE_BALANCE, {"amount": more, "cid": cid})
            await conn.execute(
                text("UPDATE orders SET refunded = :r WHERE id = :oid"), {"r": more, "oid": oid}
            )
        elif how == "order without a charge":
            await conn.execute(
                text("DELETE FROM ledger_entries WHERE order_id = :oid"), {"oid": oid}
            )
            await conn.execute(_MOVE_BALANCE, {"amount": charge, "cid": cid})
        elif how == "order charge differs from its entry":
            await conn.execute(
                text("UPDATE orders SET charge = charge + 1 WHERE id = :oid"), {"oid": oid}
            )
        elif how == "refund not recorded on the order":
            await conn.execute(
                _INSERT_ENTRY,
                {"cid": cid, "amount": 1, "kind": "refund", "oid": oid, "ref": f"refund:{oid}"},
            )
            await conn.execute(_MOVE_BALANCE, {"amount": 1, "cid": cid})
        elif how == "entry of another customer on the order":
            await conn.execute(
                _INSERT_ENTRY,
                {"cid": other, "amount": 1, "kind": "refund", "oid": oid, "ref": f"refund:{oid}"},
            )
            await conn.execute(_MOVE_BALANCE, {"amount": 1, "cid": other})
            await conn.execute(text("UPDATE orders SET refunded = 1 WHERE id = :oid"), {"oid": oid})
        elif how == "top-up with the wrong sign":
            await conn.execute(
                _INSERT_ENTRY,
                {"cid": cid, "amount": -1, "kind": "topup", "oid": None, "ref": None},
            )
            await conn.execute(_MOVE_BALANCE, {"amount": -1, "cid": cid})
        elif how == "unknown kind":
            await conn.execute(
                _INSERT_ENTRY,
                {"cid": cid, "amount": 1, "kind": "gift", "oid": None, "ref": None},
            )
            await conn.execute(_MOVE_BALANCE, {"amount": 1, "cid": cid})
        elif how == "charge naming no order":
            await conn.execute(
                _INSERT_ENTRY,
                {"cid": cid, "amount": -1, "kind": "charge", "oid": None, "ref": None},
            )
            await conn.execute(_MOVE_BALANCE, {"amount": -1, "cid": cid})
        else:
            raise AssertionError(how)


# For each break: words that the report must contain, with {customer} / {order} filled in.
BREAKS = {
    "balance differs from the entries": ["customer {customer}", "sum of entries"],
    "negative balance": ["customer {customer}", "below zero"],
    "two charges for one order": ["order {order}", "2 charge entries"],
    "refund exceeds the charge": ["order {order}", "exceed"],
    "order without a charge": ["order {order}", "0 charge entries"],
    "order charge differs from its entry": ["order {order}", "charged"],
    "refund not recorded on the order": ["order {order}", "refunds"],
    "entry of another customer on the order": ["order {order}", "another customer"],
    "top-up with the wrong sign": ["topup", "wrong sign"],
    "unknown kind": ["gift"],
    "charge naming no order": ["no order"],
}


@pytest.mark.parametrize("how", list(BREAKS))
async def test_verify_reports_each_broken_invariant(
    db: Database, customer: int, service: int, how: str
) -> None:
    other, _ = await create_customer(db, "Bob", "standard")
    charge = parse_micros("1.2")
    await ledger.topup(db, customer, parse_micros("10"))
    await ledger.topup(db, other, parse_micros("1"))
    order_id = await place_order(db, customer, service, charge)
    assert order_id is not None
    assert await ledger.verify(db) == []

    ids = {"customer": customer, "order": order_id, "charge": charge, "other": other}
    await _break(db, how, ids)

    problems = await ledger.verify(db)
    words = [w.format(**ids) for w in BREAKS[how]]
    matching = [p for p in problems if all(w in p for w in words)]
    assert matching, f"verify missed {how!r}: {problems}"
