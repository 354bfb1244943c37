"""bench/soak.py at CI size: real processes (simulator + two gateways on one PostgreSQL), upstream
faults, one SIGKILL of a gateway, then every proof of the full soak. It keeps the script itself
working; the full run (10,000 orders, 5 kills) is in bench/README.md, "Soak".

Usually 30-60 s. When the kill lands inside a sync pass, the orders that pass had claimed wait
for their lease (app/sync.py, LEASE = 2 min) before anyone polls them, and the run takes ~2.5 min.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import POSTGRES_ADMIN_URL, SKIP_POSTGRES

ROOT = Path(__file__).resolve().parent.parent

# A known gateway bug (bench/README.md, "Soak"): a SmartPanel subscription that ends Partial with
# no post delivered (`"orders": []`, the upstream keeps nothing) is settled with no refund.
KNOWN_BUG = "(Subscriptions, subscription, Partial): refunded 0 of"


def known_bug_only(proofs: list[dict]) -> bool:
    """True when the settlement proof is the only one failing, and only by that bug."""
    failed = [p for p in proofs if not p["ok"]]
    if len(failed) != 1 or not failed[0]["name"].startswith("every placed order settled once"):
        return False
    header, *lines = failed[0]["detail"]
    counts = re.fullmatch(r"0 unsettled, (\d+) wrong; refunds off by [0-9.,]+ in all:", header)
    return (
        counts is not None
        and int(counts.group(1)) == len(lines)  # every wrong order is listed
        and bool(lines)
        and all(KNOWN_BUG in line and "upstream kept 0 " in line for line in lines)
    )


def test_soak_smoke(tmp_path: Path) -> None:
    if SKIP_POSTGRES:
        pytest.skip("SMMGW_TEST_SKIP_POSTGRES=1")
    summary_file = tmp_path / "soak.json"
    command = [
        sys.executable,
        str(ROOT / "bench" / "soak.py"),
        "--orders", "200",
        "--customers", "10",
        "--kills", "1",
        "--rate", "25",
        "--seed", "11",
        "--quiet-timeout", "240",
        "--postgres", POSTGRES_ADMIN_URL,
        "--summary", str(summary_file),
    ]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=420)
    output = run.stdout[-6000:] + run.stderr[-3000:]
    assert run.returncode in (0, 1), output  # 2: could not run at all; 130: interrupted
    summary = json.loads(summary_file.read_text())

    # The run itself did what it says.
    assert summary["orders_sent"] == 200, output
    assert len(summary["kills"]) == 1, output
    assert summary["kills"][0]["ready_after"] > 0, output
    assert sum(summary["told"].values()) == 200, output
    assert summary["upstream_orders"] > 0, output
    assert summary["gateway_states"].get("placed", 0) > 0, output
    assert summary["upstream_calls"].get("status", 0) > 0, output
    assert summary["status_polls"]["requests"] > 0, output
    assert len(summary["proofs"]) >= 8, output
    assert "proofs" in run.stdout and "soak figures" in run.stdout, output

    if not summary["ok"] and known_bug_only(summary["proofs"]):
        pytest.xfail("only the known Partial-subscription settlement bug failed a proof")
    failed = [f"{p['name']}: {p['detail']}" for p in summary["proofs"] if not p["ok"]]
    assert summary["ok"] and run.returncode == 0, "\n".join(failed) + "\n" + output
