"""The operator's verdict on an order, checked with its upstream first, and the correction of
a verdict given before.

An upstream order id is asked about (`status`) before it is accepted: an id the upstream does
not know, or one whose link, service or charge differ from the order's, is refused unless the
operator forces it. A verdict already given (placed, not placed, another id) is corrected with
an audited ledger entry `correction:<order>:<n>` that keeps every `ledger verify` invariant:
the order keeps its one charge entry, its refunds never exceed it, and the order's `refunded`
is always the sum of its refund entries.
"""

import json
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote

from sqlalchemy import func, select, update

from app import ledger
from app.contract import CANCELED, ORDER_STATUSES, PARTIAL, PENDING
from app.db import Conn, Database
from app.errors import OperatorError
from app.models import LedgerEntry, Order, utcnow
from app.money import render
from app.orders.placing import PLACED, REJECTED, SENDING, UNKNOWN
from app.orders.queries import OrderView, get_order, refuse_taken, resolve
from app.providers import ProviderClients, as_clients
from app.upstream import Refused, UpstreamClient, UpstreamOrderStatus

# The upstream's charge may be rounded (4 decimals) or priced a moment later: a difference
# within 1 % (at least 0.0001) is not a mismatch.
_CHARGE_TOLERANCE_MICROS = 100


@dataclass(frozen=True)
class UpstreamCheck:
    upstream_order_id: int
    found: bool
    status: str | None
    charge: int | None
    expected_charge: int
    link: str | None
    service: int | None
    mismatches: tuple[str, ...]
    forced: bool


@dataclass(frozen=True)
class Resolution:
    order: OrderView
    check: UpstreamCheck | None
    correction_ref: str | None


def _money_or_dash(micros: int | None) -> str:
    return "-" if micros is None else render(micros)


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mismatches(params: dict[str, str], cost: int, heard: UpstreamOrderStatus) -> list[str]:
    found: list[str] = []
    sent_link = str(params.get("link", ""))
    if heard.link is not None and heard.link.strip() not in (sent_link.strip(), unquote(sent_link)):
        found.append(f"its link is {_short(heard.link)!r}, the order's {_short(sent_link)!r}")
    sent_service = str(params.get("service", ""))
    if heard.service is not None and str(heard.service) != sent_service:
        found.append(f"its service is {heard.service}, the order's {sent_service}")
    # After a cancel or a partial delivery the upstream's own charge drops: only compare before.
    if heard.charge_micros is not None and heard.status not in (PARTIAL, CANCELED):
        tolerance = max(_CHARGE_TOLERANCE_MICROS, cost // 100)
        if abs(heard.charge_micros - cost) > tolerance:
            found.append(
                f"it charged {render(heard.charge_micros)}, the order costs {render(cost)} there"
            )
    return found


async def check_upstream(
    db: Database,
    upstream: UpstreamClient | ProviderClients,
    order_id: int,
    upstream_order_id: int,
    *,
    force: bool,
) -> UpstreamCheck:
    """Ask the order's provider about `upstream_order_id`; refuse (OperatorError, one line
    saying what it said) when it differs from the order, unless `force`."""
    async with db.read() as conn:
        row = (
            await conn.execute(
                select(Order.params, Order.cost, Order.provider_id).where(Order.id == order_id)
            )
        ).first()
    if row is None:
        raise OperatorError(f"no order {order_id}")
    params, cost = json.loads(row[0]), row[1]
    clients = as_clients(upstream)
    await clients.refresh(db)
    client = clients.get(row[2])
    if client is None:
        raise OperatorError(
            f"order {order_id}'s provider {clients.name(row[2])} cannot be asked (its key or"
            " URL is not usable): fix it with `smm-gateway providers set`"
        )
    heard = await client.status_one(upstream_order_id)
    if isinstance(heard, UpstreamOrderStatus):
        status = heard.status or heard.raw_status
        check = UpstreamCheck(
            upstream_order_id=upstream_order_id,
            found=True,
            status=status,
            charge=heard.charge_micros,
            expected_charge=cost,
            link=heard.link,
            service=heard.service,
            mismatches=tuple(_mismatches(params, cost, heard)),
            forced=False,
        )
    else:
        why = (
            f"the upstream does not know it ({_short(heard.message, 80)})"
            if isinstance(heard, Refused)
            else f"the upstream gave no usable answer ({heard.reason})"
        )
        check = UpstreamCheck(upstream_order_id, False, None, None, cost, None, None, (why,), False)
    if check.mismatches and not force:
        if check.found:
            said = f"status {check.status}, charge {_money_or_dash(check.charge)}"
        elif isinstance(heard, Refused):
            said = "no such order"
        else:
            said = "no answer"
        raise OperatorError(
            f"upstream order {upstream_order_id} ({said}) does not match order {order_id}: "
            + "; ".join(check.mismatches)
            + '. Check the id; --force ("force": true) accepts it anyway'
        )
    return replace(check, forced=bool(check.mismatches))


async def _next_correction_ref(conn: Conn, order_id: int) -> str:
    prefix = f"correction:{order_id}:"
    done = await conn.scalar(
        select(func.count()).select_from(LedgerEntry).where(LedgerEntry.ref.like(prefix + "%"))
    )
    return f"{prefix}{(done or 0) + 1}"


def _memo(order_id: int, what: str, memo: str | None) -> str:
    return f"correction of order {order_id}: {what}" + (f" ({memo})" if memo else "")


_CHANGED = "order {} changed meanwhile; look again"


async def _order_row(conn: Conn, order_id: int) -> Any:
    columns = (
        Order.customer_id,
        Order.charge,
        Order.refunded,
        Order.state,
        Order.upstream_order_id,
        Order.announced,
    )
    return (await conn.execute(select(*columns).where(Order.id == order_id))).first()


async def _net_paid(conn: Conn, order_id: int) -> int:
    """What the customer pays for the order now: its charge less every entry giving money
    back (refunds, and corrections in either direction)."""
    total = await conn.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
            LedgerEntry.order_id == order_id
        )
    )
    return -int(total or 0)


