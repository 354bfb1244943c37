"""What the default access line costs per request: RequestLogMiddleware around a constant
ASGI app, driven in-process, at SMMGW_LOG_LEVEL=INFO (one line per request, written to a file)
against WARNING (no line), in alternating rounds; CPU time per request of each, and the
difference: the line's own cost, also as a share of a `balance` (the CPU per `balance` is
given, from a bench/gateway.py run).

    .venv/bin/python bench/access_line.py [--format json|text] [--sample N] [--balance-ms 0.20]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from typing import Any

from app import logs
from app.settings import load_settings

SCOPE = {
    "type": "http",
    "method": "POST",
    "path": "/api/v2",
    "headers": [(b"host", b"gateway"), (b"content-type", b"application/x-www-form-urlencoded")],
}
START = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
BODY = {"type": "http.response.body", "body": b"{}"}


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    info = scope[logs.SCOPE_KEY]
    info.action, info.customer_id, info.outcome = "balance", 42, "ok"
    await send(dict(START))
    await send(BODY)


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(_message: dict[str, Any]) -> None:
    pass


async def _round(middleware: Any, n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        await middleware(dict(SCOPE), _receive, _send)
    return (time.process_time() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", choices=("json", "text"), default="json")
    parser.add_argument("--sample", type=int, default=1, help="SMMGW_ACCESS_LOG_SAMPLE")
    parser.add_argument("--requests", type=int, default=20_000, help="per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--balance-ms",
        type=float,
        default=0.20,
        help="CPU ms per balance through the gateway (bench/gateway.py)",
    )
    args = parser.parse_args()
    extra = {"access_log_sample": args.sample} if args.sample != 1 else {}
    with tempfile.TemporaryFile("w") as out:
        costs: dict[str, list[float]] = {"INFO": [], "WARNING": []}
        middleware = logs.RequestLogMiddleware(_app)
        for _ in range(args.rounds):
            for level in ("INFO", "WARNING"):
                settings = load_settings(log_level=level, log_format=args.format, **extra)
                logs.configure_logging(settings, stream=out)
                asyncio.run(_round(middleware, 500))  # warm-up
                costs[level].append(asyncio.run(_round(middleware, args.requests)))
        logging.getLogger().setLevel(logging.WARNING)
    info, warning = (statistics.median(costs[k]) * 1e6 for k in ("INFO", "WARNING"))
    line = info - warning
    print(
        f"format {args.format}, sample 1/{args.sample}: per request {info:.1f} µs at INFO, "
        f"{warning:.1f} µs at WARNING; the line {line:.1f} µs = "
        f"{line / (args.balance_ms * 10):.1f} % of a {args.balance_ms} ms balance"
    )


if __name__ == "__main__":
    main()
