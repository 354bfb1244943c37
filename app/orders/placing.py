"""Placing an order in three phases, never with a transaction open across the network.

1. commit the intent: the order (state `sending`) and its charge, or `Not enough funds`;
2. call the upstream `add`, outside any transaction, never retried;
3. commit the outcome: `placed`, `rejected` (refunded), or `unknown` (funds held, operator).
A crash between 1 and 3 leaves `sending`; `recover_stale_sending` turns it into `unknown`.

Phase 2 follows the route (app.orders.routing): the order is recorded on a provider before it
is sent there, and goes on to the next only after a definite refusal that is not about the
order itself; an ambiguous outcome ends the route (the order is `unknown` on that provider).
The charge of phase 1 is the only one, however many providers are tried.
"""

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app import ledger
from app.contract import (
    INCORRECT_REQUEST,
    NOT_ENOUGH_FUNDS,
    PENDING,
    TEMPORARILY_UNAVAILABLE,
    ContractError,
    settle_by,
)
from app.db import Database
from app.models import DEFAULT_PROVIDER_ID, Order, as_utc, utcnow
from app.orders.hot_writes import NoFunds, commit_intent_row, mark_row
from app.orders.routing import Attempt, moves_on
from app.orders.validation import OrderRequest
from app.parsing import is_unicode
from app.providers import mark_out_of_funds
from app.upstream import (
    Ambiguous,
    Refused,
    UpstreamClient,
    contract_error_for,
    is_upstream_funds_error,
)

log = logging.getLogger("smm_gateway.orders")

SENDING = "sending"
PLACED = "placed"
REJECTED = "rejected"
UNKNOWN = "unknown"
STATES = (SENDING, PLACED, REJECTED, UNKNOWN)

IDEMPOTENCY_WINDOW = timedelta(hours=24)
# Recovery waits (connect + read timeout + this) before calling a `sending` order unknown; an
# add is only sent while the order is younger than this, so the call ends before that.
SEND_MARGIN_SECONDS = 5.0
REPLAY_POLL_SECONDS = 0.05
IDEMPOTENCY_MISMATCH = "Idempotency-Key was already used with different parameters"
IDEMPOTENCY_KEY_MAX = 128
IDEMPOTENCY_KEY_TOO_LONG = f"Idempotency-Key is too long (at most {IDEMPOTENCY_KEY_MAX} characters)"
ORDER_NOT_PLACED = "Order could not be placed"
# Phase 3's write is retried after these pauses when the database blips (a connection the
# server dropped, SQLite's busy timeout passed): every write in it is guarded by the order's
# state, so a retry after a commit whose acknowledgement was lost changes nothing.
OUTCOME_RETRY_DELAYS = (0.05, 0.2, 0.5, 1.0)

# Outcomes this process heard but could not write, by order id: written by its next sync
# pass (`recover_stale_sending`), and logged at ERROR for the operator in case it dies first.
# Keyed by database URL too: one process may hold several databases (tests, tools).
_unwritten: dict[str, dict[int, int | Refused | Ambiguous]] = {}
# What a database blip raises: a driver error (not a constraint), a pool wait, a refused
# reconnect. IntegrityError is a bug or a race, never retried.
_BLIPS = (DBAPIError, PoolTimeout, OSError)


class NotEnoughFunds(ContractError):
    def __init__(self) -> None:
        super().__init__(NOT_ENOUGH_FUNDS)


@dataclass(frozen=True)
class Placement:
    """What `add` answers: our order id, or the contract error for a refused order."""

    order_id: int | None
    error: str | None = None


def request_hash(request: OrderRequest) -> str:
    return hashlib.sha256(json.dumps(request.upstream_params, sort_keys=True).encode()).hexdigest()


def _route(
    upstream: UpstreamClient | Sequence[Attempt], request: OrderRequest
) -> Sequence[Attempt]:
    """One client alone is provider `default`, sent the request as validated."""
    if isinstance(upstream, UpstreamClient):
        return [Attempt(DEFAULT_PROVIDER_ID, upstream, request.upstream_params, request.cost)]
    return upstream


