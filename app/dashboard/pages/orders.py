"""Orders: a filtered list a page at a time; one order's page with its parameters, its ledger
entries and what the upstream answered and when; the verdict on an `unknown` one, with what
the provider says about the id the operator found shown beside the form."""

from collections.abc import Awaitable, Callable
from datetime import date, timedelta

from fastapi import APIRouter, Request, Response

from app import ledger, providers
from app.admin import ops
from app.admin.schemas import ResolveIn
from app.contract import ORDER_STATUSES
from app.dashboard.auth import DashboardRoute, act
from app.dashboard.forms import fields, ticked
from app.dashboard.pages.common import PAGE_SIZE, RowId, clients_of, db_of, page_number
from app.dashboard.queries import OrderFilter, names, search_orders
from app.dashboard.render import page
from app.db import Database
from app.errors import NotFound
from app.orders.placing import STATES, UNKNOWN
from app.orders.queries import get_order
from app.parsing import row_id, whole_number

router = APIRouter(prefix="/dashboard/orders", route_class=DashboardRoute)


def _day(text: str) -> date | None:
    try:
        return date.fromisoformat(text.strip()) if text.strip() else None
    except ValueError:
        return None


async def _named(
    problems: list[str],
    lookup: Callable[[Database, str], Awaitable[int]],
    db: Database,
    text: str,
) -> int | None:
    """The id a filter names (by id or name), None when it names nothing; a name that is no
    one's is one of the page's problems."""
    if not text.strip():
        return None
    try:
        return await lookup(db, text)
    except NotFound as exc:
        problems.append(str(exc))
        return None


@router.get("")
async def orders(
    request: Request,
    state: str = "",
    status: str = "",
    customer: str = "",
    service: str = "",
    provider: str = "",
    since: str = "",
    until: str = "",
    page_no: str = "",
) -> Response:
    db = db_of(request)
    number = page_number(page_no)
    problems: list[str] = []
    customer_id = await _named(problems, ops.customer_id_for, db, customer)
    service_id = row_id(service.strip()) if service.strip() else None
    if service.strip() and service_id is None:
        problems.append(f"no service {service.strip()!r}")
    provider_id = await _named(problems, providers.provider_id_for, db, provider)
    first, last = _day(since), _day(until)
    for given, parsed in ((since, first), (until, last)):
        if given.strip() and parsed is None:
            problems.append(f"{given.strip()!r} is not a day (YYYY-MM-DD)")
    chosen = OrderFilter(
        state=state if state in STATES else None,
        status=status if status in ORDER_STATUSES else None,
        customer_id=customer_id,
        service_id=service_id,
        provider_id=provider_id,
        since=None if first is None else ops.day_start(first),
        until=None if last is None else ops.day_start(last + timedelta(days=1)),
    )
    found, total = ([], 0)
    if not problems:  # a filter that names nothing matches nothing, rather than everything
        found, total = await search_orders(
            db, chosen, limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE
        )
    known = await names(db)
    query = {
        "state": chosen.state or "",
        "status": chosen.status or "",
        "customer": customer.strip(),
        "service": service.strip(),
        "provider": provider.strip(),
        "since": since.strip(),
        "until": until.strip(),
    }
    return page(
        request,
        "orders.html",
        orders=found,
        total=total,
        page_no=number,
        pages=max(1, -(-total // PAGE_SIZE)),
        query=query,
        problems=problems,
        states=STATES,
        statuses=ORDER_STATUSES,
        names=known,
    )


@router.get("/{order_id}")
async def order(request: Request, order_id: RowId, check: str = "") -> Response:
    db = db_of(request)
    view = await get_order(db, order_id)
    known = await names(db)
    heard, check_error = None, None
    candidate = whole_number(check.strip(), 19) if check.strip() else None
    if check.strip() and (candidate is None or not 1 <= candidate < 2**63):
        check_error = f"{check.strip()!r} is not an upstream order id"
    elif candidate is not None:
        heard = await ops.check_upstream_order(db, clients_of(request), order_id, candidate)
    return page(
        request,
        "order.html",
        o=view,
        entries=await ledger.entries(db, customer_id=view.customer_id, order_id=order_id),
        customer_name=known.customers.get(view.customer_id, ""),
        service_name=known.services.get(view.service_id, ""),
        provider_name=known.providers.get(view.provider_id, str(view.provider_id)),
        heard=heard,
        check_error=check_error,
        candidate=check.strip(),
        unknown=view.state == UNKNOWN,
    )


@router.post("/{order_id}/resolve")
async def resolve(request: Request, order_id: RowId) -> Response:
    values = await fields(request)

    async def run() -> str:
        placed = values.get("verdict") == "placed"
        verdict = ResolveIn(
            upstream_order_id=values.get("upstream_order_id") if placed else None,
            not_placed=not placed,
            force=ticked(values, "force"),
            correct=ticked(values, "correct"),
            memo=values.get("memo"),
        )
        done = await ops.resolve(db_of(request), clients_of(request), order_id, verdict)
        said = (
            f"placed as upstream order {done.upstream_order_id}"
            if done.state == "placed"
            else f"not placed: refunded {done.refunded}"
        )
        extra = f"; ledger entry {done.correction}" if done.correction else ""
        forced = (
            " (forced past the provider's answer)"
            if done.upstream_check and done.upstream_check.forced
            else ""
        )
        return f"Order {order_id} resolved: {said}{forced}{extra}"

    return await act(request, f"/dashboard/orders/{order_id}", run)
