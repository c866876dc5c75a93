"""Provisions in the national operation log, witnessed by the prefectures, and a
resident's disclosure with inclusion proofs checked offline.

Every provision and denial at the national node appends an entry in the same
write as its provision row; each prefecture fetches, checks and cosigns the
national heads (and refuses a forked one); a disclosure asked with proofs
carries each provision's entry and inclusion proof against a witnessed head
through the municipal and prefecture nodes; ``jukinet audit check-proof``
accepts the file it writes and names what is wrong with an altered one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import delete

from jukinet.audit import read_verifiers, read_witness_keys
from jukinet.cli.audit import check_proof_file, verify_node
from jukinet.oplog import note
from jukinet.oplog.disclosure import NATIONAL_ORIGIN, check_disclosure
from jukinet.oplog.entry import Operation, decode, encode
from jukinet.v1 import gateway_pb2 as G
from jukinet.v1 import national_pb2_grpc, oplog_pb2, prefecture_pb2_grpc
from jukinet.v1 import provision_pb2 as P
from services.national.app import NationalApp
from tests.federation import Federation, session_options, trailers
from tests.integration.test_gateway import (
    EXISTENCE,
    NENKIN,
    PASSPORT,
    TIMEOUT,
    TOTTORI,
    person,
    register,
)

GATEWAY = "jukinet://gateway"


@pytest.fixture
async def gw(fed: Federation) -> Federation:
    """The federation with its gateway running."""
    await fed.start_gateway()
    return fed


def national_of(fed: Federation) -> NationalApp:
    """The national node of the federation."""
    assert fed.national is not None
    return fed.national


async def verify_for(fed: Federation, code: str) -> None:
    """One provision (a match) and one refusal (a purpose nenkin does not have) of ``code``."""
    nenkin = fed.agency(NENKIN)
    claim = G.ClaimedIdentity(resident_code=code)
    await nenkin.Verify(G.VerifyRequest(purpose_code=EXISTENCE, claim=claim), timeout=TIMEOUT)
    with pytest.raises(grpc.aio.AioRpcError):
        await nenkin.Verify(G.VerifyRequest(purpose_code=PASSPORT, claim=claim), timeout=TIMEOUT)
    assert fed.gateway is not None
    for _ in range(150):  # the refusal is recorded through the gateway's spool
        if fed.gateway.spool.pending == 0:
            break
        await asyncio.sleep(0.1)
    assert fed.gateway.spool.pending == 0


async def witness_national(fed: Federation) -> None:
    """The national node signs a head and each prefecture cosigns it."""
    national = national_of(fed)
    await national.log.keeper.tick()
    for prefecture in fed.prefectures.values():
        assert prefecture.log.top is not None
        assert await prefecture.log.top.once()


async def disclose(fed: Federation, code: str) -> P.DiscloseResponse:
    """The disclosure with proofs, asked at the resident's municipal counter."""
    answer: P.DiscloseResponse = await fed.operator(TOTTORI).DiscloseProvisions(
        P.DiscloseRequest(resident_code=code, with_proofs=True), timeout=TIMEOUT
    )
    return answer


def keys(fed: Federation) -> tuple[note.Verifier, list[note.Verifier]]:
    """The national log key and the prefectures' witness keys, as a resident has them."""
    path = Path(fed.pki_dir) / "log-verifiers"
    witnesses = [w for w in read_witness_keys(path) if w.name.startswith("jukinet/prefecture/")]
    return read_verifiers(path)[NATIONAL_ORIGIN], witnesses


