"""The append-only, tamper-evident operation log (RFC 9162 tree, C2SP signed heads).

``merkle`` (tree hashes and proofs), ``note`` (signed notes, checkpoints,
cosignatures), ``entry`` (an entry's canonical bytes) and ``verify`` (the
verifier and the witness) are pure; ``log`` is their SQL.
"""
