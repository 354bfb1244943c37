"""The service catalog: the upstream's services kept in a table, and each customer's prices.

`services` and `add` read only this table, never the upstream. A failed or garbled upstream
fetch leaves the last good catalog in place.
"""

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from app.customers import Caller, authenticate, hash_key, keyed_select, split_caller
from app.db import Conn, Database
from app.errors import NotFound, OperatorError
from app.family import FAMILIES, Family
from app.models import (
    DEFAULT_PROVIDER_ID,
    Customer,
    PriceRule,
    Provider,
    Service,
    ServiceOffer,
    Setting,
    utcnow,
)
from app.money import apply_markup, render
from app.upstream import Refused, UpstreamClient, UpstreamService, is_upstream_key_error

if TYPE_CHECKING:
    from app.providers import ProviderClients

log = logging.getLogger("smm_gateway.catalog")

# Local ids of services first seen at a provider other than `default` start here: far above
# any id a panel hands out, so `default`'s own ids (which are its services' local ids, as
# before there were providers) never meet them. Below 2**31: services.id is an INTEGER.
OTHER_PROVIDERS_FIRST_ID = 1_000_000_000

SYNCED_AT = "catalog_synced_at"
LAST_ERROR = "catalog_last_error"
KEY_REFUSED = "the upstream refuses our key (check SMMGW_UPSTREAM_KEY)"
FAMILY = "upstream_family"  # as heard at the last good sync
SUBSCRIPTIONS = "Subscriptions"


@dataclass(frozen=True)
class PricedService:
    """A service as one customer sees it: their own rate, the operator's names."""

    id: int
    name: str
    category: str
    type: str
    rate: int
    cost: int
    min: int
    max: int
    dripfeed: bool
    refill: bool
    cancel: bool
    description: str | None


@dataclass(frozen=True)
class Rule:
    fixed_rate: int | None
    markup_bp: int | None
    below_cost_ok: bool


def resolve_rate(
    cost: int,
    *,
    customer_rule: Rule | None,
    customer_markup_bp: int | None,
    service_rule: Rule | None,
    default_markup_bp: int,
) -> int | None:
    """The customer's rate per 1000, most specific rule first; None when the service is
    suspended because the rate would fall below cost without the operator's consent."""
    chosen: tuple[int, bool] | None = None
    if customer_rule is not None:
        if customer_rule.fixed_rate is not None:
            chosen = (customer_rule.fixed_rate, customer_rule.below_cost_ok)
        elif customer_rule.markup_bp is not None:
            chosen = (apply_markup(cost, customer_rule.markup_bp), customer_rule.below_cost_ok)
    if chosen is None and customer_markup_bp is not None:
        chosen = (apply_markup(cost, customer_markup_bp), False)
    if chosen is None and service_rule is not None:
        if service_rule.fixed_rate is not None:
            chosen = (service_rule.fixed_rate, service_rule.below_cost_ok)
        elif service_rule.markup_bp is not None:
            chosen = (apply_markup(cost, service_rule.markup_bp), service_rule.below_cost_ok)
    if chosen is None:
        chosen = (apply_markup(cost, default_markup_bp), False)
    rate, below_cost_ok = chosen
    if rate <= 0 or (rate < cost and not below_cost_ok):
        return None  # nothing is sold for free, whatever a rule says
    return rate


_SERVICE_COLUMNS = (
    Service.id,
    Service.name,
    Service.category,
    Service.type,
    Service.rate,
    Service.min,
    Service.max,
    Service.dripfeed,
    Service.refill,
    Service.cancel,
    Service.description,
    Service.display_name,
    Service.display_category,
)


async def _rules(
    conn: Conn, customer_id: int | None, service_id: int | None = None
) -> tuple[dict[int, Rule], dict[int, Rule]]:
    """(rules for everyone, rules for this customer), keyed by service id."""
    stmt = select(
        PriceRule.service_id,
        PriceRule.customer_id,
        PriceRule.fixed_rate,
        PriceRule.markup_bp,
        PriceRule.below_cost_ok,
    ).where(or_(PriceRule.customer_id.is_(None), PriceRule.customer_id == customer_id))
    if service_id is not None:
        stmt = stmt.where(PriceRule.service_id == service_id)
    general: dict[int, Rule] = {}
    personal: dict[int, Rule] = {}
    for sid, cid, fixed, markup, ok in await conn.execute(stmt):
        (general if cid is None else personal)[sid] = Rule(fixed, markup, ok)
    return general, personal


