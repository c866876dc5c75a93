"""The relayed request's round trip: p50/p99 of a move-in notice (転入通知) sent
from 鳥取市 to 米子市 (one prefecture: two calls, 鳥取市 → 鳥取県 → 米子市) and to
千代田区 (two prefectures: four calls, 鳥取市 → 鳥取県 → national → 東京都 →
千代田区), beside the bare unary mTLS call measured in the same run.

A :class:`tools.localfed.LocalFederation` of 鳥取市, 米子市 and 千代田区 runs on
the backend measured: the national node, both prefectures, 米子市 and 千代田区
as node processes, and 鳥取市 as a :class:`services.municipal.app.MunicipalApp`
in the benchmark's own process, so that its ``relay_client`` (the one its
notice sender uses) is what sends. Before the clock: a resident registered at
米子市 (and one at 千代田区) moves to 鳥取市 with a move-out certificate, 鳥取市
registers the move-in and its notice sender delivers the notice, and the
benchmark waits until the old municipality made the move-out final. The timed
requests are that same notice sent again under a new request id each time:
every one goes the whole way, is sealed to the destination's node key, signed
by 鳥取市's, logged in every hop's operation log, answered by the handler at
the destination (``move_in_noticed``: the move-out is final already, the same
day is answered) and its answer stored by request id.

The baseline is one unary call of ``RelayService/Relay`` from the benchmark's
process, with 鳥取市's certificate, to a bare grpc.aio mTLS server process
(:mod:`bench.baselines` ``relay``, the prefecture's certificate) that answers
the envelope with itself: one real envelope, captured from a relayed request,
travels both ways. The three are measured one request at a time, in
interleaved rounds (baseline, one prefecture, two prefectures), after a
warm-up of each, so that a disturbance of the machine falls on all three.

Per hop: (relay p50 - baseline p50) / the route's calls, the brief's figure;
and the cost of each extra hop, (two prefectures p50 - one prefecture p50) /
2, beside one bare call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import grpc

from bench.common import BenchError, percentile, progress
from bench.processes import BaselineServer, machine_cpu, postgres_cpu
from jukinet import localgov
from jukinet.client import tls_files
from jukinet.config import MunicipalConfig, load_config
from jukinet.tls import secure_channel
from jukinet.v1 import common_pb2, municipal_pb2, municipal_pb2_grpc, relay_pb2
from services.municipal.app import MunicipalApp
from tools.localfed import Databases, LocalFederation, process_cpu_seconds

TOTTORI, YONAGO, CHIYODA = "312011", "312029", "131016"
ROUTES: dict[str, tuple[str, int, str]] = {
    "one_prefecture": (YONAGO, 2, "鳥取市 → 鳥取県 → 米子市"),
    "two_prefectures": (CHIYODA, 4, "鳥取市 → 鳥取県 → national → 東京都 → 千代田区"),
}
"""Per route: the destination, the gRPC calls on the way there, the way."""
BASELINE_METHOD = "/jukinet.v1.RelayService/Relay"
ROUND = 20
"""Requests of each kind per interleaved round."""
WARM_UP = 20
"""Requests of each kind before the clock."""
CONFIRM_WAIT = 60.0
"""Seconds the set-up waits for a notice to make its move-out final."""
RPC_TIMEOUT = 30.0

MOVER = municipal_pb2.PersonDetails(
    name="因幡\u3000白兎",
    name_kana="イナバ\u3000ハクト",
    birth_date="1988-08-08",
    sex=common_pb2.SEX_MALE,
)


class _Capture:
    """Wraps the prefecture's RelayService stub to keep the last envelope and answer."""

    def __init__(self, stub: Any) -> None:
        self.stub = stub
        self.request: relay_pb2.RelayRequest | None = None
        self.response: relay_pb2.RelayResponse | None = None

    async def Relay(self, request: relay_pb2.RelayRequest, **kwargs: Any) -> Any:
        """The stub's call, remembered."""
        self.request = request
        self.response = await self.stub.Relay(request, **kwargs)
        return self.response


async def _counter(fed: LocalFederation, code: str) -> municipal_pb2_grpc.MunicipalServiceAsyncStub:
    return cast("municipal_pb2_grpc.MunicipalServiceAsyncStub", (await fed.counter(code))[0])


