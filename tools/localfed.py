"""A federation of real node processes on 127.0.0.1: what the demo, the
end-to-end tests and the benchmark run.

It writes a PKI, one TOML config per node (own port, own metrics port, own
database) and starts each node as ``python -m services.<tier> --config FILE``
(the agency gateway, optional: ``python -m gateway``, no database) with its
output in ``<workdir>/logs/<node>.log``. Nodes can be stopped, killed
(SIGKILL) and restarted on the same port and database.

Each node runs in its own session (Ctrl-C reaches the caller, which stops the
nodes in order) and, on Linux, gets SIGTERM if the caller dies without
stopping it. ``JUKINET_*`` variables of the caller's environment are not
passed on: a node's settings come from its config file alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jukinet import localgov, pki
from jukinet.client import tls_files
from jukinet.tls import secure_channel

ROOT = Path(__file__).resolve().parent.parent
"""Where the ``jukinet``, ``services`` and ``gateway`` packages are."""


class NodeFailed(RuntimeError):
    """A node exited or did not become ready; the message ends with its log's tail."""


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Node:
    """One node of the local federation."""

    name: str  # certificate name: national, prefecture-31, municipality-312011, gateway
    tier: str  # national | prefecture | municipal | gateway
    code: str  # "national", "31", "312011", "gateway"
    port: int
    metrics_port: int
    database_url: str
    config_path: Path
    log_path: Path
    settings: dict[str, Any] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def operator(self) -> str:
        """The certificate name of this node's operator (the gateway has none:
        the national operator, who may check its health but call nothing else)."""
        if self.tier == "gateway":
            return "operator-national-admin"
        return f"operator-{self.code}-admin"

    @property
    def module(self) -> str:
        """The module that runs this node (``python -m``)."""
        return "gateway" if self.tier == "gateway" else f"services.{self.tier}"

    @property
    def label(self) -> str:
        """Readable name: 鳥取市 (312011), 鳥取県 (31), 全国センター (national)."""
        if self.tier == "municipal":
            found = localgov.lookup(self.code)
            return f"{found.name if found else self.code} ({self.code})"
        if self.tier == "prefecture":
            return f"{localgov.prefecture_name(self.code)} ({self.code})"
        if self.tier == "gateway":
            return "agency gateway"
        return "全国センター (national)"

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of its log, for an error report."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the node gets SIGTERM if its parent dies without stopping it."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


