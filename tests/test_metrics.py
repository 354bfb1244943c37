"""/metrics: counters move with what happens, database gauges say what the database says, and
several worker processes add up (prometheus-client's multiprocess mode).

Counters are process-wide, so the scenario compares a scrape after it with one before it; the
database gauges start from an empty database in every test. They come from a snapshot the
gateway refreshes in the background (here every REFRESH seconds): `fresh_scrape` waits for a
snapshot read after the change it follows. Runs on SQLite and PostgreSQL.
"""

import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import SIM_KEY, gateway_settings
from fastapi import FastAPI
from helpers import add, api, new_customer, services_by_id, set_faults, set_sim_balance, sim_calls
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, event, update

from app import gauges, metrics
from app.catalog import LAST_ERROR, sync_catalog
from app.db import Database
from app.models import Order, Setting, utcnow
from app.settings import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent
LINK = "https://instagram.com/p/metrics"
REFRESH = 0.3  # SMMGW_METRICS_REFRESH_SECONDS in these tests
FRESH_WITHIN = REFRESH + 5.0  # one interval, plus one refresh on a busy machine


@pytest.fixture
def settings(database_url: str) -> Settings:
    from conftest import gateway_settings

    return gateway_settings(database_url, metrics_refresh_seconds=REFRESH)


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: httpx.AsyncClient) -> dict:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


async def fresh_scrape(app: FastAPI, client: httpx.AsyncClient) -> dict:
    """A scrape whose database gauges were read after this call began."""
    snapshot = app.state.gateway.gauges
    since = time.monotonic()
    await client.get("/metrics")  # the first scrape starts the refresh
    deadline = since + FRESH_WITHIN
    while snapshot.state is None or snapshot.state.read_at < since:
        assert time.monotonic() < deadline, "no refresh within the interval"
        await asyncio.sleep(0.02)
    return await scrape(client)


def default_service(services: dict[int, dict[str, Any]]) -> dict[str, Any]:
    return next(s for s in services.values() if s["type"] == "Default" and not s["dripfeed"])


