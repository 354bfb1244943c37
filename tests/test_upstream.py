"""UpstreamClient against throw-away stub panels on real ports (uvicorn, raw asyncio sockets).

Every variant CONTRACT.md says an upstream may answer, and every way a call can fail, must land
in the right outcome: Refused only when the upstream certainly did not act.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import struct
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn

from app import contract
from app.upstream import (
    DRIPFEED_NOT_SUPPORTED,
    Ambiguous,
    Answer,
    Refused,
    UpstreamClient,
    UpstreamOrderStatus,
    UpstreamService,
    contract_error_for,
    encode_for_double_decode,
    has_tag_like_text,
    is_upstream_funds_error,
    is_upstream_key_error,
)

KEY = "sk_live/S3CRET+key=="  # quoting changes it: the scrubber must catch every form
HTML = "text/html; charset=UTF-8"
SSL_CONTEXT = ssl.create_default_context()
CLOUDFLARE_502 = b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head></html>"


# --- the stub panel -------------------------------------------------------------------------


@dataclass
class Reply:
    body: bytes | str | Any = b""  # bytes/str as is; anything else is JSON-encoded
    status: int = 200
    content_type: str = HTML  # SmartPanel answers everything as text/html
    delay: float = 0.0
    drop: bool = False  # send the head with a content-length, part of the body, then die
    trickle: bool = False  # one byte every 0.1 s, never finishing
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def encoded(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


Route = Reply | Callable[[dict[str, str]], Reply]


class StubPanel:
    """An ASGI app: path -> reply; records each request's form after PHP's first decoding."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.received: list[tuple[str, dict[str, str]]] = []
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        assert scope["type"] == "http"
        raw = b""
        more = True
        while more:
            message = await receive()
            raw += message.get("body", b"")
            more = message.get("more_body", False)
        form = dict(urllib.parse.parse_qsl(raw.decode(), keep_blank_values=True))
        self.received.append((scope["path"], form))
        route = self.routes[scope["path"]]
        reply = route(form) if callable(route) else route
        if reply.delay:
            await asyncio.sleep(reply.delay)
        body = reply.encoded()
        headers = [(b"content-type", reply.content_type.encode()), *reply.headers]
        if reply.drop or reply.trickle:
            await send(
                {
                    "type": "http.response.start",
                    "status": reply.status,
                    "headers": [*headers, (b"content-length", b"1000")],
                }
            )
            if reply.trickle:
                for _ in range(100):
                    await send({"type": "http.response.body", "body": b" ", "more_body": True})
                    await asyncio.sleep(0.1)
            await send({"type": "http.response.body", "body": body[:10], "more_body": True})
            raise RuntimeError("stub: connection dropped mid-reply")
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


# One stub server for the whole module (starting and stopping uvicorn costs ~0.15 s), so every
# test runs on the module's event loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stub_server() -> AsyncIterator[StubPanel]:
    app = StubPanel()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="critical", lifespan="off", access_log=False
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
        await asyncio.sleep(0.005)
    app.port = server.servers[0].sockets[0].getsockname()[1]
    yield app
    server.should_exit = server.force_exit = True  # do not wait for the sleeping handlers
    await task


@pytest.fixture
def panel(stub_server: StubPanel) -> StubPanel:
    stub_server.routes.clear()
    stub_server.received.clear()
    return stub_server


