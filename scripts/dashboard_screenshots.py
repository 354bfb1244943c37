"""Screenshots of every dashboard page, for README.md's "Dashboard" section.

    .venv/bin/python scripts/dashboard_screenshots.py [--out docs/dashboard]

Runs what the browser tests run (tests/browser.py): the simulator and a gateway on a fresh
SQLite file, each on a port of 127.0.0.1, and Debian's /usr/bin/chromium through Playwright
with every other host unreachable. It fills the gateway with a few customers, top-ups and
orders (one left `unknown`) through the admin and panel APIs, then saves one PNG per page.
"""

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from browser import PANEL_B_KEY, Chromium, Stack, rendered, sign_in, stack_on  # noqa: E402
from playwright.sync_api import Page  # noqa: E402

from app.db import Database  # noqa: E402

VIEWPORT = {"width": 1200, "height": 760}


def fill(stack: Stack) -> dict[str, int]:
    """A small business: three customers, money in, orders in several states."""
    stack.admin(
        "POST",
        "/providers",
        json={
            "name": "panel-b",
            "url": f"{stack.panel_b_url}/api/v2",
            "key": PANEL_B_KEY,
            "low_balance": "250",
        },
    )
    stack.admin("POST", "/services/sync")
    stack.admin("GET", "/providers/panel-b/balance")
    acme, acme_key = stack.customer_with_funds("Acme Reseller", "250.00")
    shop, shop_key = stack.customer_with_funds("Bot Shop", "80.00")
    stack.admin("POST", "/customers", json={"name": "Panel Nine", "dialect": "smartpanel"})
    stack.admin("POST", f"/customers/{shop}/topup", json={"amount": "40", "ref": "inv-1042"})
    service = stack.default_service(acme_key)
    sid, quantity = service["service"], int(service["min"])
    stack.admin("PUT", f"/services/{sid}/price", json={"markup_percent": "35"})
    # panel-b delivers it too, after default: the orders below still go to default first.
    stack.admin(
        "PUT", f"/services/{sid}/offers", json={"provider": "panel-b", "provider_service_id": sid}
    )
    for n, (key, marker) in enumerate(
        [
            (acme_key, "complete"),
            (acme_key, "partial"),
            (shop_key, "complete"),
            (shop_key, "cancel"),
            (acme_key, "complete"),
        ]
    ):
        stack.panel(
            key,
            "add",
            service=sid,
            link=f"https://example.test/p/{n}/sim:{marker}",
            quantity=quantity * (n + 1),
        )
    lost = stack.panel(
        shop_key, "add", service=sid, link="https://example.test/p/9/sim:timeout", quantity=quantity
    )
    stack.admin("POST", "/sync")
    assert isinstance(lost, dict)
    unknown = int(lost["order"])
    upstream = next(o["id"] for o in stack.sim_orders() if "p/9/" in o["params"]["link"])
    return {"customer": acme, "service": sid, "unknown": unknown, "upstream": upstream}


def shoot(page: Page, out: Path, ids: dict[str, int]) -> list[Path]:
    sign_in(page)
    shots = [
        ("overview", "/dashboard"),
        ("customers", "/dashboard/customers"),
        ("customer", f"/dashboard/customers/{ids['customer']}"),
        ("orders", "/dashboard/orders"),
        ("order-unknown", f"/dashboard/orders/{ids['unknown']}?check={ids['upstream']}"),
        ("services", "/dashboard/services"),
        ("service", f"/dashboard/services/{ids['service']}"),
        ("providers", "/dashboard/providers"),
        ("ledger", "/dashboard/ledger?verify=1"),
    ]
    saved = []
    for name, path in shots:
        page.goto(path)
        rendered(page)
        target = out / f"{name}.png"
        page.screenshot(path=str(target))
        saved.append(target)
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'gateway.db'}"

        async def migrate() -> None:
            db = Database(url)
            await db.migrate()
            await db.dispose()

        asyncio.run(migrate())
        chromium = Chromium(viewport=VIEWPORT)
        try:
            with stack_on(url, log_level="WARNING") as stack:
                ids = fill(stack)
                saved = chromium.page(stack.url, lambda page: shoot(page, out, ids))
                assert stack.verify()["clean"]
        finally:
            chromium.close()
    for path in saved:
        print(
            f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}"
            f"  {path.stat().st_size // 1024} KB"
        )


if __name__ == "__main__":
    main()
