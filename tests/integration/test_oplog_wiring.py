"""The operation log in a running federation, over real mTLS: operator calls make
entries, heads go upward and come back cosigned, a forked log is refused, and
``jukinet audit verify`` names a row edited in the database."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import MetaData, update

from jukinet.audit import origin_of
from jukinet.cli.audit import verify_node
from jukinet.config import MunicipalConfig
from jukinet.db import Database
from jukinet.identity import Identity
from jukinet.oplog import note
from jukinet.oplog.entry import Operation
from jukinet.oplog.log import OperationLog, define_oplog_tables
from jukinet.oplog.verify import Row
from jukinet.v1 import common_pb2 as C
from jukinet.v1 import delivery_pb2, national_pb2_grpc, oplog_pb2, prefecture_pb2_grpc
from jukinet.v1 import municipal_pb2 as M
from services.municipal.app import MunicipalApp
from tests.federation import Federation, trailers

TOTTORI, YONAGO = "312011", "312029"
TIMEOUT = 15


def person() -> M.PersonDetails:
    """A valid person's details."""
    return M.PersonDetails(
        name="鳥取 太郎",
        name_kana="トットリ タロウ",
        birth_date="1988-05-17",
        sex=C.SEX_MALE,
        address="鳥取県鳥取市東町1丁目220番地",
    )


async def rows_of(app: Any) -> list[Row]:
    """The log rows of a node, as stored."""
    async with app.db.read() as conn:
        rows: list[Row] = await app.log.oplog.rows(conn)
    return rows


async def heads_of(app: Any) -> list[note.Note]:
    """The heads a node signed, with the cosignatures it received."""
    async with app.db.read() as conn:
        heads: list[note.Note] = await app.log.oplog.heads(conn)
    return heads


