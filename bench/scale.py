"""Scale benchmark: the gateway's costs against the size of its database (issue 12, item 6).

For each size of `--orders` (default 10,000, 100,000 and 1,000,000) it builds a fresh database
of its own (SQLite: a file in a temp dir; PostgreSQL: `smmgw_scale` on 127.0.0.1:5432, created
and dropped), migrates it and fills it with bench/scale_fill.py (bulk inserts: 10,000 customers,
the orders, 10 % of them active, their ledger), runs `smm-gateway ledger verify` on it, and then
measures against a gateway served on it (uvicorn in a subprocess, as bench/gateway.py does; the
simulator as its upstream, holding the active orders itself):

  a. `balance` and `status` (one id) of the customer with the most orders: CPU per request of
     the gateway process plus the PostgreSQL backends serving the database, beside the bare
     endpoint (bench/bare.py) in alternating slices, so that the machine's load can be read;
  b. `/metrics`: one scrape's time (one scraper), and the delay customers' `balance` requests
     (c=4) get while 3 scrapers scrape 5 times a second each (--scrapers, --scrape-rate),
     against the same requests before any scrape, and after;
  c. the database gauges' refresh (the read behind `/metrics`, off the request path): its time;
  d. one sync pass (in this process, app.sync.sync_pass) over every active order: upstream
     calls (/_sim/stats), wall time, and CPU per order of the pass's own process and of the
     PostgreSQL backends; the simulator's CPU apart. The simulator's tick is long, so every
     order stays live: the pass measures polling and writing a status, not settling.

Goals (issue 12, the "1,000,000 orders" row): `balance`/`status` CPU per request at the
largest size within 20 % of the 10,000-order figure; a scrape ≤ 20 ms; customers delayed by
scrapes ≤ 5 ms (p99); a pass over the active orders makes ⌈active / 100⌉ upstream calls.

The figures of one run go to bench/scale-<db>.json; bench/scale.png is drawn from every such
file present (both databases once both have run). PostgreSQL is never ANALYZEd (autovacuum is
off on this machine) unless --analyze, which measures (a) again after ANALYZE.

    .venv/bin/python bench/scale.py --db sqlite [--orders 10000,100000,1000000]
    .venv/bin/python bench/scale.py --db postgresql
    .venv/bin/python bench/scale.py --plot     # only redraw bench/scale.png
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gateway as gw
from scale_fill import ACTIVE_SHARE, Filled, fill, orderable_services, quantity_for

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
PG_DB = "smmgw_scale"
SIM_TICK = 10**6  # seconds: the active orders never move on during a run
SIZES = (10_000, 100_000, 1_000_000)
GOALS = {"cpu_growth": 1.2, "scrape_ms": 20.0, "delay_ms": 5.0}
gw.PG_DB = PG_DB  # gateway.pg_backends_cpu counts the backends of this database


# ================================ the simulator (own process) ================================


def serve_sim(spec_json: str) -> None:
    """The simulator, holding `active` orders placed through its own `add` before it serves;
    their ids are written to `ids_file` (one per active order, in the fill's order)."""
    import random

    import uvicorn

    from app.simulator.app import create_simulator_app
    from app.simulator.state import SimConfig

    spec = json.loads(spec_json)
    config = SimConfig(
        key=gw.SIM_KEY, balance_micros=gw.BIG, tick_seconds=SIM_TICK, seed=spec["seed"]
    )
    app = create_simulator_app(config)
    sim = app.state.sim
    rng = random.Random(f"{spec['seed']}:sim")
    services = orderable_services()
    ids = []
    for n in range(spec["active"]):
        service = services[rng.randrange(len(services))]
        params = {
            "service": str(service.id),
            "link": f"https://t.me/scale_active_{n}",
            "quantity": str(quantity_for(service, rng)),
        }
        ids.append(sim.add(params, "smartpanel").id)
    sim.calls.clear()
    Path(spec["ids_file"] + ".part").write_text(json.dumps(ids))
    os.replace(spec["ids_file"] + ".part", spec["ids_file"])
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=gw.HOST,
            port=spec["port"],
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
    )
    asyncio.run(server.serve())