def _priced(
    row: tuple,
    general: dict[int, Rule],
    personal: dict[int, Rule],
    markup_bp: int | None,
    default_bp: int,
) -> PricedService | None:
    (sid, name, category, type_, cost, min_, max_, drip, refill, cancel, desc, dname, dcat) = row
    rate = resolve_rate(
        cost,
        customer_rule=personal.get(sid),
        customer_markup_bp=markup_bp,
        service_rule=general.get(sid),
        default_markup_bp=default_bp,
    )
    if rate is None:
        return None
    return PricedService(
        sid,
        dname or name,
        dcat or category,
        type_,
        rate,
        cost,
        min_,
        max_,
        bool(drip),  # SQLite's raw rows carry 0/1
        bool(refill),
        bool(cancel),
        desc,
    )


_ORDERABLE = (Service.upstream_listed.is_(True), Service.hidden.is_(False))


async def customer_catalog(
    db: Database,
    customer_id: int,
    markup_bp: int | None,
    default_bp: int,
    *,
    subscriptions: bool = True,
) -> list[PricedService]:
    """Every service this customer can order, at their prices; no subscriptions where the
    upstream cannot take them (`subscriptions` false)."""
    where = [*_ORDERABLE] if subscriptions else [*_ORDERABLE, Service.type != SUBSCRIPTIONS]
    async with db.read() as conn:
        general, personal = await _rules(conn, customer_id)
        rows = await conn.execute(select(*_SERVICE_COLUMNS).where(*where).order_by(Service.id))
        priced = [_priced(tuple(r), general, personal, markup_bp, default_bp) for r in rows]
    return [p for p in priced if p is not None]


_PRICED_COLUMNS = """s.id, s.name, s.category, s.type, s.rate, s.min, s.max, s.dripfeed, s.refill,
       s.cancel, s.description, s.display_name, s.display_category,
       g.fixed_rate, g.markup_bp, g.below_cost_ok, p.fixed_rate, p.markup_bp, p.below_cost_ok"""
_RULES_JOINED = """
LEFT JOIN price_rules g ON g.service_id = s.id AND g.customer_id IS NULL
LEFT JOIN price_rules p ON p.service_id = s.id AND p.customer_id = {customer}"""
_PRICED_SERVICE = (
    f"SELECT {_PRICED_COLUMNS} FROM services s {_RULES_JOINED}"
    " WHERE s.id = {service} AND s.upstream_listed AND NOT s.hidden"
)
_PRICED_SERVICE_SQLITE = _PRICED_SERVICE.format(customer="?", service="?")
_PRICED_SERVICE_PG = _PRICED_SERVICE.format(customer="$1", service="$2")
# `add`'s key lookup with its service at the customer's price, in one read: no service (or a
# hidden one) leaves the service columns NULL.
_KEYED_PRICED = keyed_select(
    _PRICED_COLUMNS,
    "LEFT JOIN services s ON s.id = {service} AND s.upstream_listed AND NOT s.hidden"
    + _RULES_JOINED.format(customer="c.id"),
)
_KEYED_PRICED_SQLITE = _KEYED_PRICED.format(service="?2", key="?1")
_KEYED_PRICED_PG = _KEYED_PRICED.format(service="$2", key="$1")


async def priced_service(
    db: Database, service_id: int, customer_id: int, markup_bp: int | None, default_bp: int
) -> PricedService | None:
    """One orderable service at this customer's price; None if unknown, hidden or suspended.
    One read, with both price rules that may apply joined in."""
    if service_id >= 2**31:  # beyond the column's range: no such service
        return None
    rows = await db.fetch(_PRICED_SERVICE_SQLITE, _PRICED_SERVICE_PG, customer_id, service_id)
    return _priced_row(tuple(rows[0]), markup_bp, default_bp) if rows else None


async def caller_and_priced_service(
    db: Database, key: str, service_id: int, default_bp: int
) -> tuple[Caller | None, PricedService | None]:
    """The key's live customer (None: no such key) and the service at their price (None:
    unknown, hidden or suspended), in one read: all an `add` reads before its phase 1."""
    if not key:
        return None, None
    if service_id >= 2**31:
        return await authenticate(db, key), None
    rows = await db.fetch(_KEYED_PRICED_SQLITE, _KEYED_PRICED_PG, hash_key(key), service_id)
    if not rows:
        return None, None
    caller, service = split_caller(rows[0])
    if service[0] is None:
        return caller, None
    return caller, _priced_row(service, caller.markup_bp, default_bp)