async def refused(call: Any) -> grpc.aio.AioRpcError:
    """The error a call fails with (it must fail)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def test_operator_calls_are_logged_and_heads_witnessed(fed: Federation) -> None:
    town: MunicipalApp = fed.municipalities[TOTTORI]
    clerk = fed.operator(TOTTORI)
    # The counter operator's enrolment on the host and login come first.
    login = [(r.operator, r.terminal, r.operation, r.outcome) for r in await rows_of(town)]
    me = f"jukinet://operator/{TOTTORI}/counter"
    desk1 = f"jukinet://terminal/{TOTTORI}/desk1"
    assert login == [
        (me, "host", "EnrollOperator", "ok"),
        (me, desk1, "BeginLogin", "ok"),
        (me, desk1, "Login", "ok"),
    ]
    p = len(login)
    born = await clerk.RegisterBirth(M.RegisterBirthRequest(person=person()), timeout=TIMEOUT)
    code = born.resident.resident_code
    await clerk.GetResident(M.GetResidentRequest(resident_code=code), timeout=TIMEOUT)
    bad = await refused(clerk.GetResident(M.GetResidentRequest(resident_code="12"), timeout=5))
    assert bad.code() is grpc.StatusCode.INVALID_ARGUMENT
    stranger = M.GetResidentRequest(resident_code=code)
    other = fed.channel(fed.municipal_ports[TOTTORI], f"operator-{YONAGO}-admin")
    denied = await refused(
        municipal_stub(other).GetResident(stranger, timeout=5)  # another town's operator
    )
    assert denied.code() is grpc.StatusCode.PERMISSION_DENIED

    rows = (await rows_of(town))[p:]
    entries = [(r.operator, r.operation, r.resident_codes, r.outcome, r.reason) for r in rows]
    them = f"jukinet://operator/{YONAGO}/admin"
    assert entries == [
        (me, "RegisterBirth", code, "ok", ""),
        (me, "GetResident", code, "ok", ""),
        (me, "GetResident", "12", "refused", "invalid-argument"),  # as attempted
        (them, "GetResident", code, "refused", "wrong-identity"),
    ]
    # Which computer: the terminal's identity; a certificate's caller, its address.
    assert [r.terminal for r in rows[:3]] == [desk1] * 3
    assert rows[3].terminal.startswith("ipv")

    # A head goes to the prefecture and comes back with its cosignature.
    prefecture = fed.prefectures["31"]
    witness = prefecture.log.witness.witness_log.verifier
    await town.log.keeper.tick()
    first = (await heads_of(town))[-1]
    assert note.parse_checkpoint(first.text).size == p + 4
    note.verify_cosignature(first, witness)
    # The next one is proven to extend it.
    await clerk.GetStatus(M.GetMunicipalStatusRequest(), timeout=TIMEOUT)
    await town.log.keeper.tick()
    second = (await heads_of(town))[-1]
    assert note.parse_checkpoint(second.text).size == p + 5
    note.verify_cosignature(second, witness)
    async with prefecture.db.read() as conn:
        held = await prefecture.log.witness.witness_log.held(conn, "jukinet/municipality/312011")
    assert [note.parse_checkpoint(h.text).size for h in held] == [p + 4, p + 5]

    # The prefecture logs its own operators and has the national node witness it.
    await fed.prefecture_operator("31").GetDeliveryStatus(
        delivery_pb2.GetDeliveryStatusRequest(), timeout=TIMEOUT
    )
    assert [r.operation for r in await rows_of(prefecture)] == ["GetDeliveryStatus"]
    await prefecture.log.keeper.tick()
    assert fed.national is not None
    note.verify_cosignature(
        (await heads_of(prefecture))[-1], fed.national.log.witness.witness_log.verifier
    )

    report = await verify_node("municipal", town.config)
    assert report.ok, report.line
    assert report.line == (
        f"ok, {p + 5} entries, head at size {p + 5} cosigned by jukinet/prefecture/31/witness"
    )

    # A row edited in the database: the audit names it, in-process and from the command line.
    async with town.db.write() as conn:
        entries_t = town.log.oplog.tables.entries
        await conn.execute(
            update(entries_t).where(entries_t.c.idx == 1).values(resident_codes="99999999999")
        )
    report = await verify_node("municipal", town.config)
    assert not report.ok
    assert report.line.startswith("jukinet/municipality/312011: altered: entry 1:"), report.line
    config_file = write_config(town.config, Path(fed.pki_dir).parent / "audit-312011.toml")
    # Not subprocess.run: the tier above it asks is served by this test's event loop.
    command = ["-m", "jukinet.cli.main", "audit", "verify", "municipal"]
    run = await asyncio.create_subprocess_exec(
        sys.executable, *command, "--config", str(config_file), stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(run.communicate(), timeout=60)
    assert run.returncode == 1, stderr
    assert b"altered: entry 1: its resident_codes columns differ" in stderr


def municipal_stub(channel: grpc.aio.Channel) -> Any:
    """The municipal service on ``channel``."""
    from jukinet.v1 import municipal_pb2_grpc

    return municipal_pb2_grpc.MunicipalServiceStub(channel)


def write_config(config: MunicipalConfig, path: Path) -> Path:
    """A TOML file of a municipal node's config (the settings the audit reads)."""
    path.write_text(
        f'listen = "{config.listen}"\n'
        f'database_url = "{config.database_url}"\n'
        f'local_government_code = "{config.local_government_code}"\n'
        f'prefecture_target = "{config.prefecture_target}"\n'
        f'[tls]\nca = "{config.tls.ca}"\ncert = "{config.tls.cert}"\nkey = "{config.tls.key}"\n',
        encoding="utf-8",
    )
    return path


