"""The operator's command line, run in-process with typer's CliRunner on a fresh SQLite file."""

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from conftest import POSTGRES_ADMIN_URL, SKIP_POSTGRES
from dashboard_helpers import csrf_of, sign_in
from helpers import free_port, simulator_on_port
from typer.testing import CliRunner

from app import providers
from app.cli import app
from app.db import Database
from app.demo import DEMO_DB, demo_running
from app.money import parse_micros
from app.simulator import SimConfig

SIM_KEY = "cli-test-sim-key"
runner = CliRunner()


@pytest.fixture(autouse=True)
def db_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_template: Path) -> Path:
    """Each test: its own migrated SQLite file, no SMMGW_ settings from outside, no stray .env.
    (Only `migrate`, `serve` and `demo` create a schema: the others refuse a bare file.)"""
    for name in list(os.environ):
        if name.startswith("SMMGW_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "cli.db"
    shutil.copyfile(sqlite_template, path)
    monkeypatch.setenv("SMMGW_DATABASE_URL", f"sqlite:///{path}")
    return path


def cli(*args: str, code: int = 0):  # type: ignore[no-untyped-def]
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, (args, result.exit_code, result.output, result.exception)
    return result


def cli_json(*args: str):  # type: ignore[no-untyped-def]
    return json.loads(cli(*args, "--json").stdout)


def one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    err = result.stderr.strip()
    assert err and "\n" not in err, result.stderr
    assert "Traceback" not in result.output
    return err


def create(name: str = "acme", *extra: str) -> dict:
    return cli_json("customers", "create", "--name", name, *extra)


# --- customers and keys -------------------------------------------------------------------------


def test_customers_create_prints_id_and_key_once() -> None:
    created = create("acme", "--markup", "25", "--dialect", "smartpanel")
    assert created["id"] == 1
    assert re.fullmatch(r"[0-9a-f]{64}", created["key"])
    assert created["prefix"] == created["key"][:8]
    assert created["markup_percent"] == "25"
    assert created["dialect"] == "smartpanel"

    text = cli("customers", "create", "--name", "bob").stdout
    key = re.search(r"key: ([0-9a-f]{64})", text)
    assert key and "shown only this once" in text
    assert cli_json("customers", "show", "bob")["dialect"] == "standard"  # the setting's default


def test_customers_create_refuses_bad_input() -> None:
    err = one_line_error(cli("customers", "create", "--name", "x", "--markup", "-5", code=1))
    assert "negative" in err
    one_line_error(cli("customers", "create", "--name", "x", "--markup", "1.234", code=1))
    create("acme")
    assert "exists already" in one_line_error(cli("customers", "create", "--name", "acme", code=1))


def test_list_and_show_never_print_a_key() -> None:
    first = create("acme")
    second = cli_json("keys", "issue", "acme")
    outputs = [
        cli("customers", "list").stdout,
        cli("customers", "list", "--json").stdout,
        cli("customers", "show", "1").stdout,
        cli("customers", "show", "acme", "--json").stdout,
        cli("keys", "list", "1").stdout,
        cli("keys", "list", "1", "--json").stdout,
    ]
    for out in outputs:
        assert first["key"] not in out and second["key"] not in out
        assert first["key"][8:16] not in out  # not even beyond the prefix
    shown = json.loads(outputs[3])
    assert [k["prefix"] for k in shown["keys"]] == [first["prefix"], second["prefix"]]
    assert shown["balance"] == "0.00" and shown["currency"] == "USD"
    assert first["prefix"] in outputs[2]
    listed = json.loads(outputs[1])
    assert [c["name"] for c in listed] == ["acme"]


def test_set_disable_enable() -> None:
    create("acme", "--markup", "25")
    changed = cli_json(
        "customers", "set", "1", "--name", "acme2", "--markup", "12.5", "--dialect", "smartpanel"
    )
    assert (changed["name"], changed["markup_percent"], changed["dialect"]) == (
        "acme2",
        "12.5",
        "smartpanel",
    )
    assert cli_json("customers", "set", "acme2", "--default-markup")["markup_percent"] is None
    assert cli_json("customers", "disable", "1")["disabled"] is True
    assert "disabled" in cli("customers", "list").stdout
    assert cli_json("customers", "enable", "1")["disabled"] is False

    one_line_error(cli("customers", "set", "1", "--markup", "5", "--default-markup", code=2))
    one_line_error(cli("customers", "set", "1", code=2))
    assert "negative" in one_line_error(cli("customers", "set", "1", "--markup", "-1", code=1))
    assert one_line_error(cli("customers", "disable", "42", code=1)) == "no customer 42"
    assert one_line_error(cli("customers", "show", "nobody", code=1)) == "no customer 'nobody'"


def test_keys_issue_list_revoke() -> None:
    first = create("acme")
    issued = cli_json("keys", "issue", "1")
    assert re.fullmatch(r"[0-9a-f]{64}", issued["key"]) and issued["key"] != first["key"]
    assert len(cli_json("keys", "list", "acme")) == 2

    assert cli_json("keys", "revoke", first["prefix"])["revoked"] is True
    keys = {k["prefix"]: k for k in cli_json("keys", "list", "1")}
    assert keys[first["prefix"]]["revoked_at"] is not None
    assert keys[issued["prefix"]]["revoked_at"] is None
    assert "REVOKED" in cli("customers", "show", "1").stdout
    assert "no live key" in one_line_error(cli("keys", "revoke", first["prefix"], code=1))
    one_line_error(cli("keys", "issue", "42", code=1))


# --- ledger -------------------------------------------------------------------------------------


def test_ledger_topup_adjust_history_verify() -> None:
    create("acme")
    assert cli_json("ledger", "topup", "acme", "100", "--memo", "paid")["balance"] == "100.00"
    assert cli_json("ledger", "adjust", "1", "-5.5")["balance"] == "94.50"
    after_dashes = cli("ledger", "adjust", "1", "--json", "--", "-0.25").stdout
    assert json.loads(after_dashes)["balance"] == "94.25"
    assert cli_json("ledger", "adjust", "1", "--amount=-1", "--memo", "fix")["balance"] == "93.25"
    assert cli_json("ledger", "adjust", "1", "0.000001")["balance"] == "93.250001"
    text = cli("ledger", "topup", "1", "1.5").stdout
    assert "balance now 94.750001 USD" in text

    history = cli_json("ledger", "history", "acme")
    assert [(e["kind"], e["amount"]) for e in history] == [
        ("topup", "1.50"),
        ("adjustment", "0.000001"),
        ("adjustment", "-1.00"),
        ("adjustment", "-0.25"),
        ("adjustment", "-5.50"),
        ("topup", "100.00"),
    ]
    assert history[-1]["memo"] == "paid"
    assert len(cli_json("ledger", "history", "1", "--limit", "2")) == 2
    assert "-5.50" in cli("ledger", "history", "1").stdout

    assert cli("ledger", "verify").stdout.strip() == "ledger clean"
    assert cli_json("ledger", "verify") == {"clean": True, "problems": []}


def test_ledger_refusals_are_one_line() -> None:
    create("acme")
    assert "positive" in one_line_error(cli("ledger", "topup", "1", "-5", code=1))
    assert "below zero" in one_line_error(cli("ledger", "adjust", "1", "-1", code=1))
    assert "zero" in one_line_error(cli("ledger", "adjust", "1", "0", code=1))
    one_line_error(cli("ledger", "adjust", "1", code=2))
    one_line_error(cli("ledger", "adjust", "1", "-1", "--amount=-1", code=2))
    assert one_line_error(cli("ledger", "topup", "42", "5", code=1)) == "no customer 42"
    one_line_error(cli("ledger", "history", "42", code=1))


@pytest.mark.parametrize(
    ("amount", "reason"),
    [
        ("1.1234567", "more than 6 decimals"),
        ("abc", "not a number"),
        ("NaN", "not a number"),
        ("1e3", "not a number"),
    ],
)
def test_bad_amount_is_one_line_exit_1(amount: str, reason: str) -> None:
    create("acme")
    err = one_line_error(cli("ledger", "topup", "1", amount, code=1))
    assert reason in err and amount in err


def test_ledger_verify_reports_each_problem(db_file: Path) -> None:
    create("acme")
    cli("ledger", "topup", "1", "10")
    with sqlite3.connect(db_file) as conn:  # damage the cached balance behind the ledger's back
        conn.execute("UPDATE customers SET balance = balance + 1 WHERE id = 1")
    result = cli("ledger", "verify", code=1)
    lines = result.stdout.strip().splitlines()
    assert lines and any("customer 1" in line for line in lines)
    assert "ledger clean" not in result.stdout
    report = json.loads(cli("ledger", "verify", "--json", code=1).stdout)
    assert report["clean"] is False and report["problems"] == lines


# --- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("customers", "list"),
        ("ledger", "verify"),
        ("services", "list"),
        ("migrate",),
        ("customers", "create", "--name", "x"),
    ],
)
def test_invalid_setting_exits_2_naming_it(
    monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    monkeypatch.setenv("SMMGW_UPSTREAM_TIMEOUT_SECONDS", "-1")
    err = one_line_error(cli(*args, code=2))
    assert "SMMGW_UPSTREAM_TIMEOUT_SECONDS" in err


def test_unreachable_database_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMMGW_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    assert "database" in one_line_error(cli("customers", "list", code=1))


def test_migrate() -> None:
    assert cli_json("migrate")["migrated"] is True
    assert "database at head" in cli("migrate").stdout


def test_only_migrate_creates_a_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every other command refuses a database that was never migrated, in one line naming it,
    and leaves it as it was: not even a SQLite file appears."""
    path = tmp_path / "fresh.db"
    monkeypatch.setenv("SMMGW_DATABASE_URL", f"sqlite:///{path}")
    for args in [
        ("customers", "list"),
        ("customers", "create", "--name", "acme"),
        ("ledger", "verify"),
        ("orders", "list"),
        ("summary",),
        ("report",),
    ]:
        err = one_line_error(cli(*args, code=1))
        assert str(path) in err and "never migrated" in err, err
        assert err.endswith("run `smm-gateway migrate`")
    assert not path.exists()
    cli("migrate")
    assert cli_json("customers", "list") == []


def test_an_empty_postgresql_database_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Say the `postgres` maintenance database by mistake: nothing is created in it."""
    if SKIP_POSTGRES:
        pytest.skip("SMMGW_TEST_SKIP_POSTGRES=1")
    name = f"smmgw_bare_{os.getpid()}"

    async def admin(sql: str) -> Any:
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        url = f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
        monkeypatch.setenv("SMMGW_DATABASE_URL", url)
        for args in [("customers", "list"), ("ledger", "topup", "1", "5"), ("sync", "--once")]:
            err = one_line_error(cli(*args, code=1))
            assert f"/{name} has no smm-gateway schema" in err and "smm-gateway migrate" in err

        async def tables() -> int:
            conn = await asyncpg.connect(url)
            try:
                sql = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                return await conn.fetchval(sql)
            finally:
                await conn.close()

        assert asyncio.run(tables()) == 0
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# --- operators' inputs and mistakes -------------------------------------------------------------


def test_a_top_up_beyond_what_a_balance_can_hold_is_refused() -> None:
    """`ledger topup C 9000000000000` twice: the second is refused before anything is written."""
    create("acme")
    assert cli_json("ledger", "topup", "acme", "9000000000000")["balance"] == "9000000000000.00"
    err = one_line_error(cli("ledger", "topup", "acme", "9000000000000", code=1))
    assert "above the most one customer may hold" in err
    assert "too large" in one_line_error(cli("ledger", "topup", "acme", "9000000000001", code=1))
    assert cli_json("customers", "list")[0]["balance"] == "9000000000000.00"
    assert len(cli_json("ledger", "history", "acme")) == 1
    assert cli("ledger", "verify").stdout.strip() == "ledger clean"


def test_a_repeated_ref_credits_nothing() -> None:
    create("acme")
    first = cli_json("ledger", "topup", "acme", "25", "--ref", "bank-2026-001")
    assert (first["balance"], first["duplicate"]) == ("25.00", False)
    again = cli("ledger", "topup", "acme", "25", "--ref", "bank-2026-001").stdout
    assert "ref 'bank-2026-001' was posted already" in again and "nothing credited" in again
    assert cli_json("ledger", "topup", "1", "25", "--ref", "bank-2026-001")["duplicate"] is True
    err = one_line_error(cli("ledger", "topup", "acme", "30", "--ref", "bank-2026-001", code=1))
    assert "was used already" in err
    assert cli_json("ledger", "adjust", "acme", "-5", "--ref", "fee-1")["balance"] == "20.00"
    assert cli_json("ledger", "adjust", "acme", "-5", "--ref", "fee-1")["duplicate"] is True
    assert cli_json("customers", "show", "acme")["balance"] == "20.00"
    assert "bad --ref" in one_line_error(cli("ledger", "topup", "1", "5", "--ref", "a b", code=1))
    assert cli("ledger", "verify").stdout.strip() == "ledger clean"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("customers", "create", "--name", "x" * 201), "bad --name"),
        (("customers", "create", "--name", "tab\there"), "bad --name"),
        (("customers", "create", "--name", "x", "--markup", "1e30"), "bad --markup"),
        (("customers", "create", "--name", "x", "--markup", "10001"), "bad --markup"),
        (("customers", "set", "1", "--markup", "1e30"), "bad --markup"),
        (("customers", "show", "¹"), "no customer '¹'"),
        (("customers", "show", "99999999999999999999"), "no customer 99999999999999999999"),
        (("ledger", "topup", "٥", "5"), "no customer '٥'"),
        (("ledger", "topup", "1", "5", "--memo", "x" * 2001), "bad --memo"),
        (("services", "price", "5", "--rate", "999999999999999"), "bad --rate"),
        (("services", "price", "5", "--markup", "-99.5"), "bad --markup"),
        (("services", "rename", "5", "--name", "x" * 201), "bad --name"),
        (("report", "--since", "9999-12-31"), "bad --since"),
        (("report", "--until", "9999-12-31"), "bad --until"),
        (("orders", "resolve", "1", "--upstream-order", "99999999999999999999"), "bad"),
        (("orders", "resolve", "1", "--upstream-order", "²"), "bad --upstream-order"),
    ],
)
def test_hostile_operator_input_is_one_line(args: tuple[str, ...], needle: str) -> None:
    create("acme")
    err = one_line_error(cli(*args, code=1))
    assert needle in err, err
    assert cli_json("customers", "list")[0]["markup_percent"] is None
    assert cli_json("ledger", "history", "acme") == []


