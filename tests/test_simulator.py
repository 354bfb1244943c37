"""The upstream simulator: both dialects' shapes, SmartPanel's quirks, the lifecycle, faults."""

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from app.contract import SERVICE_TYPES, canonical_type
from app.simulator import FAULT_KINDS, SimConfig, create_simulator_app
from app.simulator.app import strip_tags
from app.simulator.catalog import CATALOG, SERVICES

LISTED = [s for s in CATALOG if s.listed]

KEY = "sim-test-key"
SP_KEY_ERROR = "API is Disable for this user or User Not Found! Contact the Support"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Sim:
    """One simulator in-process, its clock and a client."""

    def __init__(self, app: FastAPI, clock: FakeClock, client: httpx.AsyncClient) -> None:
        self.app, self.clock, self.client = app, clock, client

    @property
    def state(self) -> Any:
        return self.app.state.sim

    async def call(self, path: str = "/api/v1", **params: object) -> httpx.Response:
        data = {"key": KEY, **{k: str(v) for k, v in params.items()}}
        return await self.client.post(path, data=data)

    async def json(self, **params: object) -> Any:
        response = await self.call(**params)
        assert response.status_code == 200
        return response.json()

    async def add(self, **params: object) -> int:
        reply = await self.json(action="add", **params)
        assert reply["status"] == "success", reply
        assert isinstance(reply["order"], int)
        return reply["order"]

    async def status(self, order: int) -> dict[str, Any]:
        return await self.json(action="status", order=order)

    async def orders(self) -> list[dict[str, Any]]:
        return (await self.client.get("/_sim/orders")).json()


@pytest.fixture
def make_sim() -> Any:
    def factory(**overrides: Any) -> Sim:
        config = SimConfig(key=KEY, seed=7, **overrides)
        clock = FakeClock()
        app = create_simulator_app(config, clock=clock)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")
        return Sim(app, clock, client)

    return factory


@pytest.fixture
async def sp(make_sim: Any) -> AsyncIterator[Sim]:
    sim = make_sim(dialect="smartpanel")
    async with sim.client:
        yield sim


@pytest.fixture
async def std(make_sim: Any) -> AsyncIterator[Sim]:
    sim = make_sim(dialect="standard")
    async with sim.client:
        yield sim


# ----- catalog and services -------------------------------------------------------------------


def test_catalog_covers_every_type_with_stable_sparse_ids() -> None:
    assert {s.type for s in CATALOG} == set(SERVICE_TYPES)
    assert 25 <= len(CATALOG) <= 40
    ids = [s.id for s in CATALOG]
    assert len(set(ids)) == len(ids) and max(ids) - min(ids) + 1 > len(ids)
    assert all(s.type == "Default" for s in CATALOG if s.dripfeed)
    defaults = [s for s in CATALOG if s.type == "Default"]
    assert any(s.dripfeed for s in defaults) and not all(s.dripfeed for s in defaults)
    assert any(s.refill for s in CATALOG) and any(s.cancel for s in CATALOG)
    assert any(s.desc for s in CATALOG) and any(s.desc is None for s in CATALOG)
    assert SERVICES[5].rate == "1.0200" and SERVICES[102].rate == "12.5000"


async def test_smartpanel_services_every_field_a_string(sp: Sim) -> None:
    response = await sp.call(action="services")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "\\/" in response.text  # PHP's json_encode escapes slashes
    services = response.json()
    assert len(services) == len(LISTED) < len(CATALOG)
    first = services[0]
    assert list(first) == [
        "service",
        "name",
        "category",
        "rate",
        "min",
        "max",
        "type",
        "desc",
        "dripfeed",
    ]
    assert first["service"] == "5" and first["rate"] == "1.0200" and first["dripfeed"] == "1"
    for item in services:
        assert "refill" not in item and "cancel" not in item
        assert all(isinstance(v, str) for k, v in item.items() if k != "desc")
        assert item["type"] == item["type"].lower() and " " not in item["type"]
        assert canonical_type(item["type"]) in SERVICE_TYPES
        assert item["dripfeed"] in ("0", "1")
        if not SERVICES[int(item["service"])].user_rate:
            assert len(item["rate"].split(".")[1]) >= 4
    assert any(item["desc"] is None for item in services)
    by_id = {item["service"]: item for item in services}
    assert by_id["120"]["type"] == "custom_comments"
    assert by_id["10"]["rate"] == "1.2000"
    # Per-user rates come from a DOUBLE column, unpadded.
    assert by_id["9"]["rate"] == "0.045" and by_id["17"]["rate"] == "0.0045"