async def place_order(
    db: Database,
    upstream: UpstreamClient | Sequence[Attempt],
    customer_id: int,
    request: OrderRequest,
    idempotency_key: str | None = None,
) -> Placement:
    route = _route(upstream, request)
    if not route:  # no provider can take it now (app.orders.routing): nothing charged
        return Placement(None, TEMPORARILY_UNAVAILABLE)
    if not all(is_unicode(k, v) for a in route for k, v in a.params.items()):
        # It would fail while the request is built, before a byte leaves: refuse, uncharged.
        return Placement(None, INCORRECT_REQUEST)
    # The first request with this key may try every provider of the route before it answers.
    in_flight = sum(attempt.client.max_call_seconds for attempt in route)
    if idempotency_key:
        earlier = await _replay(db, customer_id, idempotency_key, request, in_flight)
        if earlier is not None:
            return earlier
    now = utcnow()
    try:
        order_id = await commit_intent(db, customer_id, request, idempotency_key, route[0], now)
    except IntegrityError:
        # The same Idempotency-Key raced us and won: answer what it answers.
        earlier = await _replay(db, customer_id, idempotency_key or "", request, in_flight)
        if earlier is None:
            raise
        return earlier
    except NotEnoughFunds:
        # Phase 1 debits before it inserts: the same Idempotency-Key racing us may have won
        # and taken the funds (its commit came before our balance check), so our debit finds
        # them short before our insert could meet its key. Its answer is ours.
        if idempotency_key and (
            earlier := await _replay(db, customer_id, idempotency_key, request, in_flight)
        ):
            return earlier
        raise
    # Shielded: a client that hangs up must not abandon an order between phases 2 and 3.
    return await asyncio.shield(send_and_commit(db, route, order_id, request, now))


async def send_and_commit(
    db: Database,
    upstream: UpstreamClient | Sequence[Attempt],
    order_id: int,
    request: OrderRequest,
    committed_at: datetime | None = None,
) -> Placement:
    """Phases 2 and 3, provider after provider. `committed_at`: when this process committed
    the intent (its created_at), so that a young order needs no read to know it is still ours
    to send."""
    route = _route(upstream, request)
    for index, attempt in enumerate(route):
        # The first provider was recorded with the intent; each next one before it is sent.
        if index == 0:
            sendable = _young(committed_at) or await _still_sendable(db, order_id)
        else:
            # Young when its switch was stamped, and still after the switch's write: a stall
            # in between must not send what recovery may be about to call unknown.
            stamped = utcnow()
            sendable = await _switch(db, order_id, attempt, stamped) and _young(stamped)
        if not sendable:
            # Stalled past the margin (a pause, an overloaded host): recovery may already call
            # this order unknown and an operator refund it, so it must never reach the upstream.
            await reject_and_refund(
                db, order_id, error=TEMPORARILY_UNAVAILABLE, note="too late to send upstream"
            )
            return Placement(None, TEMPORARILY_UNAVAILABLE)
        outcome = await attempt.client.add(attempt.params)
        await _note_funds(db, attempt, outcome)
        if isinstance(outcome, Refused) and index + 1 < len(route) and moves_on(outcome):
            log.warning(
                "order %s: provider %s refused it (%s: %s); trying provider %s",
                order_id,
                attempt.client.provider,
                outcome.reason,
                outcome.message,
                route[index + 1].client.provider,
            )
            continue
        return await commit_outcome(db, order_id, outcome)
    raise AssertionError("a route ends in an outcome")


async def _switch(db: Database, order_id: int, attempt: Attempt, now: datetime) -> bool:
    """Record the next provider (what it is sent, what it costs there) before sending; its
    `updated_at` restarts the recovery's clock. False: no longer `sending`."""
    async with db.write() as conn:
        result = await conn.execute(
            update(Order)
            .where(Order.id == order_id, Order.state == SENDING)
            .values(
                provider_id=attempt.provider_id,
                params=json.dumps(attempt.params),
                cost=attempt.cost,
                updated_at=now,
            )
        )
    return result.rowcount == 1


