"""The integrators' docs: the OpenAPI document, and /docs and /redoc rendering with no internet.

The rendering test runs Debian's headless Chromium against a gateway served by uvicorn, with
every host but 127.0.0.1 unresolvable, and reads the DOM the page scripts built.
"""

import asyncio
import json
import os
import re
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from app.contract import SERVICE_TYPES, ContractError
from app.db import Database
from app.family import UpstreamRules
from app.main import create_app
from app.orders.validation import validate_add
from app.panel.actions import ACTIONS, parse_ids
from app.panel.openapi import (
    MAIN_OPERATION_ID,
    PANEL_PATHS,
    PANEL_TAG,
    SAMPLE_SERVICES,
    SMARTPANEL_RULES,
    STANDARD_RULES,
)
from app.settings import Settings, load_settings

CHROMIUM = "/usr/bin/chromium"


def rules_of(service_id: int) -> UpstreamRules:
    """The docs' subscriptions are for providers that take them; the rest for SmartPanel's."""
    subscription = SAMPLE_SERVICES["Subscriptions"].id
    return STANDARD_RULES if service_id == subscription else SMARTPANEL_RULES


UNREACHABLE_UPSTREAM = "http://127.0.0.1:9/api/v1"  # docs never need the upstream


def _settings(tmp_path: Path) -> Settings:
    return load_settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
        upstream_url=UNREACHABLE_UPSTREAM,
        upstream_key="unused",
    )


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return create_app(_settings(tmp_path), background=False)