async def test_standard_services_numbers_and_booleans(std: Sim) -> None:
    response = await std.call("/api/v2", action="services")
    assert response.headers["content-type"] == "application/json"
    services = response.json()
    by_id = {item["service"]: item for item in services}
    five = by_id[5]
    assert five == {
        "service": 5,
        "name": "Instagram Followers [15K]",
        "type": "Default",
        "category": "Instagram - Followers [Guaranteed/Refill] - Less Drops \u2b50",
        "rate": "1.02",
        "min": "500",
        "max": "10000",
        "refill": True,
        "cancel": False,
        "dripfeed": True,
        "desc": "Start: 0-1 hours\nSpeed: 15K/day\nRefill: 30 days",
    }
    assert "desc" not in by_id[9] and by_id[9]["rate"] == "0.045"
    assert by_id[120]["type"] == "Custom Comments"
    for item in services:
        assert all(isinstance(item[k], bool) for k in ("refill", "cancel", "dripfeed"))


# ----- transport and decoding -----------------------------------------------------------------


async def test_both_paths_get_and_body_wins(sp: Sim) -> None:
    for path in ("/api/v1", "/api/v2", "/api/v2/"):
        reply = await sp.client.get(path, params={"key": KEY, "action": "balance"})
        assert reply.json() == {"status": "success", "balance": "1000.0000", "currency": "USD"}
    reply = await sp.client.post(
        "/api/v1",
        params={"key": "wrong", "action": "services"},
        data={"key": KEY, "action": "balance"},
    )
    assert reply.json()["balance"] == "1000.0000"
    multipart = await sp.client.post(
        "/api/v1", files={"key": (None, KEY), "action": (None, "balance")}
    )
    assert multipart.json()["status"] == "success"


async def test_smartpanel_ignores_json_body_standard_reads_it(sp: Sim, std: Sim) -> None:
    body = {"key": KEY, "action": "balance"}
    assert (await sp.client.post("/api/v1", json=body)).json() == {"error": SP_KEY_ERROR}
    reply = await std.client.post("/api/v2", json=body)
    assert reply.json() == {"status": "success", "balance": "1000.00", "currency": "USD"}
    numbers = await std.client.post(
        "/api/v2",
        json={
            "key": KEY,
            "action": "add",
            "service": 5,
            "link": "https://x.test/a",
            "quantity": 500,
        },
    )
    assert numbers.json()["status"] == "success"


def test_strip_tags_like_php() -> None:
    assert strip_tags("a <b>bold</b> move") == "a bold move"
    assert strip_tags("I <3 you") == "I "
    assert strip_tags("a < b > c") == "a < b > c"
    assert strip_tags('x<a href="1>2">y</a>z') == "xyz"
    assert strip_tags("p<!-- hidden -->q") == "pq"
    assert strip_tags("nul\0byte") == "nulbyte"


async def test_smartpanel_decodes_every_value_twice(sp: Sim) -> None:
    await sp.add(
        service=130,
        link="https://ig.test/p/a%2Bb+c?x=%41",
        quantity=1,
        comments="nice+one\n<b>bold</b> %3Ci%3E\nI <3 it",
    )
    [order] = await sp.orders()
    assert order["params"]["link"] == "https://ig.test/p/a+b c?x=A"
    assert order["params"]["comments"] == "nice one\nbold \nI "
    # custom_comments_package goes through the default branch: it keeps no comments.
    assert order["stored"] == {"link": "https://ig.test/p/a+b c?x=A", "quantity": "1"}


async def test_standard_takes_values_as_sent(std: Sim) -> None:
    await std.add(service=130, link="https://ig.test/p/a%2Bb+c", comments="a+b\n<3\n\n")
    [order] = await std.orders()
    assert order["params"]["link"] == "https://ig.test/p/a%2Bb+c"
    assert order["quantity"] == 2  # blank lines are not comments


# ----- errors ------------------------------------------------------------------------------------


