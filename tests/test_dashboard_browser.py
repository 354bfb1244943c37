"""The dashboard's flows in headless Chromium (tests/browser.py), on SQLite and PostgreSQL:
each ends with `ledger verify` clean, no request to any host but 127.0.0.1, no failed request
and no console error (a CSP violation is one)."""

from collections.abc import Iterator
from decimal import Decimal

import pytest
from browser import (
    PANEL_B_KEY,
    Chromium,
    Stack,
    go,
    launch,
    notice,
    open_page,
    rendered,
    sign_in,
    stack_on,
)
from playwright.sync_api import Browser, Page, expect
from playwright.sync_api import Error as PlaywrightError

from app.db import Database


@pytest.fixture(scope="session")
def chromium() -> Iterator[Chromium]:
    yield from launch()


@pytest.fixture
def stack(db: Database, database_url: str) -> Iterator[Stack]:
    """`db` empties the database first (PostgreSQL's is shared by the session)."""
    with stack_on(database_url) as served:
        yield served
        assert served.verify() == {"clean": True, "problems": []}


def balance_shown(page: Page) -> str:
    return page.locator("#balance").inner_text()


def test_customers_and_money(chromium: Chromium, stack: Stack) -> None:
    chromium.page(stack.url, lambda page: customers_and_money(page, stack))


def customers_and_money(page: Page, stack: Stack) -> None:
    sign_in(page)
    go(page, "nav >> text=Customers")
    rendered(page)
    form = page.locator("#create-customer")
    form.locator("input[name=name]").fill("Acme Reseller")
    form.locator("input[name=markup_percent]").fill("10")
    go(page, form.locator("button"))
    rendered(page)
    key = page.locator("#api-key").inner_text().strip()
    assert len(key) == 64
    assert stack.balance(key) == "0.00"

    go(page, "text=Go to the customer's page")
    rendered(page)
    assert balance_shown(page) == "0.00 USD"
    for _ in range(2):  # the same payment posted twice: credited once
        topup = page.locator("#topup")
        topup.locator("input[name=amount]").fill("25.00")
        topup.locator("input[name=ref]").fill("pay-1001")
        go(page, topup.locator("button"))
        rendered(page)
    assert "posted before" in notice(page) and "nothing credited again" in notice(page)
    assert balance_shown(page) == "25.00 USD"
    assert stack.balance(key) == "25.00"

    adjust = page.locator("#adjust")
    adjust.locator("input[name=amount]").fill("-5")
    adjust.locator("input[name=ref]").fill("fix-1")
    adjust.locator("input[name=memo]").fill("goodwill reversed")
    go(page, adjust.locator("button"))
    assert balance_shown(page) == "20.00 USD"
    adjust.locator("input[name=amount]").fill("-500")  # never below zero: refused, nothing moves
    go(page, adjust.locator("button"))
    expect(page.locator("p.notice.error")).to_be_visible()
    assert balance_shown(page) == "20.00 USD"

    go(page, "nav >> text=Ledger")
    rendered(page)
    rows = page.locator("table.entries tbody tr")
    expect(rows).to_have_count(2)
    assert "pay-1001" in rows.nth(1).inner_text() and "25.00" in rows.nth(1).inner_text()
    go(page, "#verify")
    expect(page.locator("#verify-result")).to_contain_text("clean")


def test_keys_settings_and_disabling(chromium: Chromium, stack: Stack) -> None:
    chromium.page(stack.url, lambda page: keys_settings_and_disabling(page, stack))


