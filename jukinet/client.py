"""Client side for tools (the CLI, the demo, benchmarks): channels opened with a
certificate from a PKI directory, and readable gRPC errors."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import grpc

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


def error_metadata(exc: grpc.aio.AioRpcError) -> dict[str, str]:
    """The text entries of a failed call's trailing metadata."""
    out: dict[str, str] = {}
    for item in exc.trailing_metadata() or ():
        key, value = cast(tuple[str, str | bytes], item)
        if isinstance(value, str):
            out[key] = value
    return out


def describe_error(exc: grpc.aio.AioRpcError) -> str:
    """One line: status, message and the machine-readable reason and field."""
    meta = error_metadata(exc)
    extra = ", ".join(
        f"{k.removeprefix('jukinet-')}={v}" for k, v in meta.items() if k.startswith("jukinet-")
    )
    return f"{exc.code().name}: {exc.details()}" + (f" ({extra})" if extra else "")
