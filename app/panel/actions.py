"""The contract's actions. Each takes the request's context and returns a JSON-able reply."""

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.catalog import (
    PricedService,
    caller_and_catalog_version,
    caller_and_priced_service,
    priced_service,
)
from app.contract import (
    INCORRECT_ORDER,
    INCORRECT_REFILL,
    INCORRECT_REQUEST,
    INCORRECT_SERVICE,
    ContractError,
)
from app.customers import Caller, authenticate
from app.orders.aftercare import refill_statuses, request_cancels, request_refills
from app.orders.placing import IDEMPOTENCY_KEY_MAX, IDEMPOTENCY_KEY_TOO_LONG, place_order
from app.orders.queries import caller_and_orders, customer_orders
from app.orders.routing import route_for
from app.orders.validation import parse_service_id, validate_add
from app.panel import render
from app.panel.services_cache import render_services
from app.parsing import row_id

if TYPE_CHECKING:
    from app.main import Gateway


@dataclass(frozen=True)
class ActionContext:
    gateway: "Gateway"
    caller: Caller
    params: dict[str, str]
    headers: Mapping[str, str]
    # Per-item outcomes of a list reply (None: done; else its error), for the metrics.
    items: list[str | None] = field(default_factory=list)
    # What the action's keyed read (KEYED_READS) fetched along with the caller, if it ran.
    prefetched: Any = None


Action = Callable[[ActionContext], Awaitable[Any]]


async def services_read(gateway: "Gateway", key: str, _params: dict[str, str]) -> tuple[Any, Any]:
    """`services`'s key lookup with the catalog's version, in one read."""
    return await caller_and_catalog_version(gateway.db, key)


async def services(ctx: ActionContext) -> Any:
    """The reply rendered for this customer's pricing state (JSON bytes, sent as they are)."""
    gw, caller = ctx.gateway, ctx.caller
    if ctx.prefetched is None:  # called without its keyed read: no version to go by
        return await render_services(gw, caller)
    return await gw.services_cache.reply(gw, caller, ctx.prefetched)


async def balance(ctx: ActionContext) -> Any:
    # The balance came with the key lookup: one read for the whole request.
    return render.balance(ctx.caller.balance, ctx.gateway.settings.currency, ctx.caller.dialect)


@dataclass(frozen=True)
class ServiceRead:
    """What `add`'s keyed read found: the service at the caller's price, or None."""

    service: PricedService | None


async def add_read(gateway: "Gateway", key: str, params: dict[str, str]) -> tuple[Any, Any]:
    """`add`'s key lookup and its priced service in one read. A request `add` will refuse
    for its service id gets the plain lookup: an invalid key is answered first."""
    try:
        service_id = parse_service_id(params)
    except ContractError:
        return await authenticate(gateway.db, key), None
    caller, service = await caller_and_priced_service(
        gateway.db, key, service_id, gateway.settings.default_markup_bp
    )
    return caller, ServiceRead(service)


async def add(ctx: ActionContext) -> Any:
    gw, caller = ctx.gateway, ctx.caller
    if isinstance(ctx.prefetched, ServiceRead):
        service = ctx.prefetched.service
    else:
        service = await priced_service(
            gw.db,
            parse_service_id(ctx.params),
            caller.customer_id,
            caller.markup_bp,
            gw.settings.default_markup_bp,
        )
    if service is None:
        raise ContractError(INCORRECT_SERVICE)
    route = await route_for(gw.db, gw.providers, service.id)
    request = validate_add(ctx.params, service, route.rules)
    key = (ctx.headers.get("idempotency-key") or ctx.params.get("idempotency_key", "")).strip()
    if len(key) > IDEMPOTENCY_KEY_MAX:
        raise ContractError(IDEMPOTENCY_KEY_TOO_LONG)
    attempts = route.attempts(ctx.params, service, request)
    placement = await place_order(gw.db, attempts, caller.customer_id, request, key or None)
    if placement.order_id is None:
        raise ContractError(placement.error or INCORRECT_REQUEST)
    return render.order_placed(placement.order_id)


def parse_ids(raw: str, max_ids: int, what: str = "order") -> list[str]:
    ids = [part.strip() for part in raw.split(",") if part.strip()]
    if not ids:
        raise ContractError(INCORRECT_REQUEST)
    if len(ids) > max_ids:
        raise ContractError(f"Too many {what} IDs: at most {max_ids} per request")
    return ids