async def test_smartpanel_error_texts(sp: Sim) -> None:
    async def error(**params: object) -> Any:
        response = await sp.call(**params)
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        return response.json()

    bad_key = await sp.client.post("/api/v1", data={"key": "nope", "action": "balance"})
    assert bad_key.json() == {"error": SP_KEY_ERROR}
    for action in ("refill", "refill_status", "cancel", "frobnicate", ""):
        assert await error(action=action, order=1) == {"error": "This action is Invalid"}
    link = "https://ig.test/u"
    assert await error(action="add", service=4, link=link, quantity=600) == {
        "error": "Service ID does not exists"
    }
    assert await error(action="add", service=5, link=link, quantity=499) == {
        "error": "Quantity must to be greater than or equal to minimum amount 500"
    }
    assert await error(action="add", service=5, link=link, quantity=10_001) == {
        "error": "Quantity must to be less than or equal to maximum amount 10000"
    }
    assert await error(action="add", service=5, link="", quantity=600) == {"error": "Bad Link"}
    assert await error(action="add", service=5, link="<b></b>", quantity=600) == {
        "error": "Bad Link"
    }
    assert await error(action="add", service=10, link=link, quantity=600, runs=2, interval=5) == {
        "error": "This services does not support Dripfeed feature!"
    }
    assert await error(action="add", service=5, link=link, quantity=600, runs=2, interval=7) == {
        "status": "error",
        "message": "Invalid Interval in minutes",
    }
    assert await error(action="add", service=120, link=link) == {
        "error": "Comments field is required"
    }
    assert await error(action="status", order=999) == {"error": "Incorrect order ID"}
    assert await error(action="status", order="12x") == {"error": "Incorrect order ID"}
    empty = await sp.call(action="status")
    assert empty.status_code == 200 and empty.content == b""
    sp.state.balance = 1_000_000
    assert await error(action="add", service=5, link=link, quantity=1000) == {
        "error": "Not enough funds on balance"
    }
    assert await sp.orders() == []


async def test_standard_error_texts(std: Sim) -> None:
    async def error(**params: object) -> Any:
        response = await std.call("/api/v2", **params)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        return response.json()["error"]

    bad_key = await std.client.post("/api/v2", data={"key": "nope", "action": "balance"})
    assert bad_key.json() == {"error": "Invalid API key"}
    link = "https://ig.test/u"
    assert await error(action="nope") == "Incorrect request"
    assert await error(action="add", service=4, link=link, quantity=600) == "Incorrect service ID"
    assert await error(action="add", service=5, link=link, quantity=499) == (
        "Quantity less than minimal 500"
    )
    assert await error(action="add", service=5, link=link, quantity=10_001) == (
        "Quantity more than maximum 10000"
    )
    assert await error(action="add", service=5, link=" ", quantity=600) == "Bad link"
    assert await error(action="add", service=140, link=link, quantity=1000) == (
        "Missing parameter: usernames"
    )
    assert await error(action="status", order=999) == "Incorrect order ID"
    std.state.balance = 0
    assert await error(action="add", service=5, link=link, quantity=600) == (
        "Not enough funds on balance"
    )


async def test_multi_status_bad_id_per_dialect(sp: Sim, std: Sim) -> None:
    order = await sp.add(service=5, link="https://ig.test/a", quantity=500)
    reply = await sp.json(action="status", orders=f"{order},999")
    assert reply["999"] == "Incorrect order ID"
    assert reply[str(order)]["order"] == str(order)
    order = await std.add(service=5, link="https://ig.test/a", quantity=500)
    reply = await std.json(action="status", orders=f"{order}, 999")
    assert reply["999"] == {"error": "Incorrect order ID"}
    assert reply[str(order)]["status"] == "Pending"


