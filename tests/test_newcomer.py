"""What a newcomer meets in the first hour: `--version`, HEAD probes, the demo showing every
action. The commands README.md and the demo print are run as shown in tests/test_readme.py."""

import asyncio
import json
import os
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from conftest import SIM_KEY
from helpers import MICROS, add, expected_charge, micros, new_customer, services_by_id, sim_orders
from typer.testing import CliRunner

from app import ledger
from app.admin import ops
from app.catalog import sync_catalog
from app.cli import app
from app.db import Database
from app.settings import Settings
from app.upstream import UpstreamClient

runner = CliRunner()


def test_version() -> None:
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"smm-gateway {version('smm-gateway')}"


@pytest.mark.parametrize(
    "path", ["/healthz", "/docs", "/redoc", "/openapi.json", "/metrics", "/api/v2", "/api/v1"]
)
async def test_head_is_answered_wherever_get_is(client: httpx.AsyncClient, path: str) -> None:
    got = await client.get(path)
    head = await client.head(path)
    assert got.status_code == 200
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    if path != "/metrics":  # the metrics move between the two requests
        assert head.headers["content-length"] == got.headers["content-length"]


async def test_head_where_no_get_is_still_refused(client: httpx.AsyncClient) -> None:
    assert (await client.head("/no-such-page")).status_code == 404


# --- money where an operator looks: history, orders list, summary --------------------------------


def _clean_cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> None:
    for name in list(os.environ):
        if name.startswith("SMMGW_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SMMGW_DATABASE_URL", database_url)


async def test_ledger_history_has_a_running_balance(
    db: Database, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await new_customer(db, "Alice")
    bob = await new_customer(db, "Bob")
    await ledger.topup(db, alice.id, micros("10"))
    await ledger.topup(db, bob.id, micros("5"))  # another customer's entry in between
    await ledger.adjust(db, alice.id, -micros("3"))
    await ledger.topup(db, alice.id, micros("2.5"))

    _clean_cli_env(monkeypatch, tmp_path, database_url)
    result = await asyncio.to_thread(runner.invoke, app, ["ledger", "history", "Alice", "--json"])
    assert result.exit_code == 0, result.output
    entries = json.loads(result.stdout)
    assert [(e["amount"], e["balance_after"]) for e in entries] == [
        ("2.50", "9.50"),
        ("-3.00", "7.00"),
        ("10.00", "10.00"),
    ]
    # The limit cuts the list, not the sum each entry carries.
    limited = await ops.history(db, alice.id, limit=1)
    assert [e.balance_after for e in limited] == ["9.50"]
    assert await ledger.verify(db) == []


async def test_orders_list_names_customers_and_summary_has_todays_money(
    db: Database,
    database_url: str,
    client: httpx.AsyncClient,
    upstream: UpstreamClient,
    settings: Settings,
    sim_client: httpx.AsyncClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert (await sync_catalog(db, upstream)).ok
    alice = await new_customer(db, "Alice", funds=micros("50"))
    service = (await services_by_id(client, alice.key))[10]
    placed = await add(
        client, alice.key, {"service": 10, "link": "https://x/sim:complete", "quantity": 1000}
    )
    assert "order" in placed, placed

    summary = await ops.summary(db, settings, upstream)
    revenue = Decimal(expected_charge(service, 1000)) / MICROS
    (sim_order,) = await sim_orders(sim_client)
    cost = Decimal(sim_order["charge_micros"]) / MICROS
    assert summary.today.orders == 1
    assert Decimal(summary.today.revenue) == revenue
    assert Decimal(summary.today.upstream_cost) == cost
    assert Decimal(summary.today.margin) == revenue - cost
    sim_balance = await sim_client.post("/api/v1", data={"key": SIM_KEY, "action": "balance"})
    assert summary.upstream.error is None
    assert Decimal(summary.upstream.balance or "") == Decimal(sim_balance.json()["balance"])

    _clean_cli_env(monkeypatch, tmp_path, database_url)
    result = await asyncio.to_thread(runner.invoke, app, ["orders", "list"])
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()[:2]
    assert "CUSTOMER" in header
    assert f" {alice.id} Alice " in row
    assert await ledger.verify(db) == []
