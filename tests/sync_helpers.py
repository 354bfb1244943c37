"""A small harness for the sync, settlement, refill/cancel and report tests.

Everything goes through the real pieces: customers and top-ups through `app.customers` and
`app.ledger`, orders and statuses through the gateway's HTTP contract, statuses through
`sync_pass`, the upstream is the simulator (asked through its own API and its /_sim endpoints).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

import httpx
from conftest import SIM_KEY, gateway_settings
from fastapi import FastAPI
from sqlalchemy import func, select

from app import ledger
from app.catalog import priced_service, sync_catalog
from app.customers import create_customer
from app.db import Database
from app.main import Gateway, sending_grace_seconds
from app.models import Customer, LedgerEntry
from app.money import apply_markup, charge_for, parse_micros
from app.orders.placing import place_order
from app.orders.queries import OrderView, get_order, list_orders
from app.orders.validation import validate_add
from app.settings import Settings
from app.simulator import SimConfig
from app.simulator.catalog import SERVICES
from app.sync import PassResult, sync_pass
from app.upstream import UpstreamClient

TOPUP = parse_micros("1000")
STATUS_KEYS = ["order", "charge", "start_count", "status", "remains", "currency"]
CANONICAL = {"Pending", "In progress", "Processing", "Completed", "Partial", "Canceled"}


@dataclass(frozen=True)
class Account:
    """A customer as the tests drive it: its id, its API key, its markup."""

    id: int
    key: str
    markup_bp: int | None


def customer_rate(service_id: int, markup_bp: int | None, default_bp: int = 0) -> int:
    """The customer's rate for a simulator service: the upstream rate with their markup, or
    the default markup (SMMGW_DEFAULT_MARKUP_PERCENT, 0 in these tests) when they have none."""
    return apply_markup(
        SERVICES[service_id].rate_micros, default_bp if markup_bp is None else markup_bp
    )


def expected_charge(service_id: int, units: int, markup_bp: int | None) -> int:
    service = SERVICES[service_id]
    rate = customer_rate(service_id, markup_bp)
    if service.type in ("Package", "Custom Comments Package"):
        return rate
    return charge_for(rate, units)


def upstream_cost(service_id: int, units: int) -> int:
    service = SERVICES[service_id]
    if service.type in ("Package", "Custom Comments Package"):
        return service.rate_micros
    return charge_for(service.rate_micros, units)


def partial_refund(charge: int, remains: int, quantity: int) -> int:
    """DESIGN.md: floor(charge × remains / quantity), remains clamped to [0, quantity]."""
    return charge * min(max(remains, 0), quantity) // quantity


def ratio_refund(charge: int, upstream_kept: int, cost: int) -> int:
    """DESIGN.md: the customer keeps the fraction of their charge that the upstream keeps of
    its own (rounded in the reseller's favour by at most one micro-unit)."""
    kept = -(-charge * min(upstream_kept, cost) // cost)
    return charge - kept


def settings_for(database_url: str, sim_config: SimConfig, **overrides: object) -> Settings:
    """The gateway's settings for this simulator: a standard-family upstream reads values once,
    so the SmartPanel double encoding must be off for it (SMMGW_UPSTREAM_DOUBLE_DECODE).
    No per-key rate limit: these tests send customers' requests as fast as they can."""
    overrides = {"rate_limit_per_second": 0, **overrides}
    if sim_config.dialect == "standard":
        overrides = {
            "upstream_url": "http://upstream.test/api/v2",
            "upstream_double_decode": False,
            **overrides,
        }
    return gateway_settings(database_url, **overrides)


class Harness:
    """The gateway under test, its simulator, the fake clock, and a customer-side client."""

    def __init__(
        self,
        gateway: Gateway,
        sim_client: httpx.AsyncClient,
        client: httpx.AsyncClient | None = None,
        simulator: FastAPI | None = None,
        clock: Any = None,
    ) -> None:
        self.gw = gateway
        self.db: Database = gateway.db
        self.client = client
        self.sim_client = sim_client
        self.simulator = simulator
        self.clock = clock
        self.tick = simulator.state.sim.config.tick_seconds if simulator else 0.0
        self.grace = sending_grace_seconds(gateway.settings)
        self._names = 0

    # --- set-up -----------------------------------------------------------------------------

    async def sync_catalog(self) -> None:
        result = await sync_catalog(self.db, self.gw.upstream)
        assert result.ok, result

    async def customer(
        self, dialect: str = "standard", markup_bp: int | None = 2500, balance: int = TOPUP
    ) -> Account:
        self._names += 1
        cid, key = await create_customer(self.db, f"customer-{self._names}", dialect, markup_bp)
        if balance:
            await ledger.topup(self.db, cid, balance)
        return Account(cid, key, markup_bp)

    # --- the customer's side ----------------------------------------------------------------

    async def call(self, key: str, action: str, **params: object) -> Any:
        data = {"key": key, "action": action, **{k: str(v) for k, v in params.items()}}
        response = await self.client.post("/api/v2", data=data)
        assert response.status_code == 200, response.text
        return response.json()

    async def add(self, customer: Account, **params: object) -> int:
        reply = await self.call(customer.key, "add", **params)
        assert reply.get("status") == "success", reply
        return reply["order"]

    async def status(self, customer: Account, order_id: int) -> dict[str, str]:
        return await self.call(customer.key, "status", order=order_id)

    async def place_many(self, customer: Account, params: list[dict[str, str]]) -> list[int]:
        """Bulk set-up without the HTTP layer (~3x faster): the same pricing, validation and
        three-phase placing that `add` runs."""
        service_ids = {int(p["service"]) for p in params}
        priced = {
            sid: await priced_service(
                self.db, sid, customer.id, customer.markup_bp, self.gw.settings.default_markup_bp
            )
            for sid in service_ids
        }
        ids = []
        for p in params:
            request = validate_add(p, priced[int(p["service"])], self.gw.upstream.rules)
            placement = await place_order(self.db, self.gw.upstream, customer.id, request)
            assert placement.order_id is not None, placement
            ids.append(placement.order_id)
        return ids

    # --- the upstream's side ----------------------------------------------------------------

    async def stats(self) -> dict[str, int]:
        response = await self.sim_client.get("/_sim/stats")
        return dict(response.json()["calls"])

    async def reset_stats(self) -> None:
        await self.sim_client.post("/_sim/reset-stats")

    async def faults(self, **rates: float) -> None:
        response = await self.sim_client.post("/_sim/faults", json=rates)
        assert response.status_code == 200, response.text

    async def sim_orders(self) -> dict[int, dict[str, Any]]:
        response = await self.sim_client.get("/_sim/orders")
        return {row["id"]: row for row in response.json()}

    async def sim_status(self, upstream_id: int) -> dict[str, Any]:
        """What the simulator itself answers for one of its orders (one `status` call)."""
        response = await self.sim_client.post(
            "/api/v1", data={"key": SIM_KEY, "action": "status", "order": str(upstream_id)}
        )
        return json.loads(response.text)

    async def sim_statuses(self, upstream_ids: list[int]) -> dict[int, dict[str, Any]]:
        """The simulator's own multi-status answers, 100 ids a call."""
        found: dict[int, dict[str, Any]] = {}
        for start in range(0, len(upstream_ids), 100):
            chunk = upstream_ids[start : start + 100]
            response = await self.sim_client.post(
                "/api/v1",
                data={"key": SIM_KEY, "action": "status", "orders": ",".join(map(str, chunk))},
            )
            found.update({int(k): v for k, v in json.loads(response.text).items()})
        return found

    # --- sync and the books -----------------------------------------------------------------

    async def sync(self, upstream: UpstreamClient | None = None, **kw: Any) -> PassResult:
        kw.setdefault("sending_grace_seconds", self.grace)
        return await sync_pass(self.db, upstream or self.gw.upstream, **kw)

    async def order(self, order_id: int) -> OrderView:
        return await get_order(self.db, order_id)

    async def balance(self, customer_id: int) -> int:
        async with self.db.read() as conn:
            return await conn.scalar(select(Customer.balance).where(Customer.id == customer_id))

    async def entries(self, **where: object) -> list[tuple[str, int, int | None, str | None]]:
        stmt = select(
            LedgerEntry.kind, LedgerEntry.amount, LedgerEntry.order_id, LedgerEntry.ref
        ).order_by(LedgerEntry.id)
        for name, value in where.items():
            stmt = stmt.where(getattr(LedgerEntry, name) == value)
        async with self.db.read() as conn:
            return [tuple(row) for row in await conn.execute(stmt)]

    async def entry_count(self) -> int:
        async with self.db.read() as conn:
            return await conn.scalar(select(func.count()).select_from(LedgerEntry))

    async def books(self) -> tuple[int, list[int]]:
        """(number of ledger entries, every customer's balance): what must not move."""
        async with self.db.read() as conn:
            balances = list(
                (await conn.execute(select(Customer.balance).order_by(Customer.id))).scalars()
            )
        return await self.entry_count(), balances

    async def assert_clean(self) -> None:
        assert await ledger.verify(self.db) == []

    async def placed_orders(self) -> list[OrderView]:
        return [o for o in await list_orders(self.db, limit=100_000) if o.state == "placed"]

    async def assert_settled_as_the_simulator_says(self, customers: list[Account]) -> Counter:
        """Every placed order final, refunded exactly as DESIGN.md says given what the simulator
        reports, with at most one refund entry; every balance = top-up - what its orders keep.
        Returns how many orders ended in each status."""
        orders = await self.placed_orders()
        heard = await self.sim_statuses([o.upstream_order_id for o in orders])
        sim = await self.sim_orders()
        async with self.db.read() as conn:
            refund_entries = Counter(
                (
                    await conn.execute(
                        select(LedgerEntry.order_id).where(LedgerEntry.kind == ledger.REFUND)
                    )
                ).scalars()
            )
        fates: Counter = Counter()
        for order in orders:
            said = heard[order.upstream_order_id]
            refund = expected_refund(order, said, sim[order.upstream_order_id]["charge_micros"])
            assert (order.status, order.refunded) == (said["status"], refund), (order, said)
            assert refund_entries[order.id] == (1 if refund else 0), order
            fates[order.status] += 1
        for customer in customers:
            keeps = sum(o.charge - o.refunded for o in orders if o.customer_id == customer.id)
            assert await self.balance(customer.id) == TOPUP - keeps
        await self.assert_clean()
        return fates


def sim_remains(raw: object) -> int:
    """The simulator's `remains` as a count: SmartPanel writes over-delivery as "+N"."""
    text = str(raw)
    return 0 if text.startswith("+") else int(text)


def assert_status_shape(reply: Mapping[str, Any]) -> None:
    assert list(reply) == STATUS_KEYS, reply
    assert all(isinstance(v, str) for v in reply.values()), reply
    assert reply["status"] in CANONICAL, reply
    assert reply["start_count"].isdigit() and reply["remains"].isdigit(), reply
    assert "e" not in reply["charge"].lower() and len(reply["charge"].split(".")[1]) >= 4, reply


class UpstreamTap:
    """The simulator seen through a tap: records the ids of every `status` call it forwards,
    can make chosen upstream orders answer in another panel's words (a status string we do not
    know, `Refused`, lowercase ...), as real panels do, and can hold `status` calls after the
    first `hold_after` until `release` is set (to line two workers up in a chosen order).
    The simulator does everything else."""

    def __init__(
        self, app: Any, statuses: Mapping[int, str] | None = None, hold_after: int | None = None
    ) -> None:
        self.app = app
        self.statuses = dict(statuses or {})
        self.status_calls: list[list[int]] = []
        self.hold_after = hold_after
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            body.extend(message.get("body", b""))
            if not message.get("more_body"):
                break
        if self._record(bytes(body)) and self.hold_after is not None:
            if len(self.status_calls) > self.hold_after:
                self.holding.set()
                await self.release.wait()
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        start: dict[str, Any] = {}
        reply = bytearray()

        async def rewriting_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            reply.extend(message.get("body", b""))
            if message.get("more_body"):
                return
            new = self._rewrite(bytes(reply))
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(new)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": new})

        await self.app(scope, replay, rewriting_send)

    def _record(self, body: bytes) -> bool:
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if unquote(form.get("action", "")) != "status":
            return False
        raw = form.get("orders") or form.get("order") or ""
        while "%" in raw:  # SmartPanel's double encoding, undone
            raw = unquote(raw)
        self.status_calls.append([int(p) for p in raw.split(",") if p.strip()])
        return True

    def _rewrite(self, body: bytes) -> bytes:
        try:
            data = json.loads(body)
        except ValueError:
            return body
        if not isinstance(data, dict) or not self.statuses:
            return body
        items = {data.get("order"): data} if "order" in data else data
        for key, item in items.items():
            upstream_id = int(key) if str(key).isdigit() else None
            if isinstance(item, dict) and upstream_id in self.statuses:
                item["status"] = self.statuses[upstream_id]
        return json.dumps(data).encode()


def expected_refund(order: OrderView, heard: Mapping[str, Any], upstream_kept: int) -> int:
    """DESIGN.md's settlement of one final order, from what the simulator reports about it:
    its status, its remains, and what it keeps of its own charge (/_sim/orders)."""
    status = heard["status"]
    if status == "Completed":
        return 0
    if status == "Canceled":
        return order.charge
    assert status == "Partial", heard
    flat = SERVICES[order.service_id].type in ("Package", "Custom Comments Package")
    if flat or "remains" not in heard:  # packages; SmartPanel's drip-feed parents
        return ratio_refund(
            order.charge, upstream_kept, upstream_cost(order.service_id, order.quantity)
        )
    return partial_refund(order.charge, sim_remains(heard["remains"]), order.quantity)
