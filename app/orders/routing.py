"""Which provider takes an `add`: the service's offers in the operator's order, each made into
an attempt the way that provider takes it (its own service id, its family's rules, its bounds).

What an attempt is for is decided in app.orders.placing: the next one is tried only after a
definite refusal of the one before (`moves_on`), never after an ambiguous outcome.

Choices (DESIGN.md, "Providers"):
- the customer is validated against the local service (its reference offer's bounds and that
  provider's rules): the errors they see are the ones they saw with one provider;
- an offer that cannot take this very order (its bounds, no drip-feed, its family's rules, a
  type of its own) is left out of the route, not tried;
- an offer dearer than the reference is left out when this order would cost more there than
  the customer pays: a failover never sells at a loss (the reference itself is always tried:
  its price rules already decided about it, --allow-below-cost included);
- a provider that refused for lack of funds is tried after the others until it takes an order.
"""

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from app.catalog import PricedService
from app.contract import INCORRECT_SERVICE, ContractError
from app.db import Database
from app.family import UpstreamRules, rules_for
from app.models import as_utc, utcnow
from app.orders.validation import OrderRequest, validate_add
from app.providers import ProviderClients
from app.upstream import (
    Refused,
    UpstreamClient,
    contract_error_for,
    is_upstream_funds_error,
    is_upstream_key_error,
)

log = logging.getLogger("smm_gateway.orders")

# A provider that refused for lack of funds is tried after the others for this long (or until
# it takes an order, or its balance is heard above zero): then it is the operator's first
# choice again, in case it was topped up meanwhile.
FUNDS_RETRY = timedelta(minutes=5)


@dataclass(frozen=True)
class Offer:
    """One provider's offer of a service, as the route reads it."""

    provider_id: int
    provider_service_id: int
    type: str
    rate: int
    min: int
    max: int
    dripfeed: bool
    out_of_funds: bool
    provider_updated_at: datetime


@dataclass(frozen=True)
class Attempt:
    """One provider to send the order to: its client, what to send it, what it costs there."""

    provider_id: int
    client: UpstreamClient
    params: dict[str, str]
    cost: int
    out_of_funds: bool = False  # it refused an earlier order for lack of funds


_OFFERS_SQL = """
SELECT o.provider_id, o.provider_service_id, o.type, o.rate, o.min, o.max, o.dripfeed,
       p.out_of_funds_at, p.updated_at
FROM service_offers o JOIN providers p ON p.id = o.provider_id
WHERE o.service_id = {service} AND o.listed AND p.enabled
ORDER BY o.position, o.id
"""


async def offers_of(db: Database, service_id: int) -> list[Offer]:
    """The service's usable offers (listed, at an enabled provider), preferred first."""
    rows = await db.fetch(
        _OFFERS_SQL.format(service="?"), _OFFERS_SQL.format(service="$1"), service_id
    )
    recently = utcnow() - FUNDS_RETRY
    return [
        Offer(
            pid,
            psid,
            type_,
            rate,
            low,
            high,
            bool(drip),
            out is not None and _moment(out) > recently,
            _moment(at),
        )
        for pid, psid, type_, rate, low, high, drip, out, at in rows
    ]


def _moment(value: object) -> datetime:
    # SQLite's raw rows carry text; the registry compares what the ORM read.
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return as_utc(moment)


@dataclass(frozen=True)
class Route:
    """The offers of one service with their providers' clients."""

    offers: list[tuple[Offer, UpstreamClient]]

    @property
    def rules(self) -> UpstreamRules:
        """What the customer's order is checked against: the reference provider's rules."""
        if not self.offers:
            return rules_for("smartpanel", double_decode=True)
        return self.offers[0][1].rules

    def attempts(
        self, params: dict[str, str], service: PricedService, request: OrderRequest
    ) -> list[Attempt]:
        """The order as each provider takes it, in the order they are tried."""
        usable: list[Attempt] = []
        late: list[Attempt] = []
        for offer, client in self.offers:
            if offer.type != service.type:
                continue  # its own type: it would be validated and settled as another service
            theirs = replace(
                service,
                id=offer.provider_service_id,
                cost=offer.rate,
                min=offer.min,
                max=offer.max,
                dripfeed=offer.dripfeed,
            )
            try:
                sent = validate_add(params, theirs, client.rules)
            except ContractError as exc:
                log.info("provider %s cannot take this order: %s", client.provider, exc)
                continue
            if offer.rate > service.cost and sent.cost > request.charge:
                log.info(
                    "provider %s left out: the order would cost more there than it pays",
                    client.provider,
                )
                continue
            attempt = Attempt(
                offer.provider_id, client, sent.upstream_params, sent.cost, offer.out_of_funds
            )
            (late if offer.out_of_funds else usable).append(attempt)
        return usable + late


async def route_for(db: Database, clients: ProviderClients, service_id: int) -> Route:
    offers = await offers_of(db, service_id)
    await clients.refresh_if_changed(db, {o.provider_id: o.provider_updated_at for o in offers})
    return Route(
        [(o, client) for o in offers if (client := clients.get(o.provider_id)) is not None]
    )


def moves_on(refusal: Refused) -> bool:
    """After this definite refusal, may the order go to the next provider? Only when it was
    about that provider, not about the order: a bad link or quantity is refused everywhere."""
    if refusal.reason == "tag_like":  # our own pre-send check of the order's text
        return False
    if refusal.reason in ("connect", "config"):  # the request never left
        return True
    if is_upstream_funds_error(refusal.message) or is_upstream_key_error(refusal.message):
        return True
    # The contract errors are about the order's own parameters (every provider refuses them
    # alike: final), but for "Incorrect service ID": that provider dropped the service. Words
    # we do not know are about that provider as far as we can tell: the next one may take it.
    mapped = contract_error_for(refusal.message)
    return mapped is None or mapped == INCORRECT_SERVICE
