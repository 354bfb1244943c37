"""The CLI's order commands, `sync --once`, `report`, `summary`, `worker`, and the loud warning
about unresolved orders; on SQLite and PostgreSQL.

The CLI runs in-process with typer's CliRunner; the upstream is the simulator on a real port
(in a thread, real time, short ticks). Orders are placed with the same three-phase
`place_order` the `add` action runs.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import insert_default_provider
from helpers import free_port, simulator_on_port
from sqlalchemy import text
from typer.testing import CliRunner

from app.catalog import catalog_state, priced_service
from app.cli import app
from app.db import Database
from app.models import Base
from app.orders.placing import place_order
from app.orders.queries import OrderView, get_order
from app.orders.validation import validate_add
from app.settings import load_settings
from app.simulator import SimConfig
from app.upstream import UpstreamClient

SIM_KEY = "cli-orders-sim-key"
TICK = 0.2  # the simulator's time between two steps of an order: final after 2
FINAL = {"Completed", "Partial", "Canceled"}
WARNING = "WARNING: {} await{} resolution: smm-gateway orders list --state unknown"
runner = CliRunner()


@pytest.fixture
def sim_url() -> Iterator[str]:
    """The simulator on a real port, in a thread, in real time."""
    with simulator_on_port(SimConfig(key=SIM_KEY, seed=1, tick_seconds=TICK)) as url:
        yield url


async def _truncate(url: str) -> None:
    db = Database(url)
    try:
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        async with db.write() as conn:
            await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
            await insert_default_provider(conn)
    finally:
        await db.dispose()


@pytest.fixture(autouse=True)
def cli_env(
    database_url: str, sim_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """An empty database of either kind, the simulator as the upstream, nothing from outside."""
    for name in list(os.environ):
        if name.startswith("SMMGW_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    if not database_url.startswith("sqlite"):
        asyncio.run(_truncate(database_url))
    monkeypatch.setenv("SMMGW_DATABASE_URL", database_url)
    monkeypatch.setenv("SMMGW_UPSTREAM_URL", sim_url)
    monkeypatch.setenv("SMMGW_UPSTREAM_KEY", SIM_KEY)
    # An accepted order whose reply never comes is `unknown` after this budget.
    monkeypatch.setenv("SMMGW_UPSTREAM_TIMEOUT_SECONDS", "0.5")
    monkeypatch.setenv("SMMGW_UPSTREAM_CONNECT_TIMEOUT_SECONDS", "0.5")
    return database_url


def cli(*args: str, code: int = 0):  # type: ignore[no-untyped-def]
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, (args, result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    return result


def cli_json(*args: str) -> Any:
    return json.loads(cli(*args, "--json").stdout)


def warning(count: int) -> str:
    return WARNING.format(f"{count} order" + ("" if count == 1 else "s"), "s" if count == 1 else "")


def with_db(work):  # type: ignore[no-untyped-def]
    """Run `work(db, upstream)` against the CLI's database and upstream, in a loop of its own."""

    async def go() -> Any:
        settings = load_settings()
        db = Database(settings.database_url)
        try:
            async with UpstreamClient.from_settings(settings) as upstream:
                return await work(db, upstream)
        finally:
            await db.dispose()

    return asyncio.run(go())


def set_up() -> None:
    """A customer `acme` with 100.00 and the simulator's catalog, all through the CLI."""
    cli("customers", "create", "--name", "acme")
    cli("ledger", "topup", "acme", "100")
    cli("services", "sync")


def place(link: str, quantity: int = 1000) -> int:
    """An order for `acme` (customer 1) on service 5 (Default), as `add` places it."""

    async def work(db: Database, upstream: UpstreamClient) -> int:
        service = await priced_service(db, 5, 1, None, 0)
        assert service is not None
        request = validate_add({"link": link, "quantity": str(quantity)}, service, upstream.rules)
        placement = await place_order(db, upstream, 1, request)
        assert placement.order_id is not None, placement
        return placement.order_id

    return with_db(work)


def order(order_id: int) -> OrderView:
    return with_db(lambda db, upstream: get_order(db, order_id))


def sim_order_id(sim_url: str, link: str) -> int:
    listing = httpx.get(sim_url.replace("/api/v1", "/_sim/orders")).json()
    [found] = [o for o in listing if o["params"].get("link") == link]
    return int(found["id"])


# --- orders and the warning ---------------------------------------------------------------------


