"""The panel contract as a customer's client sees it, through the gateway app, with the
in-process simulator as the upstream. Runs on SQLite and PostgreSQL.

Expected replies are computed from the simulator's own `services` answer (rate × 1.25 with
Decimal, rendered as CONTRACT.md "Money in replies" says), never copied from the gateway.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

import httpx
import pytest
from conftest import SIM_KEY, gateway_settings
from fastapi import FastAPI
from sqlalchemy import select

from app import contract, ledger
from app.catalog import sync_catalog
from app.customers import create_customer, issue_key, list_keys, revoke_key, update_customer
from app.db import Database
from app.models import Customer as CustomerRow
from app.money import MICROS, parse_micros
from app.settings import Settings

PATHS = ("/api/v2", "/api/v1")
TRANSPORTS = ("form", "multipart", "json", "query", "query+body")
TEN = parse_micros("10")
_TYPES = {t.lower().replace(" ", "_"): t for t in contract.SERVICE_TYPES}


# --- expectations, computed independently ---------------------------------------------------


def contract_amount(value: Decimal, min_decimals: int) -> str:
    """Every significant digit up to 6, at least `min_decimals`, never exponent notation."""
    value = value.quantize(Decimal("0.000001"))
    whole, _, frac = format(value, "f").partition(".")
    frac = frac.rstrip("0").ljust(min_decimals, "0")
    return f"{whole}.{frac}" if frac else whole


def customer_rate(upstream_rate: str, percent: str) -> Decimal:
    exact = Decimal(upstream_rate) * (1 + Decimal(percent) / 100)
    return exact.quantize(Decimal("0.000001"), rounding=ROUND_CEILING)


def expected_standard(sim_services: list[dict], percent: str) -> list[dict]:
    items = []
    for s in sorted(sim_services, key=lambda s: int(s["service"])):
        if s["type"] == "subscriptions":
            continue  # a SmartPanel upstream takes none: not offered (CONTRACT.md)
        item = {
            "service": int(s["service"]),
            "name": s["name"],
            "type": _TYPES[s["type"]],
            "category": s["category"],
            "rate": contract_amount(customer_rate(s["rate"], percent), 2),
            "min": s["min"],
            "max": s["max"],
            "refill": False,  # the SmartPanel upstream offers neither refill nor cancel
            "cancel": False,
            "dripfeed": s["dripfeed"] == "1",
        }
        if s.get("desc"):
            item["desc"] = s["desc"]
        items.append(item)
    return items


def expected_smartpanel(sim_services: list[dict], percent: str) -> list[dict]:
    items = []
    for s in sorted(sim_services, key=lambda s: int(s["service"])):
        if s["type"] == "subscriptions":
            continue  # a SmartPanel upstream takes none: not offered (CONTRACT.md)
        item = {
            "service": s["service"],
            "name": s["name"],
            "type": s["type"],
            "category": s["category"],
            "rate": contract_amount(customer_rate(s["rate"], percent), 4),
            "min": s["min"],
            "max": s["max"],
            "dripfeed": s["dripfeed"],
        }
        if s.get("desc"):
            item["desc"] = s["desc"]
        items.append(item)
    return items


def by_id(services: list[dict]) -> list[dict]:
    """A services reply in id order (the contract does not fix the order)."""
    return sorted(services, key=lambda s: int(s["service"]))


def test_expectations_are_not_trivial(sim_services: list[dict]) -> None:
    """The markup changes every rate, and the rendering rule is exercised beyond 4 digits."""
    rates = [customer_rate(s["rate"], "25") for s in sim_services]
    assert all(r > Decimal(s["rate"]) for r, s in zip(rates, sim_services, strict=True))
    assert any(len(contract_amount(r, 2).partition(".")[2]) > 2 for r in rates)
    assert contract_amount(Decimal("10"), 2) == "10.00"
    assert contract_amount(Decimal("0.005625"), 4) == "0.005625"


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
async def api(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """The customer's client, checking EVERY reply: JSON, and never the upstream's key or
    address."""

    async def check(response: httpx.Response) -> None:
        await response.aread()
        if response.request.url.path.startswith("/api/"):
            content_type = response.headers.get("content-type", "")
            assert content_type.startswith("application/json"), (
                f"HTTP {response.status_code} reply is not JSON ({content_type!r})"
            )
            response.json()
        assert SIM_KEY not in response.text
        assert "upstream.test" not in response.text

    client.event_hooks["response"].append(check)
    return client


@pytest.fixture
async def gateway(gateway_app: FastAPI) -> AsyncIterator:
    gw = gateway_app.state.gateway
    result = await sync_catalog(gw.db, gw.upstream)
    assert result.ok, result.error
    yield gw


@dataclass
class Customer:
    id: int
    key: str


async def new_customer(
    db: Database, name: str, dialect: str = "standard", markup_bp: int | None = 2500
) -> Customer:
    customer_id, key = await create_customer(db, name, dialect, markup_bp=markup_bp)
    await ledger.topup(db, customer_id, TEN)
    return Customer(customer_id, key)


async def call(
    api: httpx.AsyncClient, path: str, transport: str, params: dict[str, str]
) -> httpx.Response:
    """One contract request, sent the way a given kind of client sends it."""
    if transport == "form":
        return await api.post(path, data=params)
    if transport == "multipart":
        return await api.post(path, files={k: (None, v) for k, v in params.items()})
    if transport == "json":
        return await api.post(path, json=params)
    if transport == "query":
        return await api.get(path, params=params)
    if transport == "query+body":
        # `action` only in the query; `key` in both, and the body's must win.
        query = {"action": params["action"], "key": "0" * 64} if "action" in params else {}
        body = {k: v for k, v in params.items() if k != "action"}
        return await api.post(path, params=query, data=body)
    raise AssertionError(transport)


async def ledger_state(db: Database, customer_id: int) -> tuple:
    history = [(e.id, e.amount, e.kind) for e in await ledger.history(db, customer_id)]
    async with db.read() as conn:
        balance = await conn.scalar(
            select(CustomerRow.balance).where(CustomerRow.id == customer_id)
        )
    return balance, history


# --- the issue's "done means" ---------------------------------------------------------------


async def test_services_and_balance_for_a_standard_customer(
    api: httpx.AsyncClient, gateway, sim_services: list[dict]
) -> None:
    alice = await new_customer(gateway.db, "Alice")
    expected = expected_standard(sim_services, "25")
    for path in PATHS:
        for transport in TRANSPORTS:
            where = (path, transport)
            response = await call(api, path, transport, {"key": alice.key, "action": "services"})
            assert response.status_code == 200, where
            assert by_id(response.json()) == expected, where

            response = await call(api, path, transport, {"key": alice.key, "action": "balance"})
            assert response.status_code == 200, where
            assert response.json() == {
                "status": "success",
                "balance": "10.00",
                "currency": "USD",
            }, where
    assert await ledger.verify(gateway.db) == []


async def test_services_and_balance_for_a_smartpanel_customer(
    api: httpx.AsyncClient, gateway, sim_services: list[dict]
) -> None:
    bob = await new_customer(gateway.db, "Bob", dialect="smartpanel")
    expected = expected_smartpanel(sim_services, "25")
    for path in PATHS:
        for transport in TRANSPORTS:
            where = (path, transport)
            response = await call(api, path, transport, {"key": bob.key, "action": "services"})
            assert response.status_code == 200, where
            assert by_id(response.json()) == expected, where

            response = await call(api, path, transport, {"key": bob.key, "action": "balance"})
            assert response.status_code == 200, where
            assert response.json() == {
                "status": "success",
                "balance": "10.0000",
                "currency": "USD",
            }, where


async def test_dialect_shapes_side_by_side(api: httpx.AsyncClient, gateway) -> None:
    """What clients switch on: types of ids and flags, presence of refill/cancel, decimals."""
    standard = await new_customer(gateway.db, "Std")
    smart = await new_customer(gateway.db, "Smart", dialect="smartpanel")
    std = (await api.post("/api/v2", data={"key": standard.key, "action": "services"})).json()
    sp = (await api.post("/api/v2", data={"key": smart.key, "action": "services"})).json()
    assert len(std) == len(sp) > 0
    for a, b in zip(std, sp, strict=True):
        assert type(a["service"]) is int and b["service"] == str(a["service"])
        assert isinstance(a["dripfeed"], bool) and b["dripfeed"] == ("1" if a["dripfeed"] else "0")
        assert isinstance(a["refill"], bool) and isinstance(a["cancel"], bool)
        assert "refill" not in b and "cancel" not in b
        assert a["type"] in contract.SERVICE_TYPES
        assert b["type"] == a["type"].lower().replace(" ", "_")
        assert Decimal(a["rate"]) == Decimal(b["rate"])
        assert len(a["rate"].partition(".")[2]) >= 2 and len(b["rate"].partition(".")[2]) >= 4
        assert isinstance(a["min"], str) and isinstance(a["max"], str)
    assert {s["dripfeed"] for s in std} == {True, False}


class TestDefaultMarkup:
    """SMMGW_DEFAULT_MARKUP_PERCENT prices customers without a markup of their own; a customer's
    own markup, even 0, wins over it."""

    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        return gateway_settings(database_url, default_markup_percent="12.5")

    async def test_default_and_own_markups(
        self, api: httpx.AsyncClient, gateway, sim_services: list[dict]
    ) -> None:
        plain = await new_customer(gateway.db, "Plain", markup_bp=None)
        zero = await new_customer(gateway.db, "Zero", markup_bp=0)
        own = await new_customer(gateway.db, "Own", markup_bp=2500)
        for customer, percent in ((plain, "12.5"), (zero, "0"), (own, "25")):
            reply = await api.post("/api/v2", data={"key": customer.key, "action": "services"})
            assert by_id(reply.json()) == expected_standard(sim_services, percent), percent


async def test_services_survive_an_upstream_outage(
    api: httpx.AsyncClient, gateway, sim_client: httpx.AsyncClient, sim_services: list[dict]
) -> None:
    alice = await new_customer(gateway.db, "Alice")
    expected = expected_standard(sim_services, "25")
    await sim_client.post("/_sim/faults", json={"error5xx": 1.0})
    assert not (await sync_catalog(gateway.db, gateway.upstream)).ok
    reply = await api.post("/api/v2", data={"key": alice.key, "action": "services"})
    assert by_id(reply.json()) == expected
    await sim_client.post("/_sim/faults", json={})
    assert (await sync_catalog(gateway.db, gateway.upstream)).ok
    reply = await api.post("/api/v2", data={"key": alice.key, "action": "services"})
    assert by_id(reply.json()) == expected


async def test_numbers_in_a_json_body(api: httpx.AsyncClient, gateway) -> None:
    alice = await new_customer(gateway.db, "Alice")
    response = await api.post(
        "/api/v2", json={"key": alice.key, "action": "balance", "unknown": 12, "flag": True}
    )
    assert response.json() == {"status": "success", "balance": "10.00", "currency": "USD"}


async def test_balance_follows_the_ledger(api: httpx.AsyncClient, gateway) -> None:
    alice = await new_customer(gateway.db, "Alice")
    await ledger.adjust(gateway.db, alice.id, -parse_micros("2.345678"))
    response = await api.post("/api/v2", data={"key": alice.key, "action": "balance"})
    assert response.json()["balance"] == contract_amount(
        Decimal(TEN - parse_micros("2.345678")) / MICROS, 2
    )


# --- errors: HTTP 200, the exact string, the ledger untouched -------------------------------


ERROR_CASES = {
    "no key": ({"action": "balance"}, contract.INVALID_KEY),
    "empty key": ({"key": "", "action": "balance"}, contract.INVALID_KEY),
    "unknown key": ({"key": "f" * 64, "action": "balance"}, contract.INVALID_KEY),
    "revoked key": ({"key": "{revoked}", "action": "balance"}, contract.INVALID_KEY),
    "disabled customer": ({"key": "{disabled}", "action": "services"}, contract.INVALID_KEY),
    "missing action": ({"key": "{live}"}, contract.INCORRECT_REQUEST),
    "empty action": ({"key": "{live}", "action": ""}, contract.INCORRECT_REQUEST),
    "unknown action": ({"key": "{live}", "action": "transfer"}, contract.INCORRECT_REQUEST),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
async def test_contract_errors(api: httpx.AsyncClient, gateway, case: str) -> None:
    db = gateway.db
    live = await new_customer(db, "Live")
    revoked = await new_customer(db, "Revoked")
    disabled = await new_customer(db, "Disabled")
    prefix = next(k.prefix for k in await list_keys(db, revoked.id))
    await revoke_key(db, prefix)
    await update_customer(db, disabled.id, disabled=True)
    keys = {"{live}": live.key, "{revoked}": revoked.key, "{disabled}": disabled.key}
    before = [await ledger_state(db, c.id) for c in (live, revoked, disabled)]

    params, message = ERROR_CASES[case]
    params = {k: keys.get(v, v) for k, v in params.items()}
    for path in PATHS:
        for transport in ("form", "json", "query", "multipart"):
            response = await call(api, path, transport, params)
            assert response.status_code == 200, (path, transport)
            assert response.json() == {"error": message}, (path, transport)

    assert [await ledger_state(db, c.id) for c in (live, revoked, disabled)] == before
    assert await ledger.verify(db) == []


BAD_BODIES = {
    "invalid UTF-8 in a form": ("application/x-www-form-urlencoded", b"&x=\xff\xfe"),
    "percent-encoded invalid UTF-8": ("application/x-www-form-urlencoded", b"&x=%ff%fe"),
    "invalid UTF-8 in JSON": ("application/json", b'"x": "\xff\xfe"}'),
    "broken JSON": ("application/json", b'"x": '),
    "JSON that is not an object": ("application/json", None),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
async def test_unreadable_bodies_are_incorrect_requests(
    api: httpx.AsyncClient, gateway, case: str
) -> None:
    """Even with a valid key and action in it, a body that cannot be read is refused whole."""
    alice = await new_customer(gateway.db, "Alice")
    content_type, tail = BAD_BODIES[case]
    if content_type == "application/json":
        head = f'{{"key": "{alice.key}", "action": "balance", '.encode()
        body = head + tail if tail is not None else f'["{alice.key}", "balance"]'.encode()
    else:
        body = f"key={alice.key}&action=balance".encode() + tail
    before = await ledger_state(gateway.db, alice.id)
    for path in PATHS:
        response = await api.post(path, content=body, headers={"content-type": content_type})
        assert response.status_code == 200
        assert response.json() == {"error": contract.INCORRECT_REQUEST}
    assert await ledger_state(gateway.db, alice.id) == before


async def test_several_keys_revocation_and_disabling_at_once(
    api: httpx.AsyncClient, gateway
) -> None:
    db = gateway.db
    alice = await new_customer(db, "Alice")
    second = await issue_key(db, alice.id)

    async def balance(key: str) -> dict:
        return (await api.post("/api/v2", data={"key": key, "action": "balance"})).json()

    ok = {"status": "success", "balance": "10.00", "currency": "USD"}
    invalid = {"error": contract.INVALID_KEY}
    assert await balance(alice.key) == ok and await balance(second) == ok

    keys = await list_keys(db, alice.id)
    await revoke_key(db, next(k.prefix for k in keys if second.startswith(k.prefix)))
    assert await balance(second) == invalid  # the very next request
    assert await balance(alice.key) == ok

    await update_customer(db, alice.id, disabled=True)
    assert await balance(alice.key) == invalid
    await update_customer(db, alice.id, disabled=False)
    assert await balance(alice.key) == ok
    assert await balance(second) == invalid  # re-enabling does not revive a revoked key


@pytest.mark.parametrize("path", ["/api/v2/", "/api/v1/"])
async def test_a_trailing_slash_is_not_redirected(
    api: httpx.AsyncClient, gateway, path: str
) -> None:
    alice = await new_customer(gateway.db, "Alice")
    response = await api.post(path, data={"key": alice.key, "action": "balance"})
    assert not response.is_redirect
    assert response.json() == {"status": "success", "balance": "10.00", "currency": "USD"}


async def test_healthz(api: httpx.AsyncClient, gateway_app: FastAPI) -> None:
    response = await api.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "upstream": "never_synced"}


# --- oversized bodies -----------------------------------------------------------------------

LIMIT = 512


class TestBodyLimit:
    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        return gateway_settings(database_url, max_body_bytes=LIMIT)

    @staticmethod
    def padded(key: str, size: int) -> dict[str, str]:
        return {"key": key, "action": "balance", "pad": "x" * size}

    async def test_a_body_within_the_limit_is_served(self, api: httpx.AsyncClient, gateway):
        alice = await new_customer(gateway.db, "Alice")
        params = self.padded(alice.key, LIMIT - 200)
        assert len(httpx.QueryParams(params).__str__()) < LIMIT
        response = await api.post("/api/v2", data=params)
        assert response.status_code == 200
        assert response.json()["balance"] == "10.00"

    async def test_an_oversized_body_is_413_with_a_json_error(
        self, api: httpx.AsyncClient, gateway
    ) -> None:
        alice = await new_customer(gateway.db, "Alice")
        before = await ledger_state(gateway.db, alice.id)
        for path in PATHS:
            for transport in ("form", "json", "multipart"):
                where = (path, transport)
                response = await call(api, path, transport, self.padded(alice.key, 4 * LIMIT))
                assert response.status_code == 413, where
                assert response.headers["content-type"].startswith("application/json"), where
                assert response.json() == {"error": contract.BODY_TOO_LARGE}, where
        assert await ledger_state(gateway.db, alice.id) == before

    async def test_an_oversized_chunked_form_is_413(self, api: httpx.AsyncClient, gateway):
        alice = await new_customer(gateway.db, "Alice")
        body = f"key={alice.key}&action=balance&pad={'x' * 4 * LIMIT}".encode()

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: Transfer-Encoding
            for start in range(0, len(body), 100):
                yield body[start : start + 100]

        response = await api.post(
            "/api/v2",
            content=chunks(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert "content-length" not in response.request.headers
        assert response.status_code == 413
        assert response.json() == {"error": contract.BODY_TOO_LARGE}

    async def test_an_oversized_chunked_multipart_is_413(self, api: httpx.AsyncClient, gateway):
        alice = await new_customer(gateway.db, "Alice")
        boundary = "gatewaytestboundary"
        parts = self.padded(alice.key, 4 * LIMIT)
        disposition = 'Content-Disposition: form-data; name="{}"'
        text = "".join(
            f"--{boundary}\r\n{disposition.format(k)}\r\n\r\n{v}\r\n" for k, v in parts.items()
        )
        body = (text + f"--{boundary}--\r\n").encode()

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 100):
                yield body[start : start + 100]

        response = await api.post(
            "/api/v2",
            content=chunks(),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        assert "content-length" not in response.request.headers
        assert response.status_code == 413
