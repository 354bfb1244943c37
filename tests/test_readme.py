"""Every command README.md shows, and every command the demo prints, runs as shown.

The commands are read from README.md's ```sh blocks and from the demo's own output, never
copied here, so this test follows the documentation. Each block runs in a fresh temporary
directory that holds `.venv` (a link to the environment running the tests, which is what the
README's install line makes), against the simulator, the way a newcomer types it:

- `export NAME=VALUE` lines carry over to the block's later lines, as in a shell;
- the install line (`python3 -m venv .venv && .venv/bin/pip install -e …`) has run already:
  what follows its `&&` runs; `.venv/bin/pytest` is this suite itself and is not run here;
- `serve`, `demo`, `simulator` and `worker` run until stopped: each is started, must come up,
  and must exit 0 on Ctrl-C (SIGINT) at the end of its block; a demo's printed commands run
  while it is up (curl replies must not be errors; the refill lines wait, as the demo says,
  until order 1 is Completed);
- everything else must exit 0.

What is replaced, and why: the README's placeholders (`your-smmmix-key`, the example
PostgreSQL URL) become the simulator's key and the test's database (SQLite and PostgreSQL),
SMMGW_UPSTREAM_URL points at the simulator (the README leaves it at smmmix's), and ports
8000/9000 become free ones (another program on the machine may hold those).
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import SIM_KEY
from helpers import free_port, simulator_on_port

from app.db import Database
from app.simulator import SimConfig

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
INSTALL = re.compile(
    r"^python3 -m venv \.venv && \.venv/bin/pip install -e (\.|'\.\[dev\]')( && (?P<rest>.+))?$"
)
THE_SUITE = ".venv/bin/pytest"
LONG_RUNNING = ("serve", "demo", "simulator", "worker")
DB_PLACEHOLDER = "postgresql://user@db-host/smmgw"
KEY_PLACEHOLDER = "your-smmmix-key"
STARTUP_SECONDS = 30.0
COMPLETED_WITHIN_SECONDS = 30.0


def sh_blocks(text: str) -> list[list[str]]:
    """The README's ```sh blocks, each as its command lines (continuations joined)."""
    blocks = []
    for body in re.findall(r"^```sh\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE):
        joined = re.sub(r"\\\n\s*", " ", body)
        blocks.append([line.strip() for line in joined.splitlines() if line.strip()])
    return blocks


BLOCKS = sh_blocks(README.read_text())


def _words(command: str) -> list[str]:
    return shlex.split(command, comments=True)


def _subcommand(command: str) -> str | None:
    """`serve` for `.venv/bin/smm-gateway serve …` (after any NAME=VALUE prefixes)."""
    words = [w for w in _words(command) if not re.match(r"^[A-Z_][A-Z0-9_]*=", w)]
    if words and words[0].endswith("smm-gateway") and len(words) > 1:
        return words[1]
    return None


def commands_of(line: str) -> list[str]:
    """The commands a README line asks to run here: the install line's tail, or the line."""
    install = INSTALL.match(line)
    if install is not None:
        line = install["rest"] or ""
    return [] if not line or _words(line)[0] == THE_SUITE else [line]


# --- running commands as a shell does -------------------------------------------------------


@dataclass
class Shell:
    cwd: Path
    env: dict[str, str]
    ports: dict[int, int]  # documented port -> the free one used instead
    database_url: str | None = None
    running: list[tuple[str, subprocess.Popen[str]]] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)

    def localize(self, command: str) -> str:
        command = command.replace(KEY_PLACEHOLDER, SIM_KEY)
        if self.database_url is not None:
            command = command.replace(DB_PLACEHOLDER, self.database_url)
        for documented, free in self.ports.items():
            command = re.sub(rf"(--(?:sim-)?port) {documented}\b", rf"\1 {free}", command)
            command = re.sub(rf"(://127\.0\.0\.1:){documented}\b", rf"\g<1>{free}", command)
        if _subcommand(command) == "demo" and "--port" not in command:
            command += f" --port {self.ports[8000]} --sim-port {self.ports[9000]}"
        return command

    def export(self, command: str) -> None:
        """`export A=1 B=2  # comment`: the shell's values of A and B, kept for what follows."""
        names = re.findall(r"\s([A-Za-z_][A-Za-z0-9_]*)=", command.split("#", 1)[0])
        assert names, command
        shown = " ".join(f'"${name}"' for name in names)
        values = self.run(f"{command}\nprintf '%s\\0' {shown}")  # a newline: after any comment
        self.env.update(zip(names, values.split("\0")[:-1], strict=True))

    def run(self, command: str) -> str:
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (command, done.returncode, done.stdout, done.stderr)
        self.ran.append(command)
        return done.stdout

    def start(self, command: str) -> subprocess.Popen[str]:
        log = (self.cwd / f"long-running-{len(self.running)}.log").open("w")
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        self.running.append((command, proc))
        self.ran.append(command)
        return proc

    def stop_all(self) -> None:
        for command, proc in reversed(self.running):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                pytest.fail(f"{command!r} did not stop on Ctrl-C")
            assert code == 0, (command, code)
        self.running.clear()


