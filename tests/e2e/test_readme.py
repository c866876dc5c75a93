"""The README, followed as a newcomer follows it.

``test_four_nodes_by_hand`` takes the code blocks of the README's "Four nodes
by hand" section as they are written: it writes the TOML files they show,
starts each ``jukinet run`` line as a process of its own, and runs the other
shell blocks with bash, in an empty folder with the virtual environment's
``bin`` on the PATH. Only the port numbers are swapped for free ones, the same
swap everywhere, so that the test can run beside others. When the README
changes, this test runs what it now says.

``test_a_plain_install_serves`` installs the package without extras into a
fresh virtual environment (``pip install .``) and starts a node from it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jukinet import movecert
from jukinet.client import tls_files
from jukinet.tls import secure_channel

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the environment the tests run in: jukinet is here
SECTION = "### Four nodes by hand"
READY = re.compile(r"^(\w+) ready on port (\d+)$", re.M)


@dataclass
class Block:
    """One fenced code block: its language and its text."""

    language: str
    text: str


def section(readme: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of its level or above
    (a ``#`` line inside a code block is no heading)."""
    level = len(heading.split(" ", 1)[0])
    lines = readme[readme.index(heading) + len(heading) :].splitlines(keepends=True)
    fenced = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(rf"#{{1,{level}}} ", line):
            return "".join(lines[:i])
    return "".join(lines)


