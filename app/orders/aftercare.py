"""Refills and cancels of placed orders, forwarded to the upstream under our own ids.

No money moves here: a cancel's refund comes from settlement, once the upstream reports the
order `Canceled`. Orders of services that cannot be refilled or canceled are refused without
asking the upstream. Each goes to the provider the order was placed with, and whether it can be
refilled or canceled is what that provider's offer of the service says.
"""

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, func, insert, select, update

from app.contract import (
    FINAL_STATUSES,
    INCORRECT_ORDER,
    INCORRECT_REFILL,
    NOT_REFILLABLE,
    PENDING,
    TEMPORARILY_UNAVAILABLE,
)
from app.db import Database
from app.models import Order, Refill, Service, ServiceOffer, as_utc, utcnow
from app.orders.placing import PLACED, SENDING, UNKNOWN
from app.providers import ProviderClients, as_clients
from app.upstream import Ambiguous, Refused, UpstreamClient, contract_error_for

log = logging.getLogger("smm_gateway.orders")

NOT_CANCELABLE = "Order not eligible for cancel"


@dataclass(frozen=True)
class _Placed:
    id: int
    upstream_order_id: int | None  # None: not placed (yet), so neither refillable nor cancelable
    status: str
    refill: bool
    cancel: bool
    provider_id: int


async def _customer_placed(db: Database, customer_id: int, ids: list[int]) -> dict[int, _Placed]:
    """The customer's orders among `ids` that they can see (placed, or still unresolved), with
    what their provider's offer says of refills and cancels (the service's, without one)."""
    offer = and_(
        ServiceOffer.service_id == Order.service_id, ServiceOffer.provider_id == Order.provider_id
    )
    stmt = (
        select(
            Order.id,
            Order.upstream_order_id,
            Order.status,
            func.coalesce(ServiceOffer.refill, Service.refill),
            func.coalesce(ServiceOffer.cancel, Service.cancel),
            Order.provider_id,
        )
        .join(Service, Service.id == Order.service_id)
        .outerjoin(ServiceOffer, offer)
        .where(
            Order.id.in_(ids),
            Order.customer_id == customer_id,
            Order.state.in_((PLACED, SENDING, UNKNOWN)),
        )
    )
    async with db.read() as conn:
        return {
            row[0]: _Placed(row[0], row[1], row[2], bool(row[3]), bool(row[4]), row[5])
            for row in await conn.execute(stmt)
        }


def _refusal_text(refusal: Refused, fallback: str) -> str:
    return contract_error_for(refusal.message) or fallback


async def request_refills(
    db: Database, upstream: UpstreamClient | ProviderClients, customer_id: int, ids: list[int]
) -> dict[int, int | str]:
    """Our refill id for each order, or the contract error for it."""
    clients = as_clients(upstream)
    orders = await _customer_placed(db, customer_id, ids)
    results: dict[int, int | str] = {}
    for order_id in ids:
        order = orders.get(order_id)
        if order is None:
            results[order_id] = INCORRECT_ORDER
            continue
        if not order.refill or order.upstream_order_id is None:
            results[order_id] = NOT_REFILLABLE
            continue
        client = clients.get(order.provider_id)
        if client is None:
            results[order_id] = TEMPORARILY_UNAVAILABLE
            continue
        outcome = await client.refill(order.upstream_order_id)
        if isinstance(outcome, int):
            async with db.write() as conn:
                results[order_id] = (
                    await conn.execute(
                        insert(Refill).values(
                            customer_id=customer_id,
                            order_id=order_id,
                            upstream_refill_id=outcome,
                            status=PENDING,
                        )
                    )
                ).inserted_primary_key[0]
        elif isinstance(outcome, Refused):
            results[order_id] = _refusal_text(outcome, NOT_REFILLABLE)
        else:
            results[order_id] = TEMPORARILY_UNAVAILABLE
    return results


async def refill_statuses(
    db: Database,
    upstream: UpstreamClient | ProviderClients,
    customer_id: int,
    ids: list[int],
    max_age_seconds: float,
) -> dict[int, str | tuple[str]]:
    """Each refill's status (a str), or `(error,)` for an unknown or foreign refill id.

    A status younger than `max_age_seconds` is answered from the table without asking.
    """
    clients = as_clients(upstream)
    stmt = (
        select(
            Refill.id,
            Refill.upstream_refill_id,
            Refill.status,
            Refill.refreshed_at,
            Order.provider_id,
        )
        .join(Order, Order.id == Refill.order_id)
        .where(Refill.id.in_(ids), Refill.customer_id == customer_id)
    )
    async with db.read() as conn:
        rows = {row[0]: row for row in await conn.execute(stmt)}
    fresh_after = utcnow() - timedelta(seconds=max_age_seconds)
    results: dict[int, str | tuple[str]] = {}
    for refill_id in ids:
        row = rows.get(refill_id)
        if row is None:
            results[refill_id] = (INCORRECT_REFILL,)
            continue
        _, upstream_id, status, refreshed_at, provider_id = row
        client = clients.get(provider_id)
        if client is None or (refreshed_at is not None and as_utc(refreshed_at) > fresh_after):
            results[refill_id] = status
            continue
        heard = await client.refill_status(upstream_id)
        if isinstance(heard, str):
            status = heard
            async with db.write() as conn:
                await conn.execute(
                    update(Refill)
                    .where(Refill.id == refill_id)
                    .values(status=status, refreshed_at=utcnow())
                )
        results[refill_id] = status
    return results


async def request_cancels(
    db: Database, upstream: UpstreamClient | ProviderClients, customer_id: int, ids: list[int]
) -> dict[int, bool | str]:
    """True where the upstream took the cancel request, or the contract error. One `cancel`
    call per provider, for that provider's orders."""
    clients = as_clients(upstream)
    orders = await _customer_placed(db, customer_id, ids)
    results: dict[int, bool | str] = {}
    forward: dict[int, dict[int, int]] = {}  # provider → upstream id → our id
    for order_id in ids:
        order = orders.get(order_id)
        if order is None:
            results[order_id] = INCORRECT_ORDER
        elif not order.cancel or order.status in FINAL_STATUSES or order.upstream_order_id is None:
            results[order_id] = NOT_CANCELABLE
        else:
            forward.setdefault(order.provider_id, {})[order.upstream_order_id] = order_id
    for provider_id, theirs in forward.items():
        client = clients.get(provider_id)
        if client is None:
            results.update(dict.fromkeys(theirs.values(), TEMPORARILY_UNAVAILABLE))
            continue
        _cancel_results(theirs, await client.cancel(list(theirs)), results)
    return results


def _cancel_results(
    forward: dict[int, int],
    outcome: dict[int, bool | Refused] | Refused | Ambiguous,
    results: dict[int, bool | str],
) -> None:
    for upstream_id, order_id in forward.items():
        if not isinstance(outcome, dict):
            results[order_id] = TEMPORARILY_UNAVAILABLE
            continue
        item = outcome.get(upstream_id)
        if isinstance(item, Refused):
            results[order_id] = _refusal_text(item, NOT_CANCELABLE)
        elif item is True:
            results[order_id] = True
        else:
            results[order_id] = NOT_CANCELABLE
