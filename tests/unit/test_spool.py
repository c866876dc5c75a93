"""The gateway's spool of refusals: durable across a restart, replayed in
order, kept while the national node is down, emptied once all are recorded."""

from __future__ import annotations

from pathlib import Path

import grpc
import grpc.aio

from gateway.spool import DenialSpool, SpooledDenial


def denial(purpose: str) -> SpooledDenial:
    """A refusal of agency nenkin for ``purpose``."""
    return SpooledDenial("nenkin", purpose, "verify", "", "unknown-purpose")


def down() -> grpc.aio.AioRpcError:
    """What a call to a node that is down raises."""
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down", None
    )


async def test_spooled_refusals_survive_a_restart_and_replay_in_order(tmp_path: Path) -> None:
    path = tmp_path / "spool" / "denials.jsonl"
    spool = DenialSpool(path)
    for purpose in ("A", "B", "C"):
        await spool.add(denial(purpose))
    # A restart (or a SIGKILL: every line was fsynced) reads them back.
    again = DenialSpool(path)
    assert again.pending == 3

    seen: list[str] = []

    async def national_down(d: SpooledDenial) -> None:
        raise down()

    assert await again.replay(national_down) == 0
    assert again.pending == 3

    async def first_then_down(d: SpooledDenial) -> None:
        if seen:
            raise down()
        seen.append(d.purpose_code)

    assert await again.replay(first_then_down) == 1
    assert DenialSpool(path).pending == 2

    async def national_up(d: SpooledDenial) -> None:
        seen.append(d.purpose_code)

    assert await again.replay(national_up) == 2
    assert seen == ["A", "B", "C"]
    assert again.pending == 0
    assert path.read_text(encoding="utf-8") == ""


async def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "denials.jsonl"
    spool = DenialSpool(path)
    await spool.add(denial("A"))
    with path.open("a", encoding="utf-8") as file:
        file.write('{"op": "add", "deni')
    assert DenialSpool(path).pending == 1


async def test_a_refusal_the_national_node_refuses_for_good_is_not_retried(
    tmp_path: Path,
) -> None:
    spool = DenialSpool(tmp_path / "denials.jsonl")
    await spool.add(denial("A"))

    async def refuses(d: SpooledDenial) -> None:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata(), "no", None
        )

    assert await spool.replay(refuses) == 0
    assert spool.pending == 0
