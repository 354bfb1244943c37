"""Schema-driven fuzzing of the HTTP edge with schemathesis, in-process (ASGI, no server).

Every operation of the gateway's own `/openapi.json` gets generated requests (valid and not);
every reply must be no 5xx and must conform to the document: status code, content type and
body schema.

SQLite only, on purpose: this fuzzes the HTTP edge (parsing, validation, error shapes, the
document's promises), not the storage; the database tests run on SQLite and PostgreSQL
elsewhere in the suite.

The gateway is built once for the module: admin token set (so /admin is exercised, with the
bearer header), the in-process simulator as its upstream, the catalog synced, one customer with
a top-up (its key replaces a generated `key`, so requests get past authentication), no rate
limit. Schemathesis runs the app's lifespan itself, on its own event loop, at the first request.
"""

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from conftest import SIM_KEY, FakeClock, gateway_settings
from helpers import new_customer
from hypothesis import HealthCheck, settings

from app.catalog import sync_catalog
from app.main import Gateway, create_app
from app.simulator import SimConfig, create_simulator_app

ADMIN_TOKEN = "fuzz-admin-token-0123456789abcdef"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# CI's budget; a deeper run now and then: SMMGW_FUZZ_EXAMPLES=300 pytest tests/test_fuzz.py
MAX_EXAMPLES = int(os.environ.get("SMMGW_FUZZ_EXAMPLES", "30"))

CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]

# Built at import: the schema is loaded eagerly (one pytest test per operation). The lazy
# `schemathesis.pytest.from_fixture` fails under pytest 9.2 (it reads `request.node._nodeid`,
# which pytest no longer has). Nothing touches the database file before `fuzz_db` fills it:
# serving /openapi.json does not, and the engines connect lazily.
DB_DIR = Path(tempfile.mkdtemp(prefix="smmgw-fuzz-"))
DB_PATH = DB_DIR / "gateway.db"
SETTINGS = gateway_settings(
    f"sqlite+aiosqlite:///{DB_PATH}", admin_token=ADMIN_TOKEN, rate_limit_per_second=0
)
SIMULATOR = create_simulator_app(
    SimConfig(key=SIM_KEY, tick_seconds=1.0, seed=1), clock=FakeClock()
)
APP = create_app(SETTINGS, upstream_transport=httpx.ASGITransport(app=SIMULATOR), background=False)
# /metrics is Prometheus text, not a JSON API.
schema = schemathesis.openapi.from_asgi("/openapi.json", APP).exclude(path="/metrics")


@pytest.fixture(scope="module")
def api_key(sqlite_template: Path) -> Iterator[str]:
    """Migrate, sync the catalog, create one customer with a top-up; yields its API key.

    Seeded through a Gateway of its own (same file, same simulator) on this fixture's event
    loop; the fuzzed app runs on schemathesis' loop and sees the rows through the file."""
    shutil.copyfile(sqlite_template, DB_PATH)

    async def seed() -> str:
        gw = Gateway(SETTINGS, httpx.ASGITransport(app=SIMULATOR))
        try:
            await sync_catalog(gw.db, gw.upstream)
            customer = await new_customer(gw.db, "fuzz", funds=1_000 * 10**6)
        finally:
            await gw.close()
        return customer.key

    yield asyncio.run(seed())
    shutil.rmtree(DB_DIR, ignore_errors=True)


def _use_real_key(case: Any, key: str) -> None:
    """A generated `key` never authenticates; the customer's does, and reaches the actions."""
    for container in (case.body, case.query):
        if isinstance(container, dict) and "key" in container:
            container["key"] = key


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_conforms_to_its_document(case: Any, api_key: str) -> None:
    _use_real_key(case, api_key)
    case.call_and_validate(headers=ADMIN_HEADERS, checks=CHECKS)


@pytest.mark.parametrize(
    ("method", "path", "param", "body"),
    [
        ("POST", "/admin/services/{service_id}/hide", "service_id", None),
        ("GET", "/admin/orders/{order_id}", "order_id", None),
        ("POST", "/admin/orders/{order_id}/resolve", "order_id", {"not_placed": True}),
    ],
)
def test_out_of_range_ids_are_refused_not_a_server_error(
    method: str, path: str, param: str, body: dict[str, Any] | None, api_key: str
) -> None:
    """Found by this fuzz: an id of 2**63 in an admin path reached the database and
    overflowed into a 500. Ids are now bounded by the columns' range: a 422."""
    extra = {} if body is None else {"body": body}
    case = schema[path][method].Case(path_parameters={param: 2**63}, **extra)
    response = case.call(headers=ADMIN_HEADERS)
    assert response.status_code == 422