def test_orders_list_show_resolve_and_the_loud_warning(sim_url: str) -> None:
    set_up()
    assert cli("orders", "list").stdout.strip() == "no orders"
    lost_link = "https://ig.test/sim:complete/sim:timeout"
    lost = place(lost_link)
    fine = place("https://ig.test/sim:complete")
    assert (order(lost).state, order(fine).state) == ("unknown", "placed")

    listed = cli("orders", "list")
    assert listed.stderr.strip() == warning(1)
    header, *rows = listed.stdout.strip().splitlines()
    for column in ("STATE", "STATUS", "UPSTREAM", "CHARGE", "REFRESHED"):
        assert column in header
    assert [row.split()[0] for row in rows] == [str(fine), str(lost)]
    assert "UNKNOWN" in rows[1] and "placed" in rows[0] and "never" in rows[1]

    # Once, on every command that touches the database, whatever it does.
    for args in [
        ("customers", "list"),
        ("customers", "show", "acme", "--json"),
        ("ledger", "verify"),
        ("services", "list"),
        ("migrate",),
        ("report",),
        ("summary",),
        ("orders", "show", str(fine)),
    ]:
        assert cli(*args).stderr.count("WARNING") == 1, args
        assert warning(1) in cli(*args).stderr

    unknown = cli_json("orders", "list", "--state", "unknown")
    assert [o["id"] for o in unknown] == [lost]
    assert unknown[0]["state"] == "unknown" and unknown[0]["upstream_order_id"] is None
    assert [o["id"] for o in cli_json("orders", "list", "--customer", "acme")] == [fine, lost]
    assert [o["id"] for o in cli_json("orders", "list", "--customer", "1", "--limit", "1")] == [
        fine
    ]
    assert cli_json("orders", "list", "--state", "rejected") == []
    assert "no customer 'nobody'" in cli("orders", "list", "--customer", "nobody", code=1).stderr
    cli("orders", "list", "--state", "lost", code=2)

    shown = cli("orders", "show", str(lost)).stdout
    assert f"order {lost}: UNKNOWN" in shown and lost_link in shown
    assert f"smm-gateway orders resolve {lost} --upstream-order N" in shown
    assert f"smm-gateway orders resolve {lost} --not-placed" in shown
    detail = cli_json("orders", "show", str(lost))
    assert detail == unknown[0]
    assert detail["charge"] == detail["current_charge"] and detail["refunded"] == "0.00"
    assert cli("orders", "show", "999", code=1).stderr.strip() == "no order 999"
    assert "unresolved (unknown): 1" in cli("summary").stdout

    # Wrong ways to resolve: exit 2 for the options, 1 for the order, nothing changed.
    cli("orders", "resolve", str(lost), code=2)
    cli("orders", "resolve", str(lost), "--not-placed", "--upstream-order", "5", code=2)
    placed = cli("orders", "resolve", str(fine), "--not-placed", code=1).stderr
    assert "only unknown orders resolve" in placed
    assert "no order 999" in cli("orders", "resolve", "999", "--not-placed", code=1).stderr
    assert order(lost).state == "unknown"

    refused_link = "https://ig.test/sim:cancel/sim:timeout"
    refused = place(refused_link)
    assert cli("customers", "list").stderr.strip() == warning(2)
    balance = Decimal(cli_json("customers", "show", "acme")["balance"])

    # Never placed: refund in full.
    rejected = cli_json("orders", "resolve", str(refused), "--not-placed")
    assert (rejected["state"], rejected["current_charge"]) == ("rejected", "0.00")
    assert rejected["refunded"] == rejected["charge"]
    after = Decimal(cli_json("customers", "show", "acme")["balance"])
    assert after == balance + Decimal(rejected["charge"])
    # Exists upstream: placed under its id, still charged.
    upstream_id = sim_order_id(sim_url, lost_link)
    text_out = cli("orders", "resolve", str(lost), "--upstream-order", str(upstream_id))
    first, said = text_out.stdout.strip().splitlines()
    assert first == f"order {lost}: placed as upstream order {upstream_id}"
    # What the upstream says about that id is shown: it was asked before the verdict.
    assert said.startswith(f"  the upstream on order {upstream_id}: status ")
    assert text_out.stderr == ""  # nothing awaits resolution any more
    resolved = order(lost)
    assert (resolved.state, resolved.upstream_order_id, resolved.refunded) == (
        "placed",
        upstream_id,
        0,
    )
    taken = cli("orders", "resolve", str(refused), "--upstream-order", str(upstream_id), code=1)
    assert "only unknown" in taken.stderr
    assert cli("ledger", "verify").stdout.strip() == "ledger clean"
    assert cli("orders", "list").stderr == ""


