"""Realistic register CSV files for the bulk import, from the population generator.

    python -m tools.sample register.csv --municipality 312011 --count 3000 [--seed 1]

The file has the columns :data:`jukinet.cli.importer.COLUMNS`; members of a
household share ``household_id`` and the address.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import random
import sys
from collections.abc import Iterator
from pathlib import Path

from jukinet.cli.importer import COLUMNS
from tools.population import DEFAULT_AS_OF, PopulationGenerator


def sample_rows(
    municipality: str, count: int, *, seed: int = 1, as_of: dt.date = DEFAULT_AS_OF
) -> Iterator[dict[str, str]]:
    """``count`` realistic rows for ``municipality``, household by household.

    Members of a household share ``household_id`` and the address; the
    entry dates follow the household (each member registered when the
    household settled there, or at birth if later). The same arguments give
    the same rows.
    """
    gen = PopulationGenerator(seed, as_of=as_of)
    rng = random.Random(f"jukinet.cli.importer/{seed}/{municipality}")
    n = 0
    for h, household in enumerate(gen.households(municipality, count), start=1):
        settled = as_of - dt.timedelta(days=rng.randint(0, 40 * 365))
        household_id = f"{municipality}-{seed}-H{h:07d}"
        for m, person in enumerate(household.members):
            n += 1
            yield {
                "source_id": f"{municipality}-{seed}-{n:08d}",
                "name": person.name,
                "name_kana": person.name_kana,
                "former_surname": "",
                "alias": "",
                "birth_date": person.birth_date.isoformat(),
                "sex": person.sex,
                "address": household.address,
                "household_id": household_id,
                "registered_on": max(settled, person.birth_date).isoformat(),
                # The first member heads the household; the others' 続柄 is not recorded.
                "relationship": "世帯主" if m == 0 else "",
                "previous_address": "",
                "domicile": "",
                "domicile_head": "",
            }


def write_sample(
    path: Path | str, municipality: str, count: int, *, seed: int = 1, bom: bool = False
) -> int:
    """Write :func:`sample_rows` as a CSV file with a header; returns the rows written."""
    written = 0
    with Path(path).open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in sample_rows(municipality, count, seed=seed):
            writer.writerow(row)
            written += 1
    return written


def _cmd_sample(args: argparse.Namespace) -> int:
    try:
        written = write_sample(
            args.out, args.municipality, args.count, seed=args.seed, bom=args.bom
        )
    except Exception as exc:  # InvalidArgument for an unknown code, OSError
        message = getattr(exc, "message", None) or str(exc)
        print(f"python -m tools.sample: {message}", file=sys.stderr)
        return 2
    print(f"wrote {written} rows to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Write a sample register CSV; exit 2 with one line on a bad argument."""
    s = argparse.ArgumentParser(
        prog="python -m tools.sample",
        description="Write a realistic register CSV (households, addresses) for `jukinet import`.",
    )
    s.add_argument("out", type=Path, help="CSV file to write")
    s.add_argument("--municipality", required=True, help="local government code, e.g. 312011")
    s.add_argument("--count", type=int, required=True, help="number of residents")
    s.add_argument("--seed", type=int, default=1, help="same seed, same people (default 1)")
    s.add_argument("--bom", action="store_true", help="start the file with a UTF-8 BOM")
    return _cmd_sample(s.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
