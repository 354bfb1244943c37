"""The panel endpoint driven with arbitrary text (hypothesis), over every transport, on SQLite
and PostgreSQL; and deeply nested JSON at the panel and the admin API.

Lone surrogates, digits of other scripts, numbers of thousands of digits and deep nesting go
into every parameter an `add`, `status`, `refill`, `refill_status` or `cancel` reads, sent as a
form, a JSON object, a query string or multipart. Whatever arrives: no 5xx, a JSON reply, no
order left `sending` or `unknown`, and the ledger verifies clean after each request. The gateway
is the admin hypothesis test's (one event loop for all the examples of a run).
"""

import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_admin_hypothesis import Gateway, hostile_text

from app.orders.placing import SENDING, UNKNOWN
from app.orders.queries import list_orders

# What each action reads: the generated requests aim their hostile values there.
IDS = ["order", "orders"]
ACTION_PARAMS = {
    "services": [],
    "balance": [],
    "add": ["service", "quantity", "link", "comments", "usernames", "username", "runs",
            "interval", "delay", "min", "max", "posts", "expiry"],
    "status": IDS,
    "refill": IDS,
    "refill_status": ["refill", "refills"],
    "cancel": IDS,
}  # fmt: skip
SERVICES = ["1", "5", "12", "120", "190"]  # a few the simulator has, of several types
DEEP = 100_000

numbers = st.one_of(
    st.sampled_from(["²", "٥", "١٠٠٠", "5" * 5000, str(2**31), str(2**63), "-1", "1e3", " 7 "]),
    st.integers(min_value=0, max_value=2**70).map(str),
)
value = st.one_of(hostile_text, numbers, st.sampled_from(SERVICES))
transport = st.sampled_from(["form", "json", "query", "multipart"])


@st.composite
def panel_requests(draw: st.DrawFn) -> tuple[str, dict[str, str], bool]:
    action = draw(st.sampled_from(list(ACTION_PARAMS)))
    names = ACTION_PARAMS[action]
    params = draw(st.fixed_dictionaries({}, optional={name: value for name in names}))
    if action == "add" and draw(st.integers(0, 3)):  # mostly a real service, to go deeper
        params["service"] = draw(st.sampled_from(SERVICES))
    params["action"] = (
        draw(st.one_of(st.just(action), hostile_text)) if draw(st.integers(0, 9)) == 0 else action
    )
    if draw(st.integers(0, 9)) == 0:
        params["key"] = draw(hostile_text)
    real_key = "key" not in params
    return draw(transport), params, real_key


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate as a client could send it


def _form(params: dict[str, str]) -> str:
    return "&".join(
        f"{quote(_bytes(k), safe='')}={quote(_bytes(v), safe='')}" for k, v in params.items()
    )


class PanelGateway(Gateway):
    def __init__(self, database_url: str) -> None:
        super().__init__(database_url)
        created = self.send("POST", "/admin/customers", {"name": "panel"})
        assert created.status_code == 201, created.text
        self.key = created.json()["key"]
        topped = self.send("POST", f"/admin/customers/{created.json()['id']}/topup",
                           {"amount": "1000"})  # fmt: skip
        assert topped.status_code == 200, topped.text

    def panel(self, how: str, params: dict[str, str]) -> Any:
        client = self.client
        if how == "query":
            request = client.get("/api/v2?" + _form(params))
        elif how == "form":
            form_type = {"Content-Type": "application/x-www-form-urlencoded"}
            request = client.post("/api/v2", content=_form(params), headers=form_type)
        elif how == "json":
            body = json.dumps(params, ensure_ascii=True)  # \\udc80 escapes
            request = client.post(
                "/api/v2", content=body, headers={"Content-Type": "application/json"}
            )
        else:
            files = {k: (None, _bytes(v)) for k, v in params.items()}
            # Built apart: the client's default Content-Type (JSON, for the admin API) must
            # not replace the multipart one.
            url = client.base_url.join("/api/v2")
            request = client.send(httpx.Request("POST", url, files=files))
        return self.runner.run(request)

    def raw(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> Any:
        headers = {"Content-Type": "application/json", **(headers or {})}
        return self.runner.run(self.client.post(path, content=body, headers=headers))

    def stranded(self) -> list[int]:
        db = self.app.state.gateway.db
        orders = self.runner.run(list_orders(db, limit=100_000))
        return [o.id for o in orders if o.state in (SENDING, UNKNOWN)]

    def assert_books_clean(self) -> None:
        verified = self.send("GET", "/admin/ledger/verify", None)
        assert verified.json() == {"clean": True, "problems": []}


@pytest.fixture
def gateway(database_url: str) -> Any:
    gw = PanelGateway(database_url)
    yield gw
    gw.close()


@settings(
    max_examples=300,  # ~10 s for both databases; CI runs it
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=panel_requests())
def test_arbitrary_customer_input_never_gets_a_server_error(
    gateway: PanelGateway, request: tuple[str, dict[str, str], bool]
) -> None:
    how, params, real_key = request
    if real_key:
        params = {**params, "key": gateway.key}
    response = gateway.panel(how, params)
    assert response.status_code < 500, (how, params, response.text)
    assert response.status_code in (200, 413), (how, params, response.text)
    reply = response.json()
    if isinstance(reply, dict) and "error" in reply:
        assert isinstance(reply["error"], str) and reply["error"] != "Internal error"
    assert gateway.stranded() == [], (how, params)
    gateway.assert_books_clean()


def test_deeply_nested_json_is_refused_at_both_faces(gateway: PanelGateway) -> None:
    nested = b"[" * DEEP + b"]" * DEEP
    inside = b'{"key": "%s", "action": "balance", "x": %s}' % (gateway.key.encode(), nested)
    for body in (nested, inside):
        reply = gateway.raw("/api/v2", body)
        assert (reply.status_code, reply.json()) == (200, {"error": "Incorrect request"})
    deep_object = b'{"a":' * DEEP + b"1" + b"}" * DEEP
    for path in ("/admin/customers", "/admin/customers/1/topup"):
        for body in (nested, deep_object):
            reply = gateway.raw(path, body)
            assert 400 <= reply.status_code < 500, (path, reply.status_code, reply.text[:200])
            assert reply.json()["detail"]
    gateway.assert_books_clean()
