"""Order validation (issue 3) through the gateway's HTTP endpoint, for every service type of the
simulator's catalog (CONTRACT.md, "`add` parameters by service type").

Proves: a valid order of every service is placed (`{"status": "success", "order": N}`), its exact
charge leaves the balance, and the simulator received its parameters intact, exactly once; every
invalid variant is refused with the contract's words and changes nothing (balance, ledger,
orders, what reached the simulator). Expected charges are computed here from the `services`
reply the customer got. Runs on SQLite and PostgreSQL.
"""

from typing import Any

import httpx
import pytest
from conftest import SIM_KEY, gateway_settings
from helpers import (
    FLAT_TYPES,
    Customer,
    add,
    api,
    assert_ledger_clean,
    balance_of,
    charge_text,
    expected_charge,
    micros,
    new_customer,
    services_by_id,
    sim_orders,
    sim_orders_with_link,
    snapshot,
)

from app.catalog import PricedService, set_hidden, sync_catalog
from app.contract import SERVICE_TYPES, ContractError
from app.db import Database
from app.family import rules_for
from app.main import Gateway, create_app
from app.orders.queries import get_order
from app.orders.validation import (
    SUBSCRIPTIONS_UNAVAILABLE,
    comment_split_error,
    link_too_long,
    validate_add,
)
from app.simulator import SimConfig, create_simulator_app
from app.simulator.catalog import CATALOG, SERVICES

STANDARD = rules_for("standard", double_decode=False)
SMARTPANEL_LINK = 191  # SmartPanel's varchar(191) link column (CONTRACT.md)

PLENTY = micros("1000")

# CONTRACT.md's table: the parameters each type requires besides `link` and `quantity`.
REQUIRED_TEXT: dict[str, tuple[str, ...]] = {
    "Default": (),
    "Package": (),
    "Custom Comments": ("comments",),
    "Custom Comments Package": ("comments",),
    "Mentions": ("usernames",),
    "Mentions with Hashtags": ("usernames", "hashtags"),
    "Mentions Custom List": ("usernames",),
    "Mentions Hashtag": ("hashtag",),
    "Mentions User Followers": ("username",),
    "Mentions Media Likers": ("media",),
    "Comment Likes": ("username",),
    "Comment Replies": ("username", "comments"),
    "Poll": ("answer_number",),
    "Invites from Groups": ("groups",),
    "SEO": ("keywords",),
}
# Types whose quantity is the number of lines of one parameter.
QUANTITY_FROM_LINES = {
    "Custom Comments": "comments",
    "Mentions Custom List": "usernames",
    "Comment Replies": "comments",
}
WITHOUT_QUANTITY = {"Package", "Custom Comments Package", "Subscriptions", *QUANTITY_FROM_LINES}
# CONTRACT.md: the delays a subscription may ask for, in minutes.
CONTRACT_DELAYS = tuple(
    map(int, "0 5 10 15 30 60 90 120 150 180 210 240 270 300 360 420 480 540 600".split())
)
SAMPLE = {
    "usernames": "alice\nbob_the.builder",
    "hashtags": "#summer #sale",
    "hashtag": "#sunset",
    "username": "some.user",
    "media": "https://www.instagram.com/p/Cx1AbC/",
    "answer_number": "2",
    "groups": "https://t.me/group_a\r\nhttps://t.me/group_b",
    "keywords": "red shoes\nbuy shoes online",
}


def numbered(count: int, pattern: str) -> str:
    return "\n".join(pattern.format(i) for i in range(1, count + 1))


def valid_order(item: dict[str, Any], tag: str) -> tuple[dict[str, str], int]:
    """Valid `add` parameters for a service as the customer sees it, and the units charged."""
    kind, low, high = item["type"], int(item["min"]), int(item["max"])
    service = str(item["service"])
    if kind == "Subscriptions":
        top, posts = min(low + 7, high), 3
        params = {
            "service": service,
            "username": f"sub.{tag}",
            "min": str(low),
            "max": str(top),
            "delay": "30",
            "posts": str(posts),
            "expiry": "31/12/2030",
        }
        return params, top * posts
    params = {"service": service, "link": f"https://example.com/{tag}/sim:complete"}
    units = 1
    if kind in QUANTITY_FROM_LINES:
        units = min(low + 1, high)
        pattern = "Nice one + thanks {}" if QUANTITY_FROM_LINES[kind] == "comments" else "user_{}"
        params[QUANTITY_FROM_LINES[kind]] = numbered(units, pattern)
    elif kind == "Custom Comments Package":
        params["comments"] = numbered(min(3, high), "Great post {}")
    elif kind != "Package":
        units = min(low + 7, high)
        params["quantity"] = str(units)
    for name in REQUIRED_TEXT[kind]:
        params.setdefault(name, SAMPLE.get(name, ""))
    return params, units


