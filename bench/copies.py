"""The signed copies of resident records: copies/s of :func:`jukinet.copydoc.render_copy`
followed by :func:`jukinet.copydoc.sign_copy`, in one process, one after the other.

A throw-away PKI is made (the issuing municipality 131016 and the home
municipality 312011), the IPA fonts are read once, and each copy is of one
household of three people with every optional item present (続柄, 住民票コード,
旧氏), so that its fonts carry a realistic set of glyphs. One copy is made
first as a warm-up (the local government registry is read then). Each copy's
render and sign times are taken separately, and each signed copy is then
verified (:func:`jukinet.copydoc.verify_copy`), timed apart from the
copies/s.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509

from bench.common import percentile, progress
from jukinet import copydoc, pki
from jukinet.identity import Identity
from jukinet.v1 import common_pb2, relay_pb2

ISSUER = "131016"
HOME = "312011"


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
    }