# ----- lifecycle ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("marker", "final", "charge", "remains"),
    [
        ("sim:complete", "Completed", "1.0200", "0"),
        ("sim:partial", "Partial", "0.5100", "500"),
        ("sim:cancel", "Canceled", "0.0000", "1000"),
    ],
)
async def test_smartpanel_lifecycle_by_marker(
    sp: Sim, marker: str, final: str, charge: str, remains: str
) -> None:
    order = await sp.add(service=5, link=f"https://ig.test/u?{marker}", quantity=1000)
    assert await sp.status(order) == {
        "order": str(order),
        "status": "Pending",
        "charge": "1.0200",
        "start_count": None,
        "remains": "0",
        "currency": "USD",
    }
    sp.clock.advance(1.0)
    running = await sp.status(order)
    assert running["status"] == "In progress" and running["start_count"].isdigit()
    assert running["remains"] == "1000"
    sp.clock.advance(1.0)
    done = await sp.status(order)
    assert (done["status"], done["charge"], done["remains"]) == (final, charge, remains)
    assert done["start_count"] == running["start_count"]
    balance = await sp.json(action="balance")
    spent = {"1.0200": "998.9800", "0.5100": "999.4900", "0.0000": "1000.0000"}[charge]
    assert balance["balance"] == spent
    [row] = await sp.orders()
    assert row["status"] == final and row["charge"] == charge


async def test_reject_marker_refuses_without_an_order(sp: Sim) -> None:
    reply = await sp.json(action="add", service=5, link="https://ig.test/sim:reject", quantity=1000)
    assert reply == {"error": "Service ID does not exists"}
    assert await sp.orders() == []
    assert (await sp.json(action="balance"))["balance"] == "1000.0000"


async def test_random_fates_are_deterministic_by_seed(make_sim: Any) -> None:
    finals = []
    for _ in range(2):
        sim = make_sim(dialect="smartpanel")
        async with sim.client:
            ids = [
                await sim.add(service=9, link=f"https://ig.test/{i}", quantity=1000)
                for i in range(40)
            ]
            sim.clock.advance(2.0)
            finals.append(
                [(await sim.status(i))["status"] for i in ids]
                + [(await sim.status(i))["remains"] for i in ids]
            )
            first_ids = ids
    assert finals[0] == finals[1]
    statuses = set(finals[0][:40])
    assert {"Completed", "Partial"} <= statuses
    assert any(r.startswith("+") for r in finals[0][40:])  # SmartPanel's over-delivery
    assert first_ids[0] > 100_000 and first_ids == sorted(first_ids)


async def test_standard_status_shape_and_start_count_zero(std: Sim) -> None:
    order = await std.add(service=5, link="https://ig.test/sim:complete", quantity=1000)
    assert await std.status(order) == {
        "order": str(order),
        "charge": "1.0200",
        "start_count": "0",
        "status": "Pending",
        "remains": "0",
        "currency": "USD",
    }
    std.clock.advance(5)
    assert (await std.status(order))["status"] == "Completed"


async def test_package_charges_flat_rate(sp: Sim, std: Sim) -> None:
    order = await sp.add(service=102, link="https://ig.test/u", quantity=1)
    assert (await sp.status(order))["charge"] == "12.5000"
    order = await std.add(service=102, link="https://ig.test/u")
    assert (await std.status(order))["charge"] == "12.5000"


async def test_smartpanel_dripfeed_parent(sp: Sim) -> None:
    order = await sp.add(
        service=5, link="https://ig.test/sim:complete", quantity=500, runs=3, interval=15
    )
    assert (await sp.json(action="balance"))["balance"] == "998.4700"  # 1.02 × 1500 / 1000
    first = await sp.status(order)
    assert first["status"] == "In progress" and first["runs"] == "3"
    assert len(first["orders"]) == 1 and set(first) == {"status", "runs", "orders"}
    sp.clock.advance(2.0)
    middle = await sp.status(order)
    assert len(middle["orders"]) == 3
    child = await sp.status(int(middle["orders"][0]))
    assert child["status"] == "Completed" and child["charge"] == "0.5100"
    sp.clock.advance(2.0)
    assert (await sp.status(order))["status"] == "Completed"
    assert [row["id"] for row in await sp.orders()] == [order]


async def test_dripfeed_partial_refunds_each_run(std: Sim) -> None:
    order = await std.add(
        service=5, link="https://ig.test/sim:partial", quantity=500, runs=2, interval=30
    )
    std.clock.advance(10)
    status = await std.status(order)
    assert status["status"] == "Partial" and status["remains"] == "500"
    assert status["charge"] == "0.5100"


