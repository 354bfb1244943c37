"""Upstream transport benchmark: which HTTP client stack should `app/upstream.py` use?

Starts a constant-answer stub panel (uvicorn, raw ASGI, in a subprocess so that it has its own
core) and measures requests/s at N concurrent form-encoded POSTs, each for a fixed duration:

  (a) httpx, default AsyncHTTPTransport (httpcore + anyio)
  (b) httpx with httpx_aiohttp.AiohttpTransport
  (c) raw aiohttp, for reference
  (d) our UpstreamClient.balance() on its default transport (wrapper overhead included)

on the stdlib asyncio loop and on uvloop (what uvicorn[standard] runs the gateway on).

    .venv/bin/python bench/transport.py [--seconds 4.5] [--rounds 3] [--concurrency 16]
                                        [--loops asyncio,uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
import httpx_aiohttp

from app.upstream import UpstreamClient  # the project is installed in .venv (editable)

BODY = b'{"status":"success","balance":"100.8429","currency":"USD"}'
FORM = {"key": "bench-key", "action": "balance"}


async def stub_app(scope: dict, receive: Callable, send: Callable) -> None:
    """A panel that answers every request like SmartPanel's balance: JSON as text/html."""
    more = True
    while more:  # drain the body, as a real server would
        message = await receive()
        more = message.get("more_body", False)
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/html; charset=UTF-8"),
                    (b"content-length", str(len(BODY)).encode())],
    })
    await send({"type": "http.response.body", "body": BODY})


def serve(port: int) -> None:
    import uvicorn

    uvicorn.run(stub_app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                access_log=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_stub() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}/api/v1"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("stub server did not start")


async def drive(one: Callable[[], Awaitable[None]], concurrency: int, seconds: float) -> float:
    """Run `concurrency` workers calling `one` in a loop for `seconds`; return requests/s."""
    await asyncio.gather(*(one() for _ in range(concurrency)))  # warm up: open the pool
    count = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < stop_at:
            await one()
            count += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


async def bench_httpx(url: str, transport: httpx.AsyncBaseTransport | None, concurrency: int,
                      seconds: float) -> float:
    async with httpx.AsyncClient(transport=transport, timeout=30) as client:
        async def one() -> None:
            response = await client.post(url, data=FORM)
            response.raise_for_status()
            json.loads(response.content)

        return await drive(one, concurrency, seconds)


async def bench_aiohttp(url: str, concurrency: int, seconds: float) -> float:
    async with aiohttp.ClientSession() as session:
        async def one() -> None:
            async with session.post(url, data=FORM) as response:
                response.raise_for_status()
                json.loads(await response.read())

        return await drive(one, concurrency, seconds)


async def bench_upstream_client(url: str, concurrency: int, seconds: float) -> float:
    client = UpstreamClient(url, "bench-key", connect_timeout=5, read_timeout=30)
    try:
        async def one() -> None:
            result = await client.balance()
            if not isinstance(result, tuple):
                raise RuntimeError(f"unexpected outcome {result!r}")

        return await drive(one, concurrency, seconds)
    finally:
        await client.aclose()


CASES: dict[str, Callable[[str, int, float], Awaitable[float]]] = {
    "httpx default transport": lambda u, c, s: bench_httpx(u, None, c, s),
    "httpx + httpx_aiohttp.AiohttpTransport":
        lambda u, c, s: bench_httpx(u, httpx_aiohttp.AiohttpTransport(), c, s),
    "raw aiohttp (reference)": bench_aiohttp,
    "UpstreamClient.balance() (default transport)": bench_upstream_client,
}


def run_on(loop_name: str, coro: Awaitable[float]) -> float:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    return asyncio.run(coro)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.5, help="per case, all rounds")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loops", default="asyncio,uvloop")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return

    proc, url = start_stub()
    loops = args.loops.split(",")
    rates: dict[tuple[str, str], list[float]] = {(n, lp): [] for lp in loops for n in CASES}
    try:
        # Round-robin over the cases, so that a change in machine load hits them all alike.
        for round_no in range(args.rounds):
            for loop_name in loops:
                for name, case in CASES.items():
                    seconds = args.seconds / args.rounds
                    rate = run_on(loop_name, case(url, args.concurrency, seconds))
                    rates[name, loop_name].append(rate)
                    print(f"  round {round_no + 1}: {name:<46} {loop_name:<8} "
                          f"{rate:9,.0f} req/s", file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    print(f"\n{args.concurrency} concurrent POSTs, {args.seconds:g} s per case in {args.rounds} "
          f"interleaved rounds, python {sys.version.split()[0]}, httpx {httpx.__version__}, "
          f"aiohttp {aiohttp.__version__}, {os.cpu_count()} CPUs\n")
    print("| client | loop | req/s (median) | range | × httpx default |")
    print("|---|---|---:|---:|---:|")
    baseline_name = next(iter(CASES))
    for (name, loop_name), values in rates.items():
        median = statistics.median(values)
        baseline = statistics.median(rates[baseline_name, loop_name])
        print(f"| {name} | {loop_name} | {median:,.0f} | {min(values):,.0f}–{max(values):,.0f} "
              f"| {median / baseline:.2f} |")


if __name__ == "__main__":
    main()