def blocks(text: str) -> list[Block]:
    """The fenced code blocks of ``text``, in order."""
    return [Block(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.M | re.S)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def with_free_ports(text: str) -> str:
    """``text`` with every 127.0.0.1 port swapped for a free one (consistently)."""
    ports = {p: str(free_port()) for p in set(re.findall(r"127\.0\.0\.1:(\d+)", text))}
    return re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{ports[m[1]]}", text)


def commands(script: str) -> list[str]:
    """Shell lines with their backslash continuations joined."""
    return [line for line in script.replace("\\\n", " ").splitlines() if line.strip()]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUKINET_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def session_files(workdir: Path) -> dict[str, int]:
    """The session files ``jukinet login`` left in ``workdir``'s state folder, with their modes."""
    state = workdir / "state" / "jukinet"
    if not state.is_dir():
        return {}
    return {f.name: f.stat().st_mode & 0o777 for f in state.iterdir()}


def counter_environment(workdir: Path) -> dict[str, str]:
    """:func:`environment`, with the session files of ``jukinet login`` in ``workdir``
    (``$XDG_STATE_HOME``) rather than in the home folder of whoever runs the tests."""
    env = environment()
    env["XDG_STATE_HOME"] = str(workdir / "state")
    return env


class Nodes:
    """Node processes started from ``jukinet run`` lines; stopped with SIGTERM."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[str], IO[str]]] = []

    def start(self, line: str, env: dict[str, str]) -> None:
        """Start the node a README `jukinet run` line names, logging to its own file
        (named for its config file: two municipal nodes have two logs)."""
        tier = Path(line.split("--config", 1)[1].split()[0]).stem
        log = (self.workdir / f"{tier}.log").open("w", encoding="utf-8")
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {line}"],
            cwd=self.workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        self.procs.append((tier, proc, log))

    def wait_ready(self) -> None:
        """Every node printed ``<tier> ready on port <port>``."""
        for tier, proc, _log in self.procs:
            assert proc.stdout is not None
            # Blocks until the node says it serves ("" if it died first); the
            # per-test timeout ends a node that hangs.
            line = proc.stdout.readline()
            assert READY.match(line.strip()), (tier, line, self.log(tier))

    def log(self, tier: str) -> str:
        """The log of the node of ``tier`` so far."""
        return (self.workdir / f"{tier}.log").read_text(encoding="utf-8")

    def stop(self) -> dict[str, int]:
        """SIGTERM every node; the exit status of each."""
        codes = {}
        for _tier, proc, _log in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for tier, proc, log in self.procs:
            try:
                codes[tier] = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[tier] = proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            log.close()
        return codes


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    started = Nodes(tmp_path)
    try:
        yield started
    finally:
        started.stop()


def run_shell(script: str, workdir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.e2e
@pytest.mark.timeout(600)  # four nodes started and stopped by hand, several CLI blocks
def test_four_nodes_by_hand(tmp_path: Path, nodes: Nodes) -> None:
    text = with_free_ports(section((ROOT / "README.md").read_text(encoding="utf-8"), SECTION))
    env = counter_environment(tmp_path)
    found = blocks(text)
    assert [b.language for b in found] == ["sh", *["toml"] * 5, "sh", "sh", "sh", "sh"]
    outputs: list[str] = []
    sessions: list[dict[str, int]] = []  # the session files (and modes) after each block
    for block in found:
        if block.language == "toml":
            first, _, _ = block.text.partition("\n")
            name = first.removeprefix("# ").strip()
            assert re.fullmatch(r"[\w-]+\.toml", name), first
            (tmp_path / name).write_text(block.text, encoding="utf-8")
            continue
        lines = commands(block.text)
        if all(line.startswith("jukinet run ") for line in lines):
            for line in lines:
                nodes.start(line, env)
            nodes.wait_ready()
            continue
        done = run_shell(block.text, tmp_path, env)
        assert done.returncode == 0, (block.text, done.stdout, done.stderr)
        outputs.append(done.stdout)
        sessions.append(session_files(tmp_path))

    pki_out, login_out, cli_out, move_out = outputs
    assert "wrote pki/agency-nenkin.pem" in pki_out
    assert "wrote pki/operator-312011-admin.pem" in pki_out
    assert "wrote pki/terminal-312011-desk1.pem" in pki_out
    # The administrator enrolled on the host, the cards issued, the clerk added
    # and logged in; the session file kept out of others' reach.
    assert "issued the card of jukinet://operator/312011/t.tanaka" in login_out
    assert "logged in: jukinet://operator/312011/t.tanaka" in login_out
    assert '"operator": "jukinet://operator/312011/t.tanaka"' in login_out  # whoami
    state = tmp_path / "state" / "jukinet"
    assert state.stat().st_mode & 0o777 == 0o700
    assert list(sessions[1].values()) == [0o600], sessions
    assert sessions[-1] == {}, sessions  # every login was followed by its logout
    # The birth, the relocation seen by the national node, the pension
    # service's verification, and the disclosure that lists it.
    assert '"name": "鳥取\u3000花子"' in cli_out
    assert '"address": "鳥取県鳥取市幸町71番地"' in cli_out
    assert '"found": true' in cli_out
    assert "The identity record as the national node holds it" in cli_out
    assert "日本年金機構" in cli_out and "NENKIN-EXISTENCE-CHECK" in cli_out
    assert re.search(r'"recorded_at": "[^"]+\+09:00"', cli_out), cli_out
    assert (tmp_path / "var" / "national.db").is_file()  # the folder was created

    # The move to 米子市: the certificate printed and written, the move-in
    # resting on it, and the re-issue with the same contents.
    assert "転出証明書" in move_out and "証明書番号: 312011-" in move_out
    assert "転出先: 312029" in move_out
    assert '"local_government_code": "312029"' in move_out
    assert '"last_reason": "CHANGE_REASON_MOVE_IN"' in move_out
    issued = movecert.dearmor((tmp_path / "hanako.cert").read_text(encoding="utf-8"))
    reissued = movecert.dearmor((tmp_path / "hanako-again.cert").read_text(encoding="utf-8"))
    assert issued.certificate == reissued.certificate

    # A second national node on the same port: one line, exit 2, and the
    # first one keeps serving.
    national = next(line for line in commands(text) if line.startswith("jukinet run national"))
    second = run_shell(national, tmp_path, env)
    assert second.returncode == 2, second
    assert (
        second.stderr.splitlines() == [second.stderr.strip()]
        and "is already in use" in second.stderr
    ), second.stderr
    again = run_shell(
        "jukinet identity status --tier national --pki pki --as operator-national-admin "
        "--target " + re.findall(r'listen = "([^"]+)"', text)[0],
        tmp_path,
        env,
    )
    assert again.returncode == 0, again.stderr

    codes = nodes.stop()
    assert codes == {
        "national": 0,
        "prefecture-31": 0,
        "municipality-312011": 0,
        "municipality-312029": 0,
        "gateway": 0,
    }, codes
    for tier in codes:
        log = nodes.log(tier)
        assert "Traceback" not in log, (tier, log)
        assert "alembic.runtime.plugins" not in log, (tier, log)


@pytest.mark.e2e
@pytest.mark.timeout(900)  # a fresh venv and a pip install from the package caches
def test_a_plain_install_serves(tmp_path: Path) -> None:
    """``pip install .`` (no extras) in a fresh environment runs a node that
    answers health checks over mutual TLS, and the CLI works without tqdm."""
    source = tmp_path / "src"
    source.mkdir()
    # What a wheel is built from; a copy, so that the build leaves nothing in the checkout.
    for name in ("pyproject.toml", "README.md", "jukinet", "services", "gateway"):
        src = ROOT / name
        if src.is_dir():
            subprocess.run(["cp", "-r", str(src), str(source / name)], check=True)
        else:
            (source / name).write_bytes(src.read_bytes())
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    python = str(venv / "bin" / "python")
    for absent in ("faker", "tqdm"):
        probe = subprocess.run([python, "-c", f"import {absent}"], capture_output=True, check=False)
        assert probe.returncode != 0, f"{absent} was installed without the extras"

    jukinet = str(venv / "bin" / "jukinet")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUKINET_")}
    subprocess.run(
        [jukinet, "pki", "federation", "--dir", "pki", "--prefecture", "31", "--operators"],
        cwd=work, env=env, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    port = free_port()
    (work / "national.toml").write_text(
        f'listen = "127.0.0.1:{port}"\n'
        'database_url = "sqlite+aiosqlite:///var/national.db"\n'
        "[tls]\n"
        'ca = "pki/ca.pem"\ncert = "pki/national.pem"\nkey = "pki/national.key"\n',
        encoding="utf-8",
    )
    node = subprocess.Popen(
        [jukinet, "run", "national", "--config", "national.toml"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert node.stdout is not None
        line = node.stdout.readline()
        assert line.strip() == f"national ready on port {port}", (line, node.stderr)
        assert health_check(work / "pki", port) == health_pb2.HealthCheckResponse.SERVING
        status = subprocess.run(
            [jukinet, "identity", "status", "--tier", "national", "--target",
             f"127.0.0.1:{port}", "--pki", "pki", "--as", "operator-national-admin"],
            cwd=work, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert status.stdout.strip().startswith("{"), status.stdout
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            assert node.wait(timeout=30) == 0
        finally:
            if node.poll() is None:
                node.kill()
                node.wait()
            for pipe in (node.stdout, node.stderr):
                if pipe is not None:
                    pipe.close()


def health_check(pki_dir: Path, port: int) -> int:
    """The overall health status of the node on ``port``, asked over mTLS."""
    import asyncio

    async def ask() -> int:
        channel = secure_channel(f"127.0.0.1:{port}", tls_files(pki_dir, "operator-national-admin"))
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10
            )
            return int(answer.status)
        except grpc.aio.AioRpcError as exc:  # pragma: no cover - reported by the assertion
            raise AssertionError(f"health check failed: {exc.details()}") from None
        finally:
            await channel.close(None)

    return asyncio.run(ask())