async def test_standard_subscription(std: Sim) -> None:
    order = await std.add(
        service=190,
        username="brand sim:complete",
        min=100,
        max=200,
        delay=30,
        posts=2,
        old_posts=5,
        expiry="31/12/2999",
    )
    # 0.20 × 200 × 2 posts / 1000; old posts are not charged.
    assert (await std.json(action="balance"))["balance"] == "999.92"
    assert (await std.status(order))["status"] == "Pending"
    std.clock.advance(1.0)
    assert (await std.status(order))["status"] == "Active"
    std.clock.advance(5.0)
    assert (await std.status(order))["status"] == "Completed"
    children = next(row for row in await std.orders() if row["id"] == order)["children"]
    assert len(children) == 2
    post = await std.status(children[1])
    assert post["status"] == "Completed" and post["charge"] == "0.0400"
    bad_delay = await std.json(action="add", service=190, username="b", min=100, max=200, delay=7)
    assert bad_delay == {"error": "Invalid parameter: delay"}


async def test_subscription_cancel_refunds_everything(std: Sim) -> None:
    order = await std.add(service=190, username="sim:cancel", min=100, max=100, delay=0, posts=3)
    std.clock.advance(3)
    assert (await std.status(order))["status"] == "Canceled"
    assert (await std.json(action="balance"))["balance"] == "1000.00"


# ----- standard refill / cancel ---------------------------------------------------------------


async def test_standard_refill_and_refill_status(std: Sim) -> None:
    order = await std.add(service=5, link="https://ig.test/sim:complete", quantity=500)
    not_yet = await std.json(action="refill", order=order)
    assert not_yet == {"error": "Order not eligible for refill"}
    std.clock.advance(2)
    refill = await std.json(action="refill", order=order)
    assert refill["refill"].isdigit()
    assert await std.json(action="refill_status", refill=refill["refill"]) == {"status": "Pending"}
    many = await std.json(action="refill", orders=f"{order},7")
    assert many[0]["order"] == order and isinstance(many[0]["refill"], int)
    assert many[1] == {"order": 7, "refill": {"error": "Incorrect order ID"}}
    std.clock.advance(2)
    statuses = await std.json(action="refill_status", refills=f"{refill['refill']},3")
    assert statuses == [
        {"refill": int(refill["refill"]), "status": "Completed"},
        {"refill": 3, "status": {"error": "Incorrect refill ID"}},
    ]


async def test_standard_cancel(std: Sim) -> None:
    cancelable = await std.add(service=9, link="https://ig.test/sim:complete", quantity=1000)
    fixed = await std.add(service=5, link="https://ig.test/sim:complete", quantity=1000)
    reply = await std.json(action="cancel", orders=f"{cancelable},{fixed},5")
    assert reply == [
        {"order": cancelable, "cancel": 1},
        {"order": fixed, "cancel": {"error": "Order not eligible for cancel"}},
        {"order": 5, "cancel": {"error": "Incorrect order ID"}},
    ]
    status = await std.status(cancelable)
    assert status["status"] == "Canceled" and status["charge"] == "0.0000"
    assert await std.json(action="cancel", order=cancelable) == [
        {"order": cancelable, "cancel": {"error": "Order not eligible for cancel"}}
    ]


# ----- control endpoints ------------------------------------------------------------------------


async def test_stats_count_every_api_request(sp: Sim) -> None:
    await sp.call(action="services")
    await sp.call(action="balance")
    await sp.call(action="balance")
    await sp.client.post("/_sim/faults", json={"error5xx": 1.0})
    assert (await sp.call(action="status", order=1)).status_code == 502
    await sp.client.post("/_sim/faults", json={})
    stats = (await sp.client.get("/_sim/stats")).json()
    # A client that keeps its cookies makes one session row, not one per call.
    assert stats == {"calls": {"services": 1, "balance": 2, "status": 1}, "total": 4, "sessions": 1}
    await sp.client.post("/_sim/reset-stats")
    assert (await sp.client.get("/_sim/stats")).json() == {"calls": {}, "total": 0, "sessions": 1}


async def test_orders_listing_shows_each_order_once(sp: Sim) -> None:
    ids = [await sp.add(service=5, link=f"https://ig.test/{i}", quantity=500) for i in range(3)]
    await sp.add(service=14, link="https://ig.test/p", quantity=100, runs=2, interval=0)
    rows = await sp.orders()
    assert [row["id"] for row in rows][:3] == ids and len(rows) == 4
    assert len({row["id"] for row in rows}) == 4
    row = rows[0]
    assert row["service"] == 5 and row["params"]["quantity"] == "500"
    assert row["params"]["key"] == KEY and row["charge"] == "0.5100"
    assert row["created"] == 1000.0 and row["status"] == "Pending"


