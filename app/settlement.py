"""DESIGN.md's settlement formulas, and the checks that recompute them from the database.

The sync settles with these functions; `ledger verify` recomputes every settled order's refund
from the figures stored on it (the upstream's remains, first and final charge) and checks the
order's states agree with each other, so a database that went wrong says so.
"""

from sqlalchemy import select

from app.contract import CANCELED, COMPLETED, FINAL_STATUSES, PARTIAL, SETTLE_BY_REMAINS
from app.db import Conn
from app.models import LedgerEntry, Order

# Placement states (app.orders.placing names them; the domain below it cannot import it).
_PLACED, _REJECTED = "placed", "rejected"


def remains_refund(charge: int, remains: int, quantity: int) -> int:
    """floor(charge × remains / quantity), remains clamped to [0, quantity]."""
    return charge * min(max(remains, 0), quantity) // quantity


def ratio_refund(charge: int, kept: int, first_charge: int | None, cost: int) -> int:
    """No usable remains: the customer keeps paying the fraction the upstream keeps of its own
    first charge (our catalog estimate `cost` only when it never reported one while live),
    rounded in the reseller's favour by at most one micro-unit."""
    base = first_charge if first_charge is not None and first_charge > 0 else cost
    if base <= 0:
        return 0
    kept = min(max(kept, 0), base)
    return charge - -(-charge * kept // base)


async def settlement_problems(conn: Conn) -> list[str]:
    """One line per order whose settlement contradicts DESIGN.md or its own other columns."""
    problems: list[str] = []
    # An operator's correction settles an order by audited entries of its own, not by these
    # formulas (app.orders.resolution): such orders are the ledger's to check, not these.
    corrected = set(
        (
            await conn.execute(
                select(LedgerEntry.order_id).where(LedgerEntry.ref.like("correction:%"))
            )
        ).scalars()
    )
    rows = await conn.execute(
        select(
            Order.id,
            Order.state,
            Order.status,
            Order.settled_at.is_not(None),
            Order.held,
            Order.settle_by,
            Order.quantity,
            Order.charge,
            Order.cost,
            Order.refunded,
            Order.remains,
            Order.upstream_charge,
            Order.upstream_first_charge,
        ).order_by(Order.id)
    )
    for row in rows:
        oid, state, status, settled, held = row[:5]
        if oid in corrected:
            continue
        if settled and held is not None:
            problems.append(f"order {oid}: settled, yet marked held ({held})")
        if state == _PLACED:
            problems += _placed_problems(row)
        elif state == _REJECTED:
            if not settled or (row.refunded != row.charge and status != CANCELED):
                problems.append(f"order {oid}: rejected but not refunded and settled")
        elif settled or row.refunded:
            problems.append(f"order {oid}: {state}, yet settled or refunded")
    return problems


def _placed_problems(row) -> list[str]:  # type: ignore[no-untyped-def]
    oid, status, settled, refunded = row.id, row.status, row[3], row.refunded
    final = status in FINAL_STATUSES
    if settled != final:
        what = "settled" if settled else "not settled"
        return [f"order {oid}: {what}, yet its status is {status}"]
    if not settled:
        return [f"order {oid}: refunded {refunded} before settlement"] if refunded else []
    expected = _allowed_refunds(row)
    if not expected:
        return [f"order {oid}: settled {status} without the figures its refund needs"]
    if refunded not in expected:
        shown = " or ".join(map(str, sorted(expected)))
        return [f"order {oid}: refund {refunded} for {status}, DESIGN.md's formula says {shown}"]
    return []


def _allowed_refunds(row) -> set[int]:  # type: ignore[no-untyped-def]
    """The refunds DESIGN.md allows for this settled order, from its stored figures: by
    remains where it settles by remains and they were reported, by the charge ratio where
    the upstream reported its charge (drip-feed parents: the sum of their runs')."""
    if row.status == COMPLETED:
        return {0}
    if row.status == CANCELED:
        return {row.charge}
    allowed = set()
    if row.status == PARTIAL and row.settle_by == SETTLE_BY_REMAINS and row.remains is not None:
        allowed.add(remains_refund(row.charge, row.remains, row.quantity))
    if row.upstream_charge is not None:
        allowed.add(
            ratio_refund(row.charge, row.upstream_charge, row.upstream_first_charge, row.cost)
        )
    return allowed
