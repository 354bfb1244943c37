"""Status sync and settlement.

A pass asks the upstream about every active order, in batches of up to 100 ids per `status`
call, oldest-refreshed first, and stores what it hears; an order that reaches a final status
is settled exactly once. Batches are claimed with a lease (and `FOR UPDATE SKIP LOCKED` on
PostgreSQL), so several processes never poll or settle the same order in one pass; the unique
ledger ref `refund:<order>` stops a second settlement even if a lease were ever lost.

Each provider's orders are asked of that provider, in batches of its own: a provider that is
down fails its own batch and delays only its own orders.
"""

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    bindparam,
    func,
    literal_column,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute

from app import ledger
from app.contract import (
    CANCELED,
    COMPLETED,
    EXPIRED,
    FINAL_STATUSES,
    IN_PROGRESS,
    PARTIAL,
    SETTLE_BY_REMAINS,
)
from app.db import Database, is_unreachable
from app.models import Order, utcnow
from app.orders.placing import PLACED, SEND_MARGIN_SECONDS, recover_stale_sending
from app.providers import ProviderClients, as_clients
from app.settlement import ratio_refund, remains_refund
from app.upstream import Refused, UpstreamClient, UpstreamOrderStatus

log = logging.getLogger("smm_gateway.sync")

BATCH_SIZE = 100
DEFAULT_LEASE_SECONDS = 120.0
FINAL = tuple(FINAL_STATUSES)


@dataclass
class PassResult:
    polled: int = 0
    upstream_calls: int = 0
    settled: int = 0
    failed_batches: int = 0
    anomalies: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Claimed:
    id: int
    customer_id: int
    upstream_order_id: int
    settle_by: str  # snapshotted at intent (DESIGN.md): never the catalog's current type
    quantity: int
    charge: int
    cost: int
    first_charge: int | None  # the upstream's own charge as first reported while live
    # The claim's token: every write of the pass names it, so one that lost its lease (and
    # whose order another instance now holds, or settled) writes nothing.
    lease_owner: str | None = None


def _owned(order: _Claimed) -> tuple:  # type: ignore[type-arg]
    """The WHERE of every write of a pass: still this pass's lease, and not settled."""
    held = () if order.lease_owner is None else (Order.lease_owner == order.lease_owner,)
    return (Order.id == order.id, Order.settled_at.is_(None), *held)


def _still_held(batch: list[_Claimed]) -> tuple:  # type: ignore[type-arg]
    """`_owned` for a whole batch of one claim (one owner)."""
    return (
        Order.id.in_([o.id for o in batch]),
        Order.settled_at.is_(None),
        Order.lease_owner == batch[0].lease_owner,
    )


# Written into the SQL, not bound: a planner may use the partial index ix_orders_due only for
# a query whose own text implies the index's condition (a prepared statement's parameter does
# not). Both are fixed words of our own (DUE_WHERE).
_PLACED_LITERAL = literal_column(f"'{PLACED}'")