def test_resolve_asks_the_upstream_and_a_verdict_can_be_corrected(sim_url: str) -> None:
    """A typo in the upstream id is refused with what the upstream said; --force accepts it;
    --correct then fixes the verdict, by an audited ledger entry, the ledger clean throughout."""
    set_up()
    link = "https://ig.test/sim:complete/sim:timeout/typo"
    lost = place(link)
    held = cli_json("customers", "show", "acme")["balance"]
    typo = cli("orders", "resolve", str(lost), "--upstream-order", "999999", code=1).stderr
    assert "upstream order 999999 (no such order) does not match" in typo and "--force" in typo
    assert order(lost).state == "unknown"

    forced = cli("orders", "resolve", str(lost), "--upstream-order", "999999", "--force").stdout
    assert f"order {lost}: placed as upstream order 999999" in forced
    assert "MISMATCH (accepted with --force): the upstream does not know it" in forced
    assert cli_json("customers", "show", "acme")["balance"] == held

    again = cli("orders", "resolve", str(lost), "--not-placed", code=1).stderr
    assert "say --correct" in again
    real = sim_order_id(sim_url, link)
    moved = cli_json("orders", "resolve", str(lost), "--upstream-order", str(real), "--correct")
    assert (moved["upstream_order_id"], moved["correction"]) == (real, f"correction:{lost}:1")
    assert moved["upstream_check"]["mismatches"] == []

    text = cli("orders", "resolve", str(lost), "--not-placed", "--correct", "--memo", "dup").stdout
    assert f"order {lost}: not placed" in text and f"correction:{lost}:2" in text
    after = Decimal(cli_json("customers", "show", "acme")["balance"])
    assert after == Decimal(held) + Decimal(moved["charge"])
    history = cli_json("ledger", "history", "acme")
    assert history[0]["ref"] == f"correction:{lost}:2" and "dup" in history[0]["memo"]
    assert cli("ledger", "verify").stdout.strip() == "ledger clean"


# --- sync --once and report ---------------------------------------------------------------------


def sync_until_settled(expected: int) -> list[dict[str, Any]]:
    """`sync --once` until `expected` orders have been settled, with each pass's JSON."""
    passes: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while sum(p["settled"] for p in passes) < expected:
        assert time.monotonic() < deadline, passes
        passes.append(cli_json("sync", "--once"))
        time.sleep(TICK)
    return passes


def test_sync_once_settles_and_report_counts_the_margin() -> None:
    set_up()
    links = ["sim:complete", "sim:cancel", "sim:partial"]
    ids = [place(f"https://ig.test/{marker}") for marker in links]
    cli("sync", code=2)  # without --once: the loop is `worker`

    passes = sync_until_settled(3)
    assert all(p["failed_batches"] == 0 and p["anomalies"] == [] for p in passes)
    assert all(p["upstream_calls"] <= 1 for p in passes)  # three orders: one batch a pass
    orders = {o["id"]: o for o in cli_json("orders", "list")}
    complete, cancel, partial = (orders[i] for i in ids)
    assert (complete["status"], cancel["status"], partial["status"]) == (
        "Completed",
        "Canceled",
        "Partial",
    )
    assert all(o["refreshed_at"] is not None for o in orders.values())
    assert complete["refunded"] == "0.00" and cancel["refunded"] == cancel["charge"]
    assert Decimal("0") < Decimal(partial["refunded"]) < Decimal(partial["charge"])
    assert cli("ledger", "verify").stdout.strip() == "ledger clean"
    assert cli_json("sync", "--once")["polled"] == 0  # nothing active any more
    idle = cli("sync", "--once").stdout.strip()
    assert idle == "sync pass: polled 0 orders in 0 upstream calls, settled 0"

    report = cli_json("report")
    revenue = sum(Decimal(o["current_charge"]) for o in orders.values())
    assert all(o["upstream_charge"] is not None for o in orders.values())
    cost = sum(Decimal(o["upstream_charge"]) for o in orders.values())
    total = report["total"]
    assert total["orders"] == 3
    assert (Decimal(total["revenue"]), Decimal(total["upstream_cost"])) == (revenue, cost)
    assert Decimal(total["margin"]) == revenue - cost
    [line] = report["by_customer"]
    assert (line["id"], line["name"], line["orders"]) == (1, "acme", 3)
    assert [(s["id"], s["orders"], s["margin"]) for s in report["by_service"]] == [
        (5, 3, total["margin"])
    ]
    assert (report["since"], report["until"], report["currency"]) == (None, None, "USD")

    shown = cli("report").stdout
    assert "by customer:" in shown and "by service:" in shown and "acme" in shown
    assert f"total: 3 orders, revenue {total['revenue']}" in shown

    today = datetime.now(UTC).date()
    tomorrow, yesterday = today + timedelta(days=1), today - timedelta(days=1)
    only_today = cli_json("report", "--since", str(today), "--until", str(today))
    assert only_today["total"] == total
    assert only_today["since"] == f"{today}T00:00:00Z"
    assert only_today["until"] == f"{tomorrow}T00:00:00Z"  # the whole last day
    assert cli_json("report", "--since", str(tomorrow))["total"]["orders"] == 0
    empty = cli_json("report", "--until", str(yesterday))
    assert empty["total"]["orders"] == 0 and empty["by_customer"] == []
    assert "(no orders)" in cli("report", "--until", str(yesterday)).stdout
    cli("report", "--since", "2024-13-01", code=2)
    assert (
        "before" in cli("report", "--since", str(today), "--until", str(yesterday), code=1).stderr
    )


