"""The benchmark's view of processes: CPU time of the nodes (from the local
federation), of PostgreSQL, of this process and of the whole machine; the
baseline servers it starts beside the federation; py-spy profiles.

CPU seconds come from ``/proc`` (Linux), so a phase can say what each process
spent on it and what the rest of the machine used meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from bench.common import REPO, BenchError, progress
from tools.localfed import Node, free_port, process_cpu_seconds

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL process on this machine (server and backends)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text()
        except OSError:
            continue
        if comm.startswith("postgres"):
            total += process_cpu_seconds(int(entry.name))
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])
    return (total - idle) / _CLK_TCK, total / _CLK_TCK


def self_cpu() -> float:
    """CPU seconds of this process."""
    t = os.times()
    return t.user + t.system


class CpuMeter:
    """CPU seconds of named processes, PostgreSQL and this process over a window.

    ``processes`` is read at each sample (a node that is not running has no
    entry); ``me`` names this process in the figures.
    """

    def __init__(
        self,
        processes: Callable[[], Mapping[str, int]],
        *,
        postgres: bool = True,
        me: str = "bench (this process)",
    ) -> None:
        self.processes = processes
        self.postgres = postgres
        self.me = me
        self._start: dict[str, float] = {}
        self._machine = 0.0

    def _sample(self) -> dict[str, float]:
        out = {name: process_cpu_seconds(pid) for name, pid in self.processes().items()}
        if self.postgres:
            out["postgresql"] = postgres_cpu()
        out[self.me] = self_cpu()
        return out

    def begin(self) -> None:
        """The window starts now."""
        self._start = self._sample()
        self._machine = machine_cpu()[0]

    def end(self, seconds: float) -> dict[str, float]:
        """CPU seconds per process over the window; ``cores`` = total / wall time.

        ``other processes`` is what the rest of the machine used meanwhile (all
        CPU time minus ours): anything well above zero means the figures were
        measured on a busy machine.
        """
        now = self._sample()
        busy = machine_cpu()[0] - self._machine
        used = {k: round(now[k] - self._start.get(k, 0.0), 2) for k in now}
        used["total"] = round(sum(used.values()), 2)
        used["other processes"] = round(max(0.0, busy - used["total"]), 2)
        used["cores busy (total / wall)"] = round(used["total"] / seconds, 2) if seconds else 0.0
        return used


def running_nodes(nodes: Iterable[Node]) -> Callable[[], dict[str, int]]:
    """For :class:`CpuMeter`: the pids of those of ``nodes`` that run at each sample."""
    listed = list(nodes)
    return lambda: {n.name: n.pid for n in listed if n.running}


async def settle(limit_s: float = 20.0, quiet_cores: float = 0.3) -> float:
    """Wait (at most ``limit_s``) until the machine is quiet: after a load the
    kernel still writes dirty pages back for a while. Returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        busy = machine_cpu()[0]
        await asyncio.sleep(1.0)
        if machine_cpu()[0] - busy < quiet_cores:
            break
    return round(time.monotonic() - started, 1)


class BaselineServer:
    """A bare gRPC server process (:mod:`bench.baselines`) beside the federation."""

    def __init__(self, kind: str, pki_dir: Path, workdir: Path) -> None:
        self.kind = kind
        self.pki_dir = pki_dir
        self.out = workdir / f"baseline-{kind}.out"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """Its process id (0 before it started)."""
        return self.proc.pid if self.proc is not None else 0

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JUKINET_")}
        argv = [sys.executable, "-m", "bench.baselines", self.kind, str(self.port)]
        with self.out.open("wb") as out:
            return subprocess.Popen(
                [*argv, "--pki", str(self.pki_dir)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                env=env,
                start_new_session=True,
            )

    async def start(self) -> None:
        """Start it; return once it listens."""
        self.proc = self._spawn()
        deadline = time.monotonic() + 60
        while b"baseline ready" not in self.out.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(
                    f"{self.kind} baseline server did not start:\n"
                    + self.out.read_text(errors="replace")
                )
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, SIGKILL if it has not exited within 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class Profiler:
    """py-spy ``record`` on every running node for one phase (``--profile DIR``)."""

    def __init__(self, out: Path | None, nodes: Iterable[Node], phase: str) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        if out is None:
            return
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            progress("--profile: py-spy not found (pip install py-spy); not profiling")
            return
        out.mkdir(parents=True, exist_ok=True)
        for node in nodes:
            if node.running:
                self.procs.append(self._record(spy, node, out / f"{phase}-{node.name}.txt"))

    @staticmethod
    def _record(spy: str, node: Node, output: Path) -> subprocess.Popen[bytes]:
        argv = [spy, "record", "--pid", str(node.pid), "--rate", "100", "--idle"]
        argv += ["--nonblocking", "--format", "raw", "--output", str(output)]
        return subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )

    async def stop(self) -> None:
        """SIGINT (py-spy then writes its file); SIGKILL after 10 s."""
        for p in self.procs:
            p.send_signal(signal.SIGINT)
        for p in self.procs:
            for _ in range(200):
                if p.poll() is not None:
                    break
                await asyncio.sleep(0.05)
            else:
                p.kill()