def _due(
    provider_id: int, refreshed: ColumnElement[bool], now: datetime, limit: int
) -> Select[tuple[int]]:
    """Up to `limit` orders of one provider a pass may claim among those `refreshed` selects,
    oldest first."""
    return (
        select(Order.id)
        .where(
            Order.settled_at.is_(None),
            Order.state == _PLACED_LITERAL,
            Order.provider_id == provider_id,
            Order.status.not_in(FINAL),
            Order.upstream_order_id.is_not(None),
            refreshed,
            or_(Order.lease_until.is_(None), Order.lease_until < now),
        )
        .order_by(Order.refreshed_at, Order.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


async def _claim_batch(
    db: Database, refreshed_before: datetime, limit: int, lease: timedelta, provider_id: int
) -> list[_Claimed]:
    """Lease up to `limit` active orders last refreshed before `refreshed_before` (so not in
    this pass, nor just now by another instance), oldest first."""
    now = utcnow()
    owner = uuid.uuid4().hex
    async with db.write() as conn:
        # Never refreshed first, then the oldest refresh: two reads, each in the order of
        # ix_orders_due itself (one ORDER BY ... NULLS FIRST matches no index SQLite can build,
        # and sorting every active order per batch is what made a pass quadratic).
        never = _due(provider_id, Order.refreshed_at.is_(None), now, limit)
        ids = list((await conn.execute(never)).scalars())
        if len(ids) < limit:
            older = _due(provider_id, Order.refreshed_at < refreshed_before, now, limit - len(ids))
            ids += (await conn.execute(older)).scalars()
        if not ids:
            return []
        await conn.execute(
            update(Order)
            .where(Order.id.in_(ids))
            .values(lease_until=now + lease, lease_owner=owner)
        )
        rows = await conn.execute(
            select(
                Order.id,
                Order.customer_id,
                Order.upstream_order_id,
                Order.settle_by,
                Order.quantity,
                Order.charge,
                Order.cost,
                Order.upstream_first_charge,
            ).where(Order.id.in_(ids))
        )
        return [_Claimed(*row, lease_owner=owner) for row in rows]


async def _renew(db: Database, batch: list[_Claimed], lease: timedelta) -> list[_Claimed]:
    """Before another upstream call: extend the lease on what this pass still holds."""
    if not batch:
        return []
    async with db.write() as conn:
        kept = set(
            (
                await conn.execute(
                    update(Order)
                    .where(*_still_held(batch))
                    .values(lease_until=utcnow() + lease)
                    .returning(Order.id)
                )
            ).scalars()
        )
    return [o for o in batch if o.id in kept]


def settlement_refund(order: _Claimed, status: str, heard: UpstreamOrderStatus) -> int | None:
    """How much of the charge goes back to the customer for a final status (DESIGN.md);
    None when the upstream gave no figure the formula needs: the settlement is held."""
    if status == COMPLETED:
        return 0
    if status == CANCELED:
        return order.charge
    by_remains = order.settle_by == SETTLE_BY_REMAINS
    if status == PARTIAL and heard.remains is not None and by_remains and not heard.child_orders:
        return remains_refund(order.charge, heard.remains, order.quantity)
    if heard.charge_micros is None:
        return None
    return ratio_refund(order.charge, heard.charge_micros, order.first_charge, order.cost)


@dataclass(frozen=True)
class _Change:
    """What one status reply changes on its order, decided before anything is written."""

    now: datetime
    status: str | None  # None: a final status held for the operator, the shown one stays
    upstream_status: str | None
    start_count: int | None  # None here and below: not reported, the stored figure stays
    remains: int | None
    upstream_charge: int | None
    first_charge: int | None  # the ratio's base, stored only if the order has none yet
    held: str | None
    refund: int | None  # set: a final status, the order settles now with this refund


def _change(order: _Claimed, heard: UpstreamOrderStatus) -> _Change:
    status = heard.status
    if status is None:
        log.warning(
            "order %s: unknown upstream status %r shown as In progress", order.id, heard.raw_status
        )
        status = IN_PROGRESS
    final = status in FINAL_STATUSES or status == EXPIRED
    first_charge = None
    # The ratio's base is what the upstream charged up front, and only a status we know to be
    # live says that: a final charge is what it keeps, and a word we do not know may be final
    # (its charge already dropped by a cancel or partial). A live 0 charged nothing: no base,
    # and it must not stand in the way of the real one.
    if heard.charge_micros is not None and heard.status is not None and not final:
        first_charge = heard.charge_micros if heard.charge_micros > 0 else None
    refund = settlement_refund(order, status, heard) if final else None
    held = None
    shown: str | None = status
    if final and refund is None:
        # Held, not guessed (DESIGN.md): the status shown stays what it was, the order stays
        # in the sync, and the operator sees it (CLI warning, smmgw_settlements_held).
        log.warning("order %s: %s without remains or charge; settlement held", order.id, status)
        shown = None
        held = f"{status} reported without remains or charge"
    return _Change(
        now=utcnow(),
        status=shown,
        upstream_status=(heard.raw_status or "")[:32] or None,
        start_count=heard.start_count,
        remains=None if heard.remains is None else min(heard.remains, order.quantity),
        upstream_charge=heard.charge_micros,
        first_charge=first_charge,
        held=held,
        refund=refund,
    )


def _values(change: _Change) -> dict[str, object]:
    """The SET of one order's own write: what it heard, and the lease given back."""
    values: dict[str, object] = {
        "upstream_status": change.upstream_status,
        "refreshed_at": change.now,
        "lease_until": None,
        "lease_owner": None,
        "updated_at": change.now,
    }
    if change.status is not None:
        values["status"] = change.status
    if change.start_count is not None:
        values["start_count"] = change.start_count
    if change.remains is not None:
        values["remains"] = change.remains
    if change.upstream_charge is not None:
        values["upstream_charge"] = change.upstream_charge
    if change.first_charge is not None:
        values["upstream_first_charge"] = func.coalesce(
            Order.upstream_first_charge, change.first_charge
        )
    if change.held is not None:
        values["held"] = change.held
    return values


async def _apply(
    db: Database, order: _Claimed, heard: UpstreamOrderStatus, result: PassResult
) -> None:
    """One order's reply, written on its own (settling it if final)."""
    change = _change(order, heard)
    if change.refund is not None:
        await _settle(db, order, change, result)
        return
    try:
        async with db.write() as conn:
            await conn.execute(update(Order).where(*_owned(order)).values(**_values(change)))
    except IntegrityError:
        log.warning("order %s: settled already elsewhere", order.id)


async def _settle(db: Database, order: _Claimed, change: _Change, result: PassResult) -> None:
    refund = change.refund
    assert refund is not None
    values = _values(change)
    values["held"] = None
    try:
        async with db.write() as conn:
            # Only the first settler gets past this guard; the unique ref backs it up.
            settled = await conn.execute(
                update(Order)
                .where(*_owned(order))
                .values(settled_at=change.now, refunded=refund, **values)
            )
            if settled.rowcount != 1:
                return
            if refund > 0:
                await ledger.refund_order(conn, order.customer_id, order.id, refund)
    except IntegrityError:
        log.warning("order %s: settled already elsewhere", order.id)
        return
    result.settled += 1


def _kept(column: InstrumentedAttribute[Any], name: str) -> ColumnElement[Any]:
    """The figure bound as `name`, or the stored one where the row's is None (not reported)."""
    return func.coalesce(bindparam(name, type_=column.type), column)


# A batch's refreshes as one prebuilt UPDATE, run once per order (executemany). Each row is
# guarded as `_owned` guards one order's write: its id, not settled, and still held by this
# claim's lease (a claim always names an owner), so an order another instance took over or
# settled meanwhile matches nothing. A None the row binds keeps the stored value, as the
# per-order write leaves out that column.
_REFRESH = (
    update(Order)
    .where(
        Order.id == bindparam("o_id"),
        Order.settled_at.is_(None),
        Order.lease_owner == bindparam("o_owner"),
    )
    .values(
        status=_kept(Order.status, "o_status"),
        upstream_status=bindparam("o_upstream_status", type_=Order.upstream_status.type),
        start_count=_kept(Order.start_count, "o_start_count"),
        remains=_kept(Order.remains, "o_remains"),
        upstream_charge=_kept(Order.upstream_charge, "o_upstream_charge"),
        upstream_first_charge=func.coalesce(
            Order.upstream_first_charge,
            bindparam("o_first_charge", type_=Order.upstream_first_charge.type),
        ),
        held=_kept(Order.held, "o_held"),
        refreshed_at=bindparam("o_refreshed_at", type_=Order.refreshed_at.type),
        updated_at=bindparam("o_updated_at", type_=Order.updated_at.type),
        lease_until=null(),
        lease_owner=null(),
    )
)


async def _refresh(db: Database, refreshes: list[tuple[_Claimed, _Change]]) -> None:
    """Store a batch's refreshes (replies that settle nothing) in one transaction.

    Safe to lose and to repeat: a refresh moves no money and overwrites figures with what the
    upstream said last. If this write fails, the transaction stores none of them (the error
    ends the pass, as any failed write does); their leases run out, and the next pass asks
    about the same orders again and writes them then.
    """
    if not refreshes:
        return
    rows = [
        {
            "o_id": order.id,
            "o_owner": order.lease_owner,
            "o_status": change.status,
            "o_upstream_status": change.upstream_status,
            "o_start_count": change.start_count,
            "o_remains": change.remains,
            "o_upstream_charge": change.upstream_charge,
            "o_first_charge": change.first_charge,
            "o_held": change.held,
            "o_refreshed_at": change.now,
            "o_updated_at": change.now,
        }
        for order, change in refreshes
    ]
    async with db.write() as conn:
        await conn.execute(_REFRESH, rows)


async def _missing(db: Database, order: _Claimed, refusal: Refused, result: PassResult) -> None:
    """The upstream denies an order we placed: the operator's to look at, never a refund."""
    message = (
        f"order {order.id}: upstream says {refusal.message!r} for its order "
        f"{order.upstream_order_id}"
    )
    log.error("ANOMALY %s", message)
    result.anomalies.append(message)
    now = utcnow()
    async with db.write() as conn:
        await conn.execute(
            update(Order)
            .where(*_owned(order))
            .values(
                error=f"upstream: {refusal.message}"[:500],
                refreshed_at=now,
                lease_until=None,
                lease_owner=None,
                updated_at=now,
            )
        )


async def _release(db: Database, batch: list[_Claimed], **values: object) -> None:
    """Give back what this pass still holds of `batch` (and set `values` on it)."""
    if not batch:
        return
    async with db.write() as conn:
        await conn.execute(
            update(Order)
            .where(*_still_held(batch))
            .values(lease_until=None, lease_owner=None, **values)
        )


async def sync_pass(
    db: Database,
    upstream: UpstreamClient | ProviderClients,
    *,
    sending_grace_seconds: float,
    batch_size: int = BATCH_SIZE,
    min_age_seconds: float = 0.0,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    on_batch: Callable[[PassResult], None] | None = None,
) -> PassResult:
    """One pass over every active order: ⌈K/batch⌉ upstream calls for K orders.

    Orders refreshed less than `min_age_seconds` before the pass are skipped: another
    instance's pass that ran moments ago has just asked about them. `on_batch` sees the
    running result after each batch (the CLI's progress display).
    """
    result = PassResult()
    await recover_stale_sending(db, sending_grace_seconds)
    refreshed_before = utcnow() - timedelta(seconds=min_age_seconds)
    clients = as_clients(upstream)
    await clients.refresh(db)
    # Orders at a disabled provider still run there: they are synced all the same.
    for provider_id, client in sorted(clients.all().items()):
        await _sync_provider(
            db, client, provider_id, refreshed_before, batch_size, lease_seconds, on_batch, result
        )
    return result


async def _sync_provider(
    db: Database,
    upstream: UpstreamClient,
    provider_id: int,
    refreshed_before: datetime,
    batch_size: int,
    lease_seconds: float,
    on_batch: Callable[[PassResult], None] | None,
    result: PassResult,
) -> None:
    # A lease outlasts the upstream call it covers (renewed before each one): another instance
    # never polls an order while this pass waits on the upstream about it.
    lease = timedelta(seconds=lease_seconds + upstream.max_call_seconds)
    while batch := await _claim_batch(db, refreshed_before, batch_size, lease, provider_id):
        result.upstream_calls += 1
        heard = await upstream.status_many([o.upstream_order_id for o in batch])
        if not isinstance(heard, dict):
            log.warning(
                "sync: status batch failed at provider %s (%s); will retry next pass",
                upstream.provider,
                heard.reason,
            )
            result.failed_batches += 1
            await _release(db, batch)
            break
        if _has_parents(heard):
            batch = await _renew(db, batch, lease)
        heard = await _with_child_charges(upstream, heard, result)
        refreshes, settling, unanswered = [], [], []
        for order in batch:
            item = heard.get(order.upstream_order_id)
            if isinstance(item, UpstreamOrderStatus):
                change = _change(order, item)
                (refreshes if change.refund is None else settling).append((order, change))
            elif isinstance(item, Refused):
                await _missing(db, order, item, result)
            else:
                unanswered.append(order)
        # The batch's refreshes in one transaction; each settlement in its own, as one order
        # at a time (its guard, its ledger entry under the unique ref, exactly once).
        await _refresh(db, refreshes)
        for order, change in settling:
            await _settle(db, order, change, result)
        if unanswered:
            # No news for these: try them again next pass, after the others.
            await _release(db, unanswered, refreshed_at=utcnow())
        result.polled += len(batch)
        if on_batch is not None:
            on_batch(result)


def _parent(item: object) -> bool:
    """A final drip-feed parent that reports its runs instead of its charge."""
    return (
        isinstance(item, UpstreamOrderStatus)
        and item.status in (PARTIAL, EXPIRED)
        and item.charge_micros is None
        and item.child_orders is not None
    )


def _has_parents(heard: dict[int, UpstreamOrderStatus | Refused]) -> bool:
    return any(_parent(item) for item in heard.values())


async def _with_child_charges(
    upstream: UpstreamClient,
    heard: dict[int, UpstreamOrderStatus | Refused],
    result: PassResult,
) -> dict[int, UpstreamOrderStatus | Refused | None]:
    """A partial drip-feed parent reports neither charge nor remains, only its runs' ids: its
    charge is the sum of theirs, asked in the same batches of 100 (only for such parents).
    A parent whose runs cannot be read now is left for the next pass (None)."""
    parents = {
        uid: (item, item.child_orders or [])
        for uid, item in heard.items()
        if isinstance(item, UpstreamOrderStatus) and _parent(item)
    }
    completed: dict[int, UpstreamOrderStatus | Refused | None] = dict(heard)
    for uid, (item, kids) in list(parents.items()):
        if not kids:  # no run ever started: nothing delivered, nothing kept
            completed[uid] = replace(item, charge_micros=0)
            del parents[uid]
    if not parents:
        return completed
    children = sorted({child for _, kids in parents.values() for child in kids})
    runs: dict[int, UpstreamOrderStatus] = {}
    for start in range(0, len(children), BATCH_SIZE):
        result.upstream_calls += 1
        part = await upstream.status_many(children[start : start + BATCH_SIZE])
        if isinstance(part, dict):
            for cid, item in part.items():
                if isinstance(item, UpstreamOrderStatus) and item.charge_micros is not None:
                    runs[cid] = item
    for uid, (item, kids) in parents.items():
        if all(kid in runs for kid in kids):
            charge = sum(runs[kid].charge_micros or 0 for kid in kids)
            remains = [runs[kid].remains for kid in kids]
            # The parent's remains are what its runs left undelivered, when they all say.
            total = sum(r for r in remains if r is not None) if None not in remains else None
            completed[uid] = replace(item, charge_micros=charge, remains=total)
        else:
            completed[uid] = None
    return completed


async def pass_grace(db: Database, clients: ProviderClients, floor: float) -> float:
    """How long an order may stay `sending` before a pass calls it unknown: at least `floor`
    (the settings'), and never less than the slowest provider's call as the providers table
    says now, so recovery never steps in while a provider may still answer."""
    await clients.refresh(db)
    return max(floor, clients.max_call_seconds + SEND_MARGIN_SECONDS)


async def sync_forever(
    db: Database,
    upstream: UpstreamClient | ProviderClients,
    interval: float,
    sending_grace_seconds: float,
) -> None:
    clients = as_clients(upstream)
    while True:
        try:
            # Each pass: a provider added or slowed since the loop started counts.
            grace = await pass_grace(db, clients, sending_grace_seconds)
            result = await sync_pass(
                db,
                clients,
                sending_grace_seconds=grace,
                min_age_seconds=interval / 2,
                # A batch takes one upstream call, bounded by the grace: a process killed
                # mid-batch delays those orders by that long, not by minutes.
                lease_seconds=grace,
            )
            if result.polled:
                log.info(
                    "sync: polled %d orders in %d calls, settled %d",
                    result.polled,
                    result.upstream_calls,
                    result.settled,
                )
        except Exception as exc:  # the loop must outlive any one bad pass
            if is_unreachable(exc):  # an outage: said once, by the database's own line
                db.outage.failed(exc)
            else:
                log.exception("sync pass failed")
        await asyncio.sleep(interval)