async def test_set_balance(sp: Sim) -> None:
    assert (await sp.client.post("/_sim/balance", json={"balance": "0.50"})).status_code == 200
    assert (await sp.json(action="balance"))["balance"] == "0.5000"
    refused = await sp.json(action="add", service=5, link="https://ig.test/u", quantity=500)
    assert refused == {"error": "Not enough funds on balance"}
    assert (await sp.client.post("/_sim/balance", json={"balance": "x"})).status_code == 400


async def test_fault_table_validation_and_replace(sp: Sim) -> None:
    assert (await sp.client.get("/_sim/faults")).json() == {}
    assert (await sp.client.post("/_sim/faults", json={"html": 0.5})).json() == {"html": 0.5}
    assert (await sp.client.post("/_sim/faults", json={"reject": 1})).json() == {"reject": 1.0}
    assert (await sp.client.post("/_sim/faults", json={"bogus": 1})).status_code == 400
    assert (await sp.client.post("/_sim/faults", json={"html": 2})).status_code == 400
    assert (await sp.client.get("/_sim/faults")).json() == {"reject": 1.0}
    assert (await sp.client.get("/_sim/stats")).status_code == 200  # /_sim is never faulted


def test_faults_from_config(make_sim: Any) -> None:
    sim = make_sim(faults={"garbage": 0.25})
    assert sim.state.faults == {"garbage": 0.25}
    assert FAULT_KINDS == ("error5xx", "html", "garbage", "drop", "timeout_after_accept", "reject")
    with pytest.raises(ValueError, match="unknown fault"):
        make_sim(faults={"nope": 1.0})


@pytest.mark.parametrize("kind", ["error5xx", "html", "garbage", "reject"])
async def test_faults_that_do_nothing(sp: Sim, kind: str) -> None:
    await sp.client.post("/_sim/faults", json={kind: 1.0})
    response = await sp.call(action="add", service=5, link="https://ig.test/u", quantity=500)
    if kind == "error5xx":
        assert response.status_code == 502 and "<html>" in response.text
    elif kind == "html":
        assert response.status_code == 200 and "Just a moment" in response.text
    elif kind == "garbage":
        assert response.status_code == 200
        with pytest.raises(ValueError):
            json.loads(response.content)
    else:
        assert response.json() == {"error": "Service ID does not exists"}
        assert (await sp.json(action="balance")) == {"error": SP_KEY_ERROR}
    await sp.client.post("/_sim/faults", json={})
    assert await sp.orders() == []
    assert (await sp.json(action="balance"))["balance"] == "1000.0000"


async def test_drop_in_process_is_a_transport_error_after_the_order(sp: Sim) -> None:
    await sp.client.post("/_sim/faults", json={"drop": 1.0})
    with pytest.raises(httpx.RemoteProtocolError):
        await sp.call(action="add", service=5, link="https://ig.test/u", quantity=500)
    assert len(await sp.orders()) == 1


async def test_timeout_in_process_hangs_after_the_order(sp: Sim) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(
            sp.call(action="add", service=5, link="https://ig.test/sim:timeout", quantity=500), 0.1
        )
    await sp.client.post("/_sim/faults", json={"timeout_after_accept": 1.0})
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sp.call(action="balance"), 0.1)
    await sp.client.post("/_sim/faults", json={})
    assert len(await sp.orders()) == 1
    sp.state.hang_seconds = 0.05  # past the hang, the reply does come, very late
    late = await sp.call(action="add", service=5, link="https://ig.test/sim:timeout", quantity=500)
    assert late.json()["status"] == "success"


async def test_latency(make_sim: Any) -> None:
    sim = make_sim(latency_ms=60)
    async with sim.client:
        started = time.perf_counter()
        await sim.call(action="balance")
        assert time.perf_counter() - started >= 0.06