def keys_settings_and_disabling(page: Page, stack: Stack) -> None:
    sign_in(page)
    page.goto("/dashboard/customers")
    page.locator("#create-customer input[name=name]").fill("Bot Shop")
    go(page, page.locator("#create-customer button"))
    first = page.locator("#api-key").inner_text().strip()
    go(page, "text=Go to the customer's page")
    go(page, "text=Issue another key")
    rendered(page)
    second = page.locator("#api-key").inner_text().strip()
    assert second != first and stack.balance(second) == "0.00"
    go(page, "text=Go to the customer's page")
    go(page, page.locator("#keys tr", has_text=first[:8]).locator("button:has-text('Revoke')"))
    rendered(page)
    assert "revoked" in notice(page)
    assert stack.balance(first) is None and stack.balance(second) == "0.00"

    settings = page.locator("#settings")
    settings.locator("input[name=markup_percent]").fill("35")
    settings.locator("select[name=dialect]").select_option("smartpanel")
    go(page, settings.locator("button"))
    rendered(page)
    assert "markup 35%" in notice(page) and "smartpanel" in notice(page)

    page.locator("form:has(button:has-text('Disable')) input[type=checkbox]").check()
    go(page, "button:has-text('Disable')")
    rendered(page)
    assert "disabled" in notice(page)
    assert stack.balance(second) is None
    go(page, "button:has-text('Enable')")
    assert stack.balance(second) == "0.0000"  # the smartpanel dialect's way of saying it

    go(page, "nav >> text=Customers")
    page.fill("input[name=q]", "bot")
    go(page, "button:has-text('Search')")
    expect(page.locator("#customers tbody tr")).to_have_count(1)
    go(page, "button:has-text('Sign out')")
    rendered(page)
    assert "Signed out." in notice(page)
    page.goto("/dashboard/customers")
    expect(page.locator("input[name=token]")).to_be_visible()


def test_orders_and_resolving_unknown_ones(chromium: Chromium, stack: Stack) -> None:
    stack.admin("POST", "/services/sync")
    customer_id, key = stack.customer_with_funds("Orders Inc", "100.00")
    service = stack.default_service(key)
    quantity = int(service["min"])
    placed = stack.panel(
        key,
        "add",
        service=service["service"],
        link="https://x.test/a/sim:complete",
        quantity=quantity,
    )
    # The upstream takes these two, then never answers: `unknown`, funds held.
    lost = [
        stack.panel(
            key,
            "add",
            service=service["service"],
            link=f"https://x.test/{n}/sim:timeout",
            quantity=quantity,
        )
        for n in ("b", "c")
    ]
    assert all(isinstance(o, dict) and "order" in o for o in (placed, *lost)), (placed, lost)
    unknown_ids = [int(o["order"]) for o in lost]  # type: ignore[index]
    upstream_id = {str(o["params"]["link"]): int(o["id"]) for o in stack.sim_orders()}
    balance_before = stack.balance(key)

    def flow(page: Page) -> None:
        sign_in(page)
        go(page, "nav >> text=Orders")
        rendered(page)
        expect(page.locator("#orders tbody tr")).to_have_count(3)
        page.select_option("#order-filters select[name=state]", "unknown")
        go(page, "#order-filters button")
        rendered(page)
        rows = page.locator("#orders tbody tr")
        expect(rows).to_have_count(2)
        go(page, f"#orders a:text-is('{unknown_ids[0]}')")
        rendered(page)
        expect(page.locator("#order-state")).to_have_text("unknown")
        # Ask the provider about the id found there: its answer is shown beside the form.
        page.fill("#ask input[name=check]", str(upstream_id["https://x.test/b/sim:timeout"]))
        go(page, "#ask button")
        rendered(page)
        says = page.locator("#provider-says")
        expect(says).to_contain_text("It matches this order.")
        expect(says).to_contain_text("Pending")
        go(page, "#resolve-placed button")
        rendered(page)
        assert "resolved: placed as upstream order" in notice(page)
        expect(page.locator("#order-state")).to_have_text("placed")

        # The other one, said to be placed as the id just given to the first: refused.
        page.goto(f"/dashboard/orders/{unknown_ids[1]}")
        page.fill(
            "#resolve-placed input[name=upstream_order_id]",
            str(upstream_id["https://x.test/b/sim:timeout"]),
        )
        go(page, "#resolve-placed button")
        expect(page.locator("p.notice.error").first).to_contain_text("belongs to order")
        expect(page.locator("#order-state")).to_have_text("unknown")
        page.locator("#resolve-not-placed input[type=checkbox]").check()
        go(page, "#resolve-not-placed button")
        rendered(page)
        assert "not placed: refunded" in notice(page)
        expect(page.locator("#order-state")).to_have_text("rejected")
        expect(page.locator("table.entries tbody tr")).to_have_count(2)  # charge, refund

        page.goto(f"/dashboard/orders?customer={customer_id}&state=placed")
        expect(page.locator("#orders tbody tr")).to_have_count(2)

    chromium.page(stack.url, flow)
    # The not-placed order's charge came back; the placed ones stay paid.
    charge = stack.admin("GET", f"/orders/{unknown_ids[1]}")["charge"]
    assert Decimal(stack.balance(key) or "0") == Decimal(balance_before or "0") + Decimal(charge)