# --- services -----------------------------------------------------------------------------------


def test_services_list_on_an_empty_catalog() -> None:
    assert "no services" in cli("services", "list").stdout
    assert cli_json("services", "list", "--all") == []


@pytest.mark.parametrize(
    "args",
    [
        ("services", "hide", "999"),
        ("services", "show", "999"),
        ("services", "rename", "999", "--name", "x"),
        ("services", "price", "999", "--rate", "1"),
        ("services", "price", "999", "--markup", "10"),
    ],
)
def test_services_changes_on_unknown_ids(args: tuple[str, ...]) -> None:
    assert one_line_error(cli(*args, code=1)) == "no service 999"


def test_services_price_needs_exactly_one_choice() -> None:
    one_line_error(cli("services", "price", "5", code=2))
    one_line_error(cli("services", "price", "5", "--rate", "1", "--clear", code=2))
    assert "6 decimals" in one_line_error(
        cli("services", "price", "5", "--rate", "0.0000001", code=1)
    )


def test_services_sync_failure_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMMGW_UPSTREAM_URL", f"http://127.0.0.1:{free_port()}/api/v1")
    monkeypatch.setenv("SMMGW_UPSTREAM_CONNECT_TIMEOUT_SECONDS", "1")
    err = one_line_error(cli("services", "sync", code=1))
    assert err.startswith("catalog sync failed")


