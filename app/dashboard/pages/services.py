"""Services and prices: the catalog with its visibility, names, providers (the alternatives, in
the order they are tried), upstream cost and the price each rule gives; one service's page,
where its offers are mapped and a price is set with the list of whom it reaches shown first
(every customer's rate now, and the rule that decides it)."""

from dataclasses import dataclass

from fastapi import APIRouter, Request, Response

from app import catalog, customers
from app.admin import ops
from app.admin.schemas import OfferMapIn, OfferOut, PriceRuleIn, ServiceOut, ServiceRename
from app.dashboard.auth import DashboardRoute, act
from app.dashboard.forms import fields, ticked
from app.dashboard.pages.common import RowId, clients_of, db_of, settings_of, stored_moment
from app.dashboard.queries import RuleRow, price_rules
from app.dashboard.render import page
from app.errors import NotFound
from app.money import apply_markup, bp_to_percent, parse_micros, render

router = APIRouter(prefix="/dashboard/services", route_class=DashboardRoute)


def _rule_text(rule: RuleRow, cost: int) -> str:
    """A rule and the rate per 1000 it gives on its own ('markup 20% → 1.20')."""
    if rule.fixed_rate is not None:
        said, rate = f"fixed {render(rule.fixed_rate)}", rule.fixed_rate
    else:
        said, rate = (
            f"markup {bp_to_percent(rule.markup_bp or 0)}%",
            apply_markup(cost, rule.markup_bp or 0),
        )
    consent = ", below cost allowed" if rule.below_cost_ok else ""
    return f"{said} → {render(rate)}{consent}"


@router.get("")
async def services(request: Request, q: str = "", all: str = "") -> Response:
    db, settings = db_of(request), settings_of(request)
    listing = await ops.list_services(db, settings, include_unlisted=bool(all))
    query = q.strip().casefold()
    if query:
        listing = [
            s
            for s in listing
            if query == str(s.id) or query in f"{s.name} {s.category} {s.upstream_name}".casefold()
        ]
    rules: dict[int, list[RuleRow]] = {}
    for rule in await price_rules(db):
        rules.setdefault(rule.service_id, []).append(rule)
    names = {c.id: c.name for c in await customers.list_customers(db)}
    costs = {s.id: parse_micros(s.cost) for s in listing}
    rule_lines = {
        sid: [
            (
                "everyone"
                if r.customer_id is None
                else names.get(r.customer_id, str(r.customer_id)),
                _rule_text(r, costs[sid]),
            )
            for r in found
        ]
        for sid, found in rules.items()
        if sid in costs
    }
    offers: dict[int, list[OfferOut]] = {}
    for offer in await ops.list_offers(db):
        offers.setdefault(offer.service, []).append(offer)
    state = await catalog.catalog_state(db)
    return page(
        request,
        "services.html",
        services=listing,
        offers=offers,
        rule_lines=rule_lines,
        q=q,
        show_all=bool(all),
        synced_at=stored_moment(state.get(catalog.SYNCED_AT)),
        last_error=state.get(catalog.LAST_ERROR),
        default_markup=bp_to_percent(settings.default_markup_bp),
    )


@router.post("/sync")
async def sync_now(request: Request) -> Response:
    async def run() -> str:
        done = await ops.sync_catalog(db_of(request), clients_of(request))
        if not done.ok:
            return f"Catalog sync failed (the last good catalog stays): {done.error}"
        said = f"Catalog synced: {done.services} services, {done.dropped} no longer listed"
        for one in done.providers:
            if not one.ok:
                said += f"; provider {one.provider} failed (its last catalog stays): {one.error}"
        for p in done.suspended:
            who = "everyone" if p.customer is None else f"customer {p.customer}"
            said += f"; suspended: service {p.service} for {who} ({p.rate} < cost {p.cost})"
        return said

    return await act(request, "/dashboard/services", run)


@dataclass(frozen=True)
class CustomerPrice:
    id: int
    name: str
    rate: int | None  # None: suspended for them (below cost without consent)
    decided_by: str


def _decided_by(own: RuleRow | None, markup_bp: int | None, everyone: RuleRow | None) -> str:
    """Which of DESIGN.md's rules gives this customer's rate, most specific first."""
    if own is not None:
        return "their own price for this service"
    if markup_bp is not None:
        return f"their own markup of {bp_to_percent(markup_bp)}%"
    if everyone is not None:
        return "the price for everyone"
    return "the default markup"