def test_sync_once_says_when_the_upstream_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    set_up()
    placed = place("https://ig.test/sim:complete")
    monkeypatch.setenv("SMMGW_UPSTREAM_URL", f"http://127.0.0.1:{free_port()}/api/v1")
    result = cli("sync", "--once", "--json", code=1)
    outcome = json.loads(result.stdout)
    assert (outcome["polled"], outcome["failed_batches"], outcome["settled"]) == (0, 1, 0)
    assert "failed" in result.stderr and "next pass" in result.stderr
    assert order(placed).refreshed_at is None


# --- worker -------------------------------------------------------------------------------------


def _worker(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "from app.cli import main; main()", "worker"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(proc: subprocess.Popen[str], sig: signal.Signals) -> str:
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    return err


def test_worker_syncs_and_refreshes_until_signalled(database_url: str) -> None:
    set_up()
    placed = place("https://ig.test/sim:complete")
    synced_before = with_db(lambda db, upstream: catalog_state(db))["catalog_synced_at"]
    env = {
        **os.environ,
        "SMMGW_SYNC_IN_PROCESS": "false",
        "SMMGW_SYNC_INTERVAL_SECONDS": "0.2",
        "SMMGW_SERVICES_TTL_SECONDS": "60",
        "SMMGW_LOG_FORMAT": "text",
    }
    proc = _worker(env)
    try:
        deadline = time.monotonic() + 20
        while order(placed).status != "Completed":
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the worker never settled the order"
            time.sleep(0.1)
        synced_after = with_db(lambda db, upstream: catalog_state(db))["catalog_synced_at"]
        assert synced_after > synced_before  # its catalog refresh ran too
    finally:
        err = _stop(proc, signal.SIGTERM)
    assert "worker running" in err and "worker stopped" in err
    assert "SMMGW_SYNC_IN_PROCESS" not in err
    assert order(placed).refunded == 0
    assert cli("ledger", "verify").stdout.strip() == "ledger clean"

    # Left on, the gateway's in-process sync would run too: the worker says so. Ctrl-C stops it.
    # (Nothing here depends on the database: once is enough.)
    if not database_url.startswith("sqlite"):
        return
    proc = _worker({**env, "SMMGW_SYNC_IN_PROCESS": "true"})
    try:
        deadline = time.monotonic() + 20
        while with_db(lambda db, upstream: catalog_state(db))["catalog_synced_at"] == synced_after:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.1)
    finally:
        err = _stop(proc, signal.SIGINT)
    assert "SMMGW_SYNC_IN_PROCESS=false" in err and "worker stopped" in err


def test_a_held_settlement_is_shown_by_every_command_until_it_settles() -> None:
    """Issue 10 item 7: a Partial reported without remains or charge is held, and the operator
    sees it (stderr of every database command), until the figures come."""
    set_up()
    order_id = place("https://ig.test/sim:partial/sim:late-figures")
    time.sleep(2.5 * TICK)  # final upstream; figures withheld until 4 ticks
    cli("sync", "--once")
    listed = cli("orders", "list")
    assert "1 settlement held" in listed.stderr and f"orders {order_id}" in listed.stderr
    assert with_db(lambda db, _: get_order(db, order_id)).settled_at is None
    time.sleep(2.5 * TICK)
    cli("sync", "--once")
    verified = cli("ledger", "verify")
    assert "held" not in verified.stderr
    assert with_db(lambda db, _: get_order(db, order_id)).status == "Partial"
