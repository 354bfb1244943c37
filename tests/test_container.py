"""The image's and compose's HEALTHCHECK (no Docker here): the same command in both, made only
of what the image has (its Python, no curl), and it tells a live gateway from a dead one."""

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import uvicorn
import yaml
from conftest import gateway_settings
from helpers import free_port

from app.main import create_app

ROOT = Path(__file__).resolve().parent.parent


def dockerfile_healthcheck() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    [line] = [line for line in text.splitlines() if line.startswith("HEALTHCHECK ")]
    options, _, command = line.partition(" CMD ")
    assert re.search(r"--interval=\d+s", options) and re.search(r"--timeout=\d+s", options)
    return json.loads(command)  # the exec form: no shell in between


def compose_healthcheck() -> list[str]:
    gateway = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["gateway"]
    test = gateway["healthcheck"]["test"]
    assert test[0] == "CMD"
    return test[1:]


def run_check(command: list[str], port: int) -> int:
    assert command[0] == "python"  # /opt/venv/bin/python in the image (PATH)
    args = [sys.executable, *(a.replace(":8000/", f":{port}/") for a in command[1:])]
    return subprocess.run(args, capture_output=True, timeout=30).returncode


def test_the_image_and_compose_check_healthz_the_same_way() -> None:
    command = dockerfile_healthcheck()
    assert command == compose_healthcheck()
    assert "http://127.0.0.1:8000/healthz" in " ".join(command)
    assert "curl" not in " ".join(command)


def test_the_check_passes_on_a_live_gateway_and_fails_on_none(
    tmp_path: Path, sqlite_template: Path
) -> None:
    shutil.copyfile(sqlite_template, tmp_path / "gateway.db")
    settings = gateway_settings(f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, background=False),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.01)
        assert run_check(dockerfile_healthcheck(), port) == 0
    finally:
        server.should_exit = True
        thread.join(10)
    assert run_check(dockerfile_healthcheck(), port) != 0