@pytest.fixture
def doc(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


def _validator(doc: dict[str, Any], schema: str) -> Draft202012Validator:
    registry = Registry().with_resource(
        "urn:openapi", Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    return Draft202012Validator(
        {"$ref": f"urn:openapi#/components/schemas/{schema}"}, registry=registry
    )


def _examples(doc: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {
        name: example["value"]
        for name, example in doc["components"]["examples"].items()
        if name.startswith(prefix)
    }


# --- the document ------------------------------------------------------------------------------


def test_document_is_valid_openapi_and_lists_every_action(doc: dict[str, Any]) -> None:
    validate(doc)  # raises on any violation of OpenAPI 3.1
    assert doc["openapi"].startswith("3.1")

    schemas = doc["components"]["schemas"]
    request = schemas["PanelRequest"]
    mapping = request["discriminator"]["mapping"]
    assert request["discriminator"]["propertyName"] == "action"
    assert list(mapping) == list(ACTIONS)
    assert len(request["oneOf"]) == len(ACTIONS)

    def titles(action: str) -> list[str]:
        target = schemas[mapping[action].rsplit("/", 1)[1]]
        refs = [r["$ref"] for r in target.get("anyOf", [])] or [mapping[action]]
        return [schemas[ref.rsplit("/", 1)[1]]["title"] for ref in refs]

    assert titles("add") == [f"add: {t}" for t in SERVICE_TYPES]
    assert titles("status") == ["status: one order", "status: several orders"]
    assert titles("refill") == ["refill: one order", "refill: several orders"]
    assert titles("refill_status") == [
        "refill_status: one refill",
        "refill_status: several refills",
    ]
    assert titles("services") == ["services"] and titles("balance") == ["balance"]

    body = doc["components"]["requestBodies"]["PanelRequest"]["content"]
    assert set(body) == {
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "application/json",
    }
    requests = _examples(doc, "request.")
    assert {e["action"] for e in requests.values()} == set(ACTIONS)
    add_services = {e["service"] for e in requests.values() if e["action"] == "add"}
    assert add_services == {s.id for s in SAMPLE_SERVICES.values()}

    post = doc["paths"]["/api/v2"]["post"]
    assert post["operationId"] == MAIN_OPERATION_ID
    guide = post["description"]
    for action in ACTIONS:
        assert f"-d action={action}" in guide, f"no curl line for {action}"
    for text in ("Idempotency-Key", "Retry-After", "smartpanel", "Incorrect order ID"):
        assert text in guide
    assert set(post["responses"]) == {"200", "413", "429", "500"}
    assert "Retry-After" in doc["components"]["responses"]["PanelRateLimited"]["headers"]
    for path in PANEL_PATHS:
        assert set(doc["paths"][path]) == {"get", "post"}
    ops = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ops) == len(set(ops)), "operation ids must be unique"


def test_every_other_route_is_documented_as_fastapi_documents_it(
    app: FastAPI, doc: dict[str, Any]
) -> None:
    """The admin API and the rest keep their own operations, tags and schemas."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = get_openapi(title=app.title, version=app.version, routes=app.routes)
    others = {p: ops for p, ops in plain["paths"].items() if p.rstrip("/") not in PANEL_PATHS}
    assert others and "/healthz" in others
    for path, operations in others.items():
        assert doc["paths"][path] == operations
    for name, schema in plain.get("components", {}).get("schemas", {}).items():
        assert doc["components"]["schemas"][name] == schema
    for name, scheme in plain.get("components", {}).get("securitySchemes", {}).items():
        assert doc["components"]["securitySchemes"][name] == scheme
    admin = [
        op for p, item in doc["paths"].items() if p.startswith("/admin") for op in item.values()
    ]
    assert all(op.get("tags") == ["admin"] for op in admin)
    assert doc["tags"][0]["name"] == PANEL_TAG


def test_examples_match_the_schemas(doc: dict[str, Any]) -> None:
    request = _validator(doc, "PanelRequest")
    for name, value in _examples(doc, "request.").items():
        errors = [e.message for e in request.iter_errors(value)]
        assert not errors, f"{name}: {errors}"
    reply = _validator(doc, "PanelReply")
    replies = {**_examples(doc, "reply."), **_examples(doc, "error.")}
    assert len(replies) > 30
    for name, value in replies.items():
        errors = [e.message for e in reply.iter_errors(value)]
        assert not errors, f"{name}: {errors}"
    for code in ("413", "429", "500"):
        ref = doc["paths"]["/api/v2"]["post"]["responses"][code]["$ref"].rsplit("/", 1)[1]
        example = doc["components"]["responses"][ref]["content"]["application/json"]["example"]
        assert set(example) == {"error"}


def test_request_examples_are_accepted_by_the_code(doc: dict[str, Any]) -> None:
    by_id = {s.id: s for s in SAMPLE_SERVICES.values()}
    for name, value in _examples(doc, "request.").items():
        params = {k: str(v) for k, v in value.items()}
        if value["action"] == "add":
            order = validate_add(params, by_id[value["service"]], rules_of(value["service"]))
            assert order.charge > 0, name
        for many in ("orders", "refills"):
            if many in params:
                assert parse_ids(params[many], 100)


def test_documented_add_parameters_are_what_the_code_requires(doc: dict[str, Any]) -> None:
    """Each type's example carries exactly its documented required parameters; the code accepts
    it, and refuses it without any one of them."""
    schemas = doc["components"]["schemas"]
    for service_type, svc in SAMPLE_SERVICES.items():
        key = re.sub(r"[^A-Za-z0-9]", "", service_type.title())
        required = set(schemas[f"PanelAdd{key}"]["required"]) - {"key", "action"}
        example = doc["components"]["examples"][f"request.add.{key}"]["value"]
        params = {k: str(v) for k, v in example.items() if k != "key"}
        assert set(params) - {"action"} == required, service_type
        validate_add(params, svc, rules_of(svc.id))
        for name in required - {"service"}:
            without = {k: v for k, v in params.items() if k != name}
            with pytest.raises(ContractError):
                validate_add(without, svc, rules_of(svc.id))


def _run_curl_stub(line: str) -> list[str]:
    """The arguments bash would pass to curl for a documented command line."""
    script = 'curl() { printf "%s\\0" "$@"; }\n' + line
    out = subprocess.run(["bash", "-c", script], capture_output=True, check=True, timeout=10)
    return out.stdout.decode().split("\0")[:-1]


def test_curl_lines_send_exactly_the_example_parameters(doc: dict[str, Any]) -> None:
    for name, example in doc["components"]["examples"].items():
        if not name.startswith("request."):
            continue
        line = example["description"].strip().removeprefix("```").removesuffix("```").strip()
        args = _run_curl_stub(line)
        assert args[0] == "-s" and args[-1] == "https://HOST/api/v2", line
        sent: dict[str, str] = {}
        for flag, value in zip(args[1:-1:2], args[2:-1:2], strict=True):
            if flag == "-d":  # sent as is: the server form-decodes it
                sent.update(parse_qsl(value, keep_blank_values=True))
            else:
                assert flag == "--data-urlencode"
                key, _, raw = value.partition("=")
                sent[key] = raw
        assert sent == {k: str(v) for k, v in example["value"].items()}, name


# --- the pages ---------------------------------------------------------------------------------

_URL_ATTR = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", re.I)


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_pages_reference_only_local_assets(app: FastAPI, page: str) -> None:
    async with _client(app) as client:
        await _check_page(client, page)


async def _check_page(client: httpx.AsyncClient, page: str) -> None:
    reply = await client.get(page)
    assert reply.status_code == 200
    html = reply.text
    policy = reply.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "img-src 'self' data:" in policy
    assert not re.search(r"https?:|\*", policy), policy
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html, re.I), html
    urls = _URL_ATTR.findall(html)
    assert any(u.endswith(".js") for u in urls)
    for url in urls:
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000, url
    assert (await client.get("/openapi.json")).status_code == 200


async def test_fastapi_cdn_pages_are_off(app: FastAPI) -> None:
    async with _client(app) as client:
        for page in ("/docs", "/redoc"):
            assert "cdn.jsdelivr.net" not in (await client.get(page)).text
        assert (await client.get("/docs/oauth2-redirect")).status_code == 404


# --- headless Chromium, offline ------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    reason = (
        f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does: apt-get install "
        "chromium) to run the rendering tests"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real gateway on a free port: uvicorn in a thread, SQLite, an unreachable upstream."""
    tmp = tmp_path_factory.mktemp("docs-gateway")
    # The admin API on, so the rendered pages show it too (off, the documents leave it out).
    settings = _settings(tmp).model_copy(update={"admin_token": "docs-admin-token-" + "x" * 32})

    async def migrate() -> None:
        db = Database(settings.database_url)
        await db.migrate()
        await db.dispose()

    asyncio.run(migrate())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings, background=False), log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "gateway did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def _render(chromium: str, url: str, workdir: Path) -> tuple[str, list[dict[str, str]]]:
    """Chromium's DOM after the page's scripts ran, and the requests the page made."""
    netlog = workdir / "netlog.json"
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={workdir / 'profile'}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--log-net-log={netlog}",
        "--dump-dom",
        "--virtual-time-budget=10000",
        url,
    ]
    done = subprocess.run(command, capture_output=True, timeout=120, check=False)
    dom = done.stdout.decode("utf-8", "replace")
    assert done.returncode == 0 and dom, done.stderr.decode("utf-8", "replace")[-2000:]
    return dom, _page_requests(netlog)