async def _moved_notice(
    fed: LocalFederation, old: str, address: str, moved_on: str
) -> relay_pb2.MoveInNotice:
    """A resident of ``old`` moves to 鳥取市 on ``moved_on``; once ``old`` made the move-out
    final, the move-in notice 鳥取市 sent (to send again)."""
    old_stub = await _counter(fed, old)
    new_stub = await _counter(fed, TOTTORI)
    person = municipal_pb2.PersonDetails()
    person.CopyFrom(MOVER)
    person.address = address
    arrived = await old_stub.MoveIn(
        municipal_pb2.MoveInRequest(
            person=person, origin=municipal_pb2.MOVE_IN_ORIGIN_ABROAD, effective_date=moved_on
        ),
        timeout=RPC_TIMEOUT,
    )
    code = arrived.resident.resident_code
    out = await old_stub.MoveOut(
        municipal_pb2.MoveOutRequest(
            resident_code=code, destination_local_government_code=TOTTORI, effective_date=moved_on
        ),
        timeout=RPC_TIMEOUT,
    )
    moved_in = await new_stub.MoveIn(
        municipal_pb2.MoveInRequest(
            person=municipal_pb2.PersonDetails(address="鳥取県鳥取市東町一丁目220番地"),
            origin=municipal_pb2.MOVE_IN_ORIGIN_DOMESTIC,
            move_out_certificate=out.certificate,
            effective_date=moved_on,
        ),
        timeout=RPC_TIMEOUT,
    )
    certificate = common_pb2.MoveOutCertificate.FromString(out.certificate.certificate)
    deadline = time.monotonic() + CONFIRM_WAIT
    while True:
        got = await old_stub.GetResident(
            municipal_pb2.GetResidentRequest(resident_code=code), timeout=RPC_TIMEOUT
        )
        if any(
            e.register_change == municipal_pb2.REGISTER_CHANGE_MOVE_OUT_CONFIRMED
            for e in got.events
        ):
            break
        if time.monotonic() > deadline:
            raise BenchError(f"{old}: the move-out of {code} not final after {CONFIRM_WAIT:g} s")
        await asyncio.sleep(0.1)
    return relay_pb2.MoveInNotice(
        certificate_number=certificate.certificate_number,
        resident_code=code,
        move_in_date=moved_on,
        new_address=moved_in.resident.person.address,
        move_in_sequence=0,
    )


def _relayed(fed: LocalFederation, name: str) -> int:
    """The relayed requests node ``name`` counted (its metrics, every kind and outcome)."""
    url = f"http://127.0.0.1:{fed.nodes[name].metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return round(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("jukinet_relayed_requests_total{")
        )
    )


async def _check_relayed(fed: LocalFederation, sent: dict[str, int]) -> dict[str, int]:
    """Each relaying node's count of relayed requests; :class:`BenchError` if a node on a
    route counted fewer than were sent along it (the requests did not go the whole way)."""
    names = ["prefecture-31", "national", "prefecture-13", f"municipality-{YONAGO}"]
    names.append(f"municipality-{CHIYODA}")
    counted = {n: await asyncio.to_thread(_relayed, fed, n) for n in names}
    both = sent["one_prefecture"] + sent["two_prefectures"]
    least = {
        "prefecture-31": both,
        "national": sent["two_prefectures"],
        "prefecture-13": sent["two_prefectures"],
        f"municipality-{YONAGO}": sent["one_prefecture"],
        f"municipality-{CHIYODA}": sent["two_prefectures"],
    }
    for name, count in counted.items():
        if count < least[name]:
            raise BenchError(f"{name} counted {count} relayed requests, fewer than {least[name]}")
    return counted


# The relaying node processes, and the timed requests each one handles per round of
# one request of each kind (鳥取県 is on both routes).
_NODE_SHARE = {
    "prefecture-31": 2,
    "national": 1,
    "prefecture-13": 1,
    f"municipality-{YONAGO}": 1,
    f"municipality-{CHIYODA}": 1,
}