async def test_drop_and_timeout_over_a_real_server(make_sim: Any) -> None:
    sim = make_sim(dialect="smartpanel")
    sim.state.hang_seconds = 5.0  # a safety net; the client disconnect ends the hang sooner
    server = uvicorn.Server(
        uvicorn.Config(sim.app, host="127.0.0.1", port=0, log_level="error", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):  # uvicorn offers a flag, not an event
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}/api/v1"
        form = {
            "key": KEY,
            "action": "add",
            "service": "5",
            "link": "https://ig.test/u",
            "quantity": "500",
        }
        async with httpx.AsyncClient(timeout=httpx.Timeout(0.3)) as client:
            await client.post(f"http://127.0.0.1:{port}/_sim/faults", json={"drop": 1.0})
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                await client.post(url, data=form)
            await client.post(
                f"http://127.0.0.1:{port}/_sim/faults", json={"timeout_after_accept": 1.0}
            )
            with pytest.raises(httpx.ReadTimeout):
                await client.post(url, data=form)
            await client.post(f"http://127.0.0.1:{port}/_sim/faults", json={})
            with pytest.raises(httpx.ReadTimeout):
                await client.post(url, data={**form, "link": "https://ig.test/sim:timeout"})
            rows = (await client.get(f"http://127.0.0.1:{port}/_sim/orders")).json()
            assert len(rows) == 3  # every one of them was placed: ambiguous for the client
            stats = (await client.get(f"http://127.0.0.1:{port}/_sim/stats")).json()
            assert stats["calls"] == {"add": 3}
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 5)
    with socket.socket() as probe:  # the port is free again: the server really stopped
        assert probe.connect_ex(("127.0.0.1", port)) != 0


# ----- SmartPanel 4.0 as its code answers (CONTRACT.md, "Seen when the real SmartPanel …") ------


async def test_smartpanel_packages_need_a_quantity_within_bounds(sp: Sim) -> None:
    link = "https://ig.test/p"
    for service in (102, 130):  # package, custom_comments_package
        assert await sp.json(action="add", service=service, link=link) == {
            "error": "Quantity is required"
        }
    assert await sp.json(action="add", service=102, link=link, quantity=2) == {
        "error": "Quantity must to be less than or equal to maximum amount 1"
    }
    assert await sp.orders() == []
    order = await sp.add(service=130, link=link, quantity=1, comments="great\nnice")
    assert (await sp.status(order))["charge"] == "3.5000"  # the flat rate


async def test_smartpanel_list_types_take_quantity_not_lines(sp: Sim) -> None:
    link = "https://ig.test/p"
    assert await sp.json(action="add", service=142, link=link, usernames="a\nb") == {
        "error": "Quantity is required"
    }
    # The default branch ignores the list: 12 usernames sent, the quantity is what is charged.
    order = await sp.add(service=142, link=link, quantity=12, usernames="\n".join("abcdefghijkl"))
    assert (await sp.status(order))["charge"] == "0.0360"  # 3.00 × 12 / 1000
    replies = await sp.add(service=152, link=link, quantity=5, username="x", comments="a")
    assert (await sp.status(replies))["charge"] == "0.0550"


async def test_smartpanel_has_no_subscriptions(sp: Sim) -> None:
    # A subscriptions service goes through the default branch: link and quantity, no fields.
    no_link = await sp.json(
        action="add", service=190, username="brand", min=100, max=200, delay=30, posts=2
    )
    assert no_link == {"error": "Bad Link"}
    order = await sp.add(
        service=190, link="brand", quantity=100, username="brand", min=100, max=200, delay=30
    )
    assert await sp.status(order) == {
        "status": "Pending",
        "expiry": False,
        "posts": None,
        "orders": [],
    }
    [row] = await sp.orders()
    assert row["kind"] == "plain" and row["charge"] == "0.0200"  # 0.20 × 100, a plain order


async def test_smartpanel_dripfeed_bounds_apply_to_the_total(sp: Sim) -> None:
    link = "https://ig.test/p"
    # Service 14: min 50, max 50,000. 30 × 2 = 60 is taken although one run is below 50.
    order = await sp.add(service=14, link=link, quantity=30, runs=2, interval=0)
    status = await sp.status(order)
    assert status["runs"] == "2" and isinstance(status["runs"], str)
    assert await sp.json(action="add", service=14, link=link, quantity=20, runs=2, interval=0) == {
        "error": "Quantity must to be greater than or equal to minimum amount 50"
    }
    assert await sp.json(
        action="add", service=14, link=link, quantity=30_000, runs=2, interval=0
    ) == {"error": "Quantity must to be less than or equal to maximum amount 50000"}