def _priced_row(row: tuple, markup_bp: int | None, default_bp: int) -> PricedService | None:
    """A row of _PRICED_COLUMNS at the customer's price."""
    service, general, personal = row[:13], _rule(row[13:16]), _rule(row[16:19])
    service_id = service[0]
    return _priced(
        service,
        {service_id: general} if general else {},
        {service_id: personal} if personal else {},
        markup_bp,
        default_bp,
    )


# --- the catalog's version (migration 0006: triggers move it with every change) -------------

_KEYED_VERSION = keyed_select("COALESCE((SELECT version FROM catalog_version WHERE id = 1), 0)")
_KEYED_VERSION_SQLITE = _KEYED_VERSION.format(key="?")
_KEYED_VERSION_PG = _KEYED_VERSION.format(key="$1")
_OWN_PRICES = "SELECT DISTINCT customer_id FROM price_rules WHERE customer_id IS NOT NULL"


async def caller_and_catalog_version(db: Database, key: str) -> tuple[Caller | None, int]:
    """The key's live customer (None: no such key) and the catalog's version, in one read:
    the whole database work of a `services` request whose reply is rendered already."""
    if not key:
        return None, 0
    rows = await db.fetch(_KEYED_VERSION_SQLITE, _KEYED_VERSION_PG, hash_key(key))
    if not rows:
        return None, 0
    caller, (version,) = split_caller(rows[0])
    return caller, version


async def customers_with_own_prices(db: Database) -> frozenset[int]:
    """The customers with a price rule of their own (any service)."""
    return frozenset(row[0] for row in await db.fetch(_OWN_PRICES, _OWN_PRICES))


def _rule(columns: tuple) -> Rule | None:
    fixed, markup, below_cost_ok = columns
    if fixed is None and markup is None:
        return None
    return Rule(fixed, markup, bool(below_cost_ok))


# --- refreshing from the upstream -------------------------------------------------------------


@dataclass(frozen=True)
class SuspendedPrice:
    """A fixed price the upstream's rate has overtaken: the service is not sold at it (to
    everyone when `customer_id` is None) until the operator changes it or consents."""

    service_id: int
    customer_id: int | None
    rate: int
    cost: int

    def describe(self) -> str:
        who = "everyone" if self.customer_id is None else f"customer {self.customer_id}"
        return (
            f"service {self.service_id} for {who}: fixed {render(self.rate)}"
            f" < cost {render(self.cost)}"
        )


async def suspended_prices(conn: Conn) -> tuple[SuspendedPrice, ...]:
    """Every fixed price below its service's current cost without --allow-below-cost
    (resolve_rate suspends exactly these), on services the upstream still lists."""
    rows = await conn.execute(
        select(PriceRule.service_id, PriceRule.customer_id, PriceRule.fixed_rate, Service.rate)
        .join(Service, Service.id == PriceRule.service_id)
        .where(
            PriceRule.fixed_rate.is_not(None),
            PriceRule.fixed_rate < Service.rate,
            PriceRule.below_cost_ok.is_(False),
            Service.upstream_listed.is_(True),
        )
        .order_by(PriceRule.service_id, PriceRule.customer_id.nulls_first())
    )
    return tuple(SuspendedPrice(*row) for row in rows)


@dataclass(frozen=True)
class SyncResult:
    ok: bool
    services: int = 0
    dropped: int = 0
    error: str | None = None
    family: Family | None = None  # the upstream's family, as configured or heard
    suspended: tuple[SuspendedPrice, ...] = ()  # fixed prices now below cost: not sold
    provider: str | None = None


def _upsert(conn: Conn):  # type: ignore[no-untyped-def]
    return pg_insert if conn.dialect.name == "postgresql" else sqlite_insert


async def _set_kv(conn: Conn, key: str, value: str) -> None:
    stmt = _upsert(conn)(Setting).values(key=key, value=value)
    await conn.execute(stmt.on_conflict_do_update(index_elements=["key"], set_={"value": value}))