def start_sim(active: int, seed: int, tmp: Path, servers: dict[str, gw.Server]) -> list[int]:
    port = gw.free_port()
    ids_file = tmp / "sim-ids.json"
    ids_file.unlink(missing_ok=True)
    spec = {"port": port, "active": active, "seed": seed, "ids_file": str(ids_file)}
    cmd = [sys.executable, __file__, "--serve-sim", json.dumps(spec)]
    servers["sim"] = gw.start("sim", cmd, dict(os.environ), port, tmp)
    deadline = time.monotonic() + 600
    while not ids_file.exists():
        if servers["sim"].proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the simulator failed:\n{servers['sim'].log.read_text()[-3000:]}")
        time.sleep(0.1)
    gw.wait_port(servers["sim"])
    return json.loads(ids_file.read_text())


# ======================================== a database ========================================


@contextlib.contextmanager
def database(kind: str, tmp: Path) -> Iterator[str]:
    if kind == "sqlite":
        path = tmp / "scale.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        yield f"sqlite+aiosqlite:///{path}"
        return
    asyncio.run(gw._pg_admin(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)"))
    asyncio.run(gw._pg_admin(f"CREATE DATABASE {PG_DB}"))
    try:
        yield f"postgresql+asyncpg://{gw.PG_SERVER.split('://', 1)[1]}/{PG_DB}"
    finally:
        asyncio.run(gw._pg_admin(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)"))


def ledger_verify(url: str) -> dict[str, Any]:
    """`smm-gateway ledger verify` on the filled database, as an operator would run it."""
    cli = str(Path(sys.executable).parent / "smm-gateway")
    t0 = time.perf_counter()
    done = subprocess.run(
        [cli, "ledger", "verify", "--json"],
        env=dict(os.environ, SMMGW_DATABASE_URL=url),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    seconds = time.perf_counter() - t0
    try:
        reply = json.loads(done.stdout)
    except ValueError:
        reply = {"raw": done.stdout[-500:] + done.stderr[-500:]}
    problems = reply.get("problems") if isinstance(reply, dict) else None
    return {
        "exit": done.returncode,
        "clean": done.returncode == 0,
        "problems": len(problems) if isinstance(problems, list) else None,
        "sample": (problems or [])[:3] if isinstance(problems, list) else reply,
        "seconds": seconds,
    }


# =================================== in-process figures ===================================


def _pg_cpu_since(before: dict[int, float]) -> float:
    return sum(sec - before.get(pid, 0.0) for pid, sec in gw.pg_backends_cpu().items())


async def gauge_refresh(url: str, rounds: int = 3) -> dict[str, float]:
    """The database read behind /metrics (app.gauges.read_state), as the background refresh
    does it: best wall time of `rounds`, and its CPU (this process + PostgreSQL backends)."""
    from app.db import Database
    from app.gauges import read_state

    db = Database(url)
    try:
        best = None
        for _ in range(rounds):
            pg0 = gw.pg_backends_cpu() if not db.is_sqlite else {}
            cpu0, t0 = time.process_time(), time.perf_counter()
            state = await read_state(db)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            pg = _pg_cpu_since(pg0) if not db.is_sqlite else 0.0
            if not state.up:
                raise SystemExit("the gauges could not read the database")
            if best is None or wall < best["wall_ms"] / 1000:
                best = {"wall_ms": wall * 1000, "cpu_ms": (cpu + pg) * 1000}
        assert best is not None
        return best
    finally:
        await db.dispose()


async def sync_figures(url: str, sim: gw.Server) -> dict[str, Any]:
    """One sync pass over every active order, in this process (the gateway is stopped)."""
    from app.db import Database
    from app.main import sending_grace_seconds
    from app.settings import load_settings
    from app.sync import sync_pass
    from app.upstream import UpstreamClient

    settings = load_settings(
        database_url=url,
        upstream_url=f"http://{gw.HOST}:{sim.port}/api/v1",
        upstream_key=gw.SIM_KEY,
    )
    db = Database(url)
    try:
        async with UpstreamClient.from_settings(settings) as upstream:
            calls0 = gw.get(sim.port, "/_sim/stats")["calls"]
            pg0 = gw.pg_backends_cpu() if not db.is_sqlite else {}
            sim0 = gw.cpu_seconds(sim.proc.pid)
            cpu0, t0 = time.process_time(), time.perf_counter()
            result = await sync_pass(
                db, upstream, sending_grace_seconds=sending_grace_seconds(settings)
            )
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            pg = _pg_cpu_since(pg0) if not db.is_sqlite else 0.0
            sim_cpu = gw.cpu_seconds(sim.proc.pid) - sim0
            calls1 = gw.get(sim.port, "/_sim/stats")["calls"]
    finally:
        await db.dispose()
    polled = max(result.polled, 1)
    return {
        "polled": result.polled,
        "settled": result.settled,
        "failed_batches": result.failed_batches,
        "pass_calls": result.upstream_calls,
        "upstream_calls": {k: v - calls0.get(k, 0) for k, v in calls1.items()},
        "status_calls": calls1.get("status", 0) - calls0.get("status", 0),
        "wall_s": wall,
        "wall_ms_per_order": 1000 * wall / polled,
        "process_cpu_ms_per_order": 1000 * cpu / polled,
        "postgres_cpu_ms_per_order": 1000 * pg / polled,
        "sim_cpu_ms_per_order": 1000 * sim_cpu / polled,
    }


async def plans(url: str, filled: Filled) -> dict[str, str]:
    """The plans of the reads whose cost must not grow with the table: one line each."""
    from app.db import Database
    from app.gauges import _FINAL_SQL, _unsettled_placed

    customer, order = filled.heavy_customer, filled.heavy_active_order
    kind = "sqlite" if url.startswith("sqlite") else "postgresql"
    dialect = argparse.Namespace(dialect=argparse.Namespace(name=kind))
    queries = {
        "status": (
            "SELECT id, status FROM orders WHERE customer_id = {c} AND"
            " (state IN ('sending', 'placed', 'unknown') OR announced) AND id = {o}"
        ),
        "sync claim": (  # the second of app.sync's two reads (the refreshed orders)
            "SELECT id FROM orders WHERE settled_at IS NULL AND state = 'placed' AND"
            " provider_id = 1 AND status NOT IN ('Completed', 'Partial', 'Canceled', 'Expired')"
            " AND upstream_order_id IS NOT NULL AND refreshed_at < CURRENT_TIMESTAMP"
            " ORDER BY refreshed_at, id LIMIT 100"
        ),
        "gauges: active orders": (  # as app.gauges writes it for this database
            "SELECT count(*), min(coalesce(refreshed_at, created_at))"
            f" {_unsettled_placed(dialect)} AND status NOT IN ({_FINAL_SQL})"
        ),
        "gauges: all orders": "SELECT count(*) FROM orders",  # then the states but `placed`:
        "gauges: other states": (
            "SELECT state, count(*) FROM orders WHERE state < 'placed' GROUP BY state"
        ),
    }
    db = Database(url)
    found: dict[str, str] = {}
    try:
        async with db.read() as conn:
            for name, sql in queries.items():
                sql = sql.format(c=customer, o=order)
                if db.is_sqlite:
                    rows = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")
                    found[name] = "; ".join(str(r[-1]) for r in rows)
                else:
                    rows = await conn.exec_driver_sql(f"EXPLAIN {sql}")
                    lines = [r[0].strip() for r in rows]
                    found[name] = "; ".join(
                        line for line in lines if "Scan" in line or "Sort" in line
                    )
    finally:
        await db.dispose()
    return found


async def analyze(url: str) -> None:
    from app.db import Database

    db = Database(url)
    try:
        async with db.write() as conn:
            await conn.exec_driver_sql("ANALYZE")
    finally:
        await db.dispose()


# ================================== through the gateway ==================================


def start_gateway(args: argparse.Namespace, url: str, tmp: Path, servers: dict) -> None:
    port = gw.free_port()
    env = dict(os.environ) | {
        "SMMGW_DATABASE_URL": url,
        "SMMGW_UPSTREAM_URL": f"http://{gw.HOST}:{servers['sim'].port}/api/v1",
        "SMMGW_UPSTREAM_KEY": gw.SIM_KEY,
        "SMMGW_LOG_LEVEL": "WARNING",
        "SMMGW_SYNC_IN_PROCESS": "false",  # the sync pass is measured on its own (d)
        "SMMGW_SERVICES_TTL_SECONDS": "86400",
        "SMMGW_RATE_LIMIT_PER_SECOND": "1000000000",
        "SMMGW_METRICS_REFRESH_SECONDS": str(args.metrics_refresh),
    }
    uvicorn = f"-m uvicorn --host {gw.HOST} --workers 1 --log-level warning --no-access-log"
    cmd = [sys.executable, *uvicorn.split(), "--port", str(port)]
    servers["gateway"] = gw.start(
        "gateway", [*cmd, "--factory", "app.main:create_app"], env, port, tmp
    )
    if "bare" not in servers:
        bare_port = gw.free_port()
        bare = [*cmd[:-1], str(bare_port), "--app-dir", str(BENCH), "bare:app"]
        servers["bare"] = gw.start("bare", bare, dict(os.environ), bare_port, tmp)
    for server in servers.values():
        gw.wait_port(server)


def scrape_main(spec_json: str) -> None:
    """`scrapers` threads, each scraping /metrics `rate` times a second on a keep-alive
    connection for `seconds` (Prometheus scrapes every 15 s or so: this is far more); prints
    a result in the load generator's shape."""
    import http.client
    import threading

    spec = json.loads(spec_json)
    if spec.get("cpu") is not None:
        os.sched_setaffinity(0, {spec["cpu"]})
    latencies: list[int] = []
    errors: list[str] = []
    stop = time.monotonic() + spec["seconds"]

    def scraper() -> None:
        conn = http.client.HTTPConnection(gw.HOST, spec["port"], timeout=30)
        due = time.monotonic()
        while (now := time.monotonic()) < stop:
            if now < due:
                time.sleep(due - now)
            due += 1 / spec["rate"]
            t0 = time.perf_counter_ns()
            conn.request("GET", "/metrics")
            reply = conn.getresponse()
            body = reply.read()
            latencies.append((time.perf_counter_ns() - t0) // 1000)
            if reply.status != 200 or b"smmgw_database_up 1.0" not in body:
                errors.append(f"HTTP {reply.status}: {body[:120]!r}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=scraper) for _ in range(spec["scrapers"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = {
        "wall": time.perf_counter() - t0,
        "requests": len(latencies),
        "latencies_us": latencies,
        "errors": len(errors),
        "error_samples": errors[:5],
        "cpu_seconds": time.process_time(),
    }
    print("RESULT " + json.dumps(result), flush=True)


def scraping(bench: gw.Bench, port: int, args: argparse.Namespace) -> subprocess.Popen:
    """--scrapers threads scraping /metrics --scrape-rate times a second each, in a process
    of their own on the load generator's core, for a little longer than one slice."""
    spec = {
        "port": port,
        "scrapers": args.scrapers,
        "rate": args.scrape_rate,
        "seconds": args.seconds + 1.5,
        "cpu": bench.client_cpu,
    }
    return subprocess.Popen(
        [sys.executable, __file__, "--scrape", json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def _latency(row: gw.Row) -> dict[str, float]:
    return {"p50": row.pct_ms(0.5), "p99": row.pct_ms(0.99), "rps": row.rps}


def gateway_figures(args: argparse.Namespace, filled: Filled, servers: dict) -> dict[str, Any]:
    ns = argparse.Namespace(seconds=args.seconds, rounds=2, warmup=0.5, db=args.db, no_pin=False)
    bench = gw.Bench(ns, servers)
    port = servers["gateway"].port
    key = filled.keys[filled.heavy_customer]
    gw.wait_for_catalog(port, key, servers["gateway"].log)
    bodies = {
        "balance": gw.form(key=key, action="balance"),
        "status": gw.form(key=key, action="status", order=str(filled.heavy_active_order)),
    }
    out: dict[str, Any] = {}
    rows: list[gw.Row] = []
    for name, body in bodies.items():
        gate, bare = bench.pair(
            gw.Figure(f"{name} via gateway", "gateway", name, body, args.concurrency),
            gw.Figure(f"{name} body, bare endpoint", "bare", "bare", body, args.concurrency),
        )
        rows += [gate, bare]
        out[name] = {
            "cpu_ms": gate.server_cpu_ms,
            "bare_cpu_ms": bare.server_cpu_ms,
            "ratio_cpu": bare.server_cpu_ms / gate.server_cpu_ms if gate.server_cpu_ms else 0,
            **_latency(gate),
        }
    if args.analyze_only:
        return out | {"errors": sum(r.errors for r in rows)}
    # Customers' balance at c=4 before any scrape (no gauge refresh has run yet) ...
    customer = gw.Figure("balance, c=4", "gateway", "balance", bodies["balance"], 4)
    quiet, _ = bench.slice(customer, args.seconds)
    quiet_row = gw.Row("balance c=4, no scrapes", "gateway")
    quiet_row.add(quiet, {})
    # ... one scraper: a scrape's own time (the first starts the background refresh) ...
    one = gw.Row("one scraper", "gateway")
    result, cpu = bench.slice(
        gw.Figure(
            "/metrics, 1 scraper", "gateway", "metrics", "", 1, path="/metrics", method="GET"
        ),
        args.seconds,
    )
    one.add(result, cpu)
    # ... then the same customers while the scrapers run, and again after them.
    scrapers = scraping(bench, port, args)
    time.sleep(0.7)
    busy, _ = bench.slice(customer, args.seconds)
    scraped, _ = scrapers.communicate(timeout=120)
    busy_row = gw.Row("balance c=4, while scraped", "gateway")
    busy_row.add(busy, {})
    after, _ = bench.slice(customer, args.seconds)
    after_row = gw.Row("balance c=4, after the scrapes", "gateway")
    after_row.add(after, {})
    paced = gw.Row("paced scrapers", "gateway")
    for line in scraped.splitlines():
        if line.startswith("RESULT "):
            paced.add(json.loads(line[7:]), {})
    rows += [quiet_row, one, busy_row, after_row, paced]
    out["metrics"] = {
        "scrape_p50_ms": one.pct_ms(0.5),
        "scrape_p99_ms": one.pct_ms(0.99),
        "scrape_cpu_ms": one.server_cpu_ms,
        "scrape_paced_p50_ms": paced.pct_ms(0.5),
        "scrape_paced_p99_ms": paced.pct_ms(0.99),
        "scrapes_per_s": paced.rps,
        "quiet": _latency(quiet_row),
        "busy": _latency(busy_row),
        "after": _latency(after_row),
        "delay_p50_ms": busy_row.pct_ms(0.5) - quiet_row.pct_ms(0.5),
        "delay_p99_ms": busy_row.pct_ms(0.99) - quiet_row.pct_ms(0.99),
    }
    out["errors"] = sum(r.errors for r in rows)
    out["error_samples"] = [s for r in rows for s in r.error_samples][:5]
    return out


# ======================================== one size ========================================


def run_size(args: argparse.Namespace, orders: int, tmp: Path) -> dict[str, Any]:
    servers: dict[str, gw.Server] = {}
    print(f"\n== {args.db}, {orders:,} orders ==", flush=True)
    try:
        with database(args.db, tmp) as url:
            ids = start_sim(int(orders * ACTIVE_SHARE), args.seed, tmp, servers)
            filled = asyncio.run(
                fill(url, orders, seed=args.seed, upstream_ids=ids, progress=args.progress)
            )
            print(
                f"filled in {filled.seconds:.1f} s: {filled.rows}; customer"
                f" {filled.heavy_customer} has {filled.heavy_orders:,} orders",
                flush=True,
            )
            figures: dict[str, Any] = {"orders": orders, "fill_s": filled.seconds}
            figures["rows"] = filled.rows
            figures["heavy_orders"] = filled.heavy_orders
            figures["verify"] = ledger_verify(url)
            print(f"ledger verify: {figures['verify']}", flush=True)
            figures["plans"] = asyncio.run(plans(url, filled))
            print(f"plans: {figures['plans']}", flush=True)
            figures["refresh"] = asyncio.run(gauge_refresh(url))
            print(f"gauge refresh: {figures['refresh']}", flush=True)
            start_gateway(args, url, tmp, servers)
            figures |= gateway_figures(args, filled, servers)
            gw.stop(servers.pop("gateway"))
            figures["sync"] = asyncio.run(sync_figures(url, servers["sim"]))
            print(f"sync pass: {figures['sync']}", flush=True)
            if args.analyze:
                asyncio.run(analyze(url))
                figures["plans_analyzed"] = asyncio.run(plans(url, filled))
                print(f"plans after ANALYZE: {figures['plans_analyzed']}", flush=True)
                start_gateway(args, url, tmp, servers)
                again = argparse.Namespace(**{**vars(args), "analyze_only": True})
                figures["analyzed"] = gateway_figures(again, filled, servers)
    finally:
        for server in servers.values():
            gw.stop(server)
    return figures


# ======================================== reporting ========================================


def _verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def report(db: str, runs: list[dict[str, Any]], load: tuple[float, float]) -> None:
    print(
        f"\n### {db}: one run, sizes one after another; load average {load[0]:.1f} → "
        f"{load[1]:.1f}\n"
    )
    head = "| figure | " + " | ".join(f"{r['orders']:,} orders" for r in runs) + " |"
    print(head)
    print("|---|" + "---:|" * len(runs))

    def line(label: str, cells: list[str]) -> None:
        print(f"| {label} | " + " | ".join(cells) + " |")

    line("fill (s)", [f"{r['fill_s']:.1f}" for r in runs])
    line(
        "`ledger verify`",
        [
            ("clean" if r["verify"]["clean"] else f"{r['verify']['problems']} problems")
            + f" ({r['verify']['seconds']:.1f} s)"
            for r in runs
        ],
    )
    line("orders of the measured customer", [f"{r['heavy_orders']:,}" for r in runs])
    for name in ("balance", "status"):
        line(
            f"`{name}` CPU ms/req, gateway (+db) / bare",
            [f"{r[name]['cpu_ms']:.3f} / {r[name]['bare_cpu_ms']:.3f}" for r in runs],
        )
        line(
            f"`{name}` CPU-cost ratio (bare ÷ gateway)",
            [f"{r[name]['ratio_cpu']:.2f}" for r in runs],
        )
    line("`/metrics` scrape p50 / p99 ms (1 scraper)", [
        f"{r['metrics']['scrape_p50_ms']:.2f} / {r['metrics']['scrape_p99_ms']:.2f}" for r in runs
    ])  # fmt: skip
    line(
        "`/metrics` gateway CPU ms per scrape",
        [f"{r['metrics']['scrape_cpu_ms']:.2f}" for r in runs],
    )
    line("`/metrics` scrape p50 / p99 ms while paced (the delay figure's scrapes)", [
        f"{r['metrics']['scrape_paced_p50_ms']:.2f} / {r['metrics']['scrape_paced_p99_ms']:.2f}"
        for r in runs
    ])  # fmt: skip
    line("gauge refresh (background read) ms: wall / CPU", [
        f"{r['refresh']['wall_ms']:.0f} / {r['refresh']['cpu_ms']:.0f}" for r in runs
    ])  # fmt: skip
    line("`balance` c=4 p50/p99 ms: no scrapes → scraped → after", [
        f"{r['metrics']['quiet']['p50']:.2f}/{r['metrics']['quiet']['p99']:.2f} → "
        f"{r['metrics']['busy']['p50']:.2f}/{r['metrics']['busy']['p99']:.2f} → "
        f"{r['metrics']['after']['p50']:.2f}/{r['metrics']['after']['p99']:.2f}" for r in runs
    ])  # fmt: skip
    line("sync pass: orders / upstream calls", [
        f"{r['sync']['polled']:,} / {r['sync']['status_calls']:,}" for r in runs
    ])  # fmt: skip
    line("sync pass: wall s (ms per order)", [
        f"{r['sync']['wall_s']:.1f} ({r['sync']['wall_ms_per_order']:.2f})" for r in runs
    ])  # fmt: skip
    line("sync pass CPU ms/order: pass process / PostgreSQL / simulator", [
        f"{r['sync']['process_cpu_ms_per_order']:.3f} / "
        f"{r['sync']['postgres_cpu_ms_per_order']:.3f} / {r['sync']['sim_cpu_ms_per_order']:.3f}"
        for r in runs
    ])  # fmt: skip
    if any("analyzed" in r for r in runs):
        for name in ("balance", "status"):
            line(f"after ANALYZE: `{name}` CPU ms/req (ratio)", [
                f"{r['analyzed'][name]['cpu_ms']:.3f} ({r['analyzed'][name]['ratio_cpu']:.2f})"
                if "analyzed" in r else "" for r in runs
            ])  # fmt: skip
    print("\nplans (never analysed):")
    for r in runs:
        for name, plan in r["plans"].items():
            print(f"  {r['orders']:>9,} {name}: {plan}")
            if "plans_analyzed" in r:
                print(f"  {'':>9} {name} after ANALYZE: {r['plans_analyzed'][name]}")

    base, top = runs[0], runs[-1]
    print(f"\n| goal ({top['orders']:,} against {base['orders']:,} orders) | measured | goal | |")
    print("|---|---:|---:|---|")
    for name in ("balance", "status"):
        growth = top[name]["cpu_ms"] / base[name]["cpu_ms"] if base[name]["cpu_ms"] else 0.0
        norm = base[name]["ratio_cpu"] / top[name]["ratio_cpu"] if top[name]["ratio_cpu"] else 0.0
        print(
            f"| `{name}` CPU per request, × the smallest size (÷ bare: ×{norm:.2f}) "
            f"| ×{growth:.2f} | ≤ ×{GOALS['cpu_growth']} "
            f"| {_verdict(growth <= GOALS['cpu_growth'])} |"
        )
    m = top["metrics"]
    print(
        f"| one `/metrics` scrape, p50 ms | {m['scrape_p50_ms']:.2f} | ≤ {GOALS['scrape_ms']:g} "
        f"| {_verdict(m['scrape_p50_ms'] <= GOALS['scrape_ms'])} |"
    )
    print(
        f"| customers' delay while scraped ({m.get('scrapes_per_s', 0):.0f}/s), p99 ms (p50) "
        f"| {m['delay_p99_ms']:.2f} "
        f"({m['delay_p50_ms']:.2f}) | ≤ {GOALS['delay_ms']:g} "
        f"| {_verdict(m['delay_p99_ms'] <= GOALS['delay_ms'])} |"
    )
    s = top["sync"]
    want = -(-s["polled"] // 100)
    whole = s["status_calls"] == want and s["polled"] == int(top["orders"] * ACTIVE_SHARE)
    print(
        f"| sync pass over {s['polled']:,} active orders: upstream calls | {s['status_calls']:,} "
        f"| {want:,} | {_verdict(whole)} |"
    )
    in_pg = s["postgres_cpu_ms_per_order"]
    print(
        f"| sync pass database cost per order | {s['wall_ms_per_order']:.2f} ms wall, "
        f"{s['process_cpu_ms_per_order']:.3f} ms CPU in the pass's process"
        + (f" + {in_pg:.3f} ms in PostgreSQL" if in_pg else "")
        + " | stated | |"
    )
    errors = sum(r.get("errors", 0) for r in runs)
    print(f"\nerrors in checked replies: {errors}")


def plot(out: Path) -> Path | None:
    """Cost against database size, both databases (every bench/scale-<db>.json present)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {}
    for db in ("sqlite", "postgresql"):
        path = BENCH / f"scale-{db}.json"
        if path.exists():
            data[db] = json.loads(path.read_text())["runs"]
    if not data:
        return None
    panels = [
        ("`balance` CPU ms per request", lambda r: r["balance"]["cpu_ms"]),
        ("`status` (one id) CPU ms per request", lambda r: r["status"]["cpu_ms"]),
        ("`/metrics` scrape p50 ms", lambda r: r["metrics"]["scrape_p50_ms"]),
        ("gauge refresh (background) wall ms", lambda r: r["refresh"]["wall_ms"]),
        (
            "sync pass CPU ms per order (pass + PostgreSQL)",
            lambda r: (
                r["sync"]["process_cpu_ms_per_order"] + r["sync"]["postgres_cpu_ms_per_order"]
            ),
        ),
        ("sync pass wall ms per order", lambda r: r["sync"]["wall_ms_per_order"]),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (title, value) in zip(axes.flat, panels, strict=True):
        for db, runs in data.items():
            sizes = [r["orders"] for r in runs]
            ax.plot(sizes, [value(r) for r in runs], marker="o", label=db)
        ax.set_xscale("log")
        ax.set_title(title.replace("`", ""), fontsize=10)
        ax.set_xlabel("orders in the database")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("smm-gateway: cost against database size (bench/scale.py, one run per database)")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    return out


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--orders",
        default=",".join(map(str, SIZES)),
        help="sizes, comma-separated; the first is the reference of the goals",
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="measured time per figure")
    parser.add_argument("--concurrency", type=int, default=32, help="for balance and status")
    parser.add_argument("--metrics-refresh", type=float, default=5.0, help="seconds")
    parser.add_argument("--scrapers", type=int, default=3, help="while customers are measured")
    parser.add_argument("--scrape-rate", type=float, default=5.0, help="scrapes/s per scraper")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--analyze", action="store_true", help="measure again after ANALYZE")
    parser.add_argument("--progress", action="store_true", help="show the fill's progress")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--plot", action="store_true", help="only redraw bench/scale.png")
    args = parser.parse_args()
    args.analyze_only = False
    if args.plot:
        print(plot(BENCH / "scale.png"))
        return 0
    sizes = [int(s.replace("_", "")) for s in args.orders.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="smmgw-scale-"))
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    load0 = os.getloadavg()[0]
    runs: list[dict[str, Any]] = []
    try:
        for orders in sizes:
            runs.append(run_size(args, orders, tmp))
            (BENCH / f"scale-{args.db}.json").write_text(
                json.dumps({"db": args.db, "sizes": sizes, "runs": runs}, indent=1)
            )
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        if args.keep_logs:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report(args.db, runs, (load0, os.getloadavg()[0]))
    drawn = plot(BENCH / "scale.png")
    print(f"\nplot: {drawn}; figures: bench/scale-{args.db}.json")
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        f"(servers and tools this run started: {children.ru_utime + children.ru_stime:.0f} s CPU)"
    )
    clean = all(r["verify"]["clean"] for r in runs)
    return 0 if clean and not any(r.get("errors") for r in runs) else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-sim":
        serve_sim(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "--scrape":
        scrape_main(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "--loadgen":
        gw.loadgen_main(sys.argv[2])
    else:
        sys.exit(main())