async def test_a_scenario_moves_the_counters_and_the_database_gauges(
    gateway_app: FastAPI, client: httpx.AsyncClient, sim_client: httpx.AsyncClient, db: Database
) -> None:
    gw = gateway_app.state.gateway
    assert (await sync_catalog(gw.db, gw.upstream)).ok
    await set_sim_balance(sim_client, "1234.5678")
    before = await scrape(client)  # asks the upstream balance: the first scrape of this minute
    alice = await new_customer(db, "alice", funds=10**10)
    service = default_service(await services_by_id(client, alice.key))
    order = {"service": service["service"], "quantity": service["min"]}

    placed = await add(client, alice.key, order | {"link": f"{LINK}/1?sim:complete"})
    refused = await add(client, alice.key, order | {"link": f"{LINK}/2?sim:reject"})
    await set_faults(sim_client, {"error5xx": 1.0})
    pending = await add(client, alice.key, order | {"link": f"{LINK}/3"})
    await set_faults(sim_client, {})
    assert "order" in placed and "order" in pending
    assert refused == {"error": "Incorrect service ID"}
    assert await api(client, "not-a-key", "balance") == {"error": "Invalid API key"}
    assert await api(client, alice.key, "nonsense") == {"error": "Incorrect request"}
    assert await api(client, alice.key, "status", order="999999") == {"error": "Incorrect order ID"}

    after = await fresh_scrape(gateway_app, client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # requests by action and outcome
    assert moved("smmgw_requests_total", action="add", outcome="ok") == 2  # placed + pending
    assert moved("smmgw_requests_total", action="add", outcome="incorrect_service") == 1
    assert moved("smmgw_requests_total", action="balance", outcome="invalid_key") == 1
    assert moved("smmgw_requests_total", action="unknown", outcome="incorrect_request") == 1
    assert moved("smmgw_requests_total", action="status", outcome="incorrect_order") == 1
    assert moved("smmgw_requests_total", action="services", outcome="ok") == 1
    assert moved("smmgw_request_duration_seconds_count", action="add") == 3
    # upstream calls by action and outcome class
    assert moved("smmgw_upstream_calls_total", action="add", outcome="answer") == 1
    assert moved("smmgw_upstream_calls_total", action="add", outcome="refused:error_reply") == 1
    assert moved("smmgw_upstream_calls_total", action="add", outcome="ambiguous:http_5xx") == 1
    assert moved("smmgw_upstream_call_duration_seconds_count", action="add", result="answer") == 1
    assert value(before, "smmgw_upstream_calls_total", action="balance", outcome="answer") >= 1
    # orders by state, read from the database
    assert value(after, "smmgw_database_up") == 1
    assert value(after, "smmgw_orders", state="placed") == 1
    assert value(after, "smmgw_orders", state="rejected") == 1
    assert value(after, "smmgw_orders", state="unknown") == 1
    assert value(after, "smmgw_orders", state="sending") == 0
    assert value(after, "smmgw_orders_unknown") == 1
    assert 0 <= value(after, "smmgw_orders_unknown_oldest_age_seconds") < 60
    assert value(after, "smmgw_orders_active") == 1
    assert 0 <= value(after, "smmgw_sync_lag_seconds") < 60
    assert 0 <= value(after, "smmgw_catalog_sync_age_seconds") < 60
    assert value(after, "smmgw_catalog_sync_failing") == 0
    # the upstream balance, as read by the first scrape (orders have spent some since)
    assert value(after, "smmgw_upstream_balance", currency="USD") == pytest.approx(1234.5678)
    assert 0 <= value(after, "smmgw_upstream_balance_age_seconds") < 60


async def test_the_upstream_balance_is_asked_at_most_once_a_minute(
    gateway_app: FastAPI, client: httpx.AsyncClient, sim_client: httpx.AsyncClient, db: Database
) -> None:
    await set_sim_balance(sim_client, "50")
    first = await scrape(client)
    assert value(first, "smmgw_upstream_balance", currency="USD") == 50
    assert await sim_calls(sim_client, "balance") == 1

    await set_sim_balance(sim_client, "40")
    for _ in range(3):  # within the minute: the stored value, no upstream call
        samples = await fresh_scrape(gateway_app, client)
        assert value(samples, "smmgw_upstream_balance", currency="USD") == 50
    # A second instance on the same database shares the claim and the value.
    other = Database(db.url)
    try:
        state = await gauges.read_state(other)
        assert gauges._balance(state.kv[gauges.BALANCE_KEY])[0] == 50_000_000
        gateway = gateway_app.state.gateway
        assert not await gauges.refresh_upstream_balance(other, gateway.upstream, state)
    finally:
        await other.dispose()
    assert await sim_calls(sim_client, "balance") == 1

    async with db.write() as conn:  # a minute later
        await conn.execute(
            update(Setting)
            .where(Setting.key == gauges.BALANCE_CHECKED_KEY)
            .values(value=(utcnow() - timedelta(seconds=61)).isoformat())
        )
    samples = await fresh_scrape(gateway_app, client)
    assert value(samples, "smmgw_upstream_balance", currency="USD") == 40
    assert await sim_calls(sim_client, "balance") == 2


async def test_an_unreachable_upstream_leaves_the_balance_absent_and_the_scrape_whole(
    gateway_app: FastAPI, client: httpx.AsyncClient, sim_client: httpx.AsyncClient
) -> None:
    await set_faults(sim_client, {"html": 1.0})
    samples = await scrape(client)
    await set_faults(sim_client, {})
    assert ("smmgw_upstream_balance", frozenset({("currency", "USD")})) not in samples
    assert value(samples, "smmgw_database_up") == 1
    assert value(samples, "smmgw_catalog_sync_age_seconds") == float("inf")  # never synced
    assert value(samples, "smmgw_orders", state="unknown") == 0


async def test_sync_lag_is_the_age_of_the_oldest_refresh_among_active_orders(
    gateway_app: FastAPI, client: httpx.AsyncClient, db: Database
) -> None:
    gw = gateway_app.state.gateway
    assert (await sync_catalog(gw.db, gw.upstream)).ok
    alice = await new_customer(db, "alice", funds=10**10)
    service = default_service(await services_by_id(client, alice.key))
    order = {"service": service["service"], "quantity": service["min"]}
    ids = [
        (await add(client, alice.key, order | {"link": f"{LINK}/{i}?sim:complete"}))["order"]
        for i in range(3)
    ]
    now = utcnow()
    async with db.write() as conn:
        for oid, age in zip(ids, (300, 120, None), strict=True):
            refreshed = None if age is None else now - timedelta(seconds=age)
            await conn.execute(update(Order).where(Order.id == oid).values(refreshed_at=refreshed))
        # a final order, however old its refresh, is not waiting for the sync
        await conn.execute(
            update(Order)
            .where(Order.id == ids[2])
            .values(status="Completed", refreshed_at=now - timedelta(seconds=900))
        )
    samples = await fresh_scrape(gateway_app, client)
    assert value(samples, "smmgw_orders_active") == 2
    assert 300 <= value(samples, "smmgw_sync_lag_seconds") < 360


# --- the snapshot: read off the request path --------------------------------------------------

GAUGE_QUERY = "min(coalesce(refreshed_at, created_at))"  # once in every gauge read


async def test_scrapes_do_not_read_the_database_each_time(
    gateway_app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Many scrapes, sequential and at once: the gauge queries run once per refresh interval,
    not once per scrape."""
    reads: list[float] = []

    def count(_conn, _cursor, statement: str, *_args) -> None:  # type: ignore[no-untyped-def]
        if GAUGE_QUERY in statement:
            reads.append(time.monotonic())

    event.listen(Engine, "before_cursor_execute", count)
    try:
        started = time.monotonic()
        for _ in range(20):
            await scrape(client)
        await asyncio.gather(*(scrape(client) for _ in range(20)))
        elapsed = time.monotonic() - started
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    assert 1 <= len(reads) <= elapsed / REFRESH + 2, (len(reads), elapsed)


async def test_the_gauges_are_fresh_within_the_interval_without_anyone_scraping(
    gateway_app: FastAPI, client: httpx.AsyncClient, db: Database
) -> None:
    snapshot = gateway_app.state.gateway.gauges
    assert value(await scrape(client), "smmgw_catalog_sync_failing") == 0
    changed = time.monotonic()
    async with db.write() as conn:  # what a failed catalog fetch writes
        await conn.execute(Setting.__table__.insert().values(key=LAST_ERROR, value="http_5xx"))
    while snapshot.state.read_at < changed:  # the background refresh, no scrape asking
        assert time.monotonic() - changed < FRESH_WITHIN
        await asyncio.sleep(0.02)
    samples = await scrape(client)
    assert value(samples, "smmgw_catalog_sync_failing") == 1
    assert 0 <= value(samples, "smmgw_metrics_snapshot_age_seconds") < FRESH_WITHIN


async def test_a_slow_refresh_holds_up_neither_scrapes_nor_customers(
    gateway_app: FastAPI, client: httpx.AsyncClient, sim_client: httpx.AsyncClient, db: Database
) -> None:
    """The refresh waits on a slow upstream balance (the simulator's latency knob); scrapes
    and customer requests made meanwhile answer in a small fraction of that wait."""
    slow_ms = 4000  # under the 5 s the refresh gives the balance
    alice = await new_customer(db, "alice", funds=10**9)
    snapshot = gateway_app.state.gateway.gauges
    await scrape(client)  # the first refresh has read the balance
    response = await sim_client.post("/_sim/overrides", json={"latency_ms": {"balance": slow_ms}})
    assert response.status_code == 200
    async with db.write() as conn:  # the balance is due again
        await conn.execute(
            update(Setting)
            .where(Setting.key == gauges.BALANCE_CHECKED_KEY)
            .values(value=(utcnow() - timedelta(seconds=61)).isoformat())
        )
    calls = await sim_calls(sim_client, "balance")
    for _ in range(int(FRESH_WITHIN / 0.02)):  # until the slow call is in flight
        if await sim_calls(sim_client, "balance") > calls:
            break
        await asyncio.sleep(0.02)
    in_flight = time.monotonic()
    refreshes = snapshot.refreshes
    took: dict[str, list[float]] = {"scrape": [], "balance": []}
    for _ in range(10):
        started = time.monotonic()
        await scrape(client)
        took["scrape"].append(time.monotonic() - started)
        started = time.monotonic()
        assert "balance" in await api(client, alice.key, "balance")
        took["balance"].append(time.monotonic() - started)
    assert snapshot.refreshes == refreshes, "the slow refresh ended while we measured"
    assert time.monotonic() - in_flight < slow_ms / 1000
    for name, times in took.items():
        assert statistics.median(times) < slow_ms / 1000 / 20, (name, times)
    await sim_client.post("/_sim/overrides", json={"latency_ms": {"balance": 0}})


def test_the_instruments_import_nothing_of_the_application_above_them() -> None:
    code = "import sys, app.metrics; print(sorted(m for m in sys.modules if m.startswith('app.')))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True
    )
    assert out.stdout.strip() == "['app.contract', 'app.metrics']"


def test_error_strings_map_to_a_small_set_of_outcomes() -> None:
    assert metrics.error_class("Invalid API key") == "invalid_key"
    assert metrics.error_class("Quantity less than minimal 500") == "quantity_too_low"
    assert metrics.error_class("Quantity more than maximum 10000") == "quantity_too_high"
    assert metrics.error_class("Missing parameter: comments") == "missing_parameter"
    assert metrics.error_class("Too many order IDs: at most 100 per request") == "too_many_ids"
    assert metrics.error_class("Not enough funds on balance") == "not_enough_funds"
    assert metrics.error_class("anything else, however long") == "other_error"


# --- several worker processes -----------------------------------------------------------------

_WORKER = """
import sys
from app import metrics
from app.logs import RequestInfo
info = RequestInfo("r")
info.action, info.outcome = "balance", "ok"
for _ in range(int(sys.argv[1])):
    metrics.observe_request(info, 200, 0.002)
"""


def test_multiprocess_mode_adds_up_every_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = {**os.environ, metrics.MULTIPROC_ENV: str(directory), "PYTHONPATH": str(ROOT)}
    for count in (3, 5):  # two "workers", each with its own process
        subprocess.run(
            [sys.executable, "-c", _WORKER, str(count)], env=env, check=True, cwd=ROOT, timeout=120
        )
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(directory))
    samples = parse(metrics.exposition(gauges.DbCollector(gauges.DbState())).decode())
    assert value(samples, "smmgw_requests_total", action="balance", outcome="ok") == 8
    assert value(samples, "smmgw_request_duration_seconds_count", action="balance") == 8
    assert value(samples, "smmgw_database_up") == 0


def test_serve_makes_a_fresh_multiprocess_directory_only_for_several_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    with metrics.multiprocess_dir(1) as path:
        assert path is None and metrics.MULTIPROC_ENV not in os.environ
    with metrics.multiprocess_dir(3) as path:
        assert path is not None and os.environ[metrics.MULTIPROC_ENV] == path
        assert os.path.isdir(path) and not os.listdir(path)
    assert not os.path.exists(path) and metrics.MULTIPROC_ENV not in os.environ
    given = tmp_path / "operator"
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(given))
    with metrics.multiprocess_dir(3) as path:
        assert path == str(given) and given.is_dir()
    assert given.is_dir()  # the operator's own directory is left in place


def _logged_by(log_path: Path, request_id: str) -> int | None:
    for line in log_path.read_text().splitlines():
        if line.startswith("{") and f'"request_id": "{request_id}"' in line:
            return json.loads(line)["pid"]
    return None


def _live_workers(log_path: Path) -> set[int]:
    """Worker pids that finished starting and were not reported dead (uvicorn's own lines)."""
    started, died = set(), set()
    for line in log_path.read_text().splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if record["msg"] == "Application startup complete.":
            started.add(record["pid"])
        elif match := re.fullmatch(r"Child process \[(\d+)\] died", record["msg"]):
            died.add(int(match[1]))
    return started - died


async def _answered_by(log_path: Path, request_id: str) -> int:
    """The pid of the worker that logged this request (the line may take a moment)."""
    for _ in range(100):
        if (pid := _logged_by(log_path, request_id)) is not None:
            return pid
        await asyncio.sleep(0.05)
    raise AssertionError(f"no log line for {request_id}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_serve_with_two_workers_counts_every_request_whichever_worker_answers(
    tmp_path: Path,
) -> None:
    """`smm-gateway serve --workers 2`, for real: every scrape, whichever worker answers it,
    shows the requests both workers served; the temporary directory is gone afterwards."""
    port = _free_port()
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SMMGW_") and k != metrics.MULTIPROC_ENV
    }
    env |= {
        "TMPDIR": str(temp),
        "SMMGW_DATABASE_URL": f"sqlite:///{tmp_path / 'gateway.db'}",
        "SMMGW_UPSTREAM_URL": f"http://127.0.0.1:{_free_port()}/api/v1",  # nobody there
        "SMMGW_UPSTREAM_KEY": SIM_KEY,
        "SMMGW_UPSTREAM_CONNECT_TIMEOUT_SECONDS": "1",
    }
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        serve = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "smm-gateway"),
            "serve",
            "--port",
            str(port),
            "--workers",
            "2",
            env=env,
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection, any worker, each time
    try:
        async with httpx.AsyncClient(base_url=base, limits=fresh, timeout=10) as http:
            for _ in range(240):
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.25)
            else:
                pytest.fail("serve did not start:\n" + log_path.read_text()[-3000:])
            for _ in range(240):  # both workers up (a slow one is restarted by uvicorn)
                if len(_live_workers(log_path)) >= 2:
                    break
                await asyncio.sleep(0.25)
            assert len(list(temp.glob("smmgw-metrics-*"))) == 1
            requests = 40
            replies = await asyncio.gather(
                *(
                    http.post("/api/v2", data={"key": "no-such-key", "action": "balance"})
                    for _ in range(requests)
                )
            )
            assert all(r.json() == {"error": "Invalid API key"} for r in replies)
            seen: dict[int, set[float]] = {}  # worker pid -> the totals its scrapes showed
            for attempt in range(300):
                rid = f"scrape-{attempt}"
                text = (await http.get("/metrics", headers={"X-Request-ID": rid})).text
                total = value(
                    parse(text), "smmgw_requests_total", action="balance", outcome="invalid_key"
                )
                seen.setdefault(await _answered_by(log_path, rid), set()).add(total)
                if len(seen) >= 2:
                    break
            assert len(seen) >= 2, "one worker answered every scrape:\n" + log_path.read_text()
            assert all(totals == {requests} for totals in seen.values()), seen
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(serve.wait(), 30)
        except TimeoutError:
            serve.kill()
            await serve.wait()
    assert not list(temp.glob("smmgw-metrics-*"))  # removed on exit
    log_text = log_path.read_text()
    assert "no-such-key" not in log_text
    assert '"logger": "smm_gateway.access"' in log_text
    assert '"logger": "uvicorn.access"' not in log_text  # ours replaces uvicorn's


METRICS_TOKEN = "metrics-token-0123456789abcdef0123"


class TestMetricsToken:
    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        return gateway_settings(database_url, metrics_token=METRICS_TOKEN)

    async def test_metrics_asks_for_its_bearer_token(self, client: httpx.AsyncClient) -> None:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": METRICS_TOKEN}):
            refused = await client.get("/metrics", headers=headers)
            assert refused.status_code == 401 and "smmgw_" not in refused.text
            assert refused.headers["www-authenticate"] == "Bearer"
        scraped = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert scraped.status_code == 200 and "smmgw_database_up 1.0" in scraped.text


def test_a_short_metrics_token_is_refused() -> None:
    with pytest.raises(SettingsError, match="SMMGW_METRICS_TOKEN"):
        load_settings(metrics_token="short")


async def test_refill_and_cancel_count_their_items_outcomes(
    client: httpx.AsyncClient, db: Database
) -> None:
    """A list reply whose every item is an error is not an `ok` request."""
    alice = await new_customer(db, "alice")
    before = await scrape(client)
    for action, param in (("refill", "orders"), ("cancel", "orders"), ("refill_status", "refills")):
        reply = await api(client, alice.key, action, **{param: "999998,999999,abc"})
        assert isinstance(reply, list) and len(reply) == 3
    after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    for action, error in (
        ("refill", "incorrect_order"),
        ("cancel", "incorrect_order"),
        ("refill_status", "incorrect_refill"),
    ):
        assert moved("smmgw_requests_total", action=action, outcome="ok") == 0
        assert moved("smmgw_requests_total", action=action, outcome=error) == 1
        assert moved("smmgw_request_items_total", action=action, outcome=error) == 3