async def _note_funds(db: Database, attempt: Attempt, outcome: int | Refused | Ambiguous) -> None:
    """A provider out of funds is tried after the others until it takes an order again."""
    out = isinstance(outcome, Refused) and is_upstream_funds_error(outcome.message)
    if out == attempt.out_of_funds or not (out or isinstance(outcome, int)):
        return
    try:
        await mark_out_of_funds(db, attempt.provider_id, out)
    except _BLIPS as exc:  # a hint for the next orders' routes: never worth failing this one
        log.warning("provider %s: funds state not written (%s)", attempt.provider_id, exc)


def _young(created_at: datetime | None) -> bool:
    """Younger than the margin: no recovery (which waits out the whole sending grace) nor
    operator (who resolves only `unknown` orders) can have touched it, so it is `sending`."""
    return created_at is not None and created_at > utcnow() - timedelta(seconds=SEND_MARGIN_SECONDS)


async def _still_sendable(db: Database, order_id: int) -> bool:
    """Still `sending`, and young enough that the call ends before recovery may step in."""
    async with db.read() as conn:
        row = (
            await conn.execute(select(Order.state, Order.created_at).where(Order.id == order_id))
        ).first()
    return row is not None and row.state == SENDING and _young(as_utc(row.created_at))


async def commit_intent(
    db: Database,
    customer_id: int,
    request: OrderRequest,
    idempotency_key: str | None,
    first: Attempt | None = None,
    now: datetime | None = None,
) -> int:
    """Phase 1: the order (`sending`, at the provider it goes to first: provider `default`
    for a caller without a route) with its charge debited and entered, or NotEnoughFunds and
    nothing written; one statement on PostgreSQL (app/orders/hot_writes.py)."""
    provider_id, params, cost = (
        (first.provider_id, first.params, first.cost)
        if first is not None
        else (DEFAULT_PROVIDER_ID, request.upstream_params, request.cost)
    )
    now = now or utcnow()
    order = {
        "customer_id": customer_id,
        "service_id": request.service_id,
        "provider_id": provider_id,
        "state": SENDING,
        "status": PENDING,
        "params": json.dumps(params),
        "quantity": request.quantity,
        "rate": request.rate,
        "charge": request.charge,
        "cost": cost,
        "service_type": request.service_type,
        "settle_by": settle_by(request.service_type),
        "refunded": 0,
        "announced": False,
        "idempotency_key": idempotency_key or None,
        "request_hash": request_hash(request),
        "created_at": now,
        "updated_at": now,
    }
    try:
        return await commit_intent_row(db, customer_id, request.charge, now, order)
    except NoFunds:
        raise NotEnoughFunds from None


async def commit_outcome(
    db: Database, order_id: int, outcome: int | Refused | Ambiguous
) -> Placement:
    """Phase 3: record what the upstream's `add` said (phase 1 committed the intent), retried
    when the database blips. If it cannot be written, the order stays `sending` (funds held)
    and the customer gets its id: never a 500, never a reason to buy again."""
    for delay in (*OUTCOME_RETRY_DELAYS, None):
        try:
            placement = await _write_outcome(db, order_id, outcome)
        except IntegrityError:
            raise
        except _BLIPS as exc:
            if delay is None:
                break
            log.warning("order %s: outcome write failed (%s), retrying", order_id, _db_error(exc))
            await asyncio.sleep(delay)
        else:
            _unwritten.get(db.url, {}).pop(order_id, None)
            return placement
    _unwritten.setdefault(db.url, {})[order_id] = outcome
    log.error(
        "order %s: the upstream answered %s but the database refused the write; the order "
        "stays sending (funds held) and is written by the next sync pass, or resolve it: "
        "smm-gateway orders resolve %s %s",
        order_id,
        f"upstream order {outcome}" if isinstance(outcome, int) else repr(outcome),
        order_id,
        f"--upstream-order {outcome}" if isinstance(outcome, int) else "(check upstream)",
    )
    return Placement(order_id)