async def _correct_to_not_placed(db: Database, order_id: int, memo: str | None) -> str:
    """A placed order that never was: all the customer still pays for it goes back, and it is
    settled for good. What fits under its charge is a refund (the order's `refunded` follows);
    money it was charged again by a correction comes back as a correction adjustment."""
    async with db.write() as conn:
        row = await _order_row(conn, order_id)
        if row is None or row.state != PLACED:
            raise OperatorError(_CHANGED.format(order_id))
        paid = await _net_paid(conn, order_id)
        refund = min(paid, row.charge - row.refunded)
        now = utcnow()
        changed = await conn.execute(
            update(Order)
            .where(Order.id == order_id, Order.state == PLACED, Order.refunded == row.refunded)
            .values(
                state=REJECTED,
                status=CANCELED,
                refunded=row.refunded + refund,
                settled_at=func.coalesce(Order.settled_at, now),
                lease_until=None,
                error="not placed (the operator's correction)",
                updated_at=now,
            )
        )
        if changed.rowcount != 1:
            raise OperatorError(_CHANGED.format(order_id))
        what = _memo(order_id, f"not placed (was upstream order {row.upstream_order_id})", memo)
        parts = [(ledger.REFUND, refund), (ledger.ADJUSTMENT, paid - refund)]
        # A refund is never zero: with nothing left to give back, the entry is a zero
        # adjustment, kept for the audit trail.
        moves = [(kind, amount) for kind, amount in parts if amount > 0] or [(ledger.ADJUSTMENT, 0)]
        refs = []
        for kind, amount in moves:
            refs.append(await _next_correction_ref(conn, order_id))
            await ledger.post_bounded(
                conn, row.customer_id, amount, kind, memo=what, ref=refs[-1], order_id=order_id
            )
    return refs[-1]


