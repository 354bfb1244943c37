"""The operator's operations, once, for both faces: the CLI (`app/cli.py`) and the admin API
(`app/admin/router.py`) each parse their own input, call one of these, and show the model it
returns (as text, or as `model_dump(mode="json")`, the API's reply body).

Each is a thin composition of the domain modules (customers, ledger, catalog, orders, sync,
report); a request that cannot be carried out raises `OperatorError` / `NotFound`.
"""

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta

from app import catalog, customers, ledger, providers
from app.admin.schemas import (
    CatalogState,
    CatalogSyncOut,
    CustomerBrief,
    CustomerCreated,
    CustomerDetail,
    CustomerOut,
    EntryOut,
    KeyIssued,
    KeyOut,
    KeyRevoked,
    OfferMapIn,
    OfferOut,
    OffersChanged,
    OrderOut,
    Posting,
    PostingResult,
    PriceChanged,
    PriceExempt,
    PriceRuleIn,
    ProviderBalanceOut,
    ProviderCreate,
    ProviderOut,
    ProviderPatch,
    ReportOut,
    ReportTotal,
    ResolutionOut,
    ResolveIn,
    ServiceChanged,
    ServiceOut,
    Summary,
    SyncPassOut,
    UpstreamBalanceOut,
    UpstreamCheck,
    VerifyResult,
)
from app.db import Database
from app.errors import NotFound, OperatorError
from app.family import Family
from app.money import bp_to_percent, render
from app.orders import queries
from app.orders.placing import STATES, UNKNOWN
from app.orders.resolution import check_upstream, resolve_order
from app.parsing import row_id
from app.providers import ProviderClients, as_clients
from app.report import build_report
from app.settings import Settings
from app.sync import PassResult, pass_grace, sync_pass
from app.upstream import Ambiguous, Refused, UpstreamClient

# --- naming things ------------------------------------------------------------------------------


async def customer_id_for(db: Database, ref: str | int) -> int:
    """A customer named by id or by exact name (ids win: a name of digits is reached by id).
    Only ASCII digits make an id ("¹" or "٥" are names, and name no one)."""
    ref = str(ref).strip()
    if ref.isascii() and ref.isdigit():
        if (number := row_id(ref)) is None:
            raise NotFound(f"no customer {ref}")
        return (await customers.get_customer(db, number)).id
    for view in await customers.list_customers(db):
        if view.name == ref:
            return view.id
    raise NotFound(f"no customer {ref!r}")


# --- customers and keys -------------------------------------------------------------------------


async def create_customer(
    db: Database, settings: Settings, name: str, markup_bp: int | None, dialect: str | None
) -> CustomerCreated:
    if markup_bp is not None and markup_bp < 0:
        raise OperatorError("a customer's markup must not be negative")
    customer_id, key = await customers.create_customer(
        db, name, dialect or settings.default_dialect, markup_bp
    )
    view = await customers.get_customer(db, customer_id)
    return CustomerCreated.of_key(
        view, settings.currency, key=key, prefix=key[: customers.PREFIX_LENGTH]
    )


async def list_customers(db: Database, settings: Settings) -> list[CustomerOut]:
    return [CustomerOut.of(v, settings.currency) for v in await customers.list_customers(db)]


async def show_customer(db: Database, settings: Settings, ref: str | int) -> CustomerDetail:
    customer_id = await customer_id_for(db, ref)
    view = await customers.get_customer(db, customer_id)
    keys = await customers.list_keys(db, customer_id)
    return CustomerDetail.of_keys(view, settings.currency, keys)


async def update_customer(
    db: Database, settings: Settings, ref: str | int, **changes: object
) -> CustomerOut:
    """`changes` as `customers.update_customer` takes them (name, dialect, markup_bp, disabled)."""
    if not changes:
        raise OperatorError("nothing to change")
    markup_bp = changes.get("markup_bp")
    if isinstance(markup_bp, int) and markup_bp < 0:
        raise OperatorError("a customer's markup must not be negative")
    customer_id = await customer_id_for(db, ref)
    view = await customers.update_customer(db, customer_id, **changes)  # type: ignore[arg-type]
    return CustomerOut.of(view, settings.currency)


