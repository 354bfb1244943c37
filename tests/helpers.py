"""Helpers for the order tests (tests/test_orders_*.py).

Everything goes through the real pieces: customers and top-ups through `app.customers` and
`app.ledger`, orders through the gateway's HTTP contract, the upstream is the simulator (its own
API and its /_sim endpoints). Expected values are computed here, with integers and Decimal, from
what the customer was shown (`services`) and the inputs; never taken from the code under test.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from math import ceil
from typing import Any

import httpx
import uvicorn

from app import ledger
from app.customers import create_customer, get_customer
from app.db import Database
from app.orders.queries import list_orders
from app.simulator import SimConfig, create_simulator_app

MICROS = 10**6
# CONTRACT.md: Package-like types cost their rate per order, whatever the units.
FLAT_TYPES = ("Package", "Custom Comments Package")


@dataclass(frozen=True)
class Customer:
    id: int
    key: str


async def new_customer(
    db: Database,
    name: str,
    *,
    funds: int = 0,
    dialect: str = "standard",
    markup_bp: int | None = 1234,
) -> Customer:
    """A customer with one key and `funds` micro-units topped up. The default markup (12.34%)
    makes customer rates differ from the upstream's and need rounding."""
    customer_id, key = await create_customer(db, name, dialect, markup_bp)
    if funds:
        await ledger.topup(db, customer_id, funds, memo="test top-up")
    return Customer(customer_id, key)


async def api(
    client: httpx.AsyncClient,
    key: str,
    action: str,
    headers: dict[str, str] | None = None,
    **params: object,
) -> Any:
    """One contract call, form-encoded POST as the PHP sample clients send it."""
    data = {"key": key, "action": action} | {k: str(v) for k, v in params.items()}
    response = await client.post("/api/v2", data=data, headers=headers)
    assert response.status_code == 200, (response.status_code, response.text)
    return response.json()


async def add(client: httpx.AsyncClient, key: str, params: dict[str, object], **kw: Any) -> Any:
    return await api(client, key, "add", **params, **kw)


async def services_by_id(client: httpx.AsyncClient, key: str) -> dict[int, dict[str, Any]]:
    """The `services` answer this customer gets (standard dialect), keyed by service id."""
    listing = await api(client, key, "services")
    assert isinstance(listing, list) and listing
    return {int(item["service"]): item for item in listing}


def micros(amount: str) -> int:
    value = Decimal(amount) * MICROS
    assert value == value.to_integral_value(), amount
    return int(value)


def expected_charge(service: dict[str, Any], units: int) -> int:
    """DESIGN.md "Money": ceil(rate × units / 1000) micro-units; Package-like types: the rate."""
    rate = micros(service["rate"])
    if service["type"] in FLAT_TYPES:
        return rate
    return ceil(Fraction(rate * units, 1000))


def charge_text(amount_micros: int) -> str:
    """CONTRACT.md "Money in replies": a charge keeps at least 4 decimals, every significant
    digit up to 6, never exponent notation."""
    whole, frac = divmod(amount_micros, MICROS)
    digits = f"{frac:06d}".rstrip("0").ljust(4, "0")
    return f"{whole}.{digits}"


async def balance_of(db: Database, customer: Customer) -> int:
    return (await get_customer(db, customer.id)).balance


async def entries_of(db: Database, customer: Customer) -> list[ledger.EntryView]:
    return await ledger.history(db, customer.id, limit=10_000)


async def order_ids(db: Database, state: str | None = None) -> list[int]:
    return sorted(o.id for o in await list_orders(db, state=state, limit=100_000))


# --- the simulator, through its /_sim control endpoints ------------------------------------


async def sim_orders(sim: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await sim.get("/_sim/orders")
    assert response.status_code == 200
    return response.json()


async def sim_calls(sim: httpx.AsyncClient, action: str = "add") -> int:
    response = await sim.get("/_sim/stats")
    assert response.status_code == 200
    return int(response.json()["calls"].get(action, 0))


async def set_faults(sim: httpx.AsyncClient, faults: dict[str, float]) -> None:
    response = await sim.post("/_sim/faults", json=faults)
    assert response.status_code == 200, response.text


async def set_sim_balance(sim: httpx.AsyncClient, amount: str) -> None:
    response = await sim.post("/_sim/balance", json={"balance": amount})
    assert response.status_code == 200, response.text


def sim_orders_with_link(orders: list[dict[str, Any]], link: str) -> list[dict[str, Any]]:
    return [o for o in orders if o["params"].get("link") == link]


# --- "nothing changed" -----------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    balance: int
    entries: int
    orders: tuple[int, ...]
    sim_orders: int
    sim_add_calls: int


async def snapshot(db: Database, sim: httpx.AsyncClient, customer: Customer) -> Snapshot:
    return Snapshot(
        balance=await balance_of(db, customer),
        entries=len(await entries_of(db, customer)),
        orders=tuple(await order_ids(db)),
        sim_orders=len(await sim_orders(sim)),
        sim_add_calls=await sim_calls(sim, "add"),
    )


async def assert_ledger_clean(db: Database) -> None:
    assert await ledger.verify(db) == []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def simulator_on_port(config: SimConfig) -> Iterator[str]:
    """The simulator on a real port, in a thread, in real time (for commands run as a user
    runs them); yields its API URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_simulator_app(config), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "simulator did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/api/v1"
    finally:
        server.should_exit = True
        thread.join(10)