async def _correct_to_placed(
    db: Database, order_id: int, upstream_order_id: int, check: UpstreamCheck, memo: str | None
) -> str:
    """Placed as another upstream order, or placed after all (the customer pays it again)."""
    async with db.write() as conn:
        row = await _order_row(conn, order_id)
        if row is None:
            raise OperatorError(_CHANGED.format(order_id))
        await refuse_taken(conn, upstream_order_id, order_id)
        ref = await _next_correction_ref(conn, order_id)
        now = utcnow()
        if row.state == PLACED:
            if row.refunded:
                raise OperatorError(
                    f"order {order_id} was settled from upstream order {row.upstream_order_id}'s"
                    f" status with a refund of {render(row.refunded)}: correct it to not placed"
                    " instead, or adjust the customer's balance"
                )
            # Unsettled again: the status sync settles it from the right upstream order.
            changed = await conn.execute(
                update(Order)
                .where(
                    Order.id == order_id,
                    Order.state == PLACED,
                    Order.upstream_order_id == row.upstream_order_id,
                    Order.refunded == 0,
                )
                .values(
                    upstream_order_id=upstream_order_id,
                    status=PENDING,
                    upstream_status=None,
                    upstream_charge=None,
                    upstream_first_charge=None,
                    held=None,
                    start_count=None,
                    remains=None,
                    settled_at=None,
                    refreshed_at=None,
                    lease_until=None,
                    error=None,
                    updated_at=now,
                )
            )
            what = f"upstream order {row.upstream_order_id} → {upstream_order_id}"
            amount = 0
        else:
            if not row.announced:
                raise OperatorError(
                    f"order {order_id} was refused when it was ordered, and the customer was"
                    " told so: it cannot become placed"
                )
            # Its refund entry stays (entries are never changed): the customer pays again by
            # this entry, and the order stays settled at its full charge.
            changed = await conn.execute(
                update(Order)
                .where(Order.id == order_id, Order.state == REJECTED)
                .values(
                    state=PLACED,
                    upstream_order_id=upstream_order_id,
                    status=check.status if check.status in ORDER_STATUSES else PENDING,
                    lease_until=None,
                    error=(
                        f"placed after all, as upstream order {upstream_order_id}: charged again"
                        f" by {ref}; kept at its full charge (no later refund)"
                    ),
                    updated_at=now,
                )
            )
            what = f"placed after all, as upstream order {upstream_order_id}"
            amount = await _net_paid(conn, order_id) - row.charge  # pays its charge again
        if changed.rowcount != 1:
            raise OperatorError(_CHANGED.format(order_id))
        await ledger.post_bounded(
            conn,
            row.customer_id,
            amount,
            ledger.ADJUSTMENT,
            memo=_memo(order_id, what, memo),
            ref=ref,
            order_id=order_id,
        )
    return ref


async def resolve_order(
    db: Database,
    upstream: UpstreamClient | ProviderClients,
    order_id: int,
    *,
    upstream_order_id: int | None = None,
    not_placed: bool = False,
    force: bool = False,
    correct: bool = False,
    memo: str | None = None,
) -> Resolution:
    """The verdict on an `unknown` order, or with `correct` the correction of an earlier one."""
    if (upstream_order_id is None) == (not not_placed):
        raise OperatorError("say either --upstream-order N or --not-placed")
    order = await get_order(db, order_id)
    check = None
    if order.state == UNKNOWN:
        if upstream_order_id is not None:
            check = await check_upstream(db, upstream, order_id, upstream_order_id, force=force)
        view = await resolve(
            db, order_id, upstream_order_id=upstream_order_id, not_placed=not_placed
        )
        return Resolution(view, check, None)
    if not correct or order.state == SENDING:
        hint = "" if order.state == SENDING else "; to correct an earlier verdict say --correct"
        raise OperatorError(f"order {order_id} is {order.state}, only unknown orders resolve{hint}")
    if not_placed:
        if order.state != PLACED:
            raise OperatorError(f"order {order_id} is not placed already")
        ref = await _correct_to_not_placed(db, order_id, memo)
    else:
        assert upstream_order_id is not None
        if order.state == PLACED and order.upstream_order_id == upstream_order_id:
            raise OperatorError(
                f"order {order_id} is placed as upstream order {upstream_order_id} already"
            )
        check = await check_upstream(db, upstream, order_id, upstream_order_id, force=force)
        ref = await _correct_to_placed(db, order_id, upstream_order_id, check, memo)
    return Resolution(await get_order(db, order_id), check, ref)