async def test_provisions_are_logged_witnessed_and_proven_to_the_resident(
    gw: Federation, tmp_path: Path
) -> None:
    code = await register(gw, person("倉吉　花子"))
    other = await register(gw, person("米子　一郎"))
    await gw.wait_delivered()
    await verify_for(gw, code)
    await verify_for(gw, other)
    national = national_of(gw)

    # Each provision and denial has its entry, which names the agency and the gateway.
    async with national.db.read() as conn:
        rows = await national.log.oplog.rows(conn)
    logged = [decode(r.entry).operation for r in rows]
    mine = [op for op in logged if op.resident_codes == (code,)]
    assert [(op.operator, op.terminal, op.operation, op.outcome) for op in mine] == [
        (f"jukinet://agency/{NENKIN}", GATEWAY, "verify", "ok"),
        (f"jukinet://agency/{NENKIN}", GATEWAY, "verify", "refused"),
    ]
    assert [op.provision.purpose for op in mine if op.provision] == [EXISTENCE, PASSPORT]
    assert [op.provision.result for op in mine if op.provision] == ["match", "denied"]
    assert mine[1].reason  # the denial's reason
    report = await verify_node("national", national.config)
    assert report.ok, report.line

    # Before any head is witnessed, a disclosure has no proofs to give.
    early = await disclose(gw, code)
    assert len(early.provisions) == 2 and not early.checkpoint and not early.proofs

    await witness_national(gw)
    async with national.db.read() as conn:
        head = await national.log.oplog.witnessed_head(conn)
    assert head is not None
    assert sorted(s.name for s in head.signatures[1:]) == [
        "jukinet/prefecture/13/witness",
        "jukinet/prefecture/31/witness",
    ]

    disclosed = await disclose(gw, code)
    assert [p.provision_id for p in disclosed.proofs] == [
        p.provision_id for p in disclosed.provisions
    ]
    log_key, witnesses = keys(gw)
    checked = check_disclosure(disclosed, log_key, witnesses)
    assert checked.ok, [line.text for line in checked.lines]

    # A provision newer than the witnessed head comes without a proof, and says so.
    await verify_for(gw, code)
    newer = await disclose(gw, code)
    assert len(newer.provisions) == 4 and len(newer.proofs) == 2
    lines = check_disclosure(newer, log_key, witnesses).lines
    assert [line.ok for line in lines] == [True, True, True, False, False]
    assert "no proof" in lines[-1].text

    # From the command line: the counter writes the file, the resident checks it offline.
    out = tmp_path / "disclosure.json"
    target = f"127.0.0.1:{gw.municipal_ports[TOTTORI]}"
    counter = session_options(
        target, gw.pki_dir, TOTTORI, gw.sessions[TOTTORI], path=tmp_path / "s" / "session.json"
    )
    status, stdout, _ = await cli(
        gw,
        "resident",
        "disclose",
        code,
        "--proofs",
        "--out",
        str(out),
        *counter,
    )
    assert status == 0, stdout
    assert "4 provisions, 2 with proofs" in stdout
    verifiers = str(Path(gw.pki_dir) / "log-verifiers")
    await witness_national(gw)
    status, stdout, _ = await cli(
        gw,
        "resident",
        "disclose",
        code,
        "--proofs",
        "--out",
        str(out),
        *counter,
    )
    assert status == 0
    status, stdout, stderr = await cli(
        gw, "audit", "check-proof", str(out), "--verifiers", verifiers
    )
    assert status == 0, stdout + stderr
    assert stdout.count("\nok   ") == 5 and "verdict: ok, 4 provisions proven" in stdout

    # Each way of tampering with the file is refused, and named.
    good = json.loads(out.read_text(encoding="utf-8"))
    other_disclosed = await gw.national_operator().Disclose(
        P.DiscloseRequest(resident_code=other, with_proofs=True), timeout=TIMEOUT
    )
    for name, tamper, expected in tampering(other_disclosed):
        bad = json.loads(json.dumps(good))
        tamper(bad)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(bad), encoding="utf-8")
        checked = check_proof_file(str(path), verifiers, [])
        assert not checked.ok, name
        problems = " | ".join(line.text for line in checked.lines if not line.ok)
        assert expected in problems, (name, problems)
    status, stdout, stderr = await cli(
        gw, "audit", "check-proof", str(tmp_path / "altered-entry.json"), "--verifiers", verifiers
    )
    assert status == 1
    assert "FAIL " in stdout and "verdict: FAILED, 1 problems" in stderr

    # A national operator's call (its own entry) came between provisions: the next
    # provisions still follow it in the log, which verifies end to end.
    await verify_for(gw, other)
    async with national.db.read() as conn:
        rows = await national.log.oplog.rows(conn)
    assert [decode(r.entry).operation.operation for r in rows][-3:] == [
        "Disclose",
        "verify",
        "verify",
    ]
    report = await verify_node("national", national.config)
    assert report.ok, report.line


