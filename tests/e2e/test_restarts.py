"""A hundred SIGKILL restarts in a row, every one healthy.

The test process holds gRPC channels to every node open (and calls over them)
for the whole run, as the chaos tests and the benchmark do, and spawns each
new node process from that state. A node started with Python code between
``fork`` and ``exec`` (a ``preexec_fn``) died in gRPC's fork handlers about
one start in ten; the local federation spawns without any.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jukinet.v1 import delivery_pb2, municipal_pb2, municipal_pb2_grpc, national_pb2_grpc
from tools.localfed import ROOT, LocalFederation, node_command

# A hundred node starts of a few CPU seconds each (imports, the local-government
# data): minutes on a small machine, so the e2e tests' own larger timeout.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

MUNICIPALITY = "312011"
RESTARTS = 100


async def test_a_hundred_sigkill_restarts_in_a_row_come_up_healthy(tmp_path: Path) -> None:
    fed = LocalFederation(tmp_path, [MUNICIPALITY], gateway=True)
    await fed.prepare()
    municipality = f"municipality-{MUNICIPALITY}"
    # Every tier, the gateway included; restarted together, each round.
    victims = ["national", "prefecture-31", municipality, "gateway"]
    try:
        await fed.start_all()
        # Held open from before the first kill to after the last start.
        channels = {name: fed.channel(name) for name in victims}
        health = {name: health_pb2_grpc.HealthStub(ch) for name, ch in channels.items()}
        operator = municipal_pb2_grpc.MunicipalServiceStub(channels[municipality])
        national = national_pb2_grpc.NationalServiceStub(channels["national"])
        for stub in health.values():
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)

        started = 0
        pids: set[int] = set()
        while started < RESTARTS:
            for name in victims:
                node = fed.nodes[name]
                fed.kill(name)
                assert node.process is not None
                # It ran until killed: no crash of its own.
                assert node.process.returncode == -signal.SIGKILL, name
            # wait_ready fails as soon as a new process exits (a crash in the
            # spawn) and otherwise probes health every 0.1 s.
            await fed.start_nodes(victims, within=120)
            started += len(victims)
            pids |= {fed.nodes[name].pid for name in victims}
            # The channels opened before every kill reach the new processes.
            for name, stub in health.items():
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(), timeout=30, wait_for_ready=True
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
            status = await operator.GetStatus(
                municipal_pb2.GetMunicipalStatusRequest(), timeout=30, wait_for_ready=True
            )
            assert status.last_sequence >= 0
            await national.GetDeliveryStatus(
                delivery_pb2.GetDeliveryStatusRequest(), timeout=30, wait_for_ready=True
            )
        assert started >= RESTARTS
        assert len(pids) == started  # every start was a new process
        for ch in channels.values():
            await ch.close(grace=None)
    finally:
        fed.stop_all()


def _gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_node_stops_when_the_process_that_started_it_dies(tmp_path: Path) -> None:
    fed = LocalFederation(tmp_path, [MUNICIPALITY])
    asyncio.run(fed.prepare())
    node = fed.nodes["national"]
    command = [c for c in node_command(node) if c != str(os.getpid())]
    assert command[-1] == "--parent-pid"
    # A parent that starts the node, names it the parent, and waits to be killed.
    script = f'{shlex.join(command)} "$$" >{shlex.quote(str(node.log_path))} 2>&1 & echo $!; wait'
    parent = subprocess.Popen(
        ["sh", "-c", script],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
    )
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        for _ in range(1200):
            if "ready on port" in node.log_tail(10_000) or _gone(pid):
                break
            time.sleep(0.1)
        assert "ready on port" in node.log_tail(10_000), node.log_tail()
        parent.kill()
        parent.wait(timeout=10)
        for _ in range(600):
            if _gone(pid):
                break
            time.sleep(0.1)
        assert _gone(pid), "the node outlived its parent"
        assert "national stopping" in node.log_tail(10_000)  # SIGTERM: a clean stop
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)
        if parent.stdout is not None:
            parent.stdout.close()
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_node_refuses_a_parent_pid_that_is_not_its_parent(tmp_path: Path) -> None:
    # Its parent is this process, not process 1: it started after its
    # supervisor died, and would never get the signal.
    done = subprocess.run(
        [sys.executable, "-m", "services.national", "--config", "none.toml", "--parent-pid", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--parent-pid 1: not this node's parent" in done.stderr
