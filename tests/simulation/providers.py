"""The simulation's second provider (issue 13, item 6): fault class `providers`.

With the class on, a second simulator (the `standard` dialect, its own seed and key, the same
catalog ids at partly different prices) is provider `b`, added as an operator adds one and
mapped as the alternative (position 1) of every service it can deliver, as bench/soak.py
--providers 2 does. The gateway reaches both through one `Wire`, by host. Its steps:

- `provider_funds`: provider `default` (simulator A) runs out of funds, or is funded again;
- `provider_down`: A goes down (connect refused: the request never leaves) or comes back up
  with every order it holds (a panel killed and restarted keeps its database), or A is killed
  in the middle of an `add` it has already taken (the reply is lost: ambiguous), or B goes
  down or comes back.

The invariants across providers (checked by the harness after every step and at the end): an
upstream order is (provider, its id) and belongs to exactly one gateway order on that
provider; a placed or unknown order has one provider, and its link is held by no other
simulator; a request reached a second provider only after a definite refusal of the one before
(the Wire's record of every `add`: a connect refused or an `{"error"}` answer), so no link is
ever accepted at two; the charge is taken once (the balances' check); ledger verify is clean.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from typing import TYPE_CHECKING

import httpx
from fastapi import FastAPI

from app import providers
from app.catalog import map_offer, sync_catalog
from app.errors import OperatorError
from app.simulator import SimConfig, create_simulator_app
from app.simulator.catalog import CATALOG

if TYPE_CHECKING:
    from .harness import Simulation

A, B = 1, 2  # provider ids: `default` (simulator A), then `b` as `providers add` numbers it
A_HOST, B_HOST = "upstream.sim", "b.sim"
NAMES = {A_HOST: "default", B_HOST: "b"}
B_KEY = "vopr-simulator-key-b"
B_SEED_OFFSET = 7919  # B's own randomness: another seed than A's
FUNDED = "1000000000"  # what a funded simulator holds (its starting balance, 10**15 micros)
# What counts as a definite refusal at the wire: the request never left, or an {"error"}.
DEFINITE = frozenset({"down", "refused"})

PROVIDER_STEPS = {"provider_funds": "providers", "provider_down": "providers"}
PROVIDER_WEIGHTS = {"provider_funds": 3, "provider_down": 4}


def b_rate(rate_micros: int, service_id: int) -> str | None:
    """B's price of a shared service: some cheaper, some dearer (then a failover of an order
    that would cost more at B than its customer pays is left out), the rest the same."""
    if service_id % 3 == 0:
        return f"{rate_micros * 80 // 100 / 10**6:.4f}"
    if service_id % 5 == 0:
        return f"{rate_micros * 160 // 100 / 10**6:.4f}"
    return None


def second_simulator(seed: int, clock: object) -> FastAPI:
    return create_simulator_app(
        SimConfig(
            key=B_KEY,
            balance_micros=10**15,
            dialect="standard",
            tick_seconds=1.0,
            seed=seed + B_SEED_OFFSET,
        ),
        clock=clock,  # type: ignore[arg-type]
    )


class ProviderSteps:
    """Steps and checks of the `providers` class, mixed into `Simulation`."""

    def providers_init(self: Simulation) -> None:
        self.a_funded = True
        self.killed_seen = 0

    @property
    def two_providers(self: Simulation) -> bool:
        return B in self.sims

    async def add_second_provider(self: Simulation) -> None:
        """Provider `b` as an operator adds it; its catalog synced; each of its services made
        the alternative of the local service with the same id (after A's offer)."""
        edits = {
            str(svc.id): {"rate": rate}
            for svc in CATALOG
            if (rate := b_rate(svc.rate_micros, svc.id)) is not None
        }
        edited = await self.sim_clients[B].post("/_sim/catalog", json=edits)
        assert edited.status_code == 200, edited.text
        added = await providers.add_provider(
            self.db,
            self.settings,
            name="b",
            url=f"http://{B_HOST}/api/v2",
            key=B_KEY,
            family="standard",
        )
        assert added.id == B, added
        clients = self.clients
        await clients.refresh(self.db)
        client = clients.get(B)
        assert client is not None
        result = await sync_catalog(self.db, client, B)
        assert result.ok, result
        mapped = 0
        for svc in CATALOG:
            with contextlib.suppress(OperatorError):  # a type of its own there: unmapped
                await map_offer(self.db, svc.id, B, svc.id)
                mapped += 1
        assert mapped > 0
        self.note(f"setup: provider b (standard, {mapped} services mapped after default's)")

    # -- steps --

    async def step_provider_funds(self: Simulation) -> None:
        self.a_funded = not self.a_funded
        balance = FUNDED if self.a_funded else "0"
        response = await self.sim_clients[A].post("/_sim/balance", json={"balance": balance})
        assert response.status_code == 200, response.text
        self.note(f"provider default: {'funded again' if self.a_funded else 'out of funds'}")
        self.outcomes[f"providers:a-{'funded' if self.a_funded else 'out-of-funds'}"] += 1

    async def step_provider_down(self: Simulation) -> None:
        down = sorted(self.wire.down)
        if down and self.rng.random() < 0.6:  # outages end: most steps bring one back
            await self.provider_up(self.rng.choice(down))
            return
        roll = self.rng.random()
        host = A_HOST if roll < 0.6 else B_HOST
        if host in self.wire.down:
            await self.provider_up(host)
            return
        if host == A_HOST and roll < 0.35:
            # Killed while it takes the next add that reaches it (armed until one does): it
            # holds the order (or refused it), its reply is lost, and it is down.
            self.wire.kill_after_add = A_HOST
            self.note("provider default: to be killed during the next add it takes")
            self.outcomes["providers:a-kill-armed"] += 1
            await self.step_add()
            return
        self.wire.down.add(host)
        name = NAMES[host]
        self.note(f"provider {name}: down (connect refused)")
        self.outcomes[f"providers:{name}-down"] += 1

    async def provider_up(self: Simulation, host: str) -> None:
        self.wire.down.discard(host)
        self.note(f"provider {NAMES[host]}: back up (restarted, its orders kept)")
        self.outcomes[f"providers:{NAMES[host]}-up"] += 1

    async def providers_all_well(self: Simulation) -> None:
        """The drain: every provider up, funded, without faults."""
        self.wire.down.clear()
        self.wire.kill_after_add = None
        if not self.a_funded:
            await self.step_provider_funds()
        for client in self.sim_clients.values():
            await client.post("/_sim/faults", json={})

    # -- checks --

    def note_kills(self: Simulation) -> None:
        if self.wire.killed > self.killed_seen:
            self.killed_seen = self.wire.killed
            self.note("  provider default died in the middle of an add: down")
            self.outcomes["providers:a-killed-mid-add"] += 1

    def check_trails(self: Simulation, tokens: set[str], count: bool = True) -> None:
        """A request reached another provider only after a definite refusal of the one it
        reached before; no request was accepted by two providers."""
        for token in sorted(tokens):
            trail = self.wire.trails.get(token, [])
            accepted = {host for host, verdict in trail if verdict == "accepted"}
            if len(accepted) > 1:
                self.fail(f"{token} was accepted by {sorted(accepted)}: bought twice")
            for (host, verdict), (nxt, _) in itertools.pairwise(trail):
                if nxt != host:
                    if verdict not in DEFINITE:
                        self.fail(
                            f"{token} went on to {nxt} after {host} answered {verdict!r}:"
                            f" a failover after an outcome that was not a definite refusal"
                            f" (trail {trail})"
                        )
                    if count:
                        self.outcomes[f"providers:failover-after-{verdict}"] += 1

    def provider_counts(self: Simulation) -> Counter[str]:
        return Counter(f"{r.provider_id}:{r.state}" for r in self.recs.values())


def host_of(scope: dict[str, object]) -> str:
    for name, value in scope.get("headers", ()):  # type: ignore[attr-defined]
        if name == b"host":
            return value.decode("latin-1").split(":", 1)[0]
    return A_HOST


def connect_refused(host: str) -> httpx.ConnectError:
    return httpx.ConnectError(f"simulated: {host} refused the connection (it is down)")