async def sync_catalog(
    db: Database, upstream: UpstreamClient, provider_id: int = DEFAULT_PROVIDER_ID
) -> SyncResult:
    """Fetch one provider's catalog into its offers (and the services they deliver); on any
    failure keep the last good one. Provider `default`'s services keep their own ids as local
    ids; another provider's new service gets a local id of its own (OTHER_PROVIDERS_FIRST_ID
    and up), hidden until the operator shows it or maps it onto a service (`services map`)."""
    fetched = await upstream.services()
    if isinstance(fetched, Refused) and is_upstream_key_error(fetched.message):
        error = f"{KEY_REFUSED}: {fetched.message}"
    elif not isinstance(fetched, list):
        error = f"{type(fetched).__name__}: {fetched.reason}"
    elif not fetched:
        # An empty catalog from a live panel is far likelier a glitch than a real change.
        error = "the upstream listed no services"
    else:
        error = None
    if error is not None or not isinstance(fetched, list):
        failed = await _record_failure(db, error or "", provider_id)
        return replace(failed, provider=upstream.provider)
    now = utcnow()
    async with db.write() as conn:
        offers = {
            psid: sid
            for psid, sid in await conn.execute(
                select(ServiceOffer.provider_service_id, ServiceOffer.service_id).where(
                    ServiceOffer.provider_id == provider_id
                )
            )
        }
        touched = set(offers.values())
        for svc in fetched:
            values = _offer_values(svc)
            if svc.service_id in offers:
                await conn.execute(
                    update(ServiceOffer)
                    .where(
                        ServiceOffer.provider_id == provider_id,
                        ServiceOffer.provider_service_id == svc.service_id,
                    )
                    .values(**values, updated_at=now)
                )
                continue
            local_id = await _home_for(conn, provider_id, svc)
            if local_id is None:
                continue
            await conn.execute(
                insert(ServiceOffer).values(
                    service_id=local_id,
                    provider_id=provider_id,
                    provider_service_id=svc.service_id,
                    position=0,
                    updated_at=now,
                    **values,
                )
            )
            touched.add(local_id)
        ids = [svc.service_id for svc in fetched]
        await conn.execute(
            update(ServiceOffer)
            .where(
                ServiceOffer.provider_id == provider_id,
                ServiceOffer.provider_service_id.not_in(ids),
                ServiceOffer.listed.is_(True),
            )
            .values(listed=False, updated_at=now)
        )
        dropped = await _recompute(conn, touched, now)
        await _record_success(conn, provider_id, upstream, now)
        suspended = await suspended_prices(conn)
    if dropped:
        log.warning("catalog: %d services no longer listed upstream, now hidden", dropped)
    if suspended:
        log.warning(
            "catalog: %d fixed prices are below the upstream's rate, not sold until changed: %s",
            len(suspended),
            "; ".join(p.describe() for p in suspended[:20]),
        )
    log.info(
        "catalog: %d services synced from a %s upstream (provider %s)",
        len(fetched),
        upstream.family,
        upstream.provider,
    )
    return SyncResult(
        True,
        services=len(fetched),
        dropped=dropped,
        family=upstream.family,
        suspended=suspended,
        provider=upstream.provider,
    )


async def sync_catalogs(db: Database, clients: "ProviderClients") -> list[SyncResult]:
    """Every enabled provider's catalog, one after the other; one that fails keeps its last
    good offers and does not stop the others."""
    return [
        await sync_catalog(db, client, provider_id)
        for provider_id, client in sorted(clients.enabled().items())
    ]


async def _home_for(conn: Conn, provider_id: int, svc: UpstreamService) -> int | None:
    """The local service a provider's new service delivers: for `default`, the one with its
    own id (created if new); for another provider, a new one of its own."""
    now = utcnow()
    if provider_id == DEFAULT_PROVIDER_ID:
        taken = await conn.scalar(
            select(ServiceOffer.provider_id).where(ServiceOffer.service_id == svc.service_id)
        )
        exists = await conn.scalar(select(Service.id).where(Service.id == svc.service_id))
        if exists is None:
            await conn.execute(
                insert(Service).values(id=svc.service_id, updated_at=now, **_service_values(svc))
            )
        elif taken is not None and svc.service_id >= OTHER_PROVIDERS_FIRST_ID:
            log.warning(
                "catalog: provider default's service %d collides with another provider's"
                " local service: skipped",
                svc.service_id,
            )
            return None
        return svc.service_id
    # Hidden until the operator sells it (`services show`) or maps it onto a service of
    # theirs: a second panel's catalog is mostly the first one's services again.
    local_id = await _next_other_id(conn)
    await conn.execute(
        insert(Service).values(id=local_id, updated_at=now, hidden=True, **_service_values(svc))
    )
    return local_id


