"""What a newcomer meets in the first hour: `--version`, HEAD probes, the demo showing every
action. The commands README.md and the demo print are run as shown in tests/test_readme.py."""

import asyncio
import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from conftest import SIM_KEY, gateway_settings
from helpers import (
    MICROS,
    add,
    expected_charge,
    micros,
    new_customer,
    services_by_id,
    sim_orders,
    simulator_on_port,
)
from typer.testing import CliRunner

from app import ledger
from app.admin import ops
from app.catalog import sync_catalog
from app.cli import app
from app.db import Database
from app.main import create_app
from app.settings import Settings
from app.simulator import SimConfig
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


# --- progress on a terminal, nothing extra elsewhere ----------------------------------------------


def _run_cli(args: list[str], env: dict[str, str], *, terminal: bool) -> tuple[int, str]:
    """The installed `smm-gateway` in a subprocess; with `terminal`, on a pseudo-terminal (as a
    person at a shell runs it), its stdout and stderr read as the terminal shows them."""
    command = [str(Path(sys.executable).parent / "smm-gateway"), *args]
    if not terminal:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        return done.returncode, done.stdout + done.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(command, env=env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed: the command ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.wait(60), b"".join(chunks).decode(errors="replace")


@pytest.fixture
def simulator_url() -> Iterator[str]:
    with simulator_on_port(SimConfig(key=SIM_KEY, seed=1)) as url:
        yield url


async def test_sync_and_services_sync_show_progress_only_on_a_terminal(
    db: Database, database_url: str, simulator_url: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMMGW_")} | {
        "SMMGW_DATABASE_URL": database_url,
        "SMMGW_UPSTREAM_URL": simulator_url,
        "SMMGW_UPSTREAM_KEY": SIM_KEY,
    }
    code, shown = await asyncio.to_thread(_run_cli, ["services", "sync"], env, terminal=True)
    assert code == 0, shown
    assert "fetching the catalog from the upstream" in shown
    assert "services synced" in shown

    gateway = create_app(
        gateway_settings(database_url, upstream_url=simulator_url, upstream_key=SIM_KEY),
        background=False,
    )
    async with (
        gateway.router.lifespan_context(gateway),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gateway), base_url="http://gateway.test"
        ) as client,
    ):
        alice = await new_customer(db, "Alice", funds=micros("50"))
        for _ in range(3):
            placed = await add(
                client, alice.key, {"service": 10, "link": "https://x/a", "quantity": 100}
            )
            assert "order" in placed, placed

    code, shown = await asyncio.to_thread(_run_cli, ["sync", "--once"], env, terminal=True)
    assert code == 0, shown
    assert "polled 3 orders in 1 upstream calls" in shown  # the live line, then the result

    for args, terminal in ((["sync", "--once"], False), (["sync", "--once", "--json"], True)):
        code, shown = await asyncio.to_thread(_run_cli, args, env, terminal=terminal)
        assert code == 0, shown
        assert "asking the upstream" not in shown and "\x1b[" not in shown, (args, shown)
    code, shown = await asyncio.to_thread(
        _run_cli, ["services", "sync", "--json"], env, terminal=True
    )
    assert code == 0 and "fetching" not in shown and "\x1b[" not in shown, shown
    json.loads(shown)
    assert await ledger.verify(db) == []


# --- docs/: the project's own architecture and contract documents ---------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_the_contract_document_names_every_action_and_error() -> None:
    from app import contract
    from app.orders.aftercare import NOT_CANCELABLE
    from app.panel.actions import ACTIONS

    text = (DOCS / "contract.md").read_text()
    for action in ACTIONS:
        assert f"**`{action}`**" in text, action
    errors = [v for k, v in vars(contract).items() if k.isupper() and isinstance(v, str)]
    errors = [e for e in errors if " " in e and e[0].isupper()] + [NOT_CANCELABLE]
    for message in errors:
        assert message in text, message
    for status in contract.ORDER_STATUSES:
        assert f"`{status}`" in text, status


def test_the_architecture_document_names_every_module() -> None:
    text = (DOCS / "architecture.md").read_text()
    app_dir = Path(__file__).resolve().parents[1] / "app"
    for path in sorted(app_dir.rglob("*.py")):
        if path.name == "__init__.py" or path.parent.name == "simulator":
            continue
        rel = path.relative_to(app_dir)
        named = f"`app/{rel}`" in text or (
            len(rel.parts) == 2 and f"`app/{rel.parts[0]}/`" in text and rel.stem in text
        )
        assert named, rel


def test_the_demo_prints_the_cli_as_a_shell_here_must_be_told_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.demo import cli_command

    venv = Path(sys.prefix)
    monkeypatch.chdir(venv.parent)  # the repository's root, for `.venv`
    assert cli_command() == f"{venv.name}/bin/smm-gateway"
    done = subprocess.run(["bash", "-c", f"{cli_command()} --version"], capture_output=True)
    assert done.returncode == 0 and done.stdout.startswith(b"smm-gateway ")