def _as_rule(row: RuleRow | None) -> catalog.Rule | None:
    return None if row is None else catalog.Rule(row.fixed_rate, row.markup_bp, row.below_cost_ok)


async def _service(request: Request, service_id: int) -> ServiceOut:
    listing = await ops.list_services(db_of(request), settings_of(request), include_unlisted=True)
    found = next((s for s in listing if s.id == service_id), None)
    if found is None:
        raise NotFound(f"no service {service_id}")
    return found


@router.get("/{service_id}")
async def service(request: Request, service_id: RowId) -> Response:
    db, settings = db_of(request), settings_of(request)
    shown = await _service(request, service_id)
    cost = parse_micros(shown.cost)
    rules = await price_rules(db, service_id)
    everyone = next((r for r in rules if r.customer_id is None), None)
    own = {r.customer_id: r for r in rules if r.customer_id is not None}
    prices = []
    for view in await customers.list_customers(db):
        rate = catalog.resolve_rate(
            cost,
            customer_rule=_as_rule(own.get(view.id)),
            customer_markup_bp=view.markup_bp,
            service_rule=_as_rule(everyone),
            default_markup_bp=settings.default_markup_bp,
        )
        decided = _decided_by(own.get(view.id), view.markup_bp, everyone)
        prices.append(CustomerPrice(view.id, view.name, rate, decided))
    names = {p.id: p.name for p in prices}
    return page(
        request,
        "service.html",
        s=shown,
        offers=await ops.list_offers(db, service_id),
        providers=await ops.list_providers(db),
        cost=cost,
        prices=prices,
        rules=[
            (
                "everyone" if r.customer_id is None else names.get(r.customer_id, ""),
                r,
                _rule_text(r, cost),
            )
            for r in rules
        ],
        default_markup=bp_to_percent(settings.default_markup_bp),
    )


def _back(service_id: int) -> str:
    return f"/dashboard/services/{service_id}"


@router.post("/{service_id}/visibility")
async def visibility(request: Request, service_id: RowId) -> Response:
    values = await fields(request)

    async def run() -> str:
        hide = values.get("hidden") == "1"
        await ops.set_hidden(db_of(request), service_id, hide)
        return f"Service {service_id} {'hidden from' if hide else 'shown to'} customers"

    return await act(request, _back(service_id), run)


@router.post("/{service_id}/rename")
async def rename(request: Request, service_id: RowId) -> Response:
    form = await request.form()  # an empty field means "the upstream's": kept, not dropped
    values = {k: str(form.get(k, "")).strip() for k in ("name", "category")}

    async def run() -> str:
        body = ServiceRename(**values)
        await ops.rename_service(db_of(request), service_id, body.name, body.category)
        return f"Service {service_id} renamed (an empty name or category is the upstream's)"

    return await act(request, _back(service_id), run)


@router.post("/{service_id}/price")
async def set_price(request: Request, service_id: RowId) -> Response:
    values = await fields(request)

    async def run() -> str:
        given = {k: values[k] for k in ("rate", "markup_percent", "customer") if k in values}
        rule = PriceRuleIn(**given, allow_below_cost=ticked(values, "allow_below_cost"))
        done = await ops.set_price(db_of(request), service_id, rule)
        return f"Service {service_id}: {done.changed}"

    return await act(request, _back(service_id), run)


@router.post("/{service_id}/price/clear")
async def clear_price(request: Request, service_id: RowId) -> Response:
    values = await fields(request)

    async def run() -> str:
        done = await ops.clear_price(db_of(request), service_id, values.get("customer"))
        return f"Service {service_id}: {done.changed}"

    return await act(request, _back(service_id), run)


@router.post("/{service_id}/offers")
async def map_offer(request: Request, service_id: RowId) -> Response:
    values = await fields(request)

    async def run() -> str:
        body = OfferMapIn(
            provider=values.get("provider", ""),
            provider_service_id=values.get("provider_service_id", ""),  # type: ignore[arg-type]
            position=values.get("position"),  # type: ignore[arg-type]
        )
        done = await ops.map_offer(db_of(request), service_id, body)
        order = ", ".join(o.provider for o in done.offers)
        return f"Service {service_id}: {done.changed}; tried in this order: {order}"

    return await act(request, _back(service_id), run)


@router.post("/{service_id}/offers/remove")
async def unmap_offer(request: Request, service_id: RowId) -> Response:
    values = await fields(request)

    async def run() -> str:
        done = await ops.unmap_offer(db_of(request), service_id, values.get("provider", ""))
        return f"Service {service_id}: {done.changed}"

    return await act(request, _back(service_id), run)