async def test_smartpanel_splits_comments_on_the_pipe(sp: Sim) -> None:
    order = await sp.add(service=120, link="https://ig.test/p", comments="a | b\r\nc\n\nd\ne")
    [row] = await sp.orders()
    assert json.loads(row["stored"]["comments"]) == ["a", "b", "c", "", "d", "e"]
    assert (await sp.status(order))["charge"] == "0.0540"  # 6 comments × 9.00 / 1000


async def test_smartpanel_cuts_links_at_191(sp: Sim) -> None:
    link = "https://ig.test/" + "x" * 217
    await sp.add(service=5, link=link, quantity=500)
    [row] = await sp.orders()
    assert row["params"]["link"] == link and row["stored"]["link"] == link[:191]


async def test_smartpanel_shows_error_statuses_as_pending(sp: Sim) -> None:
    order = await sp.add(service=5, link="https://ig.test/sim:error", quantity=500)
    sp.clock.advance(60)
    assert (await sp.status(order))["status"] == "Pending"
    assert sp.state.orders[order].stuck == "error"


async def test_smartpanel_replies_pretty_printed_with_cookies(sp: Sim) -> None:
    response = await sp.call(action="balance")
    assert response.text == (
        '{\n    "status": "success",\n    "balance": "1000.0000",\n    "currency": "USD"\n}'
    )
    assert "csrfToken" in response.cookies
    interval = await sp.call(action="add", service=5, link="l", quantity=500, runs=2, interval=7)
    assert interval.text == '{"status":"error","message":"Invalid Interval in minutes"}'


async def test_smartpanel_more_error_texts(sp: Sim) -> None:
    link = "https://ig.test/p"
    assert await sp.json(action="add", link=link, quantity=5) == {
        "error": "There are missing required parameters. Please check your API Manual"
    }
    assert await sp.json(action="add", service=5, link=link, quantity=500, runs=2) == {
        "error": "Interval time is required"
    }
    assert await sp.json(action="add", service=5, link=link, quantity=500, interval=5) == {
        "error": "Runs is required"
    }


async def test_smartpanel_currency_is_always_usd(make_sim: Any) -> None:
    sim = make_sim(dialect="smartpanel", currency="EUR")
    async with sim.client:
        assert (await sim.json(action="balance"))["currency"] == "USD"
        order = await sim.add(service=5, link="https://ig.test/p", quantity=500)
        assert (await sim.status(order))["currency"] == "USD"


async def test_a_service_in_a_disabled_category_is_orderable_but_unlisted(sp: Sim) -> None:
    listed = {item["service"] for item in await sp.json(action="services")}
    assert "199" not in listed
    await sp.add(service=199, link="https://ig.test/p", quantity=100)


async def test_catalog_changes_at_run_time(sp: Sim) -> None:
    order = await sp.add(service=5, link="https://ig.test/p", quantity=500)
    changed = await sp.client.post(
        "/_sim/catalog",
        json={
            "5": {"rate": "2.0000", "type": "Package", "min": 1, "max": 1},
            "9": None,
            "777": {
                "name": "New",
                "type": "Default",
                "category": "C",
                "rate": "0.5",
                "min": 10,
                "max": 100,
            },
        },
    )
    assert changed.status_code == 200
    by_id = {item["service"]: item for item in await sp.json(action="services")}
    assert by_id["5"]["type"] == "package" and by_id["5"]["rate"] == "2.0000"
    assert "9" not in by_id and by_id["777"]["min"] == "10"
    assert (await sp.status(order))["charge"] == "0.5100"  # a live order keeps its terms
    for bad in (
        {"5": {"colour": "red"}},
        {"x": None},
        {"888": {"name": "half"}},
        {"5": {"rate": "1e99x"}},
        [1],
    ):
        assert (await sp.client.post("/_sim/catalog", json=bad)).status_code == 400
    assert (await sp.json(action="services"))[0]["rate"] == "2.0000"  # all or nothing


def test_the_simulator_borrows_nothing_from_the_gateway() -> None:
    """A mistake shared by both sides is one no test can see (DESIGN.md, "The simulator")."""
    import ast
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "app" / "simulator"
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("app.") or node.module.startswith(
                    "app.simulator"
                ), f"{path.name} imports {node.module}"