async def write_unwritten_outcomes(db: Database) -> None:
    """Outcomes `commit_outcome` could not write earlier: written now, before recovery may
    call their orders unknown; kept for the next pass if the database still fails."""
    pending = _unwritten.get(db.url, {})
    for order_id, outcome in list(pending.items()):
        try:
            await _write_outcome(db, order_id, outcome)
        except _BLIPS as exc:
            log.error("order %s: outcome still not written (%s)", order_id, _db_error(exc))
            return
        pending.pop(order_id, None)
        log.warning("order %s: outcome written late (%r)", order_id, outcome)


def _db_error(exc: BaseException) -> str:
    cause = exc.orig if isinstance(exc, DBAPIError) else exc
    return f"{type(cause).__name__}: {str(cause)[:120]}"


async def _write_outcome(
    db: Database, order_id: int, outcome: int | Refused | Ambiguous
) -> Placement:
    if isinstance(outcome, int):
        # Also from `unknown`: a slow reply the recovery gave up on is still the truth.
        try:
            marked = await _mark(
                db,
                order_id,
                PLACED,
                (SENDING, UNKNOWN),
                upstream_order_id=outcome,
                error=None,
                announced=True,
            )
        except IntegrityError:
            return await _taken_meanwhile(db, order_id, outcome)
        if not marked and not await _placed_as(db, order_id, outcome):
            # Already refunded as not placed, yet the upstream runs it: the reseller pays.
            log.critical(
                "order %s was refunded, but the upstream placed it as %s: cancel it there",
                order_id,
                outcome,
            )
        return Placement(order_id)
    if isinstance(outcome, Ambiguous):
        log.warning(
            "order %s: upstream outcome unknown (%s); funds held, operator must resolve",
            order_id,
            outcome.reason,
        )
        await _mark(
            db, order_id, UNKNOWN, (SENDING,), error=f"ambiguous: {outcome.reason}", announced=True
        )
        return Placement(order_id)
    error = _customer_error(outcome)
    await reject_and_refund(db, order_id, error=error, note=f"refused: {outcome.reason}")
    return Placement(None, error)


async def _taken_meanwhile(db: Database, order_id: int, upstream_order_id: int) -> Placement:
    """The upstream placed this order as an id an operator had already given another order
    (an early resolve): the database refuses a second owner, so this one waits in `unknown`
    with the id in its error, for the operator to correct the other verdict."""
    log.critical(
        "order %s was placed upstream as %s, which an operator attached to another order:"
        " left unknown; correct that resolution",
        order_id,
        upstream_order_id,
    )
    await _mark(
        db,
        order_id,
        UNKNOWN,
        (SENDING, UNKNOWN),
        error=f"placed upstream as {upstream_order_id}, attached to another order",
        announced=True,
    )
    return Placement(order_id)


def _customer_error(refusal: Refused) -> str:
    if refusal.reason == "connect":
        log.error("upstream unreachable: %s", refusal.message)
        return TEMPORARILY_UNAVAILABLE
    if is_upstream_funds_error(refusal.message):
        # The reseller's own upstream balance ran out: never the customer's problem to see.
        log.critical("UPSTREAM BALANCE EXHAUSTED: orders are being refused; top up upstream")
        return TEMPORARILY_UNAVAILABLE
    mapped = contract_error_for(refusal.message)
    if mapped is None:
        log.error("upstream refused an order with an unmapped message: %r", refusal.message)
        return ORDER_NOT_PLACED
    return mapped


async def _placed_as(db: Database, order_id: int, upstream_order_id: int) -> bool:
    """An operator resolved it already, to this very upstream order."""
    async with db.read() as conn:
        row = (
            await conn.execute(
                select(Order.state, Order.upstream_order_id).where(Order.id == order_id)
            )
        ).first()
    return row is not None and row.state == PLACED and row.upstream_order_id == upstream_order_id