class LocalFederation:
    """National, the prefectures of ``municipalities``, and the municipalities."""

    def __init__(
        self,
        workdir: Path,
        municipalities: Sequence[str],
        *,
        database_url: Callable[[str], str] | None = None,
        settings: dict[str, dict[str, Any]] | None = None,
        agencies: Sequence[str] = (),
        gateway: bool = False,
    ) -> None:
        self.workdir = workdir
        self.pki_dir = workdir / "pki"
        self.logs = workdir / "logs"
        self.municipality_codes = list(municipalities)
        self.prefecture_codes = sorted({m[:2] for m in municipalities})
        self.agencies = list(agencies)
        self.with_gateway = gateway
        self._database_url = database_url or (
            lambda name: f"sqlite+aiosqlite:///{workdir / 'data' / (name + '.db')}"
        )
        self._settings = settings or {}
        self.nodes: dict[str, Node] = {}

    # -- set-up --------------------------------------------------------------

    def prepare(self) -> None:
        """Certificates, ports and config files for every node."""
        for d in (self.workdir, self.logs, self.workdir / "data", self.workdir / "config"):
            d.mkdir(parents=True, exist_ok=True)
        pki.issue_federation(
            self.pki_dir,
            pki.FederationSpec(
                municipalities=self.municipality_codes,
                agencies=self.agencies,
                operators=True,
            ),
        )
        self._add("national", "national", "national", {})
        national = self.nodes["national"].target
        for p in self.prefecture_codes:
            self._add(
                f"prefecture-{p}",
                "prefecture",
                p,
                {"prefecture_code": p, "national_target": national},
            )
        for m in self.municipality_codes:
            self._add(
                f"municipality-{m}",
                "municipal",
                m,
                {
                    "local_government_code": m,
                    "prefecture_target": self.nodes[f"prefecture-{m[:2]}"].target,
                },
            )
        if self.with_gateway:
            self._add("gateway", "gateway", "gateway", {"national_target": national})

    def _add(self, name: str, tier: str, code: str, settings: dict[str, Any]) -> None:
        node = Node(
            name=name,
            tier=tier,
            code=code,
            port=free_port(),
            metrics_port=free_port(),
            # The gateway keeps no data.
            database_url="" if tier == "gateway" else self._database_url(name),
            config_path=self.workdir / "config" / f"{name}.toml",
            log_path=self.logs / f"{name}.log",
            settings={**settings, **self._settings.get(tier, {})},
        )
        lines = [
            f"listen = {_toml_value(node.target)}",
            f"metrics_listen = {_toml_value(f'127.0.0.1:{node.metrics_port}')}",
            *([f"database_url = {_toml_value(node.database_url)}"] if node.database_url else []),
            *(f"{k} = {_toml_value(v)}" for k, v in node.settings.items()),
            "",
            "[tls]",
            f"ca = {_toml_value(str(self.pki_dir / 'ca.pem'))}",
            f"cert = {_toml_value(str(self.pki_dir / (name + '.pem')))}",
            f"key = {_toml_value(str(self.pki_dir / (name + '.key')))}",
            f"crl = {_toml_value(str(self.pki_dir / 'crl.pem'))}",
            "",
        ]
        node.config_path.write_text("\n".join(lines), encoding="utf-8")
        self.nodes[name] = node

    # -- processes -----------------------------------------------------------

    def start(self, name: str) -> None:
        """Start (or restart) one node's process."""
        node = self.nodes[name]
        if node.process is not None and node.process.poll() is None:
            raise RuntimeError(f"{name} is already running")
        log = open(node.log_path, "ab")  # noqa: SIM115 - owned by the child
        env = {k: v for k, v in os.environ.items() if not k.startswith("JUKINET_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        node.process = subprocess.Popen(
            [sys.executable, "-m", node.module, "--config", str(node.config_path)],
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        log.close()

    async def wait_ready(self, name: str, within: float = 30.0) -> None:
        """Until the node answers a health check over mTLS (or its process died)."""
        node = self.nodes[name]
        deadline = time.monotonic() + within
        channel = secure_channel(node.target, tls_files(self.pki_dir, node.operator))
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if node.process is not None and node.process.poll() is not None:
                    raise NodeFailed(
                        f"{name} exited with status {node.process.returncode}:\n" + node.log_tail()
                    )
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                if time.monotonic() > deadline:
                    raise NodeFailed(f"{name} not ready after {within:g} s:\n" + node.log_tail())
                await asyncio.sleep(0.1)
        finally:
            await channel.close(grace=None)

    async def start_all(self, on_ready: Callable[[Node], None] | None = None) -> None:
        """Start every node, upper tiers first, each once the one above is ready.

        ``on_ready`` is called with each node once it answers its health check.
        """
        upper = [f"prefecture-{p}" for p in self.prefecture_codes]
        if self.with_gateway:
            upper.append("gateway")
        for group in (["national"], upper, [f"municipality-{m}" for m in self.municipality_codes]):
            for name in group:
                self.start(name)
            await asyncio.gather(*(self.wait_ready(name) for name in group))
            for name in group:
                if on_ready is not None:
                    on_ready(self.nodes[name])

    def kill(self, name: str) -> None:
        """SIGKILL: the node gets no chance to clean up."""
        node = self.nodes[name]
        if node.process is not None and node.process.poll() is None:
            node.process.send_signal(signal.SIGKILL)
            node.process.wait(timeout=10)

    def stop(self, name: str, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not stopped within ``grace`` seconds."""
        node = self.nodes[name]
        if node.process is None or node.process.poll() is not None:
            return
        node.process.terminate()
        try:
            node.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait(timeout=10)

    def stop_all(self, grace: float = 10.0) -> None:
        """SIGTERM every node, lower tiers first; SIGKILL those still running
        after ``grace`` seconds."""
        running = [
            n
            for n in reversed(list(self.nodes.values()))
            if n.process is not None and n.process.poll() is None
        ]
        for node in running:
            assert node.process is not None
            with contextlib.suppress(ProcessLookupError):
                node.process.terminate()
        deadline = time.monotonic() + grace
        for node in running:
            assert node.process is not None
            try:
                node.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    node.process.kill()
                node.process.wait(timeout=10)

    def channel(self, name: str, cert: str | None = None) -> grpc.aio.Channel:
        """An mTLS channel to node ``name``, by default as its operator."""
        node = self.nodes[name]
        return secure_channel(node.target, tls_files(self.pki_dir, cert or node.operator))
