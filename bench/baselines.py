"""The bare baselines the benchmarks measure beside the pipeline, in the same run.

* ``push``: a grpc.aio mTLS server that acknowledges PushNotifications batches
  and stores nothing (the delivery benchmark's baseline (a));
* ``verify``: a grpc.aio mTLS server that answers GatewayService/Verify with a
  constant (the gateway benchmark's baseline);
* ``relay``: a grpc.aio mTLS server that answers RelayService/Relay with the
  envelope it was sent (the relay benchmark's baseline);
* the national node's rows written straight into a database by executemany,
  no gRPC (the delivery benchmark's baseline (b)).

The servers run as their own processes::

    python -m bench.baselines push|verify|relay PORT --pki DIR
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import signal
import statistics
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from sqlalchemy import func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from bench.common import BenchError, progress
from bench.processes import BaselineServer
from jukinet.client import tls_files
from jukinet.db import Database
from jukinet.tls import secure_channel, server_credentials
from jukinet.v1 import common_pb2, delivery_pb2, gateway_pb2, relay_pb2
from jukinet.vocabulary import person_values
from services.national import models
from services.national.app import MIGRATIONS
from tools.localfed import Databases, process_cpu_seconds

PUSH_METHOD = "/jukinet.v1.NationalService/PushNotifications"

# --- the servers ------------------------------------------------------------------


async def _push(
    requests: AsyncIterator[delivery_pb2.PushNotificationsRequest], context: Any
) -> AsyncIterator[delivery_pb2.PushNotificationsResponse]:
    async for request in requests:
        entries = request.entries
        yield delivery_pb2.PushNotificationsResponse(
            acknowledged_through=entries[-1].outbox_sequence if entries else 0,
            applied=len(entries),
        )


def _push_handler() -> grpc.GenericRpcHandler[Any, Any]:
    return grpc.method_handlers_generic_handler(
        "jukinet.v1.NationalService",
        {
            "PushNotifications": grpc.stream_stream_rpc_method_handler(
                _push,
                request_deserializer=delivery_pb2.PushNotificationsRequest.FromString,
                response_serializer=delivery_pb2.PushNotificationsResponse.SerializeToString,
            )
        },
    )


def _verify_handler() -> grpc.GenericRpcHandler[Any, Any]:
    m = gateway_pb2.ITEM_MATCH_MATCH
    answer = gateway_pb2.VerifyResponse(
        verification=gateway_pb2.Verification(
            found=True,
            currently_registered=True,
            resident_code=m,
            name=m,
            birth_date=m,
            sex=m,
            address=m,
        ),
        provision_id="0" * 32,
    )

    async def verify(
        request: gateway_pb2.VerifyRequest, context: Any
    ) -> gateway_pb2.VerifyResponse:
        return answer

    return grpc.method_handlers_generic_handler(
        "jukinet.v1.GatewayService",
        {
            "Verify": grpc.unary_unary_rpc_method_handler(
                verify,
                request_deserializer=gateway_pb2.VerifyRequest.FromString,
                response_serializer=gateway_pb2.VerifyResponse.SerializeToString,
            )
        },
    )


def _relay_handler() -> grpc.GenericRpcHandler[Any, Any]:
    async def relay(request: relay_pb2.RelayRequest, context: Any) -> relay_pb2.RelayResponse:
        return relay_pb2.RelayResponse(header=request.header, sealed=request.sealed)

    return grpc.method_handlers_generic_handler(
        "jukinet.v1.RelayService",
        {
            "Relay": grpc.unary_unary_rpc_method_handler(
                relay,
                request_deserializer=relay_pb2.RelayRequest.FromString,
                response_serializer=relay_pb2.RelayResponse.SerializeToString,
            )
        },
    )


# What each kind of server serves, and the certificate it presents.
SERVERS = {
    "push": (_push_handler, "national"),
    "verify": (_verify_handler, "gateway"),
    "relay": (_relay_handler, "prefecture-31"),
}


async def serve(kind: str, port: int, pki_dir: Path) -> None:
    """Run one baseline server on 127.0.0.1:``port`` until SIGTERM."""
    handler, cert = SERVERS[kind]
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)] if kind == "push" else []
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((handler(),))
    server.add_secure_port(f"127.0.0.1:{port}", server_credentials(tls_files(pki_dir, cert)))
    await server.start()
    print("baseline ready on port", port, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.baselines push|verify|relay PORT --pki DIR``."""
    parser = argparse.ArgumentParser(prog="python -m bench.baselines")
    parser.add_argument("kind", choices=sorted(SERVERS))
    parser.add_argument("port", type=int)
    parser.add_argument("--pki", type=Path, required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.kind, args.port, args.pki))
    return 0


