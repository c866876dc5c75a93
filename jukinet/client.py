"""Client side for tools (the CLI, the demo, benchmarks): channels opened with a
certificate from a PKI directory, and readable gRPC errors."""

from __future__ import annotations

from pathlib import Path

import grpc

from jukinet.errors import error_metadata
from jukinet.tls import TlsFiles, secure_channel


def tls_files(pki_dir: Path | str, name: str) -> TlsFiles:
    """The files of certificate ``name`` (e.g. ``operator-312011-admin``) in a PKI folder."""
    d = Path(pki_dir)
    return TlsFiles(ca=d / "ca.pem", cert=d / f"{name}.pem", key=d / f"{name}.key")


def connect(target: str, pki_dir: Path | str, name: str) -> grpc.aio.Channel:
    """An mTLS channel to ``target`` presenting certificate ``name``."""
    files = tls_files(pki_dir, name)
    files.load()  # fail early, with one clear line, on a missing or bad file
    return secure_channel(target, files)


def describe_error(exc: grpc.aio.AioRpcError) -> str:
    """One line: status, message and the machine-readable reason and field."""
    meta = error_metadata(exc)
    extra = ", ".join(
        f"{k.removeprefix('jukinet-')}={v}" for k, v in meta.items() if k.startswith("jukinet-")
    )
    return f"{exc.code().name}: {exc.details()}" + (f" ({extra})" if extra else "")