async def _next_other_id(conn: Conn) -> int:
    highest = await conn.scalar(
        select(func.max(Service.id)).where(Service.id >= OTHER_PROVIDERS_FIRST_ID)
    )
    return max(OTHER_PROVIDERS_FIRST_ID, (highest or 0) + 1)


async def _record_success(
    conn: Conn, provider_id: int, upstream: UpstreamClient, now: datetime
) -> None:
    family = upstream.family
    await conn.execute(
        update(Provider)
        .where(Provider.id == provider_id)
        .values(
            catalog_synced_at=now,
            catalog_error=None,
            **({"family_heard": family} if family is not None else {}),
        )
    )
    if provider_id == DEFAULT_PROVIDER_ID:  # /healthz and `summary` read these, as before
        await _set_kv(conn, SYNCED_AT, now.isoformat())
        await _set_kv(conn, LAST_ERROR, "")
        if family is not None:
            await _set_kv(conn, FAMILY, family)


_REFERENCE_FIELDS = (
    "name",
    "category",
    "type",
    "rate",
    "min",
    "max",
    "dripfeed",
    "refill",
    "cancel",
    "description",
)


async def _recompute(conn: Conn, service_ids: set[int] | None, now: datetime) -> int:
    """Each service's row from its reference offer: the first (by position) listed offer of an
    enabled provider. A service left without one is no longer listed (hidden from customers).
    `service_ids` None: every service. Returns how many services stopped being listed."""
    offers = (
        select(ServiceOffer.service_id, *(getattr(ServiceOffer, f) for f in _REFERENCE_FIELDS))
        .join(Provider, Provider.id == ServiceOffer.provider_id)
        .where(ServiceOffer.listed.is_(True), Provider.enabled.is_(True))
        .order_by(ServiceOffer.service_id, ServiceOffer.position, ServiceOffer.id)
    )
    current = select(
        Service.id, *(getattr(Service, f) for f in _REFERENCE_FIELDS), Service.upstream_listed
    )
    if service_ids is not None:
        chosen = sorted(service_ids)
        offers = offers.where(ServiceOffer.service_id.in_(chosen))
        current = current.where(Service.id.in_(chosen))
    reference: dict[int, tuple] = {}
    for row in await conn.execute(offers):
        reference.setdefault(row[0], tuple(row[1:]))
    dropped = 0
    for row in (await conn.execute(current)).all():
        sid, fields, listed = row[0], tuple(row[1:-1]), row[-1]
        best = reference.get(sid)
        if best is None:
            if listed:
                dropped += 1
                await conn.execute(
                    update(Service)
                    .where(Service.id == sid)
                    .values(upstream_listed=False, updated_at=now)
                )
            continue
        if listed and fields == best:
            continue
        await conn.execute(
            update(Service)
            .where(Service.id == sid)
            .values(
                **dict(zip(_REFERENCE_FIELDS, best, strict=True)),
                upstream_listed=True,
                updated_at=now,
            )
        )
    return dropped


async def recompute_services(db: Database, service_ids: set[int] | None = None) -> int:
    """After a provider is enabled or disabled, or an offer moved: every service's reference."""
    async with db.write() as conn:
        return await _recompute(conn, service_ids, utcnow())


def _offer_values(svc: UpstreamService) -> dict[str, object]:
    values = _service_values(svc)
    del values["upstream_listed"]
    return {**values, "listed": True}


def _service_values(svc: UpstreamService) -> dict[str, object]:
    return {
        "name": svc.name,
        "category": svc.category,
        "type": svc.type,
        "rate": svc.rate_micros,
        "min": svc.min,
        "max": svc.max,
        "dripfeed": svc.dripfeed,
        "refill": svc.refill,
        "cancel": svc.cancel,
        "description": svc.desc,
        "upstream_listed": True,
    }


async def _record_failure(
    db: Database, error: str, provider_id: int = DEFAULT_PROVIDER_ID
) -> SyncResult:
    if provider_id == DEFAULT_PROVIDER_ID:
        synced = (await catalog_state(db)).get(SYNCED_AT)
    else:
        async with db.read() as conn:
            synced = await conn.scalar(
                select(Provider.catalog_synced_at).where(Provider.id == provider_id)
            )
    serving = (
        "serving the last good catalog"
        if synced
        else "no catalog yet: customers are offered no services until a sync succeeds"
    )
    log.warning("catalog: upstream fetch failed (%s); %s", error, serving)
    async with db.write() as conn:
        await conn.execute(
            update(Provider).where(Provider.id == provider_id).values(catalog_error=error[:500])
        )
        if provider_id == DEFAULT_PROVIDER_ID:
            await _set_kv(conn, LAST_ERROR, error)
    return SyncResult(False, error=error)


