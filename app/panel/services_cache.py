"""The `services` reply, rendered once per pricing state and catalog version.

A customer's catalog depends on the catalog table, the price rules, their markup and dialect,
and whether the upstream takes subscriptions; customers with no price rule of their own share
one reply per (markup, dialect). Replies are kept as the JSON bytes sent, for the catalog
version they were built from (app.catalog.caller_and_catalog_version reads it with the key on
every request; migration 0006's triggers move it with every change, whichever instance or tool
made it), so a change is seen by every instance on its next `services` request.
"""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pydantic_core

from app.catalog import customer_catalog, customers_with_own_prices
from app.customers import Caller
from app.panel import render

if TYPE_CHECKING:
    from app.main import Gateway

PricingKey = tuple[int | None, int | None, str, bool]


@dataclass
class _Rendered:
    version: int
    own_prices: frozenset[int]  # customers whose catalog is theirs alone
    replies: dict[PricingKey, bytes] = field(default_factory=dict)


class ServicesCache:
    """One per gateway instance; the replies of one catalog version at a time."""

    def __init__(self) -> None:
        self._current: _Rendered | None = None

    async def reply(self, gateway: "Gateway", caller: Caller, version: int) -> bytes:
        current = self._current
        if current is None or current.version != version:
            # Any other number (a request that read an older one races a newer one at worst:
            # one extra rebuild): every request compares the number it read itself.
            current = self._current = _Rendered(
                version, await customers_with_own_prices(gateway.db)
            )
        subscriptions = gateway.upstream.rules.takes_subscriptions
        personal = caller.customer_id if caller.customer_id in current.own_prices else None
        key = (personal, caller.markup_bp, caller.dialect, subscriptions)
        body = current.replies.get(key)
        if body is None:
            body = await render_services(gateway, caller)
            # Built from a state at least as new as `version`: kept unless a newer version
            # replaced this one meanwhile (then its next request builds anew).
            if self._current is current:
                current.replies[key] = body
        return body


async def render_services(gateway: "Gateway", caller: Caller) -> bytes:
    catalog = await customer_catalog(
        gateway.db,
        caller.customer_id,
        caller.markup_bp,
        gateway.settings.default_markup_bp,
        subscriptions=gateway.upstream.rules.takes_subscriptions,
    )
    return pydantic_core.to_json(render.services(catalog, caller.dialect))
