r"""The jukinet command: certificates, nodes, the register, agencies.

    jukinet pki federation --dir pki --municipality 312011 --operators --agency nenkin
    jukinet run municipal --config municipality-312011.toml
    jukinet login --target 127.0.0.1:50311 --pki pki --as terminal-312011-desk1
    jukinet resident birth --target 127.0.0.1:50311 --pki pki --as terminal-312011-desk1 \
        --name "鳥取　花子" --kana "トットリ　ハナコ" --birth-date 2026-11-01 --sex female \
        --address "鳥取県鳥取市東町一丁目220番地"
    jukinet resident disclose 12345678903 --format table ...
    jukinet identity show 12345678903 --tier national --target 127.0.0.1:50100 \
        --pki pki --as operator-national-admin
    jukinet agency verify --purpose NENKIN-EXISTENCE-CHECK --code 12345678903 \
        --target 127.0.0.1:50400 --pki pki --as agency-nenkin
    jukinet import register.csv --target 127.0.0.1:50311 --pki pki --as terminal-312011-desk1
    jukinet copy verify copy.pdf --ca pki/ca.pem
    jukinet logout --target 127.0.0.1:50311 --pki pki --as terminal-312011-desk1

Connection options may come from JUKINET_TARGET, JUKINET_PKI and JUKINET_AS
(JUKINET_TERMINAL for the counter terminal, JUKINET_SESSION for its session
file). Counter commands (resident, import, operator, audit log) run in the
session `jukinet login` opened at the terminal (docs/operators.md).

What each command prints on stdout: resident, identity and agency commands
print the answer as JSON (times in JST, with their offset); agency verify-batch
prints one JSON line per row and a one-line summary on stderr; resident
disclose --format table prints a table for the resident; resident move-out (to
another municipality) and reissue-certificate print the move-out certificate
as a document (--format json: the answer); pki, import and run print text
lines. Errors are one line on stderr naming what to fix, and the
exit status is non-zero (2 for a usage, file or configuration problem).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from jukinet import pki
from jukinet.cli import (
    agency,
    audit,
    card,
    copydoc,
    counter,
    identity,
    importer,
    node,
    operator,
    resident,
)


class Parser(argparse.ArgumentParser):
    """argparse with a usage error in one line (the usage is one --help away)."""

    def error(self, message: str) -> NoReturn:
        """Say what is wrong in one line and exit 2."""
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command."""
    parser: argparse.ArgumentParser = Parser(
        prog="jukinet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    pki.register_cli(sub)
    for group in (
        node,
        counter,
        resident,
        operator,
        card,
        identity,
        agency,
        importer,
        audit,
        copydoc,
    ):
        group.register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``jukinet`` command; the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except BrokenPipeError:
        # The reader went away (``| head``): nothing left to say to it, and
        # Python must not complain about stdout again when it exits.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return result


if __name__ == "__main__":
    raise SystemExit(main())