async def issue_key(db: Database, ref: str | int) -> KeyIssued:
    customer_id = await customer_id_for(db, ref)
    key = await customers.issue_key(db, customer_id)
    return KeyIssued(customer_id=customer_id, key=key, prefix=key[: customers.PREFIX_LENGTH])


async def list_keys(db: Database, ref: str | int) -> list[KeyOut]:
    return [KeyOut.of(k) for k in await customers.list_keys(db, await customer_id_for(db, ref))]


async def revoke_key(db: Database, prefix: str) -> KeyRevoked:
    prefix = prefix.strip()
    if not (prefix.isascii() and prefix.isalnum() and len(prefix) <= customers.PREFIX_LENGTH):
        raise NotFound(f"no live key with prefix {prefix!r}")  # not even the shape of one
    await customers.revoke_key(db, prefix)
    return KeyRevoked(prefix=prefix)


# --- ledger -------------------------------------------------------------------------------------


def _posting(posted: ledger.Posted, ref: str | None, settings: Settings) -> PostingResult:
    return PostingResult(
        customer_id=posted.customer_id,
        amount=render(posted.amount),
        balance=render(posted.balance),
        currency=settings.currency,
        entry_id=posted.entry_id,
        ref=ref,
        duplicate=posted.duplicate,
    )


async def topup(
    db: Database, settings: Settings, customer: str | int, posting: Posting
) -> PostingResult:
    """Money the customer paid; a `ref` posted before answers the first top-up."""
    return await _post(db, settings, customer, posting, ledger.TOPUP)


async def adjust(
    db: Database, settings: Settings, customer: str | int, posting: Posting
) -> PostingResult:
    """A signed correction; a `ref` posted before answers the first adjustment."""
    return await _post(db, settings, customer, posting, ledger.ADJUSTMENT)


async def _post(
    db: Database, settings: Settings, customer: str | int, posting: Posting, kind: str
) -> PostingResult:
    customer_id = await customer_id_for(db, customer)
    posted = await ledger.post_for_operator(
        db, customer_id, posting.micros, kind, memo=posting.memo, ref=posting.ref
    )
    return PostingResult(
        customer_id=posted.customer_id,
        amount=render(posted.amount),
        balance=render(posted.balance),
        currency=settings.currency,
        entry_id=posted.entry_id,
        ref=posting.ref,
        duplicate=posted.duplicate,
    )


async def history(db: Database, ref: str | int, limit: int) -> list[EntryOut]:
    customer_id = await customer_id_for(db, ref)
    return [EntryOut.of(e) for e in await ledger.history(db, customer_id, limit)]


async def verify(db: Database) -> VerifyResult:
    return VerifyResult.of(await ledger.verify(db))


# --- services -----------------------------------------------------------------------------------


async def sync_catalog(db: Database, upstream: UpstreamClient | ProviderClients) -> CatalogSyncOut:
    """Fetch every enabled provider's catalog now; a failure (ok false) keeps that provider's
    last good one. The totals add up the providers; `providers` has each one's result."""
    clients = as_clients(upstream)
    await clients.refresh(db)
    results = await catalog.sync_catalogs(db, clients)
    return CatalogSyncOut.of_all(results)


async def upstream_family(db: Database, settings: Settings) -> Family:
    """As configured, else as the last catalog sync heard it, else SmartPanel (the stricter)."""
    if settings.upstream_family != "auto":
        return settings.upstream_family
    return await catalog.stored_family(db) or "smartpanel"


async def list_services(
    db: Database, settings: Settings, *, include_unlisted: bool = False
) -> list[ServiceOut]:
    family = await upstream_family(db, settings)
    views = await catalog.list_services(
        db, settings.default_markup_bp, subscriptions=family == "standard"
    )
    return [ServiceOut.of(v) for v in views if include_unlisted or v.upstream_listed]