class _CpuSample:
    """CPU seconds of the node processes, the bare server, PostgreSQL and the whole
    machine at the start of the timed part, for :meth:`per_request` at its end."""

    def __init__(self, fed: LocalFederation, baseline_pid: int, backend: str) -> None:
        self.fed = fed
        self.baseline_pid = baseline_pid
        self.backend = backend
        self.start = self._sample()

    def _sample(self) -> dict[str, float]:
        sample = {n: self.fed.nodes[n].cpu_seconds() for n in _NODE_SHARE}
        sample["bare server"] = process_cpu_seconds(self.baseline_pid)
        sample["machine"] = machine_cpu()[0]
        if self.backend == "postgres":
            sample["postgresql"] = postgres_cpu()
        return sample

    def per_request(self, requests: int, seconds: float) -> dict[str, float]:
        """CPU ms per request each node handled (the bare server: per call;
        PostgreSQL: per relayed request of either route), and the machine's busy
        cores over the ``seconds`` of the timed part."""
        end = self._sample()
        used = {k: end[k] - self.start[k] for k in end}
        out = {
            f"{name}_ms": round(used[name] / (share * requests) * 1e3, 3)
            for name, share in _NODE_SHARE.items()
        }
        out["bare server_ms"] = round(used["bare server"] / requests * 1e3, 3)
        if "postgresql" in used:
            out["postgresql_ms"] = round(used["postgresql"] / (2 * requests) * 1e3, 3)
        out["machine_busy_cores"] = round(used["machine"] / seconds, 2)
        out["machine_cores"] = os.cpu_count() or 0
        return out


def _figures(seconds: list[float]) -> dict[str, float]:
    s = sorted(seconds)
    return {
        "requests": len(s),
        "p50_ms": round(percentile(s, 50) * 1e3, 3),
        "p99_ms": round(percentile(s, 99) * 1e3, 3),
        "mean_ms": round(sum(s) / len(s) * 1e3, 3),
    }


async def _timed(call: Callable[[], Awaitable[None]], count: int, into: list[float]) -> None:
    for _ in range(count):
        t0 = time.perf_counter()
        await call()
        into.append(time.perf_counter() - t0)