def upstream_state(state: dict[str, str]) -> str:
    """The upstream as the last catalog fetch found it (`catalog_state`), in one word."""
    error = state.get(LAST_ERROR)
    if error:
        return "key_refused" if error.startswith(KEY_REFUSED) else "failing"
    return "ok" if state.get(SYNCED_AT) else "never_synced"


async def catalog_state(db: Database) -> dict[str, str]:
    async with db.read() as conn:
        rows = await conn.execute(
            select(Setting.key, Setting.value).where(
                Setting.key.in_((SYNCED_AT, LAST_ERROR, FAMILY))
            )
        )
        return {k: v for k, v in rows}


async def stored_family(db: Database) -> Family | None:
    """The upstream's family as the last good catalog sync heard it."""
    value = (await catalog_state(db)).get(FAMILY)
    return next((f for f in FAMILIES if f == value), None)


# --- the operator's choices -------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceView:
    """A service as the operator sees it: cost, default price, visibility, rules."""

    id: int
    name: str
    category: str
    type: str
    cost: int
    price: int | None  # the default customer's rate; None = suspended (below cost)
    min: int
    max: int
    dripfeed: bool
    refill: bool
    cancel: bool
    hidden: bool
    upstream_listed: bool
    upstream_name: str
    updated_at: datetime
    unavailable: str | None = None  # why customers cannot order it although it is listed
    # Customers whose own fixed price is below cost: the service is suspended for them.
    suspended_for: tuple[int, ...] = ()


NO_SUBSCRIPTIONS = "the upstream (SmartPanel family) takes no subscriptions: not offered"


async def list_services(
    db: Database, default_bp: int, *, subscriptions: bool = True
) -> list[ServiceView]:
    async with db.read() as conn:
        general, _ = await _rules(conn, None)
        suspended_for: dict[int, list[int]] = {}
        for price in await suspended_prices(conn):
            if price.customer_id is not None:
                suspended_for.setdefault(price.service_id, []).append(price.customer_id)
        rows = await conn.execute(
            select(
                *_SERVICE_COLUMNS, Service.hidden, Service.upstream_listed, Service.updated_at
            ).order_by(Service.id)
        )
        views = []
        for row in rows:
            base, (hidden, listed, updated_at) = tuple(row[:13]), tuple(row[13:])
            priced = _priced(base, general, {}, None, default_bp)
            views.append(
                ServiceView(
                    id=base[0],
                    name=base[11] or base[1],
                    category=base[12] or base[2],
                    type=base[3],
                    cost=base[4],
                    price=priced.rate if priced else None,
                    min=base[5],
                    max=base[6],
                    dripfeed=base[7],
                    refill=base[8],
                    cancel=base[9],
                    hidden=hidden,
                    upstream_listed=listed,
                    upstream_name=base[1],
                    updated_at=updated_at,
                    unavailable=(
                        NO_SUBSCRIPTIONS if base[3] == SUBSCRIPTIONS and not subscriptions else None
                    ),
                    suspended_for=tuple(suspended_for.get(base[0], ())),
                )
            )
    return views


async def _update_service(db: Database, service_id: int, **values: object) -> None:
    async with db.write() as conn:
        result = await conn.execute(
            update(Service).where(Service.id == service_id).values(**values)
        )
    if result.rowcount != 1:
        raise NotFound(f"no service {service_id}")


async def set_hidden(db: Database, service_id: int, hidden: bool) -> None:
    await _update_service(db, service_id, hidden=hidden)


async def rename(
    db: Database, service_id: int, name: str | None = None, category: str | None = None
) -> None:
    """Set the names customers see; an empty string returns to the upstream's name."""
    values: dict[str, object] = {}
    if name is not None:
        values["display_name"] = name or None
    if category is not None:
        values["display_category"] = category or None
    if not values:
        raise OperatorError("give a name or a category")
    await _update_service(db, service_id, **values)