def _wait_for(url: str, proc: subprocess.Popen[str], command: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{command!r} exited with {proc.returncode}"
        try:
            # HEAD, as a load balancer's probe: answered wherever GET is.
            if httpx.head(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{command!r} did not come up within {STARTUP_SECONDS:.0f}s")


def _port_of(command: str, option: str, default: int) -> int:
    words = _words(command)
    return int(words[words.index(option) + 1]) if option in words else default


class DemoOutput:
    """The demo's stdout, read as it arrives; complete once its last line is printed."""

    LAST = "Ctrl-C stops both."

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.done = threading.Event()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.strip() == self.LAST:
                self.done.set()

    def wait(self, proc: subprocess.Popen[str]) -> str:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not self.done.wait(0.2):
            assert proc.poll() is None, f"the demo exited with {proc.returncode}"
            assert time.monotonic() < deadline, "the demo did not finish starting"
        return "\n".join(self.lines)


def demo_command_groups(output: str) -> list[tuple[str, list[str]]]:
    """The demo's printed commands: each paragraph that opens with an unindented heading
    ending in ':' lists one command per indented line."""
    groups = []
    for paragraph in output.split("\n\n"):
        heading, *rest = paragraph.splitlines()
        if not heading.startswith(" ") and heading.endswith(":") and rest:
            assert all(line.startswith("  ") for line in rest), paragraph
            groups.append((heading, [line.strip() for line in rest]))
    return groups


def _errors(reply: Any) -> list[Any]:
    if isinstance(reply, dict):
        found = [reply["error"]] if "error" in reply else []
        return found + [e for value in reply.values() for e in _errors(value)]
    if isinstance(reply, list):
        return [e for item in reply for e in _errors(item)]
    return []


def run_demo_commands(shell: Shell, output: str) -> None:
    groups = demo_command_groups(output)
    assert groups, output
    status_line = next(c for _, cmds in groups for c in cmds if "action=status" in c)
    for heading, commands in groups:
        if "Completed" in heading and "once" in heading.lower():
            _wait_until_completed(shell, status_line)
        for command in commands:
            if command.startswith("export "):
                shell.export(command)
                continue
            out = shell.run(command)
            if command.startswith("curl "):
                reply = json.loads(out)
                assert not _errors(reply), (command, reply)


def _wait_until_completed(shell: Shell, status_line: str) -> None:
    deadline = time.monotonic() + COMPLETED_WITHIN_SECONDS
    seen = []
    while time.monotonic() < deadline:
        status = json.loads(shell.run(status_line))["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == "Completed":
            return
        time.sleep(0.5)
    pytest.fail(f"order 1 went {seen}, not Completed within {COMPLETED_WITHIN_SECONDS:.0f}s")


def run_block(shell: Shell, block: list[str]) -> None:
    failed = True
    try:
        for line in block:
            for command in commands_of(line):
                command = shell.localize(command)
                if command.startswith("export "):
                    shell.export(command)
                    continue
                what = _subcommand(command)
                if what not in LONG_RUNNING:
                    shell.run(command)
                    continue
                proc = shell.start(command)
                if what == "demo":
                    output = DemoOutput(proc).wait(proc)
                    run_demo_commands(shell, output)
                elif what == "serve":
                    port = _port_of(command, "--port", 8000)
                    _wait_for(f"http://127.0.0.1:{port}/healthz", proc, command)
                elif what == "simulator":
                    port = _port_of(command, "--port", 9000)
                    _wait_for(f"http://127.0.0.1:{port}/api/v1", proc, command)
                else:  # worker: up once it says so
                    time.sleep(3)
                    assert proc.poll() is None, command
        failed = False
    finally:
        if failed:  # the first failure is the one to see: just stop what still runs
            for _, proc in shell.running:
                proc.kill()
        else:
            shell.stop_all()


# --- the tests ------------------------------------------------------------------------------


@pytest.fixture
def simulator_url() -> Iterator[str]:
    with simulator_on_port(SimConfig(key=SIM_KEY, seed=1, tick_seconds=1.0)) as url:
        yield url


def _shell(tmp_path: Path, simulator_url: str, database_url: str | None = None) -> Shell:
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMMGW_")}
    env["SMMGW_UPSTREAM_URL"] = simulator_url
    return Shell(
        cwd=tmp_path,
        env=env,
        ports={8000: free_port(), 9000: free_port()},
        database_url=database_url,
    )


def _block_id(block: list[str]) -> str:
    return re.sub(r"\W+", "-", block[-1])[:40]


PLAIN = [b for b in BLOCKS if not any(DB_PLACEHOLDER in line for line in b)]
WITH_DATABASE = [b for b in BLOCKS if any(DB_PLACEHOLDER in line for line in b)]


def test_the_readme_has_its_commands() -> None:
    assert len(BLOCKS) >= 4
    assert BLOCKS[0] == [
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/smm-gateway demo"
    ]
    assert any(".venv/bin/smm-gateway demo --dialect standard" in b for b in BLOCKS)
    assert WITH_DATABASE  # "Running it for real"


@pytest.mark.parametrize("block", PLAIN, ids=_block_id)
def test_readme_block_runs_as_shown(block: list[str], tmp_path: Path, simulator_url: str) -> None:
    shell = _shell(tmp_path, simulator_url)
    run_block(shell, block)
    if any(commands_of(line) for line in block):
        assert shell.ran, block


@pytest.mark.parametrize("block", WITH_DATABASE, ids=_block_id)
def test_readme_block_runs_as_shown_on_both_databases(
    block: list[str], db: Database, database_url: str, tmp_path: Path, simulator_url: str
) -> None:
    # The CLI takes the plain driver-less URL forms the README documents.
    url = database_url.replace("sqlite+aiosqlite:", "sqlite:")
    shell = _shell(tmp_path, simulator_url, url)
    run_block(shell, block)
    assert len(shell.ran) >= len(block) - sum(line.startswith("export ") for line in block)
