"""The deployment files as an operator runs them: each node reads its own key
as uid 10001 with the ownership and modes deploy/ sets, reaches no other key,
and answers a probe that has no client certificate."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
JUKINET = Path(sys.executable).parent / "jukinet"
SETPRIV = shutil.which("setpriv")

needs_setpriv = pytest.mark.skipif(
    SETPRIV is None or os.geteuid() != 0,
    reason="needs setpriv (util-linux) and root, to run the node as another user",
)


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _deployments() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in _documents(path):
            if doc["kind"] == "Deployment":
                found[doc["metadata"]["name"]] = doc
    return found


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container["env"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder another user can enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="jukinet-deploy-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- what the files say -------------------------------------------------------


def test_every_kubernetes_node_is_probed_on_its_health_port() -> None:
    deployments = _deployments()
    assert {"national", "prefecture-31", "municipality-312011", "gateway"} <= set(deployments)
    for name, doc in deployments.items():
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        env = _env(container)
        assert env["JUKINET_HEALTH_LISTEN"] == f"$(POD_IP):{ports['health']}", name
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == ports["health"], (name, probe)
        # Plaintext endpoints on the pod's address only.
        assert env["JUKINET_METRICS_LISTEN"] == f"$(POD_IP):{ports['metrics']}", name
        assert "0.0.0.0" not in env["JUKINET_METRICS_LISTEN"]


def test_every_kubernetes_node_can_read_its_key_and_only_its_group() -> None:
    for name, doc in _deployments().items():
        spec = doc["spec"]["template"]["spec"]
        context = spec["securityContext"]
        assert context["runAsUser"] == context["runAsGroup"] == context["fsGroup"] == 10001
        (volume,) = [v for v in spec["volumes"] if "secret" in v]
        mode = volume["secret"]["defaultMode"]
        assert mode & 0o040, f"{name}: the key is not readable by the fsGroup"
        assert not mode & 0o007, f"{name}: the key is readable by everyone"
        assert volume["secret"]["secretName"] == f"tls-{name}"


def test_no_compose_node_mounts_the_ca_or_another_nodes_key() -> None:
    services = _compose()["services"]
    nodes = {n: s for n, s in services.items() if s.get("command", [""])[0] == "run"}
    assert {"national", "prefecture-31", "municipality-312011", "gateway"} <= set(nodes)
    for name, service in nodes.items():
        assert service["user"] == "10001:10001", name
        assert service["volumes"] == [f"pki-{name}:/pki:ro"], name
        assert "0.0.0.0" not in service["environment"]["JUKINET_METRICS_LISTEN"], name
    pki = services["pki"]["volumes"]
    assert "ca:/pki" in pki
    assert {f"pki-{n}:/nodes/{n}" for n in nodes} <= set(pki)


# --- what a node can do with them -----------------------------------------------


def _run_national(tls: Path, data: Path, uid: int, gid: int, health: str) -> subprocess.Popen[str]:
    assert SETPRIV is not None
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "JUKINET_LISTEN": f"127.0.0.1:{_free_port()}",
        "JUKINET_HEALTH_LISTEN": health,
        "JUKINET_DATABASE_URL": f"sqlite+aiosqlite:///{data / 'national.db'}",
        "JUKINET_TLS_CA": str(tls / "ca.pem"),
        "JUKINET_TLS_CRL": str(tls / "crl.pem"),
        "JUKINET_TLS_CERT": str(tls / "tls.pem"),
        "JUKINET_TLS_KEY": str(tls / "tls.key"),
    }
    command = [SETPRIV, f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    command += [str(JUKINET), "run", "national"]
    return subprocess.Popen(
        command,
        env=env,
        cwd=data,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _assert_serves(process: subprocess.Popen[str], health: str) -> None:
    """Wait for the node's ready line, then check its health port without a certificate."""
    assert process.stdout is not None
    try:
        line = process.stdout.readline()
        assert "ready on port" in line, process.communicate(timeout=10)[1]

        async def check() -> int:
            async with grpc.aio.insecure_channel(health) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
                return int(answer.status)

        assert asyncio.run(check()) == health_pb2.HealthCheckResponse.SERVING
    finally:
        process.terminate()
        process.communicate(timeout=30)  # also closes the pipes
    assert process.returncode == 0


def _data_dir(base: Path, uid: int, gid: int) -> Path:
    data = base / "data"
    data.mkdir()
    os.chown(data, uid, gid)
    return data


