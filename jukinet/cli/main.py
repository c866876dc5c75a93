"""The ``jukinet`` command: certificates, nodes, the register, agencies, and the demo.

    jukinet pki federation --dir pki --municipality 312011 --operators --agency nenkin
    jukinet run municipal --config municipality-312011.toml
    jukinet resident birth --target 127.0.0.1:50311 --pki pki --as operator-312011-admin \\
        --name "鳥取 花子" --kana "トットリ ハナコ" --birth-date 2026-11-01 --sex female \\
        --address "鳥取県鳥取市東町1丁目1番1号"
    jukinet resident disclose 12345678903 --format table --target 127.0.0.1:50311 \\
        --pki pki --as operator-312011-admin
    jukinet identity show 12345678903 --tier national --target 127.0.0.1:50100 \\
        --pki pki --as operator-national-admin
    jukinet agency verify --purpose NENKIN-EXISTENCE-CHECK --code 12345678903 \\
        --target 127.0.0.1:50400 --pki pki --as agency-nenkin
    jukinet agency retrieve 12345678903 --purpose NENKIN-ADDRESS-CHANGE --as-of 2025-04-01 ...
    jukinet agency search --purpose MOFA-PASSPORT-ISSUE --name "髙橋 一郎" \\
        --birth-date 1970-01-01 --max 3 --target 127.0.0.1:50400 --pki pki --as agency-mofa-passport
    jukinet agency verify-batch recipients.csv --purpose NENKIN-EXISTENCE-CHECK \\
        --out results.jsonl ...
    jukinet import register.csv --target ... --pki pki --as operator-312011-admin

Connection options may come from JUKINET_TARGET, JUKINET_PKI and JUKINET_AS.
Output is JSON (``agency verify-batch``: one JSON line per row; ``resident
disclose --format table``: a table to print for the resident); errors are one
line on stderr with the gRPC status and its reason, and a non-zero exit.
"""

from __future__ import annotations

import argparse

from jukinet import pki
from jukinet.cli import agency, identity, importer, node, resident


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jukinet",
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    pki.register_cli(sub)
    for group in (node, resident, identity, agency, importer):
        group.register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
