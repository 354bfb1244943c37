"""A crash between the phases of placing an order (issue 3), with REAL processes.

The simulator and the gateway run as their own processes (`smm-gateway simulator`, `smm-gateway
serve`) on free ports. An order whose upstream call never answers (`sim:timeout`) is caught in
`sending`, the gateway is SIGKILLed right then, and restarted. Proves: once the grace period
has passed nothing is left in `sending`; the order is `unknown` with its funds held (an operator
decides); the upstream holds it exactly once (no retry after the restart); the ledger is clean.
Runs on SQLite and PostgreSQL.
"""

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from helpers import (
    api,
    assert_ledger_clean,
    balance_of,
    entries_of,
    expected_charge,
    micros,
    new_customer,
    services_by_id,
    sim_calls,
    sim_orders_with_link,
)

from app.db import Database
from app.main import sending_grace_seconds
from app.models import as_utc
from app.orders.queries import list_orders
from app.settings import load_settings
from app.upstream import UpstreamClient

SMM_GATEWAY = str(Path(sys.executable).with_name("smm-gateway"))
SIM_KEY = "crash-test-sim-key"
FOLLOWERS = 5
# Short, so the test stays fast; long enough to catch the order in `sending` under load.
UPSTREAM = {"UPSTREAM_TIMEOUT_SECONDS": "1", "UPSTREAM_CONNECT_TIMEOUT_SECONDS": "0.25"}
SYNC_INTERVAL = "0.3"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """One child process we started, and only that one, killed by its own pid."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str], cwd: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd
            )

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


async def wait_until(
    check: Callable[[], Awaitable[bool]], seconds: float, what: str, process: Process | None = None
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if await check():
                return
        if process is not None and process.popen.poll() is not None:
            pytest.fail(f"{what}: the process exited\n{process.output()}")
        await asyncio.sleep(0.05)
    pytest.fail(f"{what}: not within {seconds} s" + (f"\n{process.output()}" if process else ""))


def child_env() -> dict[str, str]:
    """This environment without any SMMGW_ setting of ours leaking into the children."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMMGW_")}
    return env | {"PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def sim_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The simulator on a free port, shared by both databases' runs; yields its base URL."""
    workdir = tmp_path_factory.mktemp("simulator")
    port = free_port()
    process = Process(
        [SMM_GATEWAY, "simulator", "--port", str(port), "--key", SIM_KEY, "--tick", "0.2"],
        workdir / "simulator.log",
        child_env(),
        workdir,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/_sim/stats", timeout=2).status_code == 200:
                    break
            if process.popen.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the simulator did not start\n{process.output()}")
            time.sleep(0.05)
        yield url
    finally:
        process.stop()


@pytest.fixture
def gateway_env(database_url: str, sim_process: str) -> dict[str, str]:
    values = {
        "DATABASE_URL": database_url,
        "UPSTREAM_URL": f"{sim_process}/api/v1",
        "UPSTREAM_KEY": SIM_KEY,
        "SYNC_INTERVAL_SECONDS": SYNC_INTERVAL,
        "RATE_LIMIT_PER_SECOND": "0",  # this test polls; tests/test_limits.py tests limits
        **UPSTREAM,
    }
    return child_env() | {f"SMMGW_{k}": v for k, v in values.items()}


@pytest.fixture
def gateways() -> Iterator[list[Process]]:
    """Every gateway process a test starts; all stopped at the end."""
    started: list[Process] = []
    yield started
    for process in started:
        process.stop()


async def start_gateway(
    gateways: list[Process], env: dict[str, str], tmp_path: Path, key: str
) -> tuple[Process, str]:
    """`smm-gateway serve` on a free port, up and with its catalog synced."""
    port = free_port()
    process = Process(
        [SMM_GATEWAY, "serve", "--port", str(port)], tmp_path / f"gateway-{port}.log", env, tmp_path
    )
    gateways.append(process)
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, timeout=2) as client:

        async def ready() -> bool:
            if (await client.get("/healthz")).status_code != 200:
                return False
            listing = (await client.post("/api/v2", data={"key": key, "action": "services"})).json()
            return isinstance(listing, list) and len(listing) > 0

        await wait_until(ready, 20, "gateway start", process)
    return process, url


async def test_a_gateway_killed_while_sending_leaves_an_unknown_order_with_funds_held(
    db: Database,
    tmp_path: Path,
    sim_process: str,
    gateway_env: dict[str, str],
    gateways: list[Process],
) -> None:
    funds = micros("25")
    alice = await new_customer(db, "alice", funds=funds)
    link = f"https://example.com/crash/{uuid.uuid4().hex}/sim:timeout"
    async with httpx.AsyncClient(base_url=sim_process, timeout=5) as sim:
        adds_before = await sim_calls(sim, "add")
        first, url = await start_gateway(gateways, gateway_env, tmp_path, alice.key)
        async with httpx.AsyncClient(base_url=url, timeout=30) as customer:
            followers = (await services_by_id(customer, alice.key))[FOLLOWERS]
            params = {"service": FOLLOWERS, "link": link, "quantity": int(followers["min"])}
            charge = expected_charge(followers, params["quantity"])
            request = asyncio.create_task(api(customer, alice.key, "add", **params))

            async def caught_in_sending() -> bool:
                orders = await list_orders(db)
                arrived = sim_orders_with_link((await sim.get("/_sim/orders")).json(), link)
                return [o.state for o in orders] == ["sending"] and len(arrived) == 1

            await wait_until(caught_in_sending, 10, "order in sending, accepted upstream", first)
            first.kill()
            [order] = await list_orders(db)
            assert order.state == "sending"  # killed between phases 2 and 3
            assert await balance_of(db, alice) == funds - charge
            with pytest.raises(httpx.TransportError):  # the customer never got an answer
                await request

        second, url = await start_gateway(gateways, gateway_env, tmp_path, alice.key)
        grace = sending_grace_seconds(load_settings(**{k.lower(): v for k, v in UPSTREAM.items()}))
        born = as_utc(order.created_at).timestamp()
        if time.time() - born < grace - 1:
            # Too young to give up on: the new gateway must not decide for it yet.
            assert [o.state for o in await list_orders(db)] == ["sending"]

        async def recovered() -> bool:
            return [o.state for o in await list_orders(db)] != ["sending"]

        await wait_until(recovered, grace + 10, "recovery of the order left in sending", second)
        assert time.time() - born >= grace  # not before the grace period
        [order] = await list_orders(db)
        assert (order.state, order.charge, order.refunded) == ("unknown", charge, 0)
        assert await list_orders(db, state="sending") == []
        assert [o.id for o in await list_orders(db, state="unknown")] == [order.id]
        assert await balance_of(db, alice) == funds - charge  # held until an operator decides
        assert sorted(e.kind for e in await entries_of(db, alice)) == ["charge", "topup"]

        # The restarted gateway answers for it from its own records: our id, Pending.
        async with httpx.AsyncClient(base_url=url, timeout=5) as customer:
            status = await api(customer, alice.key, "status", order=order.id)
            assert (status["order"], status["status"]) == (str(order.id), "Pending")
        # The upstream holds it exactly once: the restart did not send it again.
        assert len(sim_orders_with_link((await sim.get("/_sim/orders")).json(), link)) == 1
        assert await sim_calls(sim, "add") == adds_before + 1
    await assert_ledger_clean(db)


async def test_the_sending_grace_outlasts_any_live_upstream_call() -> None:
    """Recovery must never take an order whose `add` is still running for an interrupted one:
    the grace period is longer than the hard deadline of one upstream call."""
    for connect, read in ((0.5, 1.5), (1, 30), (5, 30), (10, 30), (30, 5)):
        settings = load_settings(
            upstream_connect_timeout_seconds=connect, upstream_timeout_seconds=read
        )
        async with UpstreamClient.from_settings(settings) as client:
            assert sending_grace_seconds(settings) > client.max_call_seconds, (connect, read)