def micros(text: str) -> int:
    return int(Decimal(text) * 1_000_000)


def test_prices_and_the_margin_on_the_overview(chromium: Chromium, stack: Stack) -> None:
    customer_id, key = stack.customer_with_funds("Margins Ltd", "50.00")
    stack.admin("POST", "/customers", json={"name": "Plain"})  # no markup of its own

    def prices(page: Page) -> int:
        sign_in(page)
        go(page, "nav >> text=Services")
        rendered(page)
        go(page, "#sync-catalog")
        rendered(page)
        assert notice(page).startswith("Catalog synced:")
        service_id = int(page.locator("#services tbody tr td a").first.inner_text())
        page.goto(f"/dashboard/services/{service_id}")
        rendered(page)
        # Before setting a price: whom a price for everyone would reach, and why not the rest.
        table = page.locator("#customer-prices")
        expect(table.locator("tr", has_text="Margins Ltd")).to_contain_text(
            "their own markup of 20%"
        )
        expect(table.locator("tr", has_text="Plain")).to_contain_text("the default markup")
        form = page.locator("#set-price")
        form.locator("input[name=markup_percent]").fill("50")
        go(page, form.locator("button"))
        rendered(page)
        said = notice(page)
        assert "for every customer without a price of their own: 1 customer" in said
        assert "Margins Ltd" in said and "their own markup of 20% comes first" in said
        expect(table.locator("tr", has_text="Plain")).to_contain_text("the price for everyone")
        cost = micros(page.locator("#cost").inner_text().split()[0])
        plain_rate = table.locator("tr", has_text="Plain").locator("td").nth(1).inner_text()
        assert micros(plain_rate) == -(-cost * 15_000 // 10_000)  # cost × 1.5, rounded up
        form.locator("input[name=rate]").fill(str(Decimal(cost * 3) / 1_000_000))
        form.locator("input[name=customer]").fill(str(customer_id))
        go(page, form.locator("button"))
        assert "for customer" in notice(page) and "only" in notice(page)
        mine = table.locator("tr", has_text="Margins Ltd")
        expect(mine).to_contain_text("their own price for this service")
        assert micros(mine.locator("td").nth(1).inner_text()) == cost * 3
        expect(page.locator("#rules tbody tr")).to_have_count(2)
        return service_id

    service_id = chromium.page(stack.url, prices)
    offered = {int(s["service"]): s for s in stack.panel(key, "services")}  # type: ignore[union-attr]
    upstream_rate = micros(stack.sim_services()[service_id]["rate"])
    assert micros(offered[service_id]["rate"]) == upstream_rate * 3
    quantity = int(offered[service_id]["min"])
    order = stack.panel(
        key, "add", service=service_id, link="https://x.test/m/sim:complete", quantity=quantity
    )
    lost = stack.panel(
        key, "add", service=service_id, link="https://x.test/n/sim:timeout", quantity=quantity
    )
    charge = micros(stack.panel(key, "status", order=order["order"])["charge"])  # type: ignore[index]
    held = micros(stack.panel(key, "status", order=lost["order"])["charge"])  # type: ignore[index]
    cost = -(-upstream_rate * quantity // 1000)  # DESIGN.md: ceil(rate × units / 1000)
    expected_margin = (charge - cost) + (held - cost)  # an unknown order counts: it may exist

    def overview(page: Page) -> None:
        sign_in(page)
        rendered(page)
        assert micros(page.locator("#today-margin").inner_text()) == expected_margin
        assert micros(page.locator("#month-margin").inner_text()) == expected_margin
        bars = page.locator("#margin-chart rect")
        expect(bars).to_have_count(30)
        assert Decimal(str(expected_margin)) / 1_000_000 == Decimal(
            bars.last.locator("title").text_content().split("margin ")[1].split()[0]  # type: ignore[union-attr]
        )
        expect(page.locator("#states")).to_contain_text("unknown")
        expect(page.locator("#balances")).to_contain_text("USD")
        expect(page.locator("#catalog-age")).to_contain_text("ago")
        attention = page.locator("#attention")
        go(page, attention.locator(f"a:text-is('order {lost['order']}')"))  # type: ignore[index]
        rendered(page)
        expect(page.locator("#resolve-not-placed")).to_be_visible()
        page.goto("/dashboard")
        go(page, "#sync-now")
        rendered(page)
        assert notice(page).startswith("Sync pass:")
        go(page, "text=Report for any period")
        rendered(page)
        assert micros(page.locator("#report-margin").inner_text()) == expected_margin

    chromium.page(stack.url, overview)


def test_a_second_provider(chromium: Chromium, stack: Stack) -> None:
    _, key = stack.customer_with_funds("Two Panels", "60.00")

    def add_and_map(page: Page) -> int:
        sign_in(page)
        go(page, "nav >> text=Providers")
        expect(page.locator("#providers tbody tr")).to_have_count(1)  # `default`
        form = page.locator("#add-provider")
        form.locator("input[name=name]").fill("panel-b")
        form.locator("input[name=url]").fill(f"{stack.panel_b_url}/api/v2")
        form.locator("input[name=key]").fill(PANEL_B_KEY)
        form.locator("input[name=low_balance]").fill("5000")
        go(page, form.locator("button"))
        assert "Provider panel-b added" in notice(page)
        facts = page.locator("#provider-facts")
        expect(facts).to_contain_text("fingerprint")
        assert PANEL_B_KEY not in page.content()  # never shown again
        go(page, "#ask-balance")
        assert "Balance at panel-b: 1000.00" in notice(page)
        assert "below its low-balance threshold" in notice(page)

        go(page, "nav >> text=Services")
        go(page, "#sync-catalog")
        assert notice(page).startswith("Catalog synced:")
        service_id = int(page.locator("#services tbody tr td a").first.inner_text())
        page.goto(f"/dashboard/services/{service_id}")
        rendered(page)
        form = page.locator("#map-offer")
        form.locator("select[name=provider]").select_option("panel-b")
        form.locator("input[name=provider_service_id]").fill(str(service_id))
        form.locator("input[name=position]").fill("0")
        go(page, form.locator("button"))
        assert "tried in this order: panel-b, default" in notice(page)
        expect(page.locator("#offers tbody tr").first).to_contain_text("panel-b")
        return service_id

    service_id = chromium.page(stack.url, add_and_map)
    offered = {int(s["service"]): s for s in stack.panel(key, "services")}  # type: ignore[union-attr]
    quantity = int(offered[service_id]["min"])
    first = stack.panel(
        key, "add", service=service_id, link="https://x.test/b1/sim:complete", quantity=quantity
    )
    assert isinstance(first, dict) and "order" in first
    assert [o["params"]["link"] for o in stack.sim_orders(stack.panel_b_url)] == [
        "https://x.test/b1/sim:complete"
    ]
    assert stack.sim_orders() == []  # panel-b first: default got nothing

    def orders_and_disable(page: Page) -> None:
        sign_in(page)
        expect(page.locator("#balances")).to_contain_text("panel-b")
        expect(page.locator("#balances")).to_contain_text("low")
        page.goto("/dashboard/orders?provider=panel-b")
        rendered(page)
        expect(page.locator("#orders tbody tr")).to_have_count(1)
        go(page, f"#orders a:text-is('{first['order']}')")
        expect(page.locator("#order-provider")).to_have_text("panel-b")
        go(page, "#order-provider a")
        page.locator("form:has(button:has-text('Disable')) input[type=checkbox]").check()
        go(page, "button:has-text('Disable')")
        assert "panel-b disabled" in notice(page)
        page.goto("/dashboard/report")
        rendered(page)
        expect(page.locator("h2:has-text('By provider') + table")).to_contain_text("panel-b")

    chromium.page(stack.url, orders_and_disable)
    second = stack.panel(
        key, "add", service=service_id, link="https://x.test/b2/sim:complete", quantity=quantity
    )
    assert isinstance(second, dict) and "order" in second
    assert [o["params"]["link"] for o in stack.sim_orders()] == ["https://x.test/b2/sim:complete"]


def test_the_browser_reaches_nothing_but_the_gateway(chromium: Chromium, stack: Stack) -> None:
    """The guard the other tests rely on: a request to another host is stopped and seen."""

    def step(browser: Browser) -> list[str]:
        with open_page(browser, stack.url, chromium.viewport) as (page, watch):
            sign_in(page)
            with pytest.raises(PlaywrightError):
                page.goto("http://cdn.example.test/some.css")
        return watch.outside

    assert chromium.run(step) == ["http://cdn.example.test/some.css"]
