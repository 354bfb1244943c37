"""Providers: the upstream panels the gateway buys from. The list with what was last heard of
each (balance, catalog, out of funds); adding one (its key stored encrypted, never shown
again); one provider's page: its settings, enabling and disabling, its balance asked now, the
services it delivers and its orders."""

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import ValidationError

from app.admin import ops
from app.admin.schemas import ProviderCreate, ProviderPatch
from app.dashboard.auth import DashboardRoute, act, notify, refused_form
from app.dashboard.forms import fields
from app.dashboard.pages.common import RowId, clients_of, db_of, settings_of
from app.dashboard.render import page
from app.errors import NotFound, OperatorError

router = APIRouter(prefix="/dashboard/providers", route_class=DashboardRoute)

_SETTINGS = ("url", "key", "family", "connect_timeout_seconds", "read_timeout_seconds")


@router.get("")
async def providers(request: Request) -> Response:
    return page(request, "providers.html", providers=await ops.list_providers(db_of(request)))


@router.post("")
async def add(request: Request) -> Response:
    values = await fields(request)
    try:
        body = ProviderCreate(
            **{k: values[k] for k in ("name", "url", "key", "family", "low_balance") if k in values}
        )
        added = await ops.add_provider(db_of(request), settings_of(request), body)
    except (ValidationError, OperatorError) as exc:
        return refused_form(request, exc, "/dashboard/providers")
    notify(
        request,
        f"Provider {added.name} added (key {added.key}). Sync the catalog to import its"
        " services, then map them onto yours on each service's page.",
    )
    return RedirectResponse(f"/dashboard/providers/{added.id}", status_code=303)


@router.get("/{provider_id}")
async def provider(request: Request, provider_id: RowId) -> Response:
    db = db_of(request)
    view = await ops.show_provider(db, provider_id)
    offers = [o for o in await ops.list_offers(db) if o.provider_id == view.id]
    return page(request, "provider.html", p=view, offers=offers)


def _back(provider_id: int) -> str:
    return f"/dashboard/providers/{provider_id}"


@router.post("/{provider_id}/settings")
async def change(request: Request, provider_id: RowId) -> Response:
    values = await fields(request)

    async def run() -> str:
        given = {k: values[k] for k in (*_SETTINGS, "low_balance") if k in values}
        if not given:
            raise OperatorError("nothing to change (an empty field keeps its value)")
        done = await ops.update_provider(
            db_of(request), settings_of(request), provider_id, ProviderPatch(**given)
        )
        changed = ", ".join(sorted(given))
        return f"Provider {done.name}: {changed} changed"

    return await act(request, _back(provider_id), run)


@router.post("/{provider_id}/enable")
async def enable(request: Request, provider_id: RowId) -> Response:
    return await _set_enabled(request, provider_id, True)


@router.post("/{provider_id}/disable")
async def disable(request: Request, provider_id: RowId) -> Response:
    return await _set_enabled(request, provider_id, False)


async def _set_enabled(request: Request, provider_id: int, enabled: bool) -> Response:
    async def run() -> str:
        done = await ops.update_provider(
            db_of(request), settings_of(request), provider_id, ProviderPatch(enabled=enabled)
        )
        if enabled:
            return f"Provider {done.name} enabled: new orders may go there again"
        return f"Provider {done.name} disabled: no new order goes there (its orders still sync)"

    return await act(request, _back(provider_id), run)


@router.post("/{provider_id}/balance")
async def balance(request: Request, provider_id: RowId) -> Response:
    async def run() -> str:
        [heard] = await ops.provider_balance(db_of(request), clients_of(request), provider_id)
        if heard.balance is None:
            raise NotFound(f"provider {heard.provider} gave no balance: {heard.error}")
        low = " (below its low-balance threshold)" if heard.low_balance else ""
        return f"Balance at {heard.provider}: {heard.balance} {heard.currency or ''}{low}"

    return await act(request, _back(provider_id), run)