def _status_ids(params: dict[str, str], max_ids: int) -> tuple[dict[str, int | None], bool]:
    """The ids a `status` asks about (as sent, and as a row id or None), and whether it used
    the multi form; ContractError for a request that names none or too many."""
    if params.get("orders", "").strip():
        return {raw: row_id(raw) for raw in parse_ids(params["orders"], max_ids)}, True
    raw = params.get("order", "").strip()
    if not raw:
        raise ContractError(INCORRECT_REQUEST)
    return {raw: row_id(raw)}, False


async def status_read(gateway: "Gateway", key: str, params: dict[str, str]) -> tuple[Any, Any]:
    """`status`'s key lookup and its orders in one read. A request `status` will refuse gets
    the plain lookup: an invalid key is answered before a bad parameter."""
    try:
        wanted, _ = _status_ids(params, gateway.settings.max_ids_per_call)
    except ContractError:
        return await authenticate(gateway.db, key), None
    return await caller_and_orders(gateway.db, key, [i for i in wanted.values() if i is not None])


async def status(ctx: ActionContext) -> Any:
    gw, caller = ctx.gateway, ctx.caller
    currency = gw.settings.currency
    wanted, many = _status_ids(ctx.params, gw.settings.max_ids_per_call)
    found = ctx.prefetched
    if found is None:
        found = await customer_orders(
            gw.db, caller.customer_id, [i for i in wanted.values() if i is not None]
        )
    if many:
        return {
            raw: render.order_status(found[oid], currency)
            if oid in found
            else render.item_error(INCORRECT_ORDER, caller.dialect)
            for raw, oid in wanted.items()
        }
    (oid,) = wanted.values()
    if oid not in found:
        raise ContractError(INCORRECT_ORDER)
    return render.order_status(found[oid], currency)


def _ids_param(ctx: ActionContext, single: str, many: str, what: str) -> tuple[list[str], bool]:
    """The ids of a single-or-multi action, as sent, and whether the multi form was used."""
    if ctx.params.get(many, "").strip():
        return parse_ids(ctx.params[many], ctx.gateway.settings.max_ids_per_call, what), True
    raw = ctx.params.get(single, "").strip()
    if not raw:
        raise ContractError(INCORRECT_REQUEST)
    return [raw], False


def _known(raws: list[str]) -> list[int]:
    """The distinct ids among `raws` (`1,01,001` is one order: asked about once)."""
    return list(dict.fromkeys(i for i in map(row_id, raws) if i is not None))


def _by_raw(raws: list[str], results: dict[int, Any], unknown: Any) -> dict[str, Any]:
    return {
        raw: results.get(row_id(raw), unknown) if row_id(raw) is not None else unknown
        for raw in raws
    }


async def refill(ctx: ActionContext) -> Any:
    raws, many = _ids_param(ctx, "order", "orders", "order")
    gw = ctx.gateway
    results = await request_refills(gw.db, gw.providers, ctx.caller.customer_id, _known(raws))
    by_raw = _by_raw(raws, results, INCORRECT_ORDER)
    ctx.items.extend(None if isinstance(r, int) else r for r in by_raw.values())
    return render.refill_many(by_raw) if many else render.refill_single(by_raw[raws[0]])


async def refill_status(ctx: ActionContext) -> Any:
    raws, many = _ids_param(ctx, "refill", "refills", "refill")
    gw = ctx.gateway
    results = await refill_statuses(
        gw.db,
        gw.providers,
        ctx.caller.customer_id,
        _known(raws),
        gw.settings.sync_interval_seconds,
    )
    by_raw = _by_raw(raws, results, (INCORRECT_REFILL,))
    ctx.items.extend(None if isinstance(r, str) else r[0] for r in by_raw.values())
    return (
        render.refill_status_many(by_raw) if many else render.refill_status_single(by_raw[raws[0]])
    )


async def cancel(ctx: ActionContext) -> Any:
    raws, _ = _ids_param(ctx, "order", "orders", "order")
    gw = ctx.gateway
    results = await request_cancels(gw.db, gw.providers, ctx.caller.customer_id, _known(raws))
    by_raw = _by_raw(raws, results, INCORRECT_ORDER)
    ctx.items.extend(None if r is True else str(r) for r in by_raw.values())
    return render.cancel_many(by_raw)


# Actions whose reads come with the key lookup, in one statement: (caller or None, what the
# action reads), instead of app.customers.authenticate alone.
KeyedRead = Callable[["Gateway", str, dict[str, str]], Awaitable[tuple[Any, Any]]]
KEYED_READS: dict[str, KeyedRead] = {
    "status": status_read,
    "services": services_read,
    "add": add_read,
}

ACTIONS: dict[str, Action] = {
    "services": services,
    "balance": balance,
    "add": add,
    "status": status,
    "refill": refill,
    "refill_status": refill_status,
    "cancel": cancel,
}