# --- baseline (a): the same batches over gRPC, no storage ----------------------------


def push_requests(
    payloads: Sequence[bytes], batch: int
) -> list[delivery_pb2.PushNotificationsRequest]:
    """The notifications as a pusher sends them, in batches of ``batch``."""
    return [
        delivery_pb2.PushNotificationsRequest(
            entries=[
                delivery_pb2.OutboxEntry(
                    outbox_sequence=i + j + 1,
                    notification=common_pb2.Notification.FromString(p),
                )
                for j, p in enumerate(payloads[i : i + batch])
            ]
        )
        for i in range(0, len(payloads), batch)
    ]


async def measure_grpc_baseline(
    payloads: Sequence[bytes],
    batch: int,
    pki_dir: Path,
    workdir: Path,
    seconds: float,
    runs: int,
    window: int,
) -> dict[str, Any]:
    """Baseline (a): messages/s of the bare stream, median of ``runs`` runs."""
    requests = push_requests(payloads, batch)
    size = statistics.fmean(len(p) for p in payloads)
    progress(
        f"baseline (a): gRPC mTLS stream of {batch}-notification batches "
        f"(mean payload {size:.0f} B), {runs} runs of ~{seconds:.0f}s"
    )
    server = BaselineServer("push", pki_dir, workdir)
    rates: list[float] = []
    cpu_server: list[float] = []
    try:
        await server.start()
        channel = secure_channel(f"127.0.0.1:{server.port}", tls_files(pki_dir, "prefecture-31"))
        try:
            method = channel.stream_stream(
                PUSH_METHOD,
                request_serializer=delivery_pb2.PushNotificationsRequest.SerializeToString,
                response_deserializer=delivery_pb2.PushNotificationsResponse.FromString,
            )
            await _push_for(method, requests[:4], 0.0, window=window)  # connect and warm up
            for _ in range(runs):
                before = process_cpu_seconds(server.pid)
                sent, elapsed = await _push_for(method, requests, seconds, window=window)
                cpu_server.append((process_cpu_seconds(server.pid) - before) / sent * 1e6)
                rates.append(sent / elapsed)
        finally:
            await channel.close(None)
    finally:
        server.stop()
    rate = statistics.median(rates)
    progress(
        f"baseline (a): {rate:,.0f} messages/s (runs: {', '.join(f'{r:,.0f}' for r in rates)})"
    )
    return {
        "messages_per_s": round(rate),
        "runs": [round(r) for r in rates],
        "batch": batch,
        "window": window,
        "mean_payload_bytes": round(size),
        "server_cpu_us_per_message": round(statistics.median(cpu_server), 2),
    }


async def _push_for(
    method: Any,
    requests: Sequence[delivery_pb2.PushNotificationsRequest],
    seconds: float,
    window: int,
) -> tuple[int, float]:
    """Stream ``requests`` (repeated until ``seconds`` passed) with ``window`` unacknowledged
    batches at most, as the pusher does; returns (messages acknowledged, elapsed)."""
    room = asyncio.Semaphore(window)
    call = method(timeout=seconds + 60)
    started = time.monotonic()
    sent_messages = 0
    sent_batches = 0

    async def writer() -> None:
        nonlocal sent_messages, sent_batches
        while True:
            for request in requests:
                await room.acquire()
                await call.write(request)
                sent_messages += len(request.entries)
                sent_batches += 1
            if time.monotonic() - started >= seconds:
                break
        await call.done_writing()

    acked = 0
    writing = asyncio.create_task(writer())
    try:
        async for _response in call:
            acked += 1
            room.release()
    finally:
        await writing
    elapsed = time.monotonic() - started
    if acked != sent_batches:
        raise BenchError(f"baseline (a): {acked} acknowledgements for {sent_batches} batches")
    return sent_messages, elapsed


