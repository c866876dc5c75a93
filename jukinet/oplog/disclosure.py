"""Check a resident's disclosure with proofs offline: each provision is in the national
operation log under a head signed by the national log key and cosigned by a witness.

Pure functions, no network, no database. For a disclosure
(:class:`~jukinet.v1.provision_pb2.DiscloseResponse` asked ``with_proofs``) and
the keys a resident trusts (the national log key and the prefectures'
witness keys, from a ``log-verifiers`` file), :func:`check_disclosure` checks:

- the head (``checkpoint``): a signed note of the national log, its signature
  by the national log key, and at least one valid cosignature of a known
  witness (a cosignature line that does not verify is named);
- for each provision: that it has a proof; that the entry's bytes are a
  canonical entry of that index; its leaf hash and inclusion proof against
  the head's root; that the entry names one of the resident's codes; and
  that it matches the provision shown field by field (time, agency,
  operation, resident, id, purpose, result, fields).

What it cannot show: that the disclosure lists *every* provision. A
provision left out of the answer leaves no trace here; only a full audit of
the log (``jukinet audit verify``) sees all entries.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from jukinet.oplog import merkle, note
from jukinet.oplog.entry import Entry, EntryError, decode
from jukinet.oplog.merkle import ProofError
from jukinet.v1 import provision_pb2
from jukinet.vocabulary import operation_label, result_label

NATIONAL_ORIGIN = "jukinet/national"
_AGENCY = "jukinet://agency/"
_GATEWAY = "jukinet://gateway"


@dataclass(frozen=True)
class Line:
    """One checked thing (the head, or one provision) and what was found."""

    ok: bool
    text: str


@dataclass(frozen=True)
class Report:
    """The outcome: one line for the head, one per provision, and the verdict."""

    lines: tuple[Line, ...]

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return bool(self.lines) and all(line.ok for line in self.lines)


def check_disclosure(
    response: provision_pb2.DiscloseResponse,
    log_key: note.Verifier,
    witnesses: Sequence[note.Verifier],
    resident_codes: Iterable[str] = (),
) -> Report:
    """Check ``response`` against the national ``log_key`` and the ``witnesses``' keys.

    ``resident_codes`` are the codes the resident holds or held; by default
    the disclosed record's own.
    """
    codes = set(resident_codes) or {response.identity.record.resident_code}
    head_line, checkpoint = _check_head(response.checkpoint, log_key, witnesses)
    lines = [head_line]
    proofs = {p.provision_id: p for p in response.proofs}
    for provision in response.provisions:
        lines.append(
            _check_provision(provision, proofs.get(provision.provision_id), checkpoint, codes)
        )
    return Report(tuple(lines))


def _check_head(
    text: str, log_key: note.Verifier, witnesses: Sequence[note.Verifier]
) -> tuple[Line, note.Checkpoint | None]:
    if not text:
        return Line(
            False, "head: the disclosure holds no witnessed head (asked without proofs?)"
        ), None
    try:
        signed = note.parse_note(text)
        checkpoint = note.parse_checkpoint(signed.text)
    except note.NoteError as exc:
        return Line(False, f"head: cannot be read: {exc}"), None
    if checkpoint.origin != log_key.name:
        return Line(False, f"head: of the log {checkpoint.origin!r}, not {log_key.name!r}"), None
    try:
        note.verify_note(signed, log_key)
    except note.NoteError as exc:
        return Line(False, f"head: not signed by the national log key: {exc}"), None
    problems = []
    good = []
    for sig in signed.signatures[1:]:
        known = [w for w in witnesses if w.name == sig.name and w.key_id == sig.key_id]
        if not known:
            problems.append(f"a cosignature by an unknown key {sig.name}")
            continue
        try:
            note.verify_cosignature(signed, known[0])
        except note.NoteError as exc:
            problems.append(str(exc))
            continue
        good.append(sig.name)
    if not good:
        detail = "; ".join(problems) or "no cosignature at all"
        return Line(False, f"head: cosigned by no known witness ({detail})"), None
    line = f"head: size {checkpoint.size} of {checkpoint.origin}, cosigned by {', '.join(good)}"
    if problems:
        return Line(False, f"{line}; but {'; '.join(problems)}"), None
    return Line(True, line), checkpoint


def _check_provision(
    provision: provision_pb2.Provision,
    proof: provision_pb2.ProvisionProof | None,
    checkpoint: note.Checkpoint | None,
    codes: set[str],
) -> Line:
    what = (
        f"{provision.provided_at} {provision.agency_code} {operation_label(provision.operation)} "
        f"{provision.resident_code or '-'} {result_label(provision.result)} "
        f"({provision.provision_id})"
    )
    if proof is None:
        return Line(False, f"{what}: no proof (newer than the witnessed head?)")
    if checkpoint is None:
        return Line(False, f"{what}: no head to check its proof against")
    try:
        entry = decode(proof.entry)
    except EntryError as exc:
        return Line(False, f"{what}: entry {proof.index} altered: {exc}")
    if entry.index != proof.index:
        return Line(False, f"{what}: the entry is of index {entry.index}, not {proof.index}")
    try:
        merkle.verify_inclusion(
            proof.index,
            checkpoint.size,
            merkle.leaf_hash(proof.entry),
            list(proof.inclusion_proof),
            checkpoint.root,
        )
    except ProofError as exc:
        return Line(
            False,
            f"{what}: entry {proof.index} is not in the witnessed log "
            f"(the entry or its inclusion proof was altered): {exc}",
        )
    others = [c for c in entry.operation.resident_codes if c not in codes]
    if others:
        return Line(False, f"{what}: entry {proof.index} is for another resident ({others[0]})")
    mismatch = _mismatch(provision, entry)
    if mismatch:
        return Line(False, f"{what}: entry {proof.index} does not match it: {mismatch}")
    return Line(True, f"{what}: ok, entry {proof.index}")


def _mismatch(provision: provision_pb2.Provision, entry: Entry) -> str:
    op = entry.operation
    detail = op.provision
    if detail is None:
        return "the entry is not a provision's"
    try:
        at = dt.datetime.fromisoformat(provision.provided_at)
    except ValueError:
        return "the provision's time cannot be read"
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    residents = (provision.resident_code,) if provision.resident_code else ()
    checks = [
        ("time", op.time == at),
        ("agency", op.operator == _AGENCY + provision.agency_code),
        ("terminal", op.terminal == _GATEWAY),
        ("operation", op.operation == operation_label(provision.operation)),
        ("resident", op.resident_codes == residents),
        ("provision id", detail.provision_id == provision.provision_id),
        ("purpose", detail.purpose == provision.purpose_code),
        ("result", detail.result == result_label(provision.result)),
        ("fields", detail.fields == tuple(provision.fields)),
    ]
    return ", ".join(name for name, same in checks if not same)
