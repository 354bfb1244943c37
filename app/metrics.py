"""Prometheus metrics at `/metrics` (text format), with the `prometheus-client` library.

Counted in the process that does the work (hot path: a cached labelled child, one increment):

- `smmgw_requests_total{action, outcome}`: contract requests. `action` is the action asked for
  (`services`, `add`, `status`, …) or `unknown`; `outcome` is `ok`, the class of the contract
  error answered (`invalid_key`, `incorrect_request`, `incorrect_service`, `bad_link`,
  `not_enough_funds`, `incorrect_order`, `incorrect_refill`, `not_refillable`,
  `quantity_too_low`, `quantity_too_high`, `missing_parameter`, `bad_parameter`,
  `too_many_ids`, `idempotency`, `temporarily_unavailable`, `other_error`), or `413`, `429`,
  `500`.
  For `refill`, `refill_status` and `cancel`, whose errors are inside the items, `outcome`
  is `ok` when at least one item succeeded, else the class of the first item's error.
- `smmgw_request_items_total{action, outcome}`: each item of those replies, `ok` or its
  error's class.
- `smmgw_request_duration_seconds{action}`: histogram, whole request (body read to reply sent).
- `smmgw_upstream_calls_total{action, outcome}`: every upstream call (`UpstreamClient.call`),
  `outcome` = `answer`, `refused:<reason>` or `ambiguous:<reason>` (app/upstream.py).
- `smmgw_upstream_call_duration_seconds{action, result}`: histogram, `result` = answer |
  refused | ambiguous.
- `smmgw_rate_limit_fail_open_total`: requests let through unlimited because the shared
  rate-limit store (Redis) could not be asked.

The database gauges (orders by state, sync lag, the upstream balance, …) are app/gauges.py's:
it hands `exposition` a collector over its last snapshot.

Several worker processes (`uvicorn --workers N`): set `PROMETHEUS_MULTIPROC_DIR` to an empty
directory, the same for all workers of one gateway, before they start; each process then
keeps its counters there and a scrape of any worker adds them all up (the client library's
multiprocess mode). `smm-gateway serve --workers N` (N > 1) makes a fresh temporary one by
itself and removes it on exit; a directory set by the operator is used as it is, and must be
emptied before each start.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import Collector

from app import contract  # the ground's error words, nothing above

if TYPE_CHECKING:
    from app.logs import RequestInfo

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

REQUESTS = Counter(
    "smmgw_requests_total", "Contract requests by action and outcome.", ["action", "outcome"]
)
ITEMS = Counter(
    "smmgw_request_items_total",
    "Items of refill, refill_status and cancel replies, by action and outcome.",
    ["action", "outcome"],
)
REQUEST_SECONDS = Histogram(
    "smmgw_request_duration_seconds",
    "Contract request latency, body read to reply sent.",
    ["action"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
UPSTREAM_CALLS = Counter(
    "smmgw_upstream_calls_total",
    "Upstream calls by action and outcome (answer, refused:<reason>, ambiguous:<reason>).",
    ["action", "outcome"],
)
UPSTREAM_SECONDS = Histogram(
    "smmgw_upstream_call_duration_seconds",
    "Upstream call latency by action and result (answer, refused, ambiguous).",
    ["action", "result"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60),
)
# The same calls by provider (issue 13); the two above stay the sum over providers, as before.
PROVIDER_CALLS = Counter(
    "smmgw_provider_calls_total",
    "Upstream calls by provider, action and outcome (answer, refused:<reason>, …).",
    ["provider", "action", "outcome"],
)
PROVIDER_SECONDS = Histogram(
    "smmgw_provider_call_duration_seconds",
    "Upstream call latency by provider, action and result (answer, refused, ambiguous).",
    ["provider", "action", "result"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60),
)
RATE_LIMIT_FAIL_OPEN = Counter(
    "smmgw_rate_limit_fail_open_total",
    "Requests let through without a rate limit because Redis could not be asked.",
)


# --- the hot path ---------------------------------------------------------------------------

_ERROR_CLASSES = {
    contract.INVALID_KEY: "invalid_key",
    contract.INCORRECT_REQUEST: "incorrect_request",
    contract.INCORRECT_SERVICE: "incorrect_service",
    contract.BAD_LINK: "bad_link",
    contract.NOT_ENOUGH_FUNDS: "not_enough_funds",
    contract.INCORRECT_ORDER: "incorrect_order",
    contract.INCORRECT_REFILL: "incorrect_refill",
    contract.NOT_REFILLABLE: "not_refillable",
    contract.TEMPORARILY_UNAVAILABLE: "temporarily_unavailable",
}
_ERROR_PREFIXES = (
    ("Quantity less than minimal", "quantity_too_low"),
    ("Quantity more than maximum", "quantity_too_high"),
    ("Missing parameter", "missing_parameter"),
    ("Parameter ", "bad_parameter"),
    ("Too many ", "too_many_ids"),
    ("Idempotency-Key", "idempotency"),
)


def error_class(message: str) -> str:
    """A contract error string -> a label value from a small fixed set."""
    known = _ERROR_CLASSES.get(message)
    if known is not None:
        return known
    for prefix, name in _ERROR_PREFIXES:
        if message.startswith(prefix):
            return name
    return "other_error"


_request_children: dict[tuple[str, str], Any] = {}
_latency_children: dict[str, Any] = {}


def observe_request(info: RequestInfo, status: int, seconds: float) -> None:
    """The end of a request (RequestLogMiddleware's hook): counted when it was a contract call."""
    action = info.action
    if action is None:
        return
    outcome = info.outcome or ("ok" if status < 400 else str(status))
    counter = _request_children.get((action, outcome))
    if counter is None:
        counter = _request_children[(action, outcome)] = REQUESTS.labels(action, outcome)
    counter.inc()
    histogram = _latency_children.get(action)
    if histogram is None:
        histogram = _latency_children[action] = REQUEST_SECONDS.labels(action)
    histogram.observe(seconds)


def observe_items(action: str, errors: list[str | None]) -> None:
    """Each item of a refill / refill_status / cancel reply: `ok` (None) or its error's class."""
    for message in errors:
        ITEMS.labels(action, "ok" if message is None else error_class(message)).inc()


def observe_upstream(
    action: str, outcome: object, seconds: float, provider: str = "default"
) -> None:
    """One upstream call: `outcome` is an app.upstream Answer, Refused or Ambiguous."""
    result = type(outcome).__name__.lower()
    reason = getattr(outcome, "reason", None)
    labelled = f"{result}:{reason}" if reason else result
    UPSTREAM_CALLS.labels(action, labelled).inc()
    UPSTREAM_SECONDS.labels(action, result).observe(seconds)
    PROVIDER_CALLS.labels(provider, action, labelled).inc()
    PROVIDER_SECONDS.labels(provider, action, result).observe(seconds)


UPSTREAM_UNUSABLE = Counter(
    "smmgw_upstream_unusable_total",
    "Upstream items skipped: numbers out of range or malformed, unknown status words.",
    ["kind", "field"],
)


def count_unusable(kind: str, field: str, n: int = 1) -> None:
    UPSTREAM_UNUSABLE.labels(kind, field).inc(n)


def count_fail_open() -> None:
    RATE_LIMIT_FAIL_OPEN.inc()


# --- the exposition -------------------------------------------------------------------------


def exposition(*collectors: Collector) -> bytes:
    """This process's (or, in multiprocess mode, all workers') counters, then `collectors`."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
        counted = generate_latest(registry)
    else:
        counted = generate_latest(REGISTRY)
    extra = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        extra.register(collector)
    return counted + generate_latest(extra)


def bearer_is(header: str, token: str) -> bool:
    """An `Authorization: Bearer <token>` header carrying exactly `token` (constant time)."""
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(
        given.strip().encode(), token.encode()
    )


# --- several worker processes ---------------------------------------------------------------


@contextmanager
def multiprocess_dir(workers: int) -> Iterator[str | None]:
    """For `serve`: with more than one worker and no PROMETHEUS_MULTIPROC_DIR, a fresh empty
    temporary directory, in the environment the workers inherit, removed on exit."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        yield given
        return
    if workers <= 1:
        yield None
        return
    path = tempfile.mkdtemp(prefix="smmgw-metrics-")
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)
