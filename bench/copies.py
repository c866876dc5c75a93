"""The signed copies of resident records, two figures side by side.

**Render and sign** (``copies_per_s``): :func:`jukinet.copydoc.render_copy`
followed by :func:`jukinet.copydoc.sign_copy`, in one process, one after the other.

A throw-away PKI is made (the issuing municipality 131016 and the home
municipality 312011), the IPA fonts are read once, and each copy is of one
household of three people with every optional item present (続柄, 住民票コード,
旧氏), so that its fonts carry a realistic set of glyphs. One copy is made
first as a warm-up (the local government registry is read then). Each copy's
render and sign times are taken separately, and each signed copy is then
verified (:func:`jukinet.copydoc.verify_copy`), timed apart from the
copies/s.

**Issued** (``issued``): copies issued through the real ``IssueCopy`` path. A
:class:`tools.localfed.LocalFederation` (node processes, SQLite) of the issuing
municipality 131016 and the home municipality 312011, in two prefectures: the
counter operator at 131016 asks for a copy of a household of three registered
at 312011 (relationship and resident code asked for), identified by a photo
ID; 131016 asks 312011 over the relay (131016 -> 東京都 -> national -> 鳥取県 ->
312011 and back, sealed end to end), renders and signs the PDF in a thread and
answers it. Measured one after the other (``copies_per_s``, the latency of
each call) and four at a time (``concurrent_copies_per_s``); each copy's
signature is then verified.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509

from bench.common import percentile, progress
from jukinet import copydoc, pki
from jukinet.identity import Identity
from jukinet.v1 import common_pb2, municipal_pb2, relay_pb2
from tools.localfed import Databases, LocalFederation

ISSUER = "131016"
HOME = "312011"
CONCURRENCY = 4
"""Copies asked for at once in the concurrent phase of the issued figure."""
_RPC_TIMEOUT = 60


def sample_answer() -> relay_pb2.CopyAnswer:
    """A household of three, as the home municipality answers it."""
    address = "鳥取県鳥取市東町一丁目220番地"
    people = [
        ("鳥取　太郎", "トットリ　タロウ", "1980-04-01", common_pb2.SEX_MALE, "世帯主", ""),
        ("鳥取　花子", "トットリ　ハナコ", "1982-12-24", common_pb2.SEX_FEMALE, "妻", "髙橋"),
        ("鳥取　一郎", "トットリ　イチロウ", "2012-07-07", common_pb2.SEX_MALE, "子", ""),
    ]
    return relay_pb2.CopyAnswer(
        local_government_code=HOME,
        as_of="2026-11-01T05:00:00Z",
        head_name=people[0][0],
        household_address=address,
        entries=[
            relay_pb2.CopyEntry(
                name=name,
                name_kana=kana,
                birth_date=born,
                sex=sex,
                address=address,
                registered_on="2012-07-07",
                previous_address="東京都千代田区千代田1番1号",
                relationship=relationship,
                resident_code=f"1234567890{n}",
                former_surname=former,
            )
            for n, (name, kana, born, sex, relationship, former) in enumerate(people)
        ],
    )


def issue_copies(
    count: int, signer: copydoc.DocumentSigner, fonts: copydoc.Fonts
) -> tuple[list[bytes], list[float], list[float]]:
    """``count`` signed copies of :func:`sample_answer`, and each one's render and sign
    seconds."""
    answer = sample_answer()
    copies, render, sign = [], [], []
    for _ in range(count):
        t0 = time.perf_counter()
        pdf = copydoc.render_copy(
            answer,
            issuer=ISSUER,
            operator=f"jukinet://operator/{ISSUER}/clerk1",
            issued_at=dt.datetime.now(dt.UTC),
            fonts=fonts,
        )
        t1 = time.perf_counter()
        copies.append(signer.sign(pdf))
        render.append(t1 - t0)
        sign.append(time.perf_counter() - t1)
    return copies, render, sign


async def _household(stub: Any) -> tuple[str, list[str]]:
    """A household of three at the home municipality: the head's code and everyone's."""
    address = "鳥取県鳥取市東町一丁目220番地"
    people = [
        ("鳥取　太郎", "トットリ　タロウ", "1980-04-01", common_pb2.SEX_MALE, 0),
        ("鳥取　花子", "トットリ　ハナコ", "1982-12-24", common_pb2.SEX_FEMALE, 2),
        ("鳥取　一郎", "トットリ　イチロウ", "2012-07-07", common_pb2.SEX_MALE, 6),
    ]
    codes: list[str] = []
    household = ""
    for name, kana, born, sex, relationship in people:
        answer = await stub.RegisterBirth(
            municipal_pb2.RegisterBirthRequest(
                person=municipal_pb2.PersonDetails(
                    name=name, name_kana=kana, birth_date=born, sex=sex, address=address
                ),
                household_id=household,
                register=municipal_pb2.RegisterItems(
                    relationship=municipal_pb2.Relationship.ValueType(relationship),
                    domicile="鳥取県鳥取市東町一丁目220番地",
                    domicile_head="鳥取　太郎",
                ),
            ),
            timeout=_RPC_TIMEOUT,
        )
        household = answer.resident.household_id
        codes.append(answer.resident.resident_code)
    return codes[0], codes


async def _measure_issued(count: int, workdir: Path) -> dict[str, Any]:
    fed = LocalFederation(
        workdir, (ISSUER, HOME), databases=Databases("sqlite", workdir / "data", prefix="jkbench")
    )
    try:
        progress("copies: a federation of 131016 and 312011 (node processes, SQLite)")
        await fed.prepare()
        # A loaded machine starts node processes slowly: this is no readiness test.
        await fed.start_all(within=120.0)
        # The async stubs of the counters (localfed types them as the sync ones).
        home: Any = (await fed.counter(HOME))[0]
        issuer: Any = (await fed.counter(ISSUER))[0]
        head, codes = await _household(home)
        request = municipal_pb2.IssueCopyRequest(
            resident_code=head,
            home_local_government_code=HOME,
            member_resident_codes=codes,
            include_relationship=True,
            include_resident_code=True,
            identification=municipal_pb2.APPLICANT_IDENTIFICATION_PHOTO_ID,
        )

        async def issue() -> tuple[float, bytes]:
            t0 = time.perf_counter()
            answer = await issuer.IssueCopy(request, timeout=_RPC_TIMEOUT)
            return time.perf_counter() - t0, answer.document

        await issue()  # warm-up: channels, directory, fonts' first subsets
        progress(f"copies: {count} copies issued through IssueCopy, one after the other")
        t0 = time.perf_counter()
        timed = [await issue() for _ in range(count)]
        sequential = time.perf_counter() - t0
        progress(f"copies: {count} copies issued, {CONCURRENCY} at a time")
        gate = asyncio.Semaphore(CONCURRENCY)

        async def gated() -> tuple[float, bytes]:
            async with gate:
                return await issue()

        t0 = time.perf_counter()
        together = await asyncio.gather(*(gated() for _ in range(count)))
        concurrent = time.perf_counter() - t0
        ca = x509.load_pem_x509_certificate((fed.pki_dir / pki.CA_CERT).read_bytes())
        for _, document in [*timed, *together]:
            await asyncio.to_thread(copydoc.verify_copy, document, ca=ca)
        latency = sorted(seconds for seconds, _ in timed)
        return {
            "route": f"{ISSUER} -> 13 -> national -> 31 -> {HOME}",
            "backend": "sqlite",
            "persons": len(codes),
            "copies_per_s": count / sequential,
            "concurrent_copies_per_s": count / concurrent,
            "concurrency": CONCURRENCY,
            "latency_ms_p50": percentile(latency, 50) * 1e3,
            "latency_ms_p99": percentile(latency, 99) * 1e3,
        }
    finally:
        await fed.close(grace=5.0)


def measure_issued(count: int) -> dict[str, Any]:
    """The issued figure of ``count`` copies (see the module)."""
    root = Path(tempfile.mkdtemp(prefix="jukinet-bench-issue-"))
    ok = False
    try:
        result = asyncio.run(_measure_issued(count, root))
        ok = True
        return result
    finally:
        if ok:
            shutil.rmtree(root, ignore_errors=True)
        else:
            progress(f"copies: work files (configs, node logs) kept in {root}")


def run(count: int) -> dict[str, Any]:
    """The figures of ``count`` copies, for the results file."""
    with tempfile.TemporaryDirectory(prefix="jukinet-bench-copies-") as folder:
        directory = Path(folder)
        pki.issue_federation(directory, pki.FederationSpec(municipalities=[ISSUER, HOME]))
        name = pki.cert_name(Identity.municipality(ISSUER))
        signer = copydoc.load_document_signer(
            pki.default_document_key_path(directory / f"{name}.key"),
            pki.default_document_certificate_path(directory / f"{name}.pem"),
            directory / pki.CA_CERT,
        )
        ca = x509.load_pem_x509_certificate((directory / pki.CA_CERT).read_bytes())
    fonts = copydoc.Fonts.load()
    issue_copies(1, signer, fonts)  # warm-up
    progress(f"copies: {count} copies rendered and signed")
    t0 = time.perf_counter()
    copies, render, sign = issue_copies(count, signer, fonts)
    elapsed = time.perf_counter() - t0
    verify = []
    for pdf in copies:
        t1 = time.perf_counter()
        copydoc.verify_copy(pdf, ca=ca)
        verify.append(time.perf_counter() - t1)
    return {
        "parameters": {"copies": count, "persons": len(sample_answer().entries)},
        "seconds": elapsed,
        "copies_per_s": count / elapsed,
        "render_ms_p50": percentile(sorted(render), 50) * 1e3,
        "sign_ms_p50": percentile(sorted(sign), 50) * 1e3,
        "verify_ms_p50": percentile(sorted(verify), 50) * 1e3,
        "bytes_p50": percentile(sorted(float(len(c)) for c in copies), 50),
        "issued": measure_issued(count),
    }