async def set_hidden(db: Database, service_id: int, hidden: bool) -> ServiceChanged:
    await catalog.set_hidden(db, service_id, hidden)
    return ServiceChanged(service=service_id, changed="hidden" if hidden else "shown")


async def rename_service(
    db: Database, service_id: int, name: str | None, category: str | None
) -> ServiceChanged:
    await catalog.rename(db, service_id, name=name, category=category)
    return ServiceChanged(service=service_id, changed="renamed")


def _whom(customer: str | int | None) -> str:
    return "everyone" if customer is None else f"customer {customer}"


async def set_price(db: Database, service_id: int, rule: PriceRuleIn) -> PriceChanged:
    """A fixed rate or a markup (exactly one), for everyone or one customer (id or name).
    The reply says whom it reaches and who keeps a price of their own, and why."""
    customer_id = None if rule.customer is None else await customer_id_for(db, rule.customer)
    fixed_rate, markup_bp = rule.fixed_rate, rule.markup_bp
    await catalog.set_price(
        db,
        service_id,
        customer_id=customer_id,
        fixed_rate=fixed_rate,
        markup_bp=markup_bp,
        below_cost_ok=rule.allow_below_cost,
    )
    price = (
        f"fixed rate {render(fixed_rate)}"
        if fixed_rate is not None
        else f"markup {bp_to_percent(markup_bp or 0)}%"
    )
    personal = await catalog.personal_rules(db, service_id)
    everyone = await customers.list_customers(db)
    applies: list[CustomerBrief] = []
    exempt: list[PriceExempt] = []
    if customer_id is not None:
        view = next(v for v in everyone if v.id == customer_id)
        applies.append(CustomerBrief(id=view.id, name=view.name))
        message = f"{price} for customer {view.id} {view.name!r} only"
        if view.markup_bp is not None:
            message += f" (before their own markup of {bp_to_percent(view.markup_bp)}%)"
        return PriceChanged(
            service=service_id, changed=message, applies_to=applies, not_applied_to=exempt
        )
    for view in everyone:
        if view.id in personal:
            reason = "their own price for this service comes first"
        elif view.markup_bp is not None:
            reason = f"their own markup of {bp_to_percent(view.markup_bp)}% comes first"
        else:
            applies.append(CustomerBrief(id=view.id, name=view.name))
            continue
        exempt.append(PriceExempt(id=view.id, name=view.name, reason=reason))
    message = f"{price} for every customer without a price of their own: {_count(applies)}"
    if exempt:
        shown = "; ".join(f"{e.id} {e.name!r}: {e.reason}" for e in exempt[:5])
        more = f"; and {len(exempt) - 5} more" if len(exempt) > 5 else ""
        message += f"; not for {_count(exempt)} ({shown}{more})"
    return PriceChanged(
        service=service_id, changed=message, applies_to=applies, not_applied_to=exempt
    )


def _count(items: list) -> str:  # type: ignore[type-arg]
    return f"{len(items)} customer{'' if len(items) == 1 else 's'}"


async def clear_price(
    db: Database, service_id: int, customer: str | int | None = None
) -> ServiceChanged:
    customer_id = None if customer is None else await customer_id_for(db, customer)
    await catalog.clear_price(db, service_id, customer_id)
    return ServiceChanged(service=service_id, changed=f"price rule for {_whom(customer)} cleared")


async def list_offers(db: Database, service_id: int | None = None) -> list[OfferOut]:
    """The providers that deliver a service (or every service), in the order they are tried."""
    return [OfferOut.of(v) for v in await catalog.list_offers(db, service_id)]


