"""What a newcomer meets in the first hour: `--version`, HEAD probes, the demo showing every
action. The commands README.md and the demo print are run as shown in tests/test_readme.py."""

import httpx
import pytest
from typer.testing import CliRunner

from app.cli import app

runner = CliRunner()


def test_version() -> None:
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"smm-gateway {version('smm-gateway')}"


@pytest.mark.parametrize(
    "path", ["/healthz", "/docs", "/redoc", "/openapi.json", "/metrics", "/api/v2", "/api/v1"]
)
async def test_head_is_answered_wherever_get_is(client: httpx.AsyncClient, path: str) -> None:
    got = await client.get(path)
    head = await client.head(path)
    assert got.status_code == 200
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    if path != "/metrics":  # the metrics move between the two requests
        assert head.headers["content-length"] == got.headers["content-length"]


async def test_head_where_no_get_is_still_refused(client: httpx.AsyncClient) -> None:
    assert (await client.head("/no-such-page")).status_code == 404