@pytest.fixture
def simulator_url() -> Iterator[str]:
    """The simulator on a real port, in a thread."""
    with simulator_on_port(SimConfig(key=SIM_KEY, seed=1)) as url:
        yield url


def test_services_sync_says_the_upstream_refuses_our_key(
    simulator_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMMGW_UPSTREAM_URL", simulator_url)
    monkeypatch.setenv("SMMGW_UPSTREAM_KEY", "a-wrong-upstream-key")
    err = one_line_error(cli("services", "sync", code=1))
    assert "the upstream refuses our key (check SMMGW_UPSTREAM_KEY)" in err
    assert "a-wrong-upstream-key" not in err


def test_services_sync_and_operator_choices(
    simulator_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMMGW_UPSTREAM_URL", simulator_url)
    monkeypatch.setenv("SMMGW_UPSTREAM_KEY", SIM_KEY)
    monkeypatch.setenv("SMMGW_DEFAULT_MARKUP_PERCENT", "10")
    synced = cli_json("services", "sync")
    assert synced["ok"] is True and synced["services"] > 0
    assert synced["family"] == "smartpanel"  # read from the shape of its catalog
    printed = cli("services", "sync").stdout
    assert f"{synced['services']} services synced from a smartpanel-family upstream" in printed

    listed = cli_json("services", "list")
    assert len(listed) == synced["services"]
    # Listed upstream, but SmartPanel's API has no subscriptions: the operator is told why.
    subscriptions = [s for s in listed if s["type"] == "Subscriptions"]
    assert subscriptions and all("no subscriptions" in s["unavailable"] for s in subscriptions)
    assert all(s["unavailable"] is None for s in listed if s["type"] != "Subscriptions")
    assert "takes no subscriptions" in cli("services", "list").stdout
    monkeypatch.setenv("SMMGW_UPSTREAM_FAMILY", "standard")  # as if said so
    assert all(s["unavailable"] is None for s in cli_json("services", "list"))
    monkeypatch.delenv("SMMGW_UPSTREAM_FAMILY")
    svc = next(s for s in listed if s["type"] == "Default")
    sid = str(svc["id"])
    assert svc["price"] is not None and not svc["suspended"] and not svc["hidden"]
    text = cli("services", "list").stdout
    assert "COST" in text and svc["cost"] in text

    cli("services", "hide", sid)
    assert next(s for s in cli_json("services", "list") if s["id"] == svc["id"])["hidden"]
    assert "hidden" in cli("services", "list").stdout
    cli("services", "show", sid)
    cli("services", "rename", sid, "--name", "Followers", "--category", "Best")
    renamed = next(s for s in cli_json("services", "list") if s["id"] == svc["id"])
    assert (renamed["name"], renamed["category"], renamed["hidden"]) == (
        "Followers",
        "Best",
        False,
    )
    one_line_error(cli("services", "rename", sid, code=1))

    assert "below" in one_line_error(cli("services", "price", sid, "--rate", "0.000001", code=1))
    assert "below" in one_line_error(cli("services", "price", sid, "--markup", "-10", code=1))
    cli("services", "price", sid, "--rate", "0.000001", "--allow-below-cost")
    priced = next(s for s in cli_json("services", "list") if s["id"] == svc["id"])
    assert priced["price"] == "0.000001"
    cli("services", "price", sid, "--clear")
    assert "no such price rule" in one_line_error(cli("services", "price", sid, "--clear", code=1))

    create("acme")
    cli("services", "price", sid, "--markup", "50", "--customer", "acme")
    one_line_error(cli("services", "price", sid, "--markup", "50", "--customer", "42", code=1))

    # A rate for everyone says whom it reaches, and who keeps their own price and why.
    create("vip", "--markup", "5")
    create("plain")
    told = cli("services", "price", sid, "--rate", "1.50", "--allow-below-cost").stdout
    assert "fixed rate 1.50 for every customer without a price of their own: 1 customer" in told
    assert "not for 2 customers" in told
    assert "'acme': their own price for this service comes first" in told
    assert "'vip': their own markup of 5% comes first" in told
    priced = cli_json("services", "price", sid, "--rate", "1.50", "--allow-below-cost")
    assert [c["name"] for c in priced["applies_to"]] == ["plain"]
    assert [c["name"] for c in priced["not_applied_to"]] == ["acme", "vip"]
    alone = cli("services", "price", sid, "--markup", "20", "--customer", "vip").stdout
    assert "for customer 2 'vip' only (before their own markup of 5%)" in alone


# --- simulator and demo -------------------------------------------------------------------------


def test_services_sync_and_list_report_a_fixed_price_overtaken_by_a_rise(
    simulator_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMMGW_UPSTREAM_URL", simulator_url)
    monkeypatch.setenv("SMMGW_UPSTREAM_KEY", SIM_KEY)
    cli("services", "sync")
    customer = create("acme")["id"]
    cli("services", "price", "5", "--rate", "2", "--customer", str(customer))
    rise = httpx.post(
        f"{simulator_url.rsplit('/api', 1)[0]}/_sim/catalog", json={"5": {"rate": "2.5"}}
    )
    assert rise.status_code == 200, rise.text
    printed = cli("services", "sync").stdout
    assert f"suspended: service 5 for customer {customer}: fixed price 2.00" in printed
    listed = {s["id"]: s for s in cli_json("services", "list")}
    assert listed[5]["suspended_for_customers"] == [customer]
    row = next(
        line for line in cli("services", "list").stdout.splitlines() if line.split()[:1] == ["5"]
    )
    assert f"price below cost for customer {customer}" in row


@pytest.mark.parametrize(
    ("fault", "needle"),
    [("bogus=0.5", "KIND"), ("html=2", "RATE"), ("html=x", "RATE"), ("html", "KIND")],
)
def test_simulator_refuses_bad_faults(fault: str, needle: str) -> None:
    err = one_line_error(cli("simulator", "--fault", fault, code=1))
    assert needle in err


def test_simulator_refuses_bad_balance() -> None:
    assert "6 decimals" in one_line_error(cli("simulator", "--balance", "1.0000001", code=1))


async def test_demo_serves_the_demo_customer(tmp_path: Path) -> None:
    port, sim_port = free_port(), free_port()
    (tmp_path / DEMO_DB).write_text("an old demo")
    async with demo_running(port, sim_port, tmp_path) as info:
        assert info.url == f"http://127.0.0.1:{port}/api/v2"
        assert info.balance == "100.00" and info.services > 0
        assert f"-d key={info.key} -d action=balance {info.url}" in info.curl["balance"]
        async with httpx.AsyncClient() as client:
            balance = await client.post(info.url, data={"key": info.key, "action": "balance"})
            assert balance.json()["balance"] == "100.00"
            services = await client.post(info.url, data={"key": info.key, "action": "services"})
            assert len(services.json()) == info.services
        # The dashboard is on, for the token the demo printed (a new one per demo).
        assert info.dashboard_url == f"http://127.0.0.1:{port}/dashboard"
        base = info.dashboard_url.removesuffix("/dashboard")
        async with httpx.AsyncClient(base_url=base) as browser:
            await sign_in(browser, info.admin_token)
            customers = await browser.get("/dashboard/customers")
            assert customers.status_code == 200 and info.customer in customers.text
        async with httpx.AsyncClient(base_url=base) as stranger:
            form = await stranger.get("/dashboard/login")
            refused = await stranger.post(
                "/dashboard/login",
                data={"csrf": csrf_of(form.text), "token": "x" * 43, "next": "/dashboard"},
            )
            assert refused.headers.get("location") != "/dashboard"
            assert (await stranger.get("/dashboard/customers")).status_code != 200
    async with httpx.AsyncClient() as client:  # both servers stopped
        for url in (info.url, info.simulator_url):
            with pytest.raises(httpx.ConnectError):
                await client.post(url, data={"key": info.key, "action": "balance"})


def test_demo_refuses_a_busy_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        err = one_line_error(
            cli("demo", "--port", str(port), "--sim-port", str(free_port()), code=1)
        )
    assert f"127.0.0.1:{port}" in err


def cli_process(cwd: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """The command line as its own process, as an operator starts it."""
    return subprocess.Popen(
        [sys.executable, "-c", "from app.cli import main; main()", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_demo_command_stops_on_sigterm(tmp_path: Path) -> None:
    port, sim_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMMGW_")}
    proc = cli_process(
        tmp_path, env, "demo", "--json", "--port", str(port), "--sim-port", str(sim_port)
    )
    try:
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:  # the JSON object ends with a line "}"
            lines.append(line)
            if line.rstrip() == "}":
                break
        info = json.loads("".join(lines))
        reply = httpx.post(info["url"], data={"key": info["key"], "action": "balance"})
        assert reply.json()["balance"] == "100.00"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (tmp_path / DEMO_DB).exists()


@pytest.mark.parametrize(
    "args",
    [
        ("orders", "show", "٥"),
        ("orders", "show", "99999999999"),
        ("orders", "resolve", "²", "--not-placed"),
        ("services", "hide", "99999999999999999999"),
        ("services", "price", "0", "--rate", "1"),
        ("orders", "list", "--limit", "99999999999999999999"),
        ("ledger", "history", "1", "--limit", "10001"),
    ],
)
def test_ids_are_ascii_digits_within_the_columns(args: tuple[str, ...]) -> None:
    """`orders resolve ٥` once resolved order 5; a huge id overflowed PostgreSQL's column."""
    err = cli(*args, code=2).stderr
    assert ("is not an id" in err or "10000" in err) and "Traceback" not in err


def test_a_key_prefix_of_any_shape_is_one_line() -> None:
    create("acme")
    for prefix in ("\udcff", "x" * 300, "ab cd"):
        assert "no live key" in one_line_error(cli("keys", "revoke", prefix, code=1))


def test_serve_refuses_a_short_admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """At start-up, in one line naming the variable, never echoing the token."""
    monkeypatch.setenv("SMMGW_ADMIN_TOKEN", "hunter2")
    for args in (("serve",), ("worker",), ("customers", "list")):
        err = one_line_error(cli(*args, code=2))
        assert "SMMGW_ADMIN_TOKEN" in err and "32" in err and "hunter2" not in err


# --- serve: its port and its HTTP limits --------------------------------------------------------


@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_serve_refuses_a_port_out_of_range_in_one_line(port: str) -> None:
    err = one_line_error(cli("serve", "--port", port, code=2))
    assert "--port" in err and port in err


def test_serve_refuses_a_busy_port_in_one_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        err = one_line_error(cli("serve", "--port", str(port), code=1))
    assert err.startswith(f"cannot listen on 127.0.0.1:{port}")


def test_serve_applies_its_http_limits(db_file: Path, tmp_path: Path) -> None:
    """SMMGW_HTTP_*: an oversized request head is refused (h11), the API still answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMMGW_")} | {
        "SMMGW_DATABASE_URL": f"sqlite:///{db_file}",
        "SMMGW_HTTP_PARSER": "h11",
        "SMMGW_HTTP_MAX_HEADER_BYTES": "2048",
        "SMMGW_UPSTREAM_URL": f"http://127.0.0.1:{free_port()}/api/v1",
        "SMMGW_LOG_LEVEL": "WARNING",
    }
    proc = cli_process(tmp_path, env, "serve", "--port", str(port))
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                health = httpx.get(f"{url}/healthz")
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.1)
        assert health.status_code == 200
        reply = httpx.post(f"{url}/api/v2", data={"key": "x", "action": "balance"})
        assert reply.json() == {"error": "Invalid API key"}
        try:  # refused while it is still being sent: a 431, or the connection cut under it
            big = httpx.get(f"{url}/healthz", headers={"X-Big": "a" * 200_000})
            assert big.status_code == 431, (big.status_code, big.text)
        except httpx.TransportError:
            pass
        assert httpx.get(f"{url}/healthz").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def test_providers_add_list_show_set_and_the_low_balance_warning(
    monkeypatch: pytest.MonkeyPatch, db_file: Path
) -> None:
    """Issue 13: a provider's key needs SMMGW_SECRET_KEY, is never shown after it is set (a
    fingerprint names it), and a balance heard below the threshold is a warning line on
    every command."""
    new = ("providers", "add", "b", "--url", "http://b.test/api/v2", "--key", "b-key-123")
    added = cli(*new, code=1)
    assert "SMMGW_SECRET_KEY" in one_line_error(added)
    monkeypatch.setenv("SMMGW_SECRET_KEY", "x" * 40)
    shown = cli_json(*new, "--family", "standard", "--low-balance", "5")
    assert (shown["name"], shown["family"], shown["low_balance_threshold"]) == (
        "b",
        "standard",
        "5.00",
    )
    listed = cli_json("providers", "list")
    assert [p["name"] for p in listed] == ["default", "b"]
    assert listed[0]["url"] is None and listed[0]["key"] == "from SMMGW_UPSTREAM_KEY"
    for args in (("providers", "list"), ("providers", "show", "b"), ("providers", "show", "2")):
        assert "b-key-123" not in cli(*args).output
    assert cli_json("providers", "set", "b", "--timeout", "7")["read_timeout_seconds"] == 7.0
    assert cli_json("providers", "disable", "b")["enabled"] is False
    assert cli_json("providers", "enable", "2")["enabled"] is True
    assert "WARNING: low balance" not in cli("customers", "list").stderr

    async def heard_balance() -> None:
        db = Database(f"sqlite:///{db_file}")
        await providers.record_balance(db, 2, parse_micros("4.5"), "USD")
        await db.dispose()

    asyncio.run(heard_balance())
    warned = cli("customers", "list").stderr
    assert "WARNING: low balance at provider b 4.50 USD < 5.00" in warned
    assert cli_json("providers", "show", "b")["low_balance"] is True