# --- baseline (b): the national node's rows, straight into the database ------------------


def national_rows(
    payloads: Sequence[bytes],
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """The identity upserts and history rows the national node writes for ``payloads``."""
    now = dt.datetime.now(dt.UTC)
    identities: list[dict[str, object]] = []
    history: list[dict[str, object]] = []
    for p in payloads:
        n = common_pb2.Notification.FromString(p)
        r = n.record
        identities.append(
            {
                "resident_code": r.resident_code,
                "local_government_code": r.local_government_code,
                **person_values(r),
                "status": 1,
                "replaced_by": "",
                "registered_since": n.effective_date,
                "updated_at": now,
            }
        )
        history.append(
            {
                "resident_code": r.resident_code,
                "origin_code": n.origin_code,
                "origin_sequence": n.sequence,
                "kind": n.kind,
                "reason": n.reason,
                "effective_date": n.effective_date,
                "recorded_at": dt.datetime.fromisoformat(n.recorded_at),
                "applied_at": now,
                "changed_current": True,
                "payload": p,
            }
        )
    return identities, history


async def _write_rows(
    db: Database,
    backend: str,
    identities: Sequence[dict[str, object]],
    history: Sequence[dict[str, object]],
    batch: int,
) -> tuple[float, int]:
    """Upsert and insert in transactions of ``batch``; returns (seconds, history rows)."""
    t = models.identities
    ins = pg_insert if backend == "postgres" else sqlite_insert
    stmt = ins(t.identities)
    upsert = stmt.on_conflict_do_update(
        index_elements=[t.identities.c.resident_code],
        set_={
            c.name: stmt.excluded[c.name] for c in t.identities.columns if c.name != "resident_code"
        },
    )
    # Warm the connection and the statement caches outside the clock.
    async with db.write() as conn:
        await conn.execute(select(func.count()).select_from(t.identities))
    started = time.monotonic()
    for i in range(0, len(identities), batch):
        async with db.write() as conn:
            await conn.execute(upsert, identities[i : i + batch])
            await conn.execute(insert(t.history), history[i : i + batch])
    seconds = time.monotonic() - started
    async with db.read() as conn:
        stored = await conn.scalar(select(func.count()).select_from(t.history))
    return seconds, int(stored or 0)


async def measure_db_baseline(
    backend: str, batch: int, payloads: Sequence[bytes], workdir: Path
) -> dict[str, Any]:
    """Baseline (b), on a fresh database of ``backend``, dropped afterwards."""
    dbs = Databases(backend, workdir, prefix="jkbench")
    identities, history = national_rows(payloads)
    progress(
        f"{backend}: baseline (b): {len(payloads):,} identity upserts + history rows, "
        f"executemany in transactions of {batch}"
    )
    try:
        db = Database(await dbs.url("baseline"))
        try:
            await db.migrate(MIGRATIONS)
            seconds, stored = await _write_rows(db, backend, identities, history, batch)
        finally:
            await db.close()
    finally:
        await dbs.drop_all()
    if stored != len(history):
        raise BenchError(f"baseline (b): stored {stored} of {len(history)}")
    rate = len(payloads) / seconds
    progress(f"{backend}: baseline (b): {rate:,.0f} notifications/s = {2 * rate:,.0f} rows/s")
    return {
        "notifications": len(payloads),
        "seconds": round(seconds, 3),
        "notifications_per_s": round(rate),
        "rows_per_s": round(2 * rate),
        "transaction_size": batch,
    }


if __name__ == "__main__":
    raise SystemExit(main())