def tampering(other: P.DiscloseResponse) -> list[tuple[str, Any, str]]:
    """(name, how to alter a disclosure file, what the checker must say)."""

    def altered_entry(d: dict[str, Any]) -> None:
        entry = decode(base64.b64decode(d["proofs"][0]["entry"]))
        assert entry.operation.provision is not None
        forged = Operation(
            **{
                **entry.operation.__dict__,
                "provision": entry.operation.provision.__class__(
                    entry.operation.provision.provision_id,
                    "MOFA-PASSPORT-ISSUE",
                    entry.operation.provision.result,
                    entry.operation.provision.fields,
                ),
            }
        )
        d["proofs"][0]["entry"] = base64.b64encode(
            encode(entry.__class__(entry.index, forged, entry.prev_root))
        ).decode()

    def wrong_proof(d: dict[str, Any]) -> None:
        proof = d["proofs"][1]["inclusion_proof"]
        proof[0] = base64.b64encode(b"\x00" * 32).decode()

    def foreign_head(d: dict[str, Any]) -> None:
        signed = note.parse_note(d["checkpoint"])
        impostor = note.Signer.generate(NATIONAL_ORIGIN)
        d["checkpoint"] = note.sign_note(signed.text, impostor).encode()

    def no_cosignature(d: dict[str, Any]) -> None:
        signed = note.parse_note(d["checkpoint"])
        d["checkpoint"] = note.Note(signed.text, signed.signatures[:1]).encode()

    def wrong_cosignature(d: dict[str, Any]) -> None:
        signed = note.parse_note(d["checkpoint"])
        bad = [
            note.Signature(s.name, s.key_id, s.signature[:-1] + bytes([s.signature[-1] ^ 1]))
            for s in signed.signatures[1:]
        ]
        d["checkpoint"] = note.Note(signed.text, (signed.signatures[0], *bad)).encode()

    def another_resident(d: dict[str, Any]) -> None:
        # The other resident's entry and proof, under the same head, passed off as ours.
        theirs = other.proofs[0]
        d["proofs"][0]["entry"] = base64.b64encode(theirs.entry).decode()
        d["proofs"][0]["index"] = str(theirs.index)
        d["proofs"][0]["inclusion_proof"] = [
            base64.b64encode(h).decode() for h in theirs.inclusion_proof
        ]

    return [
        ("altered-entry", altered_entry, "not in the witnessed log"),
        ("wrong-proof", wrong_proof, "not in the witnessed log"),
        ("foreign-head", foreign_head, "not signed by the national log key"),
        ("no-cosignature", no_cosignature, "cosigned by no known witness"),
        ("wrong-cosignature", wrong_cosignature, "does not verify"),
        ("another-resident", another_resident, "is for another resident"),
    ]


async def cli(fed: Federation, *args: str) -> tuple[int, str, str]:
    """Run ``jukinet ARGS`` in a subprocess (the nodes it calls run in this event loop)."""
    command = [sys.executable, "-m", "jukinet.cli.main", *args]
    run = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(run.communicate(), timeout=60)
    assert run.returncode is not None
    return run.returncode, "\n" + stdout.decode(), stderr.decode()