async def map_offer(db: Database, service_id: int, body: OfferMapIn) -> OffersChanged:
    """Make a provider's service an alternative of a local service (the customer keeps one
    service id and one price; the order goes to the first provider that takes it)."""
    provider_id = await providers.provider_id_for(db, body.provider)
    await catalog.map_offer(db, service_id, provider_id, body.provider_service_id, body.position)
    return OffersChanged(
        service=service_id,
        changed=f"provider {body.provider}'s service {body.provider_service_id} delivers it",
        offers=await list_offers(db, service_id),
    )


async def unmap_offer(db: Database, service_id: int, provider: str) -> OffersChanged:
    provider_id = await providers.provider_id_for(db, provider)
    home = await catalog.unmap_offer(db, service_id, provider_id)
    return OffersChanged(
        service=service_id,
        changed=f"provider {provider}'s offer no longer delivers it (now service {home}'s)",
        offers=await list_offers(db, service_id),
    )


# --- providers ----------------------------------------------------------------------------------


async def list_providers(db: Database) -> list[ProviderOut]:
    return [ProviderOut.of(v) for v in await providers.list_providers(db)]


async def show_provider(db: Database, ref: str | int) -> ProviderOut:
    return ProviderOut.of(await providers.get_provider(db, ref))


async def add_provider(db: Database, settings: Settings, body: ProviderCreate) -> ProviderOut:
    """A new provider, enabled; `services sync` then imports its catalog."""
    return ProviderOut.of(await providers.add_provider(db, settings, **body.values()))


async def update_provider(
    db: Database, settings: Settings, ref: str | int, body: ProviderPatch
) -> ProviderOut:
    """Change a provider; enabling or disabling it changes which offer each service's price
    and bounds come from (its reference), at once."""
    changes = body.changes()
    view = await providers.update_provider(db, settings, ref, **changes)
    if "enabled" in changes:
        await catalog.recompute_services(db)
    return ProviderOut.of(view)


async def provider_balance(
    db: Database, clients: ProviderClients, ref: str | int | None = None
) -> list[ProviderBalanceOut]:
    """Our balance at each enabled provider (or one), asked now, and remembered for the
    low-balance warning and gauge."""
    await clients.refresh(db)
    chosen = None if ref is None else await providers.provider_id_for(db, ref)
    views = {v.id: v for v in await providers.list_providers(db)}
    balances = []
    for provider_id, view in views.items():
        client = clients.get(provider_id)
        if chosen is not None and provider_id != chosen:
            continue
        if chosen is None and not view.enabled:
            continue
        answer = (
            await client.balance() if client is not None else Refused("no usable key", "config")
        )
        if isinstance(answer, Refused | Ambiguous):
            error = answer.message if isinstance(answer, Refused) else answer.reason
            balances.append(
                ProviderBalanceOut(
                    provider=view.name, balance=None, currency=None, error=error, low_balance=False
                )
            )
            continue
        micros, currency = answer
        await providers.record_balance(db, provider_id, micros, currency)
        low = view.low_balance_threshold is not None and micros < view.low_balance_threshold
        balances.append(
            ProviderBalanceOut(
                provider=view.name,
                balance=render(micros),
                currency=currency or None,
                error=None,
                low_balance=low,
            )
        )
    return balances


async def low_balance_warning(db: Database) -> str | None:
    """The line every CLI command prints while a provider's balance is below its threshold."""
    low = await providers.low_balances(db)
    return providers.low_balance_warning(low) if low else None


# --- orders -------------------------------------------------------------------------------------


async def list_orders(
    db: Database,
    *,
    state: str | None = None,
    customer: str | int | None = None,
    limit: int = 50,
) -> list[OrderOut]:
    """Newest first."""
    if state is not None and state not in STATES:
        raise OperatorError(f"no state {state!r}: one of {', '.join(STATES)}")
    customer_id = None if customer is None else await customer_id_for(db, customer)
    views = await queries.list_orders(db, state=state, customer_id=customer_id, limit=limit)
    return [OrderOut.of(v) for v in views]


async def get_order(db: Database, order_id: int) -> OrderOut:
    return OrderOut.of(await queries.get_order(db, order_id))