async def test_the_witness_refuses_a_forked_log_and_foreign_heads(
    fed: Federation, tmp_path: Path
) -> None:
    town: MunicipalApp = fed.municipalities[TOTTORI]
    clerk = fed.operator(TOTTORI)
    for _ in range(2):
        await clerk.GetStatus(M.GetMunicipalStatusRequest(), timeout=TIMEOUT)
    await town.log.keeper.tick()
    held = (await heads_of(town))[-1]
    held_size = note.parse_checkpoint(held.text).size
    assert held_size == 2 + 3  # after the counter operator's enrolment and login

    # The same key signs a rewritten history, one entry longer.
    fork_db = Database(f"sqlite+aiosqlite:///{tmp_path / 'fork.db'}")
    metadata = MetaData()
    tables = define_oplog_tables(metadata)
    origin = origin_of(Identity.municipality(TOTTORI))
    fork = OperationLog(tables, origin, town.log.keys.log)
    try:
        async with fork_db.write() as conn:
            await conn.run_sync(metadata.create_all)
            for n in range(held_size + 1):
                when = town.clock.now()
                op = Operation(when, "jukinet://operator/312011/admin", "t", f"Forged{n}", (), "ok")
                await fork.append(conn, op)
            forged = await fork.sign_head(conn, town.clock.now())
            proof = await fork.consistency_proof(conn, held_size, held_size + 1)
    finally:
        await fork_db.close()
    own = prefecture_pb2_grpc.PrefectureServiceStub(
        fed.channel(fed.prefecture_ports["31"], f"municipality-{TOTTORI}")
    )
    forked = oplog_pb2.SubmitCheckpointRequest(
        checkpoint=forged.encode(), old_size=held_size, proof=proof
    )
    err = await refused(own.SubmitCheckpoint(forked, timeout=TIMEOUT))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert trailers(err)["jukinet-reason"] == "checkpoint-inconsistent"
    assert "does not extend" in (err.details() or "")

    # Another town of the prefecture may not send (nor read) Tottori's heads.
    yonago = prefecture_pb2_grpc.PrefectureServiceStub(
        fed.channel(fed.prefecture_ports["31"], f"municipality-{YONAGO}")
    )
    resent = oplog_pb2.SubmitCheckpointRequest(checkpoint=held.encode(), old_size=held_size)
    err = await refused(yonago.SubmitCheckpoint(resent, timeout=TIMEOUT))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert trailers(err)["jukinet-reason"] == "checkpoint-foreign"
    ask = oplog_pb2.GetCheckpointsRequest(origin=origin)
    err = await refused(yonago.GetCheckpoints(ask, timeout=TIMEOUT))
    assert trailers(err)["jukinet-reason"] == "checkpoint-foreign"
    # The head itself, sent again, gets the same cosignature back.
    again = await own.SubmitCheckpoint(resent, timeout=TIMEOUT)
    assert held.with_signature(note.parse_note(held.text + "\n" + again.cosignature).signatures[0])

    # The wrong tier, and an operator, are refused by the rule table.
    tokyo = prefecture_pb2_grpc.PrefectureServiceStub(
        fed.channel(fed.prefecture_ports["13"], f"municipality-{TOTTORI}")
    )
    err = await refused(tokyo.SubmitCheckpoint(resent, timeout=TIMEOUT))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert trailers(err)["jukinet-reason"] == "wrong-identity"
    national = national_pb2_grpc.NationalServiceStub(
        fed.channel(fed.national_port, f"municipality-{TOTTORI}")
    )
    err = await refused(national.SubmitCheckpoint(resent, timeout=TIMEOUT))
    assert trailers(err)["jukinet-reason"] == "wrong-identity"
    err = await refused(fed.prefecture_operator("31").SubmitCheckpoint(resent, timeout=TIMEOUT))
    assert trailers(err)["jukinet-reason"] == "wrong-identity"
    # ... and that operator's refused attempt is in the prefecture's log.
    last = (await rows_of(fed.prefectures["31"]))[-1]
    assert (last.operation, last.outcome, last.reason) == (
        "SubmitCheckpoint",
        "refused",
        "wrong-identity",
    )
