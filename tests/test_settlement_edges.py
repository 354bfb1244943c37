"""Settlement edges that a misbehaving upstream, catalog or database produces (issue 10).

Each test drives the real gateway against the simulator (its catalog edited at run time, its
latency knobs), on SQLite and PostgreSQL, and checks the ledger after the fact. Expected
refunds are DESIGN.md's formulas, computed here from what the simulator itself reports.
"""

from typing import Any

from sync_helpers import Harness, ratio_refund


async def edit_sim_catalog(h: Harness, changes: dict[str, Any]) -> None:
    """The upstream re-lists, re-prices or delists services (POST /_sim/catalog)."""
    response = await h.sim_client.post("/_sim/catalog", json=changes)
    assert response.status_code == 200, response.text


async def settle_all(h: Harness) -> None:
    """One pass while the orders are live (their first charge), one after the final tick."""
    h.clock.advance(h.tick)
    await h.sync()
    h.clock.advance(3 * h.tick)
    await h.sync()


# --- item 2: the type an order was placed under decides its settlement -------------------------


async def test_a_package_relisted_as_default_still_settles_by_the_charge_ratio(
    harness: Harness,
) -> None:
    h = harness
    bob = await h.customer(markup_bp=4000)
    oid = await h.add(bob, service=102, link="https://ig.test/sim:partial")
    # The upstream re-lists service 102 as a Default service; the gateway's catalog follows.
    await edit_sim_catalog(h, {"102": {"type": "Default", "min": 1, "max": 10_000}})
    await h.sync_catalog()
    await settle_all(h)

    order = await h.order(oid)
    sim = (await h.sim_orders())[order.upstream_order_id]
    assert order.status == "Partial"
    kept, first = sim["charge_micros"], sim["initial_charge_micros"]
    assert 0 < kept < first
    assert order.refunded == ratio_refund(order.charge, kept, first)
    await h.assert_clean()
