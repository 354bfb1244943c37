"""Customers: the list (with search), creating one (its key shown once), and one customer's
page: balance, top-ups and adjustments by reference, keys, settings, ledger, orders, prices."""

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import ValidationError

from app import catalog
from app.admin import ops
from app.admin.schemas import (
    CustomerCreate,
    CustomerOut,
    CustomerPatch,
    Posting,
    PostingResult,
)
from app.dashboard.auth import DashboardRoute, act, notify, refused_form
from app.dashboard.forms import fields
from app.dashboard.pages.common import RowId, db_of, settings_of
from app.dashboard.render import page
from app.errors import NotFound, OperatorError
from app.money import percent_to_bp

router = APIRouter(prefix="/dashboard/customers", route_class=DashboardRoute)


def _matches(query: str, customer: CustomerOut) -> bool:
    query = query.strip().casefold()
    return not query or query == str(customer.id) or query in customer.name.casefold()


@router.get("")
async def customers(request: Request, q: str = "") -> Response:
    everyone = await ops.list_customers(db_of(request), settings_of(request))
    shown = [c for c in everyone if _matches(q, c)]
    return page(request, "customers.html", customers=shown, total=len(everyone), q=q)


@router.post("")
async def create(request: Request) -> Response:
    values = await fields(request)
    try:
        body = CustomerCreate(
            name=values.get("name", ""),
            markup_percent=values.get("markup_percent"),
            dialect=values.get("dialect"),
        )
        created = await ops.create_customer(
            db_of(request), settings_of(request), body.name, body.markup_bp, body.dialect
        )
    except (ValidationError, OperatorError) as exc:
        return refused_form(request, exc, "/dashboard/customers")
    # The key is on this page and nowhere else, ever: no redirect that could carry it.
    return page(
        request,
        "key_once.html",
        customer_id=created.id,
        customer_name=created.name,
        key=created.key,
        prefix=created.prefix,
        created=True,
    )


@router.get("/{customer_id}")
async def customer(request: Request, customer_id: RowId) -> Response:
    db, settings = db_of(request), settings_of(request)
    detail = await ops.show_customer(db, settings, customer_id)
    view = await catalog_view(request, detail)
    return page(
        request,
        "customer.html",
        c=detail,
        entries=await ops.history(db, customer_id, 50),
        orders=await ops.list_orders(db, customer=customer_id, limit=20),
        prices=view,
    )


async def catalog_view(request: Request, view: CustomerOut) -> list[catalog.PricedService]:
    """The services this customer can order, at their own prices."""
    db, settings = db_of(request), settings_of(request)
    markup = None if view.markup_percent is None else percent_to_bp(view.markup_percent)
    family = await ops.upstream_family(db, settings)
    return await catalog.customer_catalog(
        db, view.id, markup, settings.default_markup_bp, subscriptions=family == "standard"
    )


def _posted(what: str, done: PostingResult) -> str:
    if done.duplicate:
        return (
            f"ref {done.ref} was posted before (entry {done.entry_id}, {done.amount}):"
            f" nothing credited again; the balance stays {done.balance} {done.currency}"
        )
    return f"{what} {done.amount} {done.currency} (entry {done.entry_id}): balance {done.balance}"


def _back(customer_id: int) -> str:
    return f"/dashboard/customers/{customer_id}"


@router.post("/{customer_id}/topup")
async def topup(request: Request, customer_id: RowId) -> Response:
    values = await fields(request)

    async def run() -> str:
        posting = Posting(**_posting(values))
        done = await ops.topup(db_of(request), settings_of(request), customer_id, posting)
        return _posted("Topped up", done)

    return await act(request, _back(customer_id), run)


@router.post("/{customer_id}/adjust")
async def adjust(request: Request, customer_id: RowId) -> Response:
    values = await fields(request)

    async def run() -> str:
        posting = Posting(**_posting(values))
        done = await ops.adjust(db_of(request), settings_of(request), customer_id, posting)
        return _posted("Adjusted by", done)

    return await act(request, _back(customer_id), run)


def _posting(values: dict[str, str]) -> dict[str, str]:
    return {k: values[k] for k in ("ref", "memo") if k in values} | {
        "amount": values.get("amount", "")
    }


@router.post("/{customer_id}/settings")
async def change(request: Request, customer_id: RowId) -> Response:
    values = await fields(request)

    async def run() -> str:
        given = {k: values[k] for k in ("name", "dialect") if k in values}
        markup = values.get("markup_percent")
        if markup is not None:
            given["markup_percent"] = None if markup.casefold() == "default" else markup
        patch = CustomerPatch(**given)
        done = await ops.update_customer(
            db_of(request), settings_of(request), customer_id, **patch.changes()
        )
        markup_text = "the default" if done.markup_percent is None else f"{done.markup_percent}%"
        return f"Saved: {done.name!r}, markup {markup_text}, dialect {done.dialect}"

    return await act(request, _back(customer_id), run)


@router.post("/{customer_id}/disable")
async def disable(request: Request, customer_id: RowId) -> Response:
    return await _set_disabled(request, customer_id, True)


@router.post("/{customer_id}/enable")
async def enable(request: Request, customer_id: RowId) -> Response:
    return await _set_disabled(request, customer_id, False)


async def _set_disabled(request: Request, customer_id: int, disabled: bool) -> Response:
    async def run() -> str:
        await ops.update_customer(
            db_of(request), settings_of(request), customer_id, disabled=disabled
        )
        if disabled:
            return f"Customer {customer_id} disabled: their keys open nothing until enabled"
        return f"Customer {customer_id} enabled"

    return await act(request, _back(customer_id), run)


@router.post("/{customer_id}/keys")
async def issue_key(request: Request, customer_id: RowId) -> Response:
    try:
        issued = await ops.issue_key(db_of(request), customer_id)
    except NotFound as exc:
        notify(request, str(exc), "error")
        return RedirectResponse("/dashboard/customers", status_code=303)
    view = await ops.show_customer(db_of(request), settings_of(request), customer_id)
    return page(
        request,
        "key_once.html",
        customer_id=customer_id,
        customer_name=view.name,
        key=issued.key,
        prefix=issued.prefix,
        created=False,
    )


@router.post("/{customer_id}/keys/revoke")
async def revoke_key(request: Request, customer_id: RowId) -> Response:
    values = await fields(request)

    async def run() -> str:
        prefix = values.get("prefix", "")
        keys = await ops.list_keys(db_of(request), customer_id)
        if prefix not in {k.prefix for k in keys}:  # this page revokes this customer's keys
            raise NotFound(f"customer {customer_id} has no key {prefix!r}")
        done = await ops.revoke_key(db_of(request), prefix)
        return f"Key {done.prefix}… revoked: it opens nothing from now on"

    return await act(request, _back(customer_id), run)