async def measure(backend: str, requests: int, workdir: Path) -> dict[str, Any]:
    """The figures of one backend: ``requests`` of each kind, interleaved."""
    fed = LocalFederation(
        workdir,
        (TOTTORI, YONAGO, CHIYODA),
        databases=Databases(backend, workdir / "data", prefix="jkbench"),
    )
    tottori: MunicipalApp | None = None
    baseline = None
    channel: grpc.aio.Channel | None = None
    try:
        progress(
            f"relay {backend}: federation of 鳥取市, 米子市, 千代田区 (鳥取市 in this process)"
        )
        await fed.prepare()
        await fed.start_nodes(["national"])
        await fed.start_nodes(fed.names("prefecture"))
        others = [f"municipality-{YONAGO}", f"municipality-{CHIYODA}"]
        for name in others:
            fed.start(name)
        await asyncio.to_thread(localgov.all_local_governments)
        config = load_config(MunicipalConfig, fed.nodes[f"municipality-{TOTTORI}"].config_path)
        tottori = MunicipalApp(config)
        await tottori.start()
        await asyncio.gather(*(fed.wait_ready(n) for n in [*others, f"municipality-{TOTTORI}"]))
        await fed.log_in_counters()
        today = time.strftime("%Y-%m-%d")
        notices = {
            "one_prefecture": await _moved_notice(
                fed, YONAGO, "鳥取県米子市加茂町二丁目180番地", today
            ),
            "two_prefectures": await _moved_notice(
                fed, CHIYODA, "東京都千代田区千代田1番1号", today
            ),
        }
        progress(f"relay {backend}: two move-outs made final by their notices")
        client = tottori.relay_client
        capture = _Capture(client.prefecture)
        client.prefecture = capture  # type: ignore[assignment]
        answers: dict[str, str] = {}

        def send(route: str) -> Callable[[], Awaitable[None]]:
            destination = ROUTES[route][0]

            async def call() -> None:
                raw = await client.send(
                    destination, relay_pb2.RELAY_KIND_MOVE_IN_NOTICE, notices[route]
                )
                confirmed = relay_pb2.MoveInNoticeAnswer.FromString(raw).confirmed_on
                if not confirmed:
                    raise BenchError(f"{destination} answered the notice without a date")
                answers[route] = confirmed

            return call

        await send("one_prefecture")()
        envelope, answer = capture.request, capture.response
        client.prefecture = capture.stub
        if envelope is None or answer is None:
            raise BenchError("no envelope captured")

        baseline = BaselineServer("relay", fed.pki_dir, workdir)
        await baseline.start()
        channel = secure_channel(
            f"127.0.0.1:{baseline.port}", tls_files(fed.pki_dir, f"municipality-{TOTTORI}")
        )
        bare = channel.unary_unary(
            BASELINE_METHOD,
            request_serializer=relay_pb2.RelayRequest.SerializeToString,
            response_deserializer=relay_pb2.RelayResponse.FromString,
        )

        async def unary() -> None:
            echoed = await bare(envelope, timeout=RPC_TIMEOUT)
            if echoed.sealed != envelope.sealed:
                raise BenchError("the baseline server answered another envelope")

        calls = {"baseline": unary, **{route: send(route) for route in ROUTES}}
        times: dict[str, list[float]] = {kind: [] for kind in calls}
        for call in calls.values():
            await _timed(call, WARM_UP, [])
        progress(f"relay {backend}: {requests} requests of each kind, one at a time")
        load_before = os.getloadavg()[0]
        cpu = _CpuSample(fed, baseline.pid, backend)
        started = time.monotonic()
        done, shown = 0, 0
        while done < requests:
            step = min(ROUND, requests - done)
            for kind, call in calls.items():
                await _timed(call, step, times[kind])
            done += step
            if done * 4 // requests > shown or done == requests:
                shown = done * 4 // requests
                progress(
                    f"relay {backend}: {done}/{requests}: p50 "
                    + ", ".join(
                        f"{k} {percentile(sorted(v), 50) * 1e3:.2f} ms" for k, v in times.items()
                    )
                )
        seconds = time.monotonic() - started
        used = cpu.per_request(requests, seconds)
        # Every request of a route is counted by every node on it (the warm-up's and
        # the set-up's too).
        sent = {route: len(times[route]) + WARM_UP for route in ROUTES}
        counted = await _check_relayed(fed, sent)
        result: dict[str, Any] = {
            "seconds": round(seconds, 1),
            "relayed_requests_counted": counted,
            "cpu": used,
            "load_average_before": round(load_before, 2),
            "load_average_after": round(os.getloadavg()[0], 2),
            "envelope_bytes": envelope.ByteSize(),
            "answer_bytes": answer.ByteSize(),
            "baseline": _figures(times["baseline"]),
        }
        base = result["baseline"]["p50_ms"]
        for route, (_, hops, way) in ROUTES.items():
            figures = _figures(times[route])
            result[route] = {
                "route": way,
                "calls": hops,
                **figures,
                "per_hop_ms": round((figures["p50_ms"] - base) / hops, 3),
            }
        extra = (result["two_prefectures"]["p50_ms"] - result["one_prefecture"]["p50_ms"]) / (
            ROUTES["two_prefectures"][1] - ROUTES["one_prefecture"][1]
        )
        result["extra_hop_ms"] = round(extra, 3)
        result["extra_hop_vs_baseline"] = round(extra / base, 2) if base else None
        progress(
            f"relay {backend}: baseline {base:.2f} ms; one prefecture "
            f"{result['one_prefecture']['p50_ms']:.2f} ms, two "
            f"{result['two_prefectures']['p50_ms']:.2f} ms; each extra hop {extra:.2f} ms"
        )
        return result
    finally:
        if channel is not None:
            await channel.close(None)
        if baseline is not None:
            baseline.stop()
        if tottori is not None:
            with contextlib.suppress(Exception):
                await tottori.stop()
        await fed.close(grace=5.0)


def run(backends: list[str], requests: int, *, keep: bool = False) -> dict[str, Any]:
    """The figures of every backend, for the results file; the work folder (configs,
    node logs) is kept on a failure or when ``keep``."""
    root = Path(tempfile.mkdtemp(prefix="jukinet-bench-relay-"))
    out: dict[str, Any] = {}
    ok = False
    try:
        for backend in backends:
            out[backend] = asyncio.run(measure(backend, requests, root / backend))
        ok = True
    finally:
        if ok and not keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            progress(f"relay: work files (configs, node logs) kept in {root}")
    return {
        "parameters": {"requests": requests, "round": ROUND, "warm_up": WARM_UP},
        "backends": out,
    }
