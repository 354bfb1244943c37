"""Customers' hostile requests (issue 11, "Customers' requests"), on SQLite and PostgreSQL.

Each answers the contract's error as HTTP 200 and changes nothing: no charge, no order left
`sending` or `unknown`, one upstream call per distinct order, the ledger verifies clean.
The upstream is a standard-family simulator (it has refill and cancel).
"""

import json
from urllib.parse import urlencode

import pytest
from sync_helpers import SIM_KEY, Harness, settings_for

from app.orders.placing import place_order
from app.orders.validation import OrderRequest
from app.settings import Settings
from app.simulator import SimConfig

BOTH = 10  # the simulator's service with refill and cancel
SUBSCRIPTION = 190
LINK = "https://ig.test/sim:complete"
BEYOND_INT32 = 2**31


@pytest.fixture
def sim_config() -> SimConfig:
    return SimConfig(key=SIM_KEY, dialect="standard", tick_seconds=1.0, seed=3)


@pytest.fixture
def settings(database_url: str, sim_config: SimConfig) -> Settings:
    return settings_for(database_url, sim_config)


async def post_raw(h: Harness, body: bytes, content_type: str, query: str = "") -> dict:
    response = await h.client.post(
        "/api/v2" + query, content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 200, response.text
    return response.json()


async def assert_untouched(h: Harness, books: tuple) -> None:
    assert await h.books() == books
    assert await h.placed_orders() == []
    assert await h.sim_orders() == {}
    await h.assert_clean()


# --- lone surrogates ------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["link", "comments", "key", "username", "action", "name"])
async def test_a_lone_surrogate_is_refused_before_anything_is_charged(
    harness: Harness, field: str
) -> None:
    h = harness
    alice = await h.customer()
    books = await h.books()
    fields = {
        "key": alice.key,
        "action": "add",
        "service": "120",
        "link": LINK,
        "comments": "nice\ngreat",
        "username": "someone",
    }
    # ensure_ascii: the \\udc80 escape a client's JSON encoder writes
    body = json.dumps(fields | {field: "x\udc80"}, ensure_ascii=True).encode()
    reply = await post_raw(h, body, "application/json")
    assert reply == {"error": "Incorrect request"}
    # The same as UTF-8 bytes of a surrogate (invalid UTF-8) in a form and in a query string.
    form = urlencode({k: v for k, v in fields.items() if k != field}) + f"&{field}=x%ED%B2%80"
    assert await post_raw(h, form.encode(), "application/x-www-form-urlencoded") == {
        "error": "Incorrect request"
    }
    response = await h.client.get("/api/v2?" + form)
    assert response.status_code == 200
    assert "error" in response.json()
    await assert_untouched(h, books)


async def test_unsendable_text_is_refused_by_placing_uncharged(harness: Harness) -> None:
    """Whatever face builds it, an order that cannot be encoded is never charged."""
    h = harness
    alice = await h.customer()
    books = await h.books()
    request = OrderRequest(
        BOTH,
        {"service": str(BOTH), "link": "https://x/\udc80", "quantity": "1000"},
        1,
        1000,
        1000,
        500,
        "Default",
    )
    placement = await place_order(h.db, h.gw.upstream, alice.id, request)
    assert placement.order_id is None and placement.error == "Incorrect request"
    assert await h.entries(kind="charge") == []
    await assert_untouched(h, books)


# --- repeated ids ---------------------------------------------------------------------------


async def test_repeated_ids_reach_the_upstream_once(harness: Harness) -> None:
    h = harness
    alice = await h.customer()
    order = await h.add(alice, service=BOTH, link=LINK, quantity=1000)
    h.clock.advance(3 * h.tick)
    assert (await h.sync()).settled == 1
    await h.reset_stats()
    repeated = ",".join([str(order)] * 100)
    padded = f"{order},0{order},00{order}"

    reply = await h.call(alice.key, "refill", orders=repeated)
    refill_id = reply[0]["refill"]
    assert isinstance(refill_id, int)
    assert reply == [{"order": order, "refill": refill_id}]  # one item per id as sent
    assert (await h.stats()).get("refill", 0) == 1
    again = await h.call(alice.key, "refill", orders=padded)
    assert [item["refill"] for item in again] == [again[0]["refill"]] * 3
    assert (await h.stats()).get("refill", 0) == 2
    async with h.db.read() as conn:
        from sqlalchemy import func, select

        from app.models import Refill

        assert await conn.scalar(select(func.count()).select_from(Refill)) == 2

    await h.reset_stats()
    h.clock.advance(h.gw.settings.sync_interval_seconds + 1)
    statuses = await h.call(alice.key, "refill_status", refills=",".join([str(refill_id)] * 100))
    assert len(statuses) == 1
    assert (await h.stats()).get("refill_status", 0) <= 1

    canceled = await h.call(alice.key, "cancel", orders=padded)
    assert len(canceled) == 3 and canceled[0] == canceled[1] == canceled[2]
    assert (await h.stats()).get("cancel", 0) <= 1
    await h.assert_clean()


# --- deep nesting ---------------------------------------------------------------------------


@pytest.mark.parametrize("with_key", [True, False])
async def test_deeply_nested_json_is_an_incorrect_request(harness: Harness, with_key: bool) -> None:
    h = harness
    alice = await h.customer()
    books = await h.books()
    depth = 100_000
    key = alice.key if with_key else "nope"
    inner = b'{"key": "%s", "action": "balance", "x": %s1%s}' % (
        key.encode(),
        b"[" * depth,
        b"]" * depth,
    )
    assert await post_raw(h, inner, "application/json") == {"error": "Incorrect request"}
    top = b"[" * depth + b"]" * depth
    assert await post_raw(h, top, "application/json") == {"error": "Incorrect request"}
    await assert_untouched(h, books)


# --- numbers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "error"),
    [
        *(
            ({"service": service, "quantity": 1000}, "Incorrect service ID")
            for service in ("²", "٥", "5" * 5000, "1" + "0" * 12, str(BEYOND_INT32))
        ),
        ({"service": BOTH, "quantity": "²"}, "Parameter quantity must be a positive whole number"),
        (
            {"service": BOTH, "quantity": "١٠٠٠"},
            "Parameter quantity must be a positive whole number",
        ),
        ({"service": BOTH, "quantity": "9" * 5000}, "Parameter quantity must be at most"),
        (
            {"service": SUBSCRIPTION, "username": "u", "min": "100", "max": "200", "delay": "²"},
            "Parameter delay must be one of",
        ),
        (
            {"service": SUBSCRIPTION, "username": "u", "min": "100", "max": "200", "delay": "٥"},
            "Parameter delay must be one of",
        ),
        (
            {
                "service": SUBSCRIPTION,
                "username": "u",
                "min": "100",
                "max": "200",
                "delay": "0" * 5000,
            },
            "Parameter delay must be one of",
        ),
        (
            {"service": SUBSCRIPTION, "username": "u", "min": "²", "max": "200", "delay": "5"},
            "Parameter min must be a positive whole number",
        ),
    ],
)
async def test_a_number_is_ascii_digits_of_bounded_length(
    harness: Harness, params: dict, error: str
) -> None:
    h = harness
    alice = await h.customer()
    books = await h.books()
    reply = await h.call(alice.key, "add", link=LINK, **params)
    assert list(reply) == ["error"] and reply["error"].startswith(error), reply
    await assert_untouched(h, books)


async def test_ids_beyond_the_id_columns_are_incorrect(harness: Harness) -> None:
    """On PostgreSQL an id ≥ 2**31 compared with an INTEGER column was a 500."""
    h = harness
    alice = await h.customer()
    big = str(BEYOND_INT32)
    incorrect_order, incorrect_refill = (
        {"error": "Incorrect order ID"},
        {"error": "Incorrect refill ID"},
    )
    for raw in (big, "9" * 18, "9" * 5000, "٥", "²"):
        assert await h.call(alice.key, "status", order=raw) == incorrect_order
        assert await h.call(alice.key, "refill", order=raw) == incorrect_order
        assert await h.call(alice.key, "refill_status", refill=raw) == incorrect_refill
        assert (await h.call(alice.key, "cancel", order=raw))[0]["cancel"] == incorrect_order
        assert (await h.call(alice.key, "status", orders=raw))[raw] == incorrect_order
        assert (await h.call(alice.key, "refill", orders=raw))[0]["refill"] == incorrect_order
        refills = await h.call(alice.key, "refill_status", refills=raw)
        assert refills[0]["status"] == incorrect_refill
    assert await h.sim_orders() == {}
    await h.assert_clean()