def first_of_type(offered: dict[int, dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(item for item in offered.values() if item["type"] == kind)


@pytest.fixture(params=["smartpanel", "standard"])
def sim_config(request: pytest.FixtureRequest) -> SimConfig:
    """Every test here runs against an upstream of each family; the gateway reads which from
    the shape of its catalog (SMMGW_UPSTREAM_FAMILY unset)."""
    return SimConfig(key=SIM_KEY, tick_seconds=1.0, seed=1, dialect=request.param)


@pytest.fixture
def family(sim_config: SimConfig) -> str:
    return sim_config.dialect


@pytest.fixture
async def gw(gateway_app: Any) -> Gateway:
    gateway: Gateway = gateway_app.state.gateway
    assert (await sync_catalog(gateway.db, gateway.upstream)).ok
    return gateway


@pytest.fixture
async def alice(db: Database, gw: Gateway) -> Customer:
    return await new_customer(db, "alice", funds=PLENTY)


@pytest.fixture
async def offered(client: httpx.AsyncClient, alice: Customer) -> dict[int, dict[str, Any]]:
    return await services_by_id(client, alice.key)


async def assert_refused(
    db: Database,
    client: httpx.AsyncClient,
    sim: httpx.AsyncClient,
    customer: Customer,
    cases: list[tuple[dict[str, Any], str]],
) -> None:
    """Each request is refused with exactly its error, and nothing at all changes."""
    before = await snapshot(db, sim, customer)
    for params, error in cases:
        reply = await add(client, customer.key, params)
        assert reply == {"error": error}, params
    assert await snapshot(db, sim, customer) == before
    await assert_ledger_clean(db)


async def refusals(
    client: httpx.AsyncClient, customer: Customer, cases: list[dict[str, Any]]
) -> list[str]:
    """The error of each request (each must be refused)."""
    errors = []
    for params in cases:
        reply = await add(client, customer.key, params)
        assert set(reply) == {"error"}, (params, reply)
        errors.append(reply["error"])
    return errors


# --- valid orders of every service ----------------------------------------------------------


async def test_every_service_is_placed_at_its_exact_charge_and_reaches_upstream_once(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    offered: dict[int, dict[str, Any]],
    family: str,
) -> None:
    """Every service type the upstream can take is sold; on SmartPanel that is every type but
    subscriptions, which its API has no branch for (CONTRACT.md)."""
    sellable = {s.id for s in CATALOG if s.listed}
    types = set(SERVICE_TYPES)
    if family == "smartpanel":
        sellable -= {s.id for s in CATALOG if s.type == "Subscriptions"}
        types -= {"Subscriptions"}
    assert set(offered) == sellable
    assert {item["type"] for item in offered.values()} == types

    expected_balance = PLENTY
    placed: dict[int, tuple[dict[str, str], int, int, dict[str, Any]]] = {}
    for service_id, item in offered.items():
        params, units = valid_order(item, f"s{service_id}")
        reply = await add(client, alice.key, params)
        assert set(reply) == {"status", "order"}, (item["type"], reply)
        assert reply["status"] == "success" and type(reply["order"]) is int
        charge = expected_charge(item, units)
        expected_balance -= charge
        assert await balance_of(db, alice) == expected_balance, item["type"]
        placed[reply["order"]] = (params, units, charge, item)

    assert len(placed) == len(offered)  # distinct order ids
    shown = await api(client, alice.key, "balance")
    assert micros(shown["balance"]) == expected_balance

    arrived = await sim_orders(sim_client)
    assert len(arrived) == len(placed)  # nothing arrived twice, nothing else arrived
    for order_id, (params, units, charge, item) in placed.items():
        order = await get_order(db, order_id)
        assert (order.state, order.customer_id, order.charge) == ("placed", alice.id, charge)
        key = "username" if item["type"] == "Subscriptions" else "link"
        [upstream] = [o for o in arrived if o["params"].get(key) == params[key]]
        assert upstream["id"] == order.upstream_order_id != order_id
        assert upstream["service"] == item["service"]
        assert {name: upstream["params"].get(name) for name in params} == params, item["type"]
        if item["type"] not in FLAT_TYPES:
            assert upstream["quantity"] == units, item["type"]
        if family == "smartpanel" and item["type"] != "Custom Comments":
            # Its default branch needs a quantity: the package's min, or the lines sent.
            sent = int(item["min"]) if item["type"] in FLAT_TYPES else units
            assert upstream["params"]["quantity"] == str(sent), item["type"]
        status = await api(client, alice.key, "status", order=order_id)
        assert (status["order"], status["charge"]) == (str(order_id), charge_text(charge))
    await assert_ledger_clean(db)


# --- the service ------------------------------------------------------------------------------


async def test_unknown_or_hidden_service_is_refused(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    offered: dict[int, dict[str, Any]],
) -> None:
    default = first_of_type(offered, "Default")
    params, _ = valid_order(default, "hidden")
    unknown = max(offered) + 1000
    await set_hidden(db, default["service"], True)
    assert default["service"] not in await services_by_id(client, alice.key)
    await assert_refused(
        db,
        client,
        sim_client,
        alice,
        [
            ({**params, "service": str(unknown)}, "Incorrect service ID"),
            (params, "Incorrect service ID"),
        ],
    )


# --- quantities -----------------------------------------------------------------------------


async def test_quantity_bounds_of_every_service(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    offered: dict[int, dict[str, Any]],
) -> None:
    """Below min / above max are refused with the service's own bounds; min and max are fine."""
    cases: list[tuple[dict[str, Any], str]] = []
    for service_id, item in offered.items():
        params, _ = valid_order(item, f"b{service_id}")
        low, high = int(item["min"]), int(item["max"])
        too_low, too_high = (
            f"Quantity less than minimal {low}",
            f"Quantity more than maximum {high}",
        )
        if item["type"] == "Subscriptions":
            cases.append(({**params, "min": str(low - 1)}, too_low))
            cases.append(({**params, "max": str(high + 1)}, too_high))
        elif item["type"] in QUANTITY_FROM_LINES:
            field = QUANTITY_FROM_LINES[item["type"]]
            cases.append(({**params, field: numbered(low - 1, "line {}")}, too_low))
            cases.append(({**params, field: numbered(high + 1, "line {}")}, too_high))
        elif item["type"] not in WITHOUT_QUANTITY:
            cases.append(({**params, "quantity": str(low - 1)}, too_low))
            cases.append(({**params, "quantity": str(high + 1)}, too_high))
    await assert_refused(db, client, sim_client, alice, cases)

    # The bounds themselves are allowed: min of every quantity service, max of the cheapest.
    quantity_services = [i for i in offered.values() if i["type"] not in WITHOUT_QUANTITY]
    cheapest = min(quantity_services, key=lambda i: expected_charge(i, int(i["max"])))
    orders = [(item, int(item["min"])) for item in quantity_services]
    orders.append((cheapest, int(cheapest["max"])))
    expected = PLENTY
    for n, (item, quantity) in enumerate(orders):
        params, _ = valid_order(item, f"edge{n}")
        reply = await add(client, alice.key, {**params, "quantity": str(quantity)})
        assert reply.get("status") == "success", (item["service"], quantity, reply)
        expected -= expected_charge(item, quantity)
    assert await balance_of(db, alice) == expected
    assert len(await sim_orders(sim_client)) == len(orders)
    await assert_ledger_clean(db)


async def test_lines_are_the_quantity_of_comment_and_list_types(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    offered: dict[int, dict[str, Any]],
) -> None:
    """`\\n` and `\\r\\n` both separate lines; a `quantity` sent along changes nothing."""
    expected = PLENTY
    for kind, field in QUANTITY_FROM_LINES.items():
        item = first_of_type(offered, kind)
        params, _ = valid_order(item, f"lines-{kind.replace(' ', '-')}")
        count = int(item["min"]) + 2
        text = "\r\n".join(f"entry number {i}" for i in range(1, count + 1))
        reply = await add(client, alice.key, {**params, field: text, "quantity": "1"})
        assert reply.get("status") == "success", (kind, reply)
        expected -= expected_charge(item, count)
        assert await balance_of(db, alice) == expected, kind
        [upstream] = sim_orders_with_link(await sim_orders(sim_client), params["link"])
        # The same lines arrive, one per "\n", whatever separated them.
        assert upstream["params"][field].split("\n") == text.split("\r\n")
        assert upstream["quantity"] == count
    await assert_ledger_clean(db)


async def test_quantity_zero_is_below_the_minimum(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    offered: dict[int, dict[str, Any]],
) -> None:
    item = first_of_type(offered, "Default")
    params, _ = valid_order(item, "zero")
    await assert_refused(
        db,
        client,
        sim_client,
        alice,
        [({**params, "quantity": "0"}, f"Quantity less than minimal {item['min']}")],
    )


async def test_a_quantity_that_is_not_a_whole_number_is_refused(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    offered: dict[int, dict[str, Any]],
) -> None:
    item = first_of_type(offered, "Default")
    params, _ = valid_order(item, "nan")
    before = await snapshot(db, sim_client, alice)
    bad = ["abc", "-500", "1e3", "500.5", "0x200", "５００"]
    errors = await refusals(client, alice, [{**params, "quantity": q} for q in bad])
    assert all("quantity" in e.lower() for e in errors), errors
    missing = await refusals(client, alice, [{k: v for k, v in params.items() if k != "quantity"}])
    assert missing == ["Missing parameter: quantity"]
    assert await snapshot(db, sim_client, alice) == before


# --- links ----------------------------------------------------------------------------------


async def test_bad_links_are_refused_and_username_like_links_are_fine(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    offered: dict[int, dict[str, Any]],
    family: str,
) -> None:
    bad_links = [
        "",
        "   ",
        "https://example.com/a b",
        "https://example.com/a\tb",
        "https://example.com/a\nb",
        "https://example.com/a\x07b",
        "https://x.io/\x00",
        "https://example.com/a\u00a0b",
        "https://example.com/a\u2028b",
    ]
    cases: list[tuple[dict[str, Any], str]] = []
    for kind in ("Default", "Custom Comments", "Package", "Poll"):
        params, _ = valid_order(first_of_type(offered, kind), "link")
        cases.append(({k: v for k, v in params.items() if k != "link"}, "Bad link"))
        cases += [({**params, "link": link}, "Bad link") for link in bad_links]
        # Longer than the upstream stores whole: SmartPanel would cut it at 191 characters.
        limit = SMARTPANEL_LINK if family == "smartpanel" else 2048
        too_long = "https://x.io/" + "a" * (limit - 12)
        cases.append(({**params, "link": too_long}, link_too_long(limit)))
    await assert_refused(db, client, sim_client, alice, cases)

    item = first_of_type(offered, "Default")
    expected = PLENTY
    longest = "https://x.io/" + "a" * ((SMARTPANEL_LINK if family == "smartpanel" else 2048) - 13)
    for link in ("some.user", "@some_user", "  padded.user  ", longest):
        params, units = valid_order(item, "x")
        reply = await add(client, alice.key, {**params, "link": link})
        assert reply.get("status") == "success", (link, reply)
        expected -= expected_charge(item, units)
        [arrived] = sim_orders_with_link(await sim_orders(sim_client), link.strip())
        assert arrived["stored"]["link"] == link.strip()  # stored whole, not cut
    assert await balance_of(db, alice) == expected
    await assert_ledger_clean(db)


# --- required parameters --------------------------------------------------------------------


async def test_each_missing_required_parameter_is_named(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    offered: dict[int, dict[str, Any]],
    family: str,
) -> None:
    cases: list[tuple[dict[str, Any], str]] = []
    for kind, required in REQUIRED_TEXT.items():
        params, _ = valid_order(first_of_type(offered, kind), "missing")
        for name in required:
            without = {k: v for k, v in params.items() if k != name}
            cases.append((without, f"Missing parameter: {name}"))
            cases.append(({**params, name: " \r\n "}, f"Missing parameter: {name}"))
    if family == "standard":  # `posts` is optional (CONTRACT.md)
        for name in ("username", "min", "max", "delay"):
            params, _ = valid_order(first_of_type(offered, "Subscriptions"), "missing-sub")
            without = {k: v for k, v in params.items() if k != name}
            cases.append((without, f"Missing parameter: {name}"))
    await assert_refused(db, client, sim_client, alice, cases)


# --- drip-feed -----------------------------------------------------------------------------


async def test_dripfeed_charges_quantity_times_runs_with_the_upstreams_bounds(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    offered: dict[int, dict[str, Any]],
    family: str,
) -> None:
    """SmartPanel checks a drip-feed order's total (runs × quantity) against min/max; the
    standard family each run's quantity. Either way nothing the upstream takes is refused and
    nothing it refuses is charged."""
    item = next(i for i in offered.values() if i["dripfeed"] and int(i["max"]) <= 20_000)
    low, high = int(item["min"]), int(item["max"])
    params, _ = valid_order(item, "drip")
    expected = PLENTY
    if family == "smartpanel":
        # One run below the minimum, the total within: taken. The total at max: taken.
        takes = ((low // 2, 3), (high // 4, 4))
        refused = [
            ({**params, "quantity": low // 4, "runs": 3, "interval": 15}, low),
            ({**params, "quantity": high // 3 + 1, "runs": 3, "interval": 15}, high),
        ]
    else:
        # Each run within the bounds, the total (quantity × runs) beyond max: taken.
        takes = ((low, 3), (high // 2 + 1, 3))
        refused = [
            ({**params, "quantity": low - 1, "runs": 10, "interval": 15}, low),
            ({**params, "quantity": high + 1, "runs": 2, "interval": 15}, high),
        ]
    for quantity, runs in takes:
        link = f"https://example.com/drip/{quantity}"
        order = {**params, "link": link, "quantity": quantity, "runs": runs, "interval": 15}
        reply = await add(client, alice.key, order)
        assert reply.get("status") == "success", reply
        expected -= expected_charge(item, quantity * runs)
        assert await balance_of(db, alice) == expected
        [upstream] = sim_orders_with_link(await sim_orders(sim_client), link)
        assert upstream["kind"] == "dripfeed" and upstream["quantity"] == quantity * runs
        assert {k: upstream["params"][k] for k in ("quantity", "runs", "interval")} == {
            "quantity": str(quantity),
            "runs": str(runs),
            "interval": "15",
        }
        status = await api(client, alice.key, "status", order=reply["order"])
        assert status["charge"] == charge_text(expected_charge(item, quantity * runs))
    await assert_ledger_clean(db)

    await assert_refused(
        db,
        client,
        sim_client,
        alice,
        [
            (
                refused[0][0],
                f"Quantity less than minimal {low}",
            ),
            (
                refused[1][0],
                f"Quantity more than maximum {high}",
            ),
            ({**params, "runs": 2}, "Missing parameter: interval"),
            ({**params, "interval": 15}, "Missing parameter: runs"),
        ],
    )


async def test_dripfeed_runs_and_interval_must_be_whole_numbers(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    offered: dict[int, dict[str, Any]],
) -> None:
    """`runs` must be positive; `interval` may be 0 (CONTRACT.md lists it)."""
    item = next(i for i in offered.values() if i["dripfeed"])
    params, _ = valid_order(item, "drip-bad")
    before = await snapshot(db, sim_client, alice)
    for name, other, bads in (
        ("runs", "interval", ("0", "-2", "abc", "2.5", "²")),
        ("interval", "runs", ("-2", "abc", "2.5", "²")),
    ):
        cases = [{**params, other: "5", name: bad} for bad in bads]
        errors = await refusals(client, alice, cases)
        assert all(name in e for e in errors), errors
    assert await snapshot(db, sim_client, alice) == before


async def test_dripfeed_is_refused_where_the_service_has_none(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    offered: dict[int, dict[str, Any]],
) -> None:
    without = [i for i in offered.values() if not i["dripfeed"] and i["type"] == "Default"]
    mentions = first_of_type(offered, "Mentions")
    assert without and not mentions["dripfeed"]
    before = await snapshot(db, sim_client, alice)
    cases = []
    for item in (without[0], mentions):
        params, _ = valid_order(item, "no-drip")
        cases += [{**params, "runs": "2", "interval": "5"}, {**params, "runs": "2"}]
    errors = await refusals(client, alice, cases)
    assert all("drip-feed" in e.lower() for e in errors), errors
    assert await snapshot(db, sim_client, alice) == before


# --- subscriptions --------------------------------------------------------------------------


async def test_subscription_holds_max_times_all_posts_up_front(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    offered: dict[int, dict[str, Any]],
    family: str,
) -> None:
    """`max` × `posts` (one post when none is given); `old_posts` are not charged: the
    upstream charges the same (the simulator's standard family, CONTRACT.md)."""
    if family == "smartpanel":
        pytest.skip("SmartPanel takes none: test_subscriptions_are_neither_offered_…")
    item = first_of_type(offered, "Subscriptions")
    params, _ = valid_order(item, "subs")
    top = int(params["max"])
    expected = PLENTY
    no_posts = {k: v for k, v in params.items() if k != "posts"}
    for n, extra in enumerate(({}, {"old_posts": "2"}, {"expiry": ""}, None)):
        order = {**params, "username": f"sub.user{n}", **(extra or {})}
        if extra is None:
            order = {**no_posts, "username": f"sub.user{n}"}
        reply = await add(client, alice.key, order)
        assert reply.get("status") == "success", reply
        posts = int(order.get("posts", "1"))
        expected -= expected_charge(item, top * posts)
        assert await balance_of(db, alice) == expected
        [upstream] = [
            o for o in await sim_orders(sim_client) if o["params"].get("username") == f"sub.user{n}"
        ]
        assert upstream["kind"] == "subscription"
        sent = {k: v for k, v in order.items() if v}
        assert {k: upstream["params"].get(k) for k in sent} == sent
    await assert_ledger_clean(db)


async def test_subscription_parameters_are_checked(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    offered: dict[int, dict[str, Any]],
    family: str,
) -> None:
    if family == "smartpanel":
        pytest.skip("SmartPanel takes none: test_subscriptions_are_neither_offered_…")
    item = first_of_type(offered, "Subscriptions")
    params, _ = valid_order(item, "subs-bad")
    low, high = int(item["min"]), int(item["max"])
    before = await snapshot(db, sim_client, alice)
    named = {
        "delay": [{**params, "delay": d} for d in ("7", "45", "601", "abc", "-5")],
        "expiry": [
            {**params, "expiry": e} for e in ("2030-12-31", "31/02/2030", "12/31/2030", "soon")
        ],
        "posts": [{**params, "posts": p} for p in ("0", "-1", "many")],
        "old_posts": [{**params, "old_posts": p} for p in ("-1", "few")],
        "min": [{**params, "min": str(high), "max": str(low)}],
    }
    for name, cases in named.items():
        errors = await refusals(client, alice, cases)
        assert all(name in e for e in errors), (name, errors)
    assert await snapshot(db, sim_client, alice) == before


def test_every_contract_delay_validates(offered_catalog: list[PricedService]) -> None:
    """All 19 delays of CONTRACT.md, checked by the pure validation (no network needed)."""
    service = next(s for s in offered_catalog if s.type == "Subscriptions")
    base = {
        "service": str(service.id),
        "username": "u",
        "min": str(service.min),
        "max": str(service.min),
        "posts": "1",
    }
    for delay in CONTRACT_DELAYS:
        request = validate_add({**base, "delay": str(delay)}, service, STANDARD)
        assert request.upstream_params["delay"] == str(delay)
    with pytest.raises(ContractError):
        validate_add({**base, "delay": "20"}, service, STANDARD)


@pytest.fixture
def offered_catalog() -> list[PricedService]:
    """The simulator's catalog as a customer with no markup would have it priced."""
    return [
        PricedService(
            s.id,
            s.name,
            s.category,
            s.type,
            s.rate_micros,
            s.rate_micros,
            s.min,
            s.max,
            s.dripfeed,
            s.refill,
            s.cancel,
            s.desc,
        )
        for s in CATALOG
    ]


# --- what reaches a SmartPanel upstream (double decoding, strip_tags) ------------------------


async def test_special_characters_reach_the_upstream_intact(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    offered: dict[int, dict[str, Any]],
) -> None:
    """SmartPanel decodes every value twice: `+`, `%41`, `&` must still arrive as sent."""
    comments_service = first_of_type(offered, "Custom Comments")
    count = int(comments_service["min"])
    tricky = [
        "A+B = C",
        "100% %41 & more",
        "a&b=c?d#e",
        "café ✨ 🚀",
        "x > y",
        "50%+1",
        "%2B %25 %%",
        "tab\there",
    ]
    comments = "\n".join(tricky + [f"filler {i}" for i in range(max(0, count - len(tricky)))])
    link = "https://example.com/p?a=1&b=2+3%41#frag"
    params, _ = valid_order(comments_service, "tricky")
    reply = await add(client, alice.key, {**params, "link": link, "comments": comments})
    assert reply.get("status") == "success", reply
    [upstream] = sim_orders_with_link(await sim_orders(sim_client), link)
    assert upstream["params"]["comments"] == comments
    assert upstream["quantity"] == len(comments.split("\n"))
    await assert_ledger_clean(db)


async def test_tag_like_text_is_refused_while_double_decoding(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    offered: dict[int, dict[str, Any]],
    family: str,
) -> None:
    if family == "standard":
        pytest.skip("decodes once: test_without_double_decoding_tag_like_text_is_sent_as_is")
    comments_service = first_of_type(offered, "Custom Comments")
    params, _ = valid_order(comments_service, "tags")
    lines = params["comments"].split("\n")
    mentions = first_of_type(offered, "Mentions")
    mention_params, _ = valid_order(mentions, "tags2")
    await assert_refused(
        db,
        client,
        sim_client,
        alice,
        [
            (
                {**params, "comments": "\n".join(["I <3 it", *lines[1:]])},
                "Text like <3 or <tag> is not allowed in comments",
            ),
            (
                {**params, "comments": "\n".join(["<b>bold</b>", *lines[1:]])},
                "Text like <3 or <tag> is not allowed in comments",
            ),
            (
                {**params, "link": "https://example.com/<script>"},
                "Text like <3 or <tag> is not allowed in link",
            ),
            (
                {**mention_params, "usernames": "alice\n<bob>"},
                "Text like <3 or <tag> is not allowed in usernames",
            ),
        ],
    )
    # A `<` followed by whitespace is text to SmartPanel, and arrives as sent.
    text = "\n".join(["a < b", *lines[1:]])
    reply = await add(client, alice.key, {**params, "comments": text})
    assert reply.get("status") == "success", reply
    [upstream] = sim_orders_with_link(await sim_orders(sim_client), params["link"])
    assert upstream["params"]["comments"] == text


async def test_absurd_runs_or_posts_are_refused_not_a_server_error(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    offered: dict[int, dict[str, Any]],
) -> None:
    huge = "1" + "0" * 20
    drip, _ = valid_order(next(i for i in offered.values() if i["dripfeed"]), "huge")
    cases = [{**drip, "runs": huge, "interval": "5"}]
    if "Subscriptions" in {i["type"] for i in offered.values()}:
        subscription, _ = valid_order(first_of_type(offered, "Subscriptions"), "huge")
        cases += [{**subscription, "posts": huge}, {**subscription, "old_posts": huge}]
    before = await snapshot(db, sim_client, alice)
    await refusals(client, alice, cases)  # each an HTTP 200 {"error": ...}
    assert await snapshot(db, sim_client, alice) == before


async def test_the_upstream_gets_exactly_the_lines_we_charged_for(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    offered: dict[int, dict[str, Any]],
) -> None:
    item = first_of_type(offered, "Custom Comments")
    params, _ = valid_order(item, "blank-lines")
    count = int(item["min"])
    lines = [f"comment {i}" for i in range(1, count + 1)]
    text = "\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n"  # a blank line, a final \n
    reply = await add(client, alice.key, {**params, "comments": text})
    assert reply.get("status") == "success", reply
    assert await balance_of(db, alice) == PLENTY - expected_charge(item, count)
    [upstream] = sim_orders_with_link(await sim_orders(sim_client), params["link"])
    assert upstream["quantity"] == count
    assert upstream["params"]["comments"].splitlines() == lines


async def test_without_double_decoding_tag_like_text_is_sent_as_is(
    db: Database, database_url: str
) -> None:
    """An upstream of the standard family decodes once and strips nothing: with
    SMMGW_UPSTREAM_DOUBLE_DECODE off, `<3` is an ordinary comment."""
    upstream = create_simulator_app(SimConfig(key=SIM_KEY, dialect="standard", seed=1))
    settings = gateway_settings(database_url, upstream_double_decode=False)
    app = create_app(
        settings, upstream_transport=httpx.ASGITransport(app=upstream), background=False
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=upstream), base_url="http://up") as sim,
    ):
        gateway: Gateway = app.state.gateway
        assert (await sync_catalog(gateway.db, gateway.upstream)).ok
        bob = await new_customer(db, "bob", funds=PLENTY)
        item = first_of_type(await services_by_id(client, bob.key), "Custom Comments")
        params, units = valid_order(item, "no-double-decode")
        lines = params["comments"].split("\n")
        text = "\n".join(["I <3 it", "<b>bold</b> & 100%41", *lines[2:]])
        reply = await add(client, bob.key, {**params, "comments": text})
        assert reply.get("status") == "success", reply
        [arrived] = sim_orders_with_link(await sim_orders(sim), params["link"])
        assert arrived["params"]["comments"] == text
        assert await balance_of(db, bob) == PLENTY - expected_charge(item, units)
    await assert_ledger_clean(db)


# --- what the real SmartPanel 4.0 code refused or changed (issue 9's table) -------------------


async def test_smartpanel_packages_are_placed_at_the_flat_rate_with_or_without_quantity(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    offered: dict[int, dict[str, Any]],
) -> None:
    expected = PLENTY
    for kind, extra in (
        ("Package", {}),
        ("Package", {"quantity": "1"}),
        ("Custom Comments Package", {"comments": "great\nlovely"}),
    ):
        item = first_of_type(offered, kind)
        link = f"https://example.com/pkg/{len(extra)}/{kind.replace(' ', '')}"
        reply = await add(client, alice.key, {"service": item["service"], "link": link, **extra})
        assert reply.get("status") == "success", (kind, reply)
        expected -= micros(item["rate"])
        assert await balance_of(db, alice) == expected
        [arrived] = sim_orders_with_link(await sim_orders(sim_client), link)
        # The upstream charged its own flat rate, once.
        assert micros(arrived["charge"]) == SERVICES[item["service"]].rate_micros
    await assert_ledger_clean(db)


async def test_subscriptions_are_neither_offered_nor_charged_where_the_upstream_has_none(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    offered: dict[int, dict[str, Any]],
    family: str,
) -> None:
    subscriptions = [s for s in CATALOG if s.type == "Subscriptions"]
    if family == "standard":
        assert all(s.id in offered for s in subscriptions)
        return
    assert not any(s.id in offered for s in subscriptions)
    order = {
        "service": str(subscriptions[0].id),
        "username": "brand",
        "min": "100",
        "max": "200",
        "delay": "30",
        "posts": "2",
        "link": "https://ig.test/brand",
        "quantity": "100",
    }
    await assert_refused(db, client, sim_client, alice, [(order, SUBSCRIPTIONS_UNAVAILABLE)])


async def test_smartpanel_comments_with_the_separator_are_refused(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    offered: dict[int, dict[str, Any]],
    family: str,
) -> None:
    item = first_of_type(offered, "Custom Comments")
    params, _ = valid_order(item, "pipes")
    lines = params["comments"].split("\n")
    pipes = [f"a | b\n{lines[1]}", f"ends with |\n{lines[1]}", f"{lines[0]}\nx | y | z"]
    cases = [{**params, "comments": "\n".join([text, *lines[2:]])} for text in pipes]
    if family == "standard":  # splits on lines only: taken as written
        for n, order in enumerate(cases):
            reply = await add(client, alice.key, {**order, "link": f"{params['link']}/{n}"})
            assert reply.get("status") == "success", reply
        return
    await assert_refused(
        db, client, sim_client, alice, [(c, comment_split_error(" | ")) for c in cases]
    )
    # A bar without spaces on both sides comes back as written.
    text = "\n".join(["a|b", "| starts with one", *lines[2:]])
    reply = await add(client, alice.key, {**params, "comments": text})
    assert reply.get("status") == "success", reply