async def _mark(
    db: Database, order_id: int, state: str, from_states: tuple[str, ...], **values: object
) -> bool:
    """Move the order to `state` if it is in one of `from_states`; False if it was not."""
    return await mark_row(
        db, order_id, from_states, {"state": state, "updated_at": utcnow(), **values}
    )


async def reject_and_refund(db: Database, order_id: int, *, error: str, note: str) -> bool:
    """Mark a not-placed order rejected and refund all of it, once; False if it was not
    in a state that allows it (already placed or rejected)."""
    async with db.write() as conn:
        row = (
            await conn.execute(select(Order.customer_id, Order.charge).where(Order.id == order_id))
        ).first()
        if row is None:
            return False
        # The state is checked again by the UPDATE itself: a concurrent resolve or outcome
        # that got there first leaves zero rows here, and nothing is refunded.
        changed = await conn.execute(
            update(Order)
            .where(Order.id == order_id, Order.state.in_((SENDING, UNKNOWN)))
            .values(
                state=REJECTED,
                status="Canceled",
                refunded=row.charge,
                error=error,
                updated_at=utcnow(),
                settled_at=utcnow(),
            )
        )
        if changed.rowcount != 1:
            return False
        await ledger.refund_order(conn, row.customer_id, order_id, row.charge)
    log.info("order %s rejected (%s) and refunded", order_id, note)
    return True


async def _keyed_order(db: Database, customer_id: int, key: str) -> Any:
    async with db.read() as conn:
        return (
            await conn.execute(
                select(
                    Order.id,
                    Order.state,
                    Order.error,
                    Order.announced,
                    Order.request_hash,
                    Order.created_at,
                ).where(Order.customer_id == customer_id, Order.idempotency_key == key)
            )
        ).first()


async def _replay(
    db: Database, customer_id: int, key: str, request: OrderRequest, wait_seconds: float
) -> Placement | None:
    """The first answer for this Idempotency-Key, if one was given within 24 h.

    While the first request is still in flight, wait for its outcome, so that both get the
    same answer (an id for an order the upstream then refuses would be a lie)."""
    row = await _keyed_order(db, customer_id, key)
    if row is None:
        return None
    if as_utc(row.created_at) < utcnow() - IDEMPOTENCY_WINDOW:
        # Expired: release the key so this request becomes a new order.
        async with db.write() as conn:
            await conn.execute(update(Order).where(Order.id == row.id).values(idempotency_key=None))
        return None
    if row.request_hash != request_hash(request):
        raise ContractError(IDEMPOTENCY_MISMATCH)
    deadline = time.monotonic() + wait_seconds
    while row.state == SENDING and time.monotonic() < deadline:
        await asyncio.sleep(REPLAY_POLL_SECONDS)
        row = await _keyed_order(db, customer_id, key)
    if row.state == REJECTED and not row.announced:
        return Placement(None, row.error)
    if row.state == SENDING:
        # The first request died mid-call: its order id is the answer from now on.
        async with db.write() as conn:
            await conn.execute(update(Order).where(Order.id == row.id).values(announced=True))
    return Placement(row.id)


async def recover_stale_sending(db: Database, older_than_seconds: float) -> list[int]:
    """Orders stuck in `sending` (a crash between phases) become `unknown`: the upstream may
    have them, so their funds stay held until an operator resolves them."""
    await write_unwritten_outcomes(db)
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    # `updated_at`: the last provider was recorded then, just before it was sent the order.
    stale = (Order.state == SENDING, Order.updated_at < cutoff)
    async with db.write() as conn:
        ids = list((await conn.execute(select(Order.id).where(*stale))).scalars())
        if ids:
            await conn.execute(
                update(Order)
                .where(Order.id.in_(ids), *stale)
                .values(
                    state=UNKNOWN,
                    error="interrupted before the outcome was recorded",
                    updated_at=utcnow(),
                )
            )
    if ids:
        log.warning("orders %s were left in sending; now unknown, awaiting the operator", ids)
    return ids
