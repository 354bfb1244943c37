"""`services` is served from a rendered reply per pricing state, on every instance in step.

Two gateway apps share one database (both kinds), as two instances of a deployment do. Each
keeps its rendered `services` replies; a change made through the other one (a price rule, a
hidden or renamed service, a customer's markup) is in the very next reply, because every
`services` request reads the catalog's version (moved by migration 0006's triggers) with its
key lookup.
"""

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import pytest
from fastapi import FastAPI
from helpers import api, new_customer
from sqlalchemy import text

from app import catalog
from app.customers import update_customer
from app.db import Database
from app.main import Gateway, create_app
from app.money import render
from app.settings import Settings


@pytest.fixture
async def two_instances(
    db: Database, settings: Settings, simulator: FastAPI
) -> AsyncIterator[list[tuple[Gateway, httpx.AsyncClient]]]:
    async with AsyncExitStack() as stack:
        instances = []
        for name in ("a", "b"):
            app = create_app(
                settings, upstream_transport=httpx.ASGITransport(app=simulator), background=False
            )
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url=f"http://{name}.test"
                )
            )
            instances.append((app.state.gateway, client))
        await catalog.sync_catalog(instances[0][0].db, instances[0][0].upstream)
        yield instances


def _by_id(reply: list[dict]) -> dict[int, dict]:
    return {int(item["service"]): item for item in reply}


async def test_a_change_on_one_instance_is_in_the_other_ones_next_services_reply(
    db: Database, two_instances: list[tuple[Gateway, httpx.AsyncClient]]
) -> None:
    (gw_a, client_a), (_, client_b) = two_instances
    plain = await new_customer(db, "plain", markup_bp=None)  # the default price: service rules
    other = await new_customer(db, "other", markup_bp=None)
    before = _by_id(await api(client_b, plain.key, "services"))
    assert before == _by_id(await api(client_b, plain.key, "services"))  # served again
    sid, first = next(iter(before.items()))
    cost = next(s.cost for s in await catalog.list_services(gw_a.db, 0) if s.id == sid)

    # A price for everyone, set through instance A: B's next reply has it.
    await catalog.set_price(gw_a.db, sid, fixed_rate=cost * 3)
    after = _by_id(await api(client_b, plain.key, "services"))
    assert after[sid]["rate"] == render(cost * 3, 2) != first["rate"]
    assert _by_id(await api(client_b, other.key, "services"))[sid]["rate"] == render(cost * 3, 2)

    # A price of one customer's own: theirs changes, the other customer's does not.
    await catalog.set_price(gw_a.db, sid, customer_id=plain.id, fixed_rate=cost * 5)
    assert _by_id(await api(client_b, plain.key, "services"))[sid]["rate"] == render(cost * 5, 2)
    assert _by_id(await api(client_b, other.key, "services"))[sid]["rate"] == render(cost * 3, 2)

    # The customer's markup (their rule stays first for `sid`, the markup prices the rest).
    other_sid, other_item = next((i, s) for i, s in after.items() if i != sid)
    await update_customer(gw_a.db, plain.id, markup_bp=20_000)
    mine = _by_id(await api(client_b, plain.key, "services"))
    assert mine[other_sid]["rate"] != other_item["rate"]
    assert _by_id(await api(client_b, other.key, "services"))[other_sid] == other_item

    # Hidden, renamed: gone or renamed in B's next reply.
    await catalog.set_hidden(gw_a.db, other_sid, True)
    await catalog.rename(gw_a.db, sid, name="Renamed by the operator")
    seen = _by_id(await api(client_b, other.key, "services"))
    assert other_sid not in seen and seen[sid]["name"] == "Renamed by the operator"

    # And instance A, which made the changes, agrees with B.
    assert _by_id(await api(client_a, other.key, "services")) == seen


async def test_the_rendered_reply_is_kept_while_the_version_stands(
    db: Database, two_instances: list[tuple[Gateway, httpx.AsyncClient]]
) -> None:
    """The reply is not rebuilt per request: a change the version does not see (written
    behind the triggers' back, the version then put back) stays unseen until it moves."""
    (gw_a, _), (_, client_b) = two_instances
    customer = await new_customer(db, "c")
    shown = _by_id(await api(client_b, customer.key, "services"))
    sid = next(iter(shown))
    async with db.write() as conn:
        version = await conn.scalar(text("SELECT version FROM catalog_version"))
        await conn.execute(text(f"UPDATE services SET display_name = 'sneaky' WHERE id = {sid}"))
        await conn.execute(text(f"UPDATE catalog_version SET version = {version}"))
    assert _by_id(await api(client_b, customer.key, "services")) == shown
    await catalog.rename(gw_a.db, sid, category="Moved")  # a change the triggers see
    seen = _by_id(await api(client_b, customer.key, "services"))
    assert seen[sid]["name"] == "sneaky" and seen[sid]["category"] == "Moved"