def _page_requests(netlog: Path) -> list[dict[str, str]]:
    """Every request the page made: those Chromium started with the page's origin as the
    initiator (its own traffic, such as update checks or autofill, has none)."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    requests = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event["type"] != start or "url" not in params:
            continue
        if params.get("initiator", "").startswith("http://127.0.0.1:"):
            requests.append(params)
    return requests


def _assert_offline(requests: list[dict[str, str]], assets: tuple[str, ...]) -> None:
    hosts = {urlsplit(r["url"]).hostname for r in requests}
    assert hosts == {"127.0.0.1"}, f"the page asked other hosts: {sorted(map(str, hosts))}"
    paths = {urlsplit(r["url"]).path for r in requests}
    for asset in (*assets, "/openapi.json"):
        assert asset in paths, f"{asset} not loaded: {sorted(paths)}"


def _text(dom: str) -> str:
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))


def test_swagger_ui_renders_offline(chromium: str, gateway_url: str, tmp_path: Path) -> None:
    dom, requests = _render(chromium, f"{gateway_url}/docs", tmp_path)
    _assert_offline(requests, ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"))
    # Swagger UI built the page: the panel operation is open on arrival.
    opblock = re.search(
        rf'<div class="opblock opblock-post ([^"]*)" id="operations-'
        rf'{PANEL_TAG.replace(" ", "_")}-{MAIN_OPERATION_ID}"',
        dom,
    )
    assert opblock and "is-open" in opblock[1], "the panel operation is not rendered open"
    text = _text(dom)
    for heading in ("Integrating", "Two dialects", "Errors", "Retrying add safely"):
        assert heading in text, heading
    # The request body: its content types and an example per action and per service type.
    selects = re.findall(r"<select[^>]*>(.*?)</select>", dom, flags=re.S)
    options = [re.findall(r'<option value="([^"]*)"', s) for s in selects]
    assert [
        "application/json",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ] in options
    request_examples = next(o for o in options if "request.services" in o)
    for action in ACTIONS:
        name = f"request.{action}"
        assert any(o == name or o.startswith(name + ".") for o in request_examples), action
    for service_type in SERVICE_TYPES:
        key = "request.add." + re.sub(r"[^A-Za-z0-9]", "", service_type.title())
        assert key in request_examples, service_type
    reply_examples = next(o for o in options if "reply.services.standard" in o)
    assert {
        "reply.services.smartpanel",
        "reply.status.multi.smartpanel",
        "error.Invalid_API_key",
    } <= set(reply_examples)
    assert "/api/v1" in text and "admin" in text


def test_redoc_renders_offline(chromium: str, gateway_url: str, tmp_path: Path) -> None:
    dom, requests = _render(chromium, f"{gateway_url}/redoc", tmp_path)
    _assert_offline(requests, ("/docs/assets/redoc.standalone.js",))
    text = _text(dom)
    assert "The panel API: every action, one URL" in text
    for heading in ("Integrating", "Two dialects", "Retrying add safely"):
        assert heading in text, heading
    options = set(re.findall(r'<option value="([^"]*)"', dom))
    assert set(ACTIONS) <= options, "the action discriminator is not rendered"
    assert {f"add: {t}" for t in SERVICE_TYPES} <= options, "add examples per type missing"
    assert {"services (smartpanel dialect)", "error: Invalid API key"} <= options