async def resolve(
    db: Database, upstream: UpstreamClient | ProviderClients, order_id: int, verdict: ResolveIn
) -> ResolutionOut:
    """The verdict on an `unknown` order, checked with its upstream first; with `correct`, the
    correction of an earlier verdict (an audited ledger entry)."""
    done = await resolve_order(
        db,
        upstream,
        order_id,
        upstream_order_id=verdict.upstream_order_id,
        not_placed=verdict.not_placed,
        force=verdict.force,
        correct=verdict.correct,
        memo=verdict.memo,
    )
    return ResolutionOut.of_resolution(done)


async def check_upstream_order(
    db: Database,
    upstream: UpstreamClient | ProviderClients,
    order_id: int,
    upstream_order_id: int,
) -> UpstreamCheck:
    """What the order's provider says about `upstream_order_id`, and how it differs from the
    order: the check `resolve` makes, asked alone (nothing changes), to show before a verdict."""
    await queries.get_order(db, order_id)  # NotFound for an order that does not exist
    check = await check_upstream(db, upstream, order_id, upstream_order_id, force=True)
    return UpstreamCheck.of(replace(check, forced=False))


async def unresolved(db: Database) -> int:
    """How many orders wait in `unknown` for an operator's verdict."""
    return (await queries.count_by_state(db)).get(UNKNOWN, 0)


# --- sync, report, summary ----------------------------------------------------------------------


async def run_sync_pass(
    db: Database,
    upstream: UpstreamClient | ProviderClients,
    settings: Settings,
    on_batch: Callable[[PassResult], None] | None = None,
) -> SyncPassOut:
    """One status-sync pass (also turns orders stranded in `sending` into `unknown`)."""
    from app.main import sending_grace_seconds  # here: app.main imports the admin router

    clients = as_clients(upstream)
    grace = await pass_grace(db, clients, sending_grace_seconds(settings))
    result = await sync_pass(db, clients, sending_grace_seconds=grace, on_batch=on_batch)
    return SyncPassOut.of(result)


def day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


async def report(
    db: Database, settings: Settings, since: date | None = None, until: date | None = None
) -> ReportOut:
    """Orders created from the start of `since` to the end of `until` (both days included,
    UTC)."""
    if since is not None and until is not None and until < since:
        raise OperatorError("until is before since")
    start = None if since is None else day_start(since)
    end = None if until is None else day_start(until + timedelta(days=1))
    return ReportOut.of(await build_report(db, start, end), settings.currency)


async def upstream_balance(upstream: UpstreamClient) -> UpstreamBalanceOut:
    answer = await upstream.balance()
    if isinstance(answer, Refused):
        return UpstreamBalanceOut(balance=None, currency=None, error=answer.message)
    if isinstance(answer, Ambiguous):
        return UpstreamBalanceOut(balance=None, currency=None, error=answer.reason)
    micros, currency = answer
    return UpstreamBalanceOut(balance=render(micros), currency=currency or None, error=None)


async def summary(db: Database, settings: Settings, upstream: UpstreamClient) -> Summary:
    """Orders by state, the catalog's state, today's money and the upstream balance (asked
    now: an operator's look, not a hot path)."""
    by_state = await queries.count_by_state(db)
    state = await catalog.catalog_state(db)
    synced_at = state.get(catalog.SYNCED_AT) or None
    today = datetime.now(UTC).date()
    day = await build_report(db, day_start(today), day_start(today + timedelta(days=1)))
    return Summary(
        orders_by_state={s: by_state.get(s, 0) for s in STATES}
        | {s: n for s, n in by_state.items() if s not in STATES},
        unresolved=by_state.get(UNKNOWN, 0),
        catalog=CatalogState(
            synced_at=None if synced_at is None else datetime.fromisoformat(synced_at),
            last_error=state.get(catalog.LAST_ERROR) or None,
        ),
        currency=settings.currency,
        today=ReportTotal.of(day.total),
        upstream=await upstream_balance(upstream),
    )