async def test_the_prefectures_refuse_a_forked_national_log(
    gw: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    code = await register(gw, person("境港　三郎"))
    await gw.wait_delivered()
    await verify_for(gw, code)
    await witness_national(gw)
    national = national_of(gw)
    tottori = gw.prefectures["31"]
    assert tottori.log.top is not None

    # Resent, the same head is cosigned again (nothing new is kept).
    assert await tottori.log.top.once()
    witnesses = [f"127.0.0.1:{port}" for port in gw.prefecture_ports.values()]
    sound = await verify_node("national", national.config, witnesses=witnesses)
    assert sound.ok, sound.line
    assert "cosigned by jukinet/prefecture/" in sound.line

    # The national log rewritten and re-signed with the national key: a fork.
    oplog = national.log.oplog
    t = oplog.tables
    async with national.db.write() as conn:
        for table in (t.entries, t.state, t.heads, t.cosignatures):
            await conn.execute(delete(table))
        for n in range(4):
            forged = Operation(
                national.log.recorder.clock.now(),
                "jukinet://agency/nenkin",
                GATEWAY,
                f"forged-{n}",
                (),
                "ok",
            )
            await oplog.append(conn, forged)
        await oplog.sign_head(conn, national.log.recorder.clock.now())
    caplog.set_level(logging.WARNING, logger="jukinet.audit")
    for prefecture in gw.prefectures.values():
        assert prefecture.log.top is not None
        assert not await prefecture.log.top.tick()
    assert "does not extend" in caplog.text
    async with national.db.read() as conn:
        assert await oplog.witnessed_head(conn) is None  # nobody cosigned the fork
    # Alone, the rewritten log agrees with itself; the heads the prefectures hold do not.
    assert (await verify_node("national", national.config, offline=True)).ok
    forked = await verify_node("national", national.config, witnesses=witnesses)
    assert not forked.ok, forked.line
    assert "jukinet/national:" in forked.line
    # The national node reads the heads a prefecture holds of its own log, no other.
    as_national = prefecture_pb2_grpc.PrefectureServiceStub(
        gw.channel(gw.prefecture_ports["31"], "national")
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await as_national.GetCheckpoints(
            oplog_pb2.GetCheckpointsRequest(origin=f"jukinet/municipality/{TOTTORI}"),
            timeout=TIMEOUT,
        )
    assert trailers(info.value)["jukinet-reason"] == "checkpoint-foreign"

    # Only a prefecture fetches heads and returns cosignatures, and only with its own key.
    as_town = national_pb2_grpc.NationalServiceStub(
        gw.channel(gw.national_port, f"municipality-{TOTTORI}")
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await as_town.GetLogHead(oplog_pb2.GetLogHeadRequest(), timeout=TIMEOUT)
    assert trailers(info.value)["jukinet-reason"] == "wrong-identity"
    head = await national_pb2_grpc.NationalServiceStub(
        gw.channel(gw.national_port, "prefecture-31")
    ).GetLogHead(oplog_pb2.GetLogHeadRequest(), timeout=TIMEOUT)
    tokyo = gw.prefectures["13"].log.witness.witness_log
    text = note.parse_note(head.checkpoint).text
    as_tottori = national_pb2_grpc.NationalServiceStub(
        gw.channel(gw.national_port, "prefecture-31")
    )
    impostor = note.Signer.generate("jukinet/prefecture/13/witness", note.COSIGNATURE_V1)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await as_tottori.CosignLogHead(
            oplog_pb2.CosignLogHeadRequest(
                checkpoint=head.checkpoint,
                cosignature=note.cosign(text, impostor, 1).line(),
                witness_key=tokyo.verifier.vkey,
            ),
            timeout=TIMEOUT,
        )
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert trailers(info.value)["jukinet-reason"] == "checkpoint-foreign"
    # A key of its own name, but not the one log-verifiers lists for it.
    unlisted = note.Signer.generate("jukinet/prefecture/31/witness", note.COSIGNATURE_V1)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await as_tottori.CosignLogHead(
            oplog_pb2.CosignLogHeadRequest(
                checkpoint=head.checkpoint,
                cosignature=note.cosign(text, unlisted, 1).line(),
                witness_key=unlisted.verifier.vkey,
            ),
            timeout=TIMEOUT,
        )
    assert trailers(info.value)["jukinet-reason"] == "checkpoint-foreign"
    # Its own key, but a cosignature not made with it.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await as_tottori.CosignLogHead(
            oplog_pb2.CosignLogHeadRequest(
                checkpoint=head.checkpoint,
                cosignature=note.cosign(text, impostor, 1).line(),
                witness_key=tottori.log.witness.witness_log.verifier.vkey,
            ),
            timeout=TIMEOUT,
        )
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert trailers(info.value)["jukinet-reason"] == "checkpoint-inconsistent"