async def set_price(
    db: Database,
    service_id: int,
    *,
    customer_id: int | None = None,
    fixed_rate: int | None = None,
    markup_bp: int | None = None,
    below_cost_ok: bool = False,
) -> None:
    """A fixed rate or a markup for a service, for everyone or one customer."""
    if (fixed_rate is None) == (markup_bp is None):
        raise OperatorError("give either a fixed rate or a markup")
    if fixed_rate is not None and fixed_rate <= 0:
        raise OperatorError("a fixed rate must be positive")
    if markup_bp is not None and markup_bp <= -10_000:
        raise OperatorError("a markup of -100 % or less would give the service away")
    if markup_bp is not None and markup_bp < 0 and not below_cost_ok:
        raise OperatorError("a negative markup sells below cost: say --allow-below-cost")
    await _replace_rule(db, service_id, customer_id, fixed_rate, markup_bp, below_cost_ok)


async def _replace_rule(
    db: Database,
    service_id: int,
    customer_id: int | None,
    fixed_rate: int | None,
    markup_bp: int | None,
    below_cost_ok: bool,
) -> None:
    async with db.write() as conn:
        cost = await conn.scalar(select(Service.rate).where(Service.id == service_id))
        if cost is None:
            raise NotFound(f"no service {service_id}")
        if (
            customer_id is not None
            and await conn.scalar(select(Customer.id).where(Customer.id == customer_id)) is None
        ):
            raise NotFound(f"no customer {customer_id}")
        if fixed_rate is not None and fixed_rate < cost and not below_cost_ok:
            raise OperatorError(
                "that fixed rate is below the upstream rate: say --allow-below-cost"
            )
        # One upsert: two operators pricing one service at once leave exactly one rule.
        rule = {"fixed_rate": fixed_rate, "markup_bp": markup_bp, "below_cost_ok": below_cost_ok}
        stmt = _upsert(conn)(PriceRule).values(
            service_id=service_id, customer_id=customer_id, **rule
        )
        if customer_id is None:
            stmt = stmt.on_conflict_do_update(
                index_elements=["service_id"],
                index_where=PriceRule.customer_id.is_(None),
                set_=rule,
            )
        else:
            stmt = stmt.on_conflict_do_update(
                index_elements=["service_id", "customer_id"], set_=rule
            )
        await conn.execute(stmt)


def _delete_rule(service_id: int, customer_id: int | None):  # type: ignore[no-untyped-def]
    who = (
        PriceRule.customer_id.is_(None)
        if customer_id is None
        else PriceRule.customer_id == customer_id
    )
    return delete(PriceRule).where(PriceRule.service_id == service_id, who)


async def clear_price(db: Database, service_id: int, customer_id: int | None = None) -> None:
    async with db.write() as conn:
        result = await conn.execute(_delete_rule(service_id, customer_id))
    if result.rowcount == 0:
        raise NotFound("no such price rule")


async def personal_rules(db: Database, service_id: int) -> set[int]:
    """The customers with a price rule of their own for this service."""
    async with db.read() as conn:
        rows = await conn.execute(
            select(PriceRule.customer_id).where(
                PriceRule.service_id == service_id, PriceRule.customer_id.is_not(None)
            )
        )
        return {customer_id for (customer_id,) in rows}


# --- a service's offers (which providers deliver it) ------------------------------------------


@dataclass(frozen=True)
class OfferView:
    service_id: int
    provider_id: int
    provider: str
    provider_service_id: int
    position: int
    name: str
    type: str
    rate: int
    min: int
    max: int
    listed: bool
    enabled: bool  # its provider's
    updated_at: datetime


async def list_offers(db: Database, service_id: int | None = None) -> list[OfferView]:
    """Offers in the order they are tried (position), by service."""
    stmt = (
        select(
            ServiceOffer.service_id,
            ServiceOffer.provider_id,
            Provider.name,
            ServiceOffer.provider_service_id,
            ServiceOffer.position,
            ServiceOffer.name,
            ServiceOffer.type,
            ServiceOffer.rate,
            ServiceOffer.min,
            ServiceOffer.max,
            ServiceOffer.listed,
            Provider.enabled,
            ServiceOffer.updated_at,
        )
        .join(Provider, Provider.id == ServiceOffer.provider_id)
        .order_by(ServiceOffer.service_id, ServiceOffer.position, ServiceOffer.id)
    )
    if service_id is not None:
        stmt = stmt.where(ServiceOffer.service_id == service_id)
    async with db.read() as conn:
        return [OfferView(*row) for row in await conn.execute(stmt)]