def _kubernetes_secret_volume(base: Path, pki_dir: Path, name: str) -> tuple[Path, int, int]:
    """Lay out the node's Secret as the kubelet would: root, fsGroup, defaultMode."""
    spec = _deployments()[name]["spec"]["template"]["spec"]
    context = spec["securityContext"]
    (volume,) = [v for v in spec["volumes"] if "secret" in v]
    tls = base / "tls"
    tls.mkdir()
    files = {"ca.pem": "ca.pem", "crl.pem": "crl.pem", "tls.pem": f"{name}.pem"}
    files["tls.key"] = f"{name}.key"
    if name != "gateway":  # the nodes that keep an operation log
        files["tls.log.key"] = f"{name}.log.key"
        files["log-verifiers"] = "log-verifiers"
    for target, source in files.items():
        shutil.copy(pki_dir / source, tls / target)
        os.chown(tls / target, 0, context["fsGroup"])
        (tls / target).chmod(volume["secret"]["defaultMode"])
    os.chown(tls, 0, context["fsGroup"])
    tls.chmod(0o755)
    return tls, context["runAsUser"], context["runAsGroup"]


@needs_setpriv
def test_a_kubernetes_node_runs_as_uid_10001_with_the_manifests_modes(
    shared_tmp: Path, pki_dir: Path
) -> None:
    tls, uid, gid = _kubernetes_secret_volume(shared_tmp, pki_dir, "national")
    health = f"127.0.0.1:{_free_port()}"
    process = _run_national(tls, _data_dir(shared_tmp, uid, gid), uid, gid, health)
    _assert_serves(process, health)


@needs_setpriv
def test_a_root_only_key_is_one_line_not_a_crash(shared_tmp: Path, pki_dir: Path) -> None:
    # What the files did before: the key root-owned 0400.
    tls, uid, gid = _kubernetes_secret_volume(shared_tmp, pki_dir, "national")
    os.chown(tls / "tls.key", 0, 0)
    (tls / "tls.key").chmod(0o400)
    health = f"127.0.0.1:{_free_port()}"
    process = _run_national(tls, _data_dir(shared_tmp, uid, gid), uid, gid, health)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert err.strip() == (
        f"jukinet national: tls.key: {tls / 'tls.key'}: cannot read (Permission denied)"
    )


@needs_setpriv
def test_a_missing_log_key_is_one_line_not_a_crash(shared_tmp: Path, pki_dir: Path) -> None:
    tls, uid, gid = _kubernetes_secret_volume(shared_tmp, pki_dir, "national")
    (tls / "tls.log.key").unlink()
    health = f"127.0.0.1:{_free_port()}"
    process = _run_national(tls, _data_dir(shared_tmp, uid, gid), uid, gid, health)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert err.strip().startswith(
        f"jukinet national: log_key: {tls / 'tls.log.key'}: not found (`jukinet pki federation`"
    ), err
    assert not (tls / "tls.log.key").exists()


@needs_setpriv
def test_compose_pki_gives_each_node_its_own_key_readable_as_uid_10001(
    shared_tmp: Path,
) -> None:
    ca, nodes = shared_tmp / "ca", shared_tmp / "nodes"
    for name in ("national", "gateway"):
        (nodes / name).mkdir(parents=True)
    env = {**os.environ, "PKI_DIR": str(ca), "NODES_DIR": str(nodes)}
    env["PATH"] = f"{JUKINET.parent}:{env.get('PATH', '')}"
    subprocess.run(
        ["/bin/sh", str(DEPLOY / "pki-bootstrap.sh")],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    tls_files = ["ca.pem", "crl.pem", "tls.key", "tls.pem"]
    assert sorted(p.name for p in (nodes / "gateway").iterdir()) == tls_files
    assert sorted(p.name for p in (nodes / "national").iterdir()) == sorted(
        [*tls_files, "tls.log.key", "log-verifiers"]
    )
    for name in ("national", "gateway"):
        assert (nodes / name / "tls.pem").read_bytes() == (ca / f"{name}.pem").read_bytes()
        assert (nodes / name / "tls.key").read_bytes() == (ca / f"{name}.key").read_bytes()
    assert (nodes / "national" / "tls.log.key").read_bytes() == (
        ca / "national.log.key"
    ).read_bytes()
    uid, gid = 10001, 10001
    # The CA's key is out of reach of the node's user.
    assert SETPRIV is not None
    denied = subprocess.run(
        [SETPRIV, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "cat", str(ca / "ca.key")],
        capture_output=True,
        timeout=30,
    )
    assert denied.returncode != 0
    assert b"Permission denied" in denied.stderr
    health = f"127.0.0.1:{_free_port()}"
    process = _run_national(nodes / "national", _data_dir(shared_tmp, uid, gid), uid, gid, health)
    _assert_serves(process, health)
