"""bench/soak.py's wider fault classes (issue 10), each behind its option (off by default):

- `--charge-differs SHARE`: that share of the orders is charged another rate than the
  simulator lists (link marker `sim:charge=P`), so the upstream's first charge differs from our
  catalog estimate (the settlement proof then uses the upstream's own first charge);
- `--catalog-changes N`: N catalog edits while orders are live (rate up or down, min/max, a
  service delisted and relisted), through the simulator's `/_sim/catalog`;
- `--poison N`: N times, one live upstream order answers an unusable charge or remains or an
  unknown status word for a few seconds (`/_sim/overrides`), then it is healed.

Drawn from their own random stream, so a run with all of them off is the run it always was.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from typing import Any

import httpx

from app.simulator.catalog import CATALOG

CHARGE_PERCENTS = (50, 90, 110, 137, 200)
POISON = (
    ("charge", "1e+30"), ("charge", "NaN"), ("charge", "-5"), ("remains", "1e400"),
    ("remains", "abc"), ("status", "Rejected"), ("status", "Suspended"),
)  # fmt: skip
POISON_SECONDS = 3.0


class Wide:
    def __init__(self, args: Any, client: httpx.AsyncClient, sim_url: str) -> None:
        self.args, self.client, self.sim_url = args, client, sim_url
        self.rng = random.Random(f"{args.seed}:wide")
        self.counts = {"charge_differs": 0, "catalog_changes": 0, "poisoned": 0}
        self.poisoned: set[int] = set()

    def charge_marker(self) -> str:
        if self.args.charge_differs and self.rng.random() < self.args.charge_differs:
            self.counts["charge_differs"] += 1
            return f"sim:charge={self.rng.choice(CHARGE_PERCENTS)}"
        return ""

    async def run(self, planned: float, now: Any) -> None:
        """The catalog edits and poisonings, each at a random moment of equal slots."""
        events = ["catalog"] * self.args.catalog_changes + ["poison"] * self.args.poison
        self.rng.shuffle(events)
        slot = planned / max(1, len(events))
        for k, event in enumerate(events):
            await asyncio.sleep(max(0.0, slot * (k + self.rng.random()) - now()))
            await (self.catalog_change() if event == "catalog" else self.poison())

    async def catalog_change(self) -> None:
        svc = self.rng.choice(CATALOG)
        current = (await self.client.get(f"{self.sim_url}/_sim/catalog")).json().get(str(svc.id))
        roll = self.rng.random()
        if current is None:
            change: dict[str, Any] | None = {
                k: v for k, v in dataclasses.asdict(svc).items() if k != "id"
            }
        elif roll < 0.2:
            change = None  # delisted
        elif roll < 0.7:
            percent = self.rng.choice((80, 125, 150))
            micros = round(float(current["rate"]) * 10**6) * percent // 100
            change = {"rate": f"{micros / 10**6:.4f}"}
        else:
            change = {"max": max(current["min"], current["max"] // 2)}
        await self.client.post(f"{self.sim_url}/_sim/catalog", json={str(svc.id): change})
        self.counts["catalog_changes"] += 1

    async def poison(self) -> None:
        listing = (await self.client.get(f"{self.sim_url}/_sim/orders", timeout=120)).json()
        live = [o["id"] for o in listing if o["status"] in ("Pending", "In progress", "Active")]
        if not live:
            return
        upstream_id = self.rng.choice(live)
        name, value = self.rng.choice(POISON)
        await self.override(upstream_id, {name: value})
        self.counts["poisoned"] += 1
        await asyncio.sleep(POISON_SECONDS)
        await self.override(upstream_id, None)

    async def override(self, upstream_id: int, fields: dict[str, str] | None) -> None:
        body = {"status": {str(upstream_id): fields}}
        await self.client.post(f"{self.sim_url}/_sim/overrides", json=body)
        (self.poisoned.add if fields else self.poisoned.discard)(upstream_id)

    async def heal_all(self) -> None:
        for upstream_id in sorted(self.poisoned):
            await self.override(upstream_id, None)


def add_options(parser: Any) -> None:
    parser.add_argument(
        "--charge-differs",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of orders charged another rate than listed (sim:charge=P)",
    )
    parser.add_argument(
        "--catalog-changes",
        type=int,
        default=0,
        metavar="N",
        help="catalog edits while orders are live (rate, max, delist/relist)",
    )
    parser.add_argument(
        "--poison",
        type=int,
        default=0,
        metavar="N",
        help="times one live upstream order answers poison for a few seconds",
    )