async def map_offer(
    db: Database,
    service_id: int,
    provider_id: int,
    provider_service_id: int,
    position: int | None = None,
) -> set[int]:
    """Make a provider's service (as synced) an alternative of local service `service_id`,
    at `position` (default: after the others). The local service it delivered until now,
    left without offers, is no longer listed. Returns the services whose offers changed."""
    async with db.write() as conn:
        local = await conn.scalar(select(Service.type).where(Service.id == service_id))
        if local is None:
            raise NotFound(f"no service {service_id}")
        row = (
            await conn.execute(
                select(ServiceOffer.id, ServiceOffer.service_id, ServiceOffer.type).where(
                    ServiceOffer.provider_id == provider_id,
                    ServiceOffer.provider_service_id == provider_service_id,
                )
            )
        ).first()
        if row is None:
            raise NotFound(
                f"that provider lists no service {provider_service_id} (as last synced):"
                " run `smm-gateway services sync` first"
            )
        if row.type != local:
            raise OperatorError(
                f"its service {provider_service_id} is of type {row.type!r}, service"
                f" {service_id} of type {local!r}: an order would be taken as another thing"
            )
        other = await conn.scalar(
            select(ServiceOffer.id).where(
                ServiceOffer.service_id == service_id,
                ServiceOffer.provider_id == provider_id,
                ServiceOffer.id != row.id,
            )
        )
        if other is not None:
            raise OperatorError(
                f"service {service_id} has an offer of that provider already: unmap it first"
            )
        if position is None:
            highest = await conn.scalar(
                select(func.max(ServiceOffer.position)).where(
                    ServiceOffer.service_id == service_id, ServiceOffer.id != row.id
                )
            )
            position = 0 if highest is None else highest + 1
        else:
            # Taken there already: the others from that place on move one down, so the new
            # offer comes before them (`--position 0` puts it first, ahead of `default`'s 0).
            await conn.execute(
                update(ServiceOffer)
                .where(
                    ServiceOffer.service_id == service_id,
                    ServiceOffer.id != row.id,
                    ServiceOffer.position >= position,
                )
                .values(position=ServiceOffer.position + 1)
            )
        await conn.execute(
            update(ServiceOffer)
            .where(ServiceOffer.id == row.id)
            .values(service_id=service_id, position=position, updated_at=utcnow())
        )
        changed = {service_id, row.service_id}
        await _recompute(conn, changed, utcnow())
    return changed


async def unmap_offer(db: Database, service_id: int, provider_id: int) -> int:
    """Take a provider's offer off local service `service_id`: it goes back to a service of
    its own (provider `default`'s: the one with its own id; another's: a new local id).
    Returns the local service it delivers now."""
    async with db.write() as conn:
        row = (
            await conn.execute(
                select(ServiceOffer).where(
                    ServiceOffer.service_id == service_id, ServiceOffer.provider_id == provider_id
                )
            )
        ).first()
        if row is None:
            raise NotFound(f"service {service_id} has no offer of that provider")
        offer = row[0]
        if provider_id == DEFAULT_PROVIDER_ID:
            home = offer.provider_service_id
            if home == service_id:
                raise OperatorError(
                    f"service {service_id} is provider default's own service {home}: hide it,"
                    " or move other offers before it (services map … --position 0)"
                )
            if await conn.scalar(
                select(ServiceOffer.id).where(
                    ServiceOffer.service_id == home, ServiceOffer.provider_id == provider_id
                )
            ):
                raise OperatorError(f"service {home} has another offer of provider default")
            if await conn.scalar(select(Service.id).where(Service.id == home)) is None:
                await conn.execute(
                    insert(Service).values(id=home, updated_at=utcnow(), **_row_values(offer))
                )
        else:
            home = await _next_other_id(conn)
            await conn.execute(
                insert(Service).values(
                    id=home, updated_at=utcnow(), hidden=True, **_row_values(offer)
                )
            )
        await conn.execute(
            update(ServiceOffer)
            .where(ServiceOffer.id == offer.id)
            .values(service_id=home, position=0, updated_at=utcnow())
        )
        await _recompute(conn, {service_id, home}, utcnow())
    return home


def _row_values(offer: ServiceOffer) -> dict[str, object]:
    values = {f: getattr(offer, f) for f in _REFERENCE_FIELDS}
    return {**values, "upstream_listed": offer.listed}