@pytest_asyncio.fixture(loop_scope="module")
async def hangup_port() -> AsyncIterator[int]:
    """Reads a whole request, then closes the connection without a byte of reply."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        await reader.readexactly(length)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


@pytest_asyncio.fixture(loop_scope="module")
async def reset_port() -> AsyncIterator[int]:
    """Reads the request head, then resets the connection (RST, not FIN)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_port() -> Any:
    """A listener whose accept queue is full: new connections are never answered (Linux drops
    the SYN), so connecting times out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(filler)
    yield port
    for sock in [*fillers, listener]:
        sock.close()


Factory = Callable[..., UpstreamClient]


@pytest_asyncio.fixture(params=["aiohttp", "httpx"], loop_scope="module")
async def make_client(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """UpstreamClient on its default transport (httpx over aiohttp), and on plain httpx."""
    clients: list[UpstreamClient] = []

    def make(url: str, **kwargs: Any) -> UpstreamClient:
        kwargs.setdefault("connect_timeout", 1.0)
        kwargs.setdefault("read_timeout", 1.0)
        if request.param == "httpx" and "transport" not in kwargs:
            kwargs["transport"] = httpx.AsyncHTTPTransport(
                verify=SSL_CONTEXT,  # building one per client costs ~50 ms
                limits=httpx.Limits(max_connections=kwargs.pop("max_connections", 20)),
            )
        client = UpstreamClient(url, KEY, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def sent(panel: StubPanel, name: str) -> str:
    """A parameter of the last request, as SmartPanel sees it after its second decoding."""
    return urllib.parse.unquote_plus(panel.received[-1][1][name])


async def answer(
    panel: StubPanel,
    make_client: Factory,
    reply: Route,
    call: Callable[[UpstreamClient], Awaitable[Any]],
    **kwargs: Any,
) -> Any:
    panel.routes["/api/v1"] = reply
    return await call(make_client(panel.url("/api/v1"), **kwargs))


# --- services -------------------------------------------------------------------------------

SMARTPANEL_SERVICES = [
    {
        "service": "5",
        "name": "Instagram Followers [15K]",
        "type": "default",
        "category": "Instagram - Followers",
        "rate": "1.0200",
        "min": "500",
        "max": "10000",
        "dripfeed": "1",
        "desc": None,
    },
    {
        "service": "6",
        "name": "Comments",
        "type": "custom_comments",
        "category": "Instagram",
        "rate": "12.5000",
        "min": "10",
        "max": "1000",
        "dripfeed": "0",
        "desc": "Real <b>users</b>",
    },
    {
        "service": "7",
        "name": "Weird",
        "type": "mystery_type",
        "category": "X",
        "rate": "1",
        "min": "1",
        "max": "2",
        "dripfeed": "0",
    },
    {
        "service": "8",
        "name": "No rate",
        "type": "default",
        "category": "X",
        "rate": "n/a",
        "min": "1",
        "max": "2",
    },
    {
        "service": "5",
        "name": "duplicate",
        "type": "default",
        "category": "X",
        "rate": "1",
        "min": "1",
        "max": "2",
    },
]


async def test_services_smartpanel_dialect(panel: StubPanel, make_client: Factory) -> None:
    services = await answer(panel, make_client, Reply(SMARTPANEL_SERVICES), lambda c: c.services())
    assert services == [
        UpstreamService(
            5,
            "Instagram Followers [15K]",
            "Instagram - Followers",
            "Default",
            1_020_000,
            500,
            10000,
            dripfeed=True,
            refill=False,
            cancel=False,
            desc=None,
        ),
        UpstreamService(
            6,
            "Comments",
            "Instagram",
            "Custom Comments",
            12_500_000,
            10,
            1000,
            dripfeed=False,
            refill=False,
            cancel=False,
            desc="Real <b>users</b>",
        ),
    ]


async def test_services_standard_dialect(panel: StubPanel, make_client: Factory) -> None:
    reply = Reply(
        [
            {
                "service": 1,
                "name": "Followers",
                "type": "Default",
                "category": "First",
                "rate": "0.90",
                "min": "50",
                "max": "10000",
                "refill": True,
                "cancel": True,
                "dripfeed": False,
            },
            {
                "service": 2,
                "name": "Package",
                "type": "Package",
                "category": "Second",
                "rate": 8,
                "min": 1,
                "max": 1,
            },  # ints, and no flags at all
            {
                "service": 3,
                "name": "Subs",
                "type": "Subscriptions",
                "category": "Third",
                "rate": 0.036,
                "min": "10",
                "max": "100",
                "refill": "0",
                "cancel": "1",
            },
        ],
        content_type="application/json",
    )
    services = await answer(panel, make_client, reply, lambda c: c.services())
    assert [
        (s.service_id, s.type, s.rate_micros, s.min, s.max, s.refill, s.cancel, s.dripfeed)
        for s in services
    ] == [
        (1, "Default", 900_000, 50, 10000, True, True, False),
        (2, "Package", 8_000_000, 1, 1, False, False, False),
        (3, "Subscriptions", 36_000, 10, 100, False, True, False),  # JSON float read exactly
    ]


async def test_services_empty_and_unusable(panel: StubPanel, make_client: Factory) -> None:
    empty = Reply({"status": "success", "data": "Empty Data"})
    assert await answer(panel, make_client, empty, lambda c: c.services()) == []
    for body in ({"status": "success"}, {"foo": 1}, "garbage{", '"a string"'):
        result = await answer(panel, make_client, Reply(body), lambda c: c.services())
        assert result == Ambiguous("unreadable"), body


# --- balance --------------------------------------------------------------------------------


async def test_balance_both_dialects(panel: StubPanel, make_client: Factory) -> None:
    smartpanel = Reply({"status": "success", "balance": "0.0300", "currency": "USD"})
    assert await answer(panel, make_client, smartpanel, lambda c: c.balance()) == (30_000, "USD")
    standard = Reply({"balance": "100.84", "currency": "EUR"}, content_type="application/json")
    assert await answer(panel, make_client, standard, lambda c: c.balance()) == (100_840_000, "EUR")
    bad_key = Reply(
        {"error": "API is Disable for this user or User Not Found! Contact the Support"}
    )
    refused = await answer(panel, make_client, bad_key, lambda c: c.balance())
    assert isinstance(refused, Refused) and refused.reason == "error_reply"
    assert is_upstream_key_error(refused.message) and contract_error_for(refused.message) is None


# --- add: the outcome decides the money -----------------------------------------------------

ADD = {"service": "5", "link": "https://instagram.com/p/x", "quantity": "1000"}


def add(client: UpstreamClient) -> Awaitable[int | Refused | Ambiguous]:
    return client.add(ADD)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply({"status": "success", "order": 32}), 32),
        (Reply({"order": "23501"}, content_type="application/json"), 23501),
        (Reply({"status": "success"}), Ambiguous("no_order_id")),
        (Reply({"order": "abc"}), Ambiguous("no_order_id")),
        (Reply({"order": None, "error": None}), Ambiguous("no_order_id")),
        (Reply([32]), Ambiguous("no_order_id")),
        (Reply(b""), Ambiguous("empty")),  # SmartPanel: the balance update touched no row
        (Reply(b"<html><body>Maintenance</body></html>"), Ambiguous("unreadable")),
        (Reply(b"{'order': 1,"), Ambiguous("unreadable")),
        (Reply(b"32"), Ambiguous("unreadable")),
        (Reply(CLOUDFLARE_502, status=502), Ambiguous("http_5xx")),
        (Reply({"error": "Internal"}, status=500), Ambiguous("http_5xx")),  # 5xx wins over JSON
        (
            Reply(b"", status=301, headers=[(b"location", b"https://elsewhere/")]),
            Ambiguous("http_3xx"),
        ),
        (Reply(b"Bad Request", status=400), Refused("HTTP 400", "http_4xx")),
        (
            Reply({"error": "Too many requests"}, status=429),
            Refused("Too many requests", "http_4xx"),
        ),
        (
            Reply({"error": "Service ID does not exists"}),
            Refused("Service ID does not exists", "error_reply"),
        ),
        (
            Reply({"status": "error", "message": "Invalid Interval in minutes"}),
            Refused("Invalid Interval in minutes", "error_reply"),
        ),
    ],
)
async def test_add_outcomes(
    panel: StubPanel, make_client: Factory, reply: Reply, expected: object
) -> None:
    assert await answer(panel, make_client, reply, add) == expected


async def test_add_read_timeout_is_ambiguous(panel: StubPanel, make_client: Factory) -> None:
    reply = Reply({"status": "success", "order": 1}, delay=3)
    result = await answer(panel, make_client, reply, add, read_timeout=0.3)
    assert result == Ambiguous("read_timeout")
    assert panel.received  # it did arrive: exactly why this must not be refunded


async def test_add_reply_that_drops_midway_is_ambiguous(
    panel: StubPanel, make_client: Factory
) -> None:
    result = await answer(
        panel, make_client, Reply({"status": "success", "order": 1}, drop=True), add
    )
    assert isinstance(result, Ambiguous) and result.reason in ("read_error", "protocol")


async def test_add_trickling_reply_hits_the_deadline(
    panel: StubPanel, make_client: Factory
) -> None:
    client = make_client(panel.url("/api/v1"), connect_timeout=0.1, read_timeout=0.3)
    panel.routes["/api/v1"] = Reply({"order": 1}, trickle=True)
    assert client.max_call_seconds == pytest.approx(0.4)
    assert await client.add(ADD) == Ambiguous("deadline")


async def test_add_hangup_after_request_is_ambiguous(
    hangup_port: int, make_client: Factory
) -> None:
    # httpx_aiohttp reports this as httpx.ConnectTimeout: it must still not be a refusal.
    client = make_client(f"http://127.0.0.1:{hangup_port}/api/v1")
    assert await client.add(ADD) == Ambiguous("protocol")


async def test_add_reset_after_request_is_ambiguous(reset_port: int, make_client: Factory) -> None:
    # httpx_aiohttp reports this one as httpx.ConnectTimeout too.
    result = await make_client(f"http://127.0.0.1:{reset_port}/api/v1").add(ADD)
    assert isinstance(result, Ambiguous), result


async def test_add_connection_refused_is_refused(closed_port: int, make_client: Factory) -> None:
    result = await make_client(f"http://127.0.0.1:{closed_port}/api/v1").add(ADD)
    assert isinstance(result, Refused) and result.reason == "connect"
    assert contract_error_for(result.message) is None


async def test_add_connect_timeout_is_refused(silent_port: int, make_client: Factory) -> None:
    client = make_client(f"http://127.0.0.1:{silent_port}/api/v1", connect_timeout=0.2)
    result = await client.add(ADD)
    assert isinstance(result, Refused) and result.reason == "connect"


async def test_add_pool_timeout_is_refused(panel: StubPanel, make_client: Factory) -> None:
    panel.routes["/slow"] = Reply({"status": "success", "order": 7}, delay=0.5)
    client = make_client(panel.url("/slow"), connect_timeout=0.2, max_connections=1)
    first = asyncio.create_task(client.add(ADD))
    await asyncio.sleep(0.1)  # the only connection is now busy
    second = await client.add(ADD)
    assert isinstance(second, Refused) and second.reason == "connect"
    assert await first == 7
    assert len(panel.received) == 1  # the refused ones never left


async def test_add_refuses_tag_like_text_without_sending(
    panel: StubPanel, make_client: Factory
) -> None:
    result = await answer(
        panel,
        make_client,
        Reply({"order": 1}),
        lambda c: c.add({**ADD, "comments": "love it <3\nnice"}),
    )
    assert isinstance(result, Refused) and result.reason == "tag_like"
    assert contract_error_for(result.message) == result.message
    assert "comments" in result.message
    assert panel.received == []


# --- double decoding ------------------------------------------------------------------------

AWKWARD = {
    "link": "https://x.com/p?a=1&b=a+b%41#frag",
    "comments": "100% sure\nline two\r\nemoji 🙂 привет ~!*'();:@=$,/?[]",
    "username": "a+b%41",
}


async def test_double_decode_arrives_intact(panel: StubPanel, make_client: Factory) -> None:
    # SmartPanel: strip_tags(urldecode(v)) on values PHP has already decoded once.
    panel.routes["/api/v1"] = lambda form: Reply({"status": "success", "order": 1})
    assert await make_client(panel.url("/api/v1")).add({**ADD, **AWKWARD}) == 1
    [(_, form)] = panel.received
    seen = {name: urllib.parse.unquote_plus(value) for name, value in form.items()}
    assert seen == {"key": KEY, "action": "add", **ADD, **AWKWARD}


async def test_without_double_decode_values_arrive_once_decoded(
    panel: StubPanel, make_client: Factory
) -> None:
    panel.routes["/api/v1"] = Reply({"status": "success", "order": 1})
    client = make_client(panel.url("/api/v1"), double_decode=False)
    assert await client.add({**ADD, **AWKWARD, "comments": "<3 allowed here"}) == 1
    [(_, form)] = panel.received
    assert form == {"key": KEY, "action": "add", **ADD, **AWKWARD, "comments": "<3 allowed here"}


async def test_the_family_is_read_from_the_catalog_and_decides_double_decoding(
    panel: StubPanel, make_client: Factory
) -> None:
    """Unset, double decoding follows the family its catalog was shaped like: on for SmartPanel
    (and while unknown: the stricter assumption), off for the standard family."""
    standard = [
        {
            "service": 1,
            "name": "F",
            "type": "Default",
            "category": "C",
            "rate": "0.90",
            "min": "50",
            "max": "10000",
            "refill": True,
            "cancel": False,
        }
    ]
    for catalog, family, twice in (
        (None, None, True),
        (SMARTPANEL_SERVICES, "smartpanel", True),
        (standard, "standard", False),
    ):
        panel.received.clear()
        client = make_client(panel.url("/api/v1"), double_decode=None)
        if catalog is not None:
            panel.routes["/api/v1"] = Reply(catalog)
            assert isinstance(await client.services(), list)
        assert client.family == family
        assert client.rules.takes_subscriptions is (family == "standard")
        assert client.rules.max_link_length == (2048 if family == "standard" else 191)
        panel.routes["/api/v1"] = Reply({"status": "success", "order": 1})
        assert await client.add({**ADD, **AWKWARD}) == 1
        form = panel.received[-1][1]
        assert (form["link"] != AWKWARD["link"]) is twice, family
    configured = make_client(panel.url("/api/v1"), double_decode=None, family="standard")
    panel.routes["/api/v1"] = Reply(SMARTPANEL_SERVICES)
    await configured.services()
    assert configured.family == "standard"  # as configured, whatever the catalog looks like


async def test_encode_for_double_decode() -> None:
    assert encode_for_double_decode("a+b%41") == "a%2Bb%2541"
    assert (
        urllib.parse.unquote_plus(
            urllib.parse.unquote_plus(urllib.parse.quote_plus(encode_for_double_decode("a+b c%41")))
        )
        == "a+b c%41"
    )


@pytest.mark.parametrize(
    ("text", "eaten"),
    [
        ("love <3", True),
        ("<b>bold</b>", True),
        ("ends with <", True),
        ("<!-- x -->", True),
        ("nul\x00byte", True),
        ("a < b", False),
        ("3 > 2", False),
        ("plain", False),
        ("", False),
    ],
)
async def test_has_tag_like_text(text: str, eaten: bool) -> None:
    assert has_tag_like_text(text) is eaten


# --- status ---------------------------------------------------------------------------------


async def test_status_one_smartpanel_quirks(panel: StubPanel, make_client: Factory) -> None:
    reply = Reply(
        {
            "order": "32",
            "status": "Refunded",
            "charge": "0.0360",
            "start_count": None,
            "remains": "+15",
            "currency": "USD",
        }
    )
    status = await answer(panel, make_client, reply, lambda c: c.status_one(32))
    assert status == UpstreamOrderStatus(
        status=contract.CANCELED,
        raw_status="Refunded",
        charge_micros=36_000,
        start_count=None,
        remains=0,
        currency="USD",
        overdelivered=15,
    )
    assert sent(panel, "order") == "32"


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("inprogress", contract.IN_PROGRESS),
        ("IN PROGRESS", contract.IN_PROGRESS),
        ("cancelled", contract.CANCELED),
        ("partial", contract.PARTIAL),
        ("Weird", None),
    ],
)
async def test_status_strings_any_case(
    panel: StubPanel, make_client: Factory, raw: str, canonical: str | None
) -> None:
    reply = Reply({"status": raw, "charge": 0.5, "start_count": 12, "remains": 3})
    status = await answer(panel, make_client, reply, lambda c: c.status_one(1))
    assert isinstance(status, UpstreamOrderStatus)
    assert (
        status.status,
        status.raw_status,
        status.charge_micros,
        status.start_count,
        status.remains,
    ) == (canonical, raw, 500_000, 12, 3)


async def test_status_one_errors(panel: StubPanel, make_client: Factory) -> None:
    missing = Reply({"error": "Incorrect order ID"})
    assert await answer(panel, make_client, missing, lambda c: c.status_one(9)) == Refused(
        "Incorrect order ID", "error_reply"
    )
    assert await answer(panel, make_client, Reply(b""), lambda c: c.status_one(9)) == Ambiguous(
        "empty"
    )
    assert await answer(
        panel, make_client, Reply({"order": "9"}), lambda c: c.status_one(9)
    ) == Ambiguous("unreadable")


async def test_status_many_smartpanel(panel: StubPanel, make_client: Factory) -> None:
    reply = Reply(
        {
            "12": {
                "order": "12",
                "status": "Completed",
                "charge": "1.5",
                "start_count": "100",
                "remains": "0",
                "currency": "USD",
            },
            "2": "Incorrect order ID",
            "30": {
                "status": "In progress",
                "runs": "3",
                "orders": [301, "302"],
            },  # drip-feed parent
            "40": {"status": "Active", "expiry": "31/12/2025", "posts": "5", "orders": ["401"]},
            "99": {"status": "Completed"},  # not asked for: ignored
        }
    )
    result = await answer(panel, make_client, reply, lambda c: c.status_many([12, 2, 30, 40, 12]))
    assert sent(panel, "orders") == "12,2,30,40"
    assert result == {
        12: UpstreamOrderStatus(
            status="Completed",
            raw_status="Completed",
            charge_micros=1_500_000,
            start_count=100,
            remains=0,
            currency="USD",
        ),
        2: Refused("Incorrect order ID", "error_reply"),
        30: UpstreamOrderStatus(
            status="In progress", raw_status="In progress", runs=3, child_orders=[301, 302]
        ),
        40: UpstreamOrderStatus(
            status="Active", raw_status="Active", expiry="31/12/2025", posts=5, child_orders=[401]
        ),
    }


async def test_status_many_standard_and_odd_shapes(panel: StubPanel, make_client: Factory) -> None:
    standard = Reply(
        {
            "1": {"status": "Partial", "charge": "0.2", "remains": "-5"},
            "2": {"error": "Incorrect order ID"},
        },
        content_type="application/json",
    )
    result = await answer(panel, make_client, standard, lambda c: c.status_many([1, 2]))
    assert isinstance(result, dict)
    assert result[2] == Refused("Incorrect order ID", "error_reply")
    first = result[1]
    assert isinstance(first, UpstreamOrderStatus)
    assert (first.status, first.remains, first.overdelivered) == ("Partial", 0, 5)

    single = Reply({"status": "Pending", "charge": "0.1"})  # one id answered as a single status
    result = await answer(panel, make_client, single, lambda c: c.status_many([5]))
    assert isinstance(result, dict) and result[5].status == "Pending"  # type: ignore[union-attr]

    as_list = Reply(
        [{"order": 6, "status": "completed"}, {"order": 7, "error": "Incorrect order ID"}]
    )
    result = await answer(panel, make_client, as_list, lambda c: c.status_many([6, 7]))
    assert isinstance(result, dict) and result[6].status == "Completed"  # type: ignore[union-attr]
    assert isinstance(result[7], Refused)

    assert await answer(
        panel, make_client, Reply({"error": "Incorrect request"}), lambda c: c.status_many([1])
    ) == Refused("Incorrect request", "error_reply")
    assert await answer(
        panel, make_client, Reply({"foo": "bar"}), lambda c: c.status_many([1, 2])
    ) == Ambiguous("unreadable")
    assert await make_client(panel.url("/api/v1")).status_many([]) == {}
    with pytest.raises(ValueError):
        await make_client(panel.url("/api/v1")).status_many(list(range(1, 102)))


# --- refill and cancel ----------------------------------------------------------------------


async def test_refill_and_refill_status(panel: StubPanel, make_client: Factory) -> None:
    assert await answer(panel, make_client, Reply({"refill": "1"}), lambda c: c.refill(5)) == 1
    assert await answer(panel, make_client, Reply({"refill": 7}), lambda c: c.refill(5)) == 7
    refused = await answer(
        panel,
        make_client,
        Reply({"error": "Refill is disabled for this service"}),
        lambda c: c.refill(5),
    )
    assert isinstance(refused, Refused)
    assert contract_error_for(refused.message) == contract.NOT_REFILLABLE
    assert (
        await answer(
            panel, make_client, Reply({"status": "completed"}), lambda c: c.refill_status(1)
        )
        == contract.COMPLETED
    )
    assert (
        await answer(
            panel, make_client, Reply({"status": "Rejected"}), lambda c: c.refill_status(1)
        )
        == contract.REJECTED
    )
    assert await answer(
        panel,
        make_client,
        Reply({"status": {"error": "Incorrect refill ID"}}),
        lambda c: c.refill_status(1),
    ) == Refused("Incorrect refill ID", "error_reply")
    assert await answer(
        panel, make_client, Reply({"status": "???"}), lambda c: c.refill_status(1)
    ) == Ambiguous("unknown_status")


async def test_cancel(panel: StubPanel, make_client: Factory) -> None:
    reply = Reply(
        [
            {"order": 2, "cancel": 1},
            {"order": "9", "cancel": {"error": "Incorrect order ID"}},
            {"order": 3, "cancel": 0},
        ]
    )
    result = await answer(panel, make_client, reply, lambda c: c.cancel([2, 9, 3]))
    assert result == {2: True, 9: Refused("Incorrect order ID", "error_reply"), 3: False}
    assert sent(panel, "orders") == "2,9,3"
    smartpanel = Reply({"error": "This action is Invalid"})  # SmartPanel has no cancel
    result = await answer(panel, make_client, smartpanel, lambda c: c.cancel([2]))
    assert result == Refused("This action is Invalid", "error_reply")
    assert contract_error_for(result.message) is None


# --- refusal texts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upstream", "ours"),
    [
        ("Service ID does not exists", contract.INCORRECT_SERVICE),
        ("Incorrect service ID", contract.INCORRECT_SERVICE),
        (
            "Quantity must to be greater than or equal to minimum amount 500",
            contract.quantity_too_low(500),
        ),
        (
            "Quantity must to be less than or equal to maximum amount 10000",
            contract.quantity_too_high(10000),
        ),
        ("Quantity less than minimal 50", contract.quantity_too_low(50)),
        ("Quantity more than maximum 1,000,000", contract.quantity_too_high(1_000_000)),
        ("Bad Link", contract.BAD_LINK),
        ("bad link", contract.BAD_LINK),
        ("This services does not support Dripfeed feature!", DRIPFEED_NOT_SUPPORTED),
        ("Incorrect order ID", contract.INCORRECT_ORDER),
        ("Incorrect refill ID", contract.INCORRECT_REFILL),
        ("Invalid Interval in minutes", "Incorrect interval"),
        (
            "You have active order with this link. Please wait until order being completed.",
            "You have active order with this link. Please wait until order being completed.",
        ),
        # never to a customer:
        ("Not enough funds on balance", None),
        ("API is Disable for this user or User Not Found! Contact the Support", None),
        ("Invalid API key", None),
        ("This action is Invalid", None),
        ("Incorrect request", None),
        ("smmmix.com is down, write to support@smmmix.com", None),
        ("", None),
    ],
)
async def test_contract_error_for(upstream: str, ours: str | None) -> None:
    assert contract_error_for(upstream) == ours


async def test_is_upstream_funds_error() -> None:
    assert is_upstream_funds_error("Not enough funds on balance")
    assert is_upstream_funds_error("Insufficient balance")
    assert not is_upstream_funds_error("Bad Link")


# --- the key stays secret -------------------------------------------------------------------


async def test_key_never_logged_or_returned(
    panel: StubPanel, make_client: Factory, closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    panel.routes["/echo"] = lambda form: Reply({"error": f"key {form['key']} is not valid"})
    panel.routes["/echo400"] = lambda form: Reply({"error": f"bad {form['key']}"}, status=400)
    panel.routes["/html"] = lambda form: Reply(f"<html>{form['key']}</html>")
    panel.routes["/ok"] = Reply({"status": "success", "order": 1})
    panel.routes["/slow"] = Reply({"order": 1}, delay=2)
    results: list[object] = []
    for path in ("/echo", "/echo400", "/html", "/ok"):
        for double_decode in (True, False):
            client = make_client(panel.url(path), double_decode=double_decode)
            results += [
                await client.add(ADD),
                await client.balance(),
                await client.call("status", order=1),
            ]
    results.append(await make_client(panel.url("/slow"), read_timeout=0.2).add(ADD))
    results.append(await make_client(f"http://127.0.0.1:{closed_port}/x").add(ADD))
    secrets = {KEY, urllib.parse.quote(KEY, safe=""), urllib.parse.quote_plus(KEY)}
    assert any(isinstance(r, Refused) and "***" in r.message for r in results)
    for text in [caplog.text, *map(repr, results), repr(make_client("http://x"))]:
        for secret in secrets:
            assert secret not in text
    assert any(r.name == "smm_gateway.upstream" for r in caplog.records)


async def test_answer_is_a_plain_value() -> None:
    assert Answer({"a": 1}) == Answer({"a": 1})
