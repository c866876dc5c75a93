"""Generate the Python code for protos/ into jukinet/v1, or check it has not drifted.

python -m tools.protogen jukinet/v1          # regenerate
python -m tools.protogen --check jukinet/v1  # exit 1 if the committed code differs
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import sysconfig
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = Path("jukinet") / "v1"


def _generate(out_root: Path) -> None:
    from grpc_tools import protoc

    scripts = Path(sysconfig.get_path("scripts"))
    include = str(resources.files("grpc_tools") / "_proto")
    protos = sorted(
        str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto")
    )
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={scripts / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={scripts / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out=quiet:{out_root}",
        f"--mypy_grpc_out=quiet:{out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out_root / PACKAGE_DIR / "__init__.py").write_text(
        '"""Generated from protos/jukinet/v1; never edited by hand."""\n'
    )


def _differences(generated: Path, committed: Path) -> list[str]:
    names = {p.name for p in generated.iterdir() if p.is_file()}
    names |= {p.name for p in committed.iterdir() if p.is_file() and p.suffix in {".py", ".pyi"}}
    out = []
    for name in sorted(names):
        a, b = generated / name, committed / name
        if not a.exists() or not b.exists() or not filecmp.cmp(a, b, shallow=False):
            out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    """Generate the code into ``target``, or with ``--check`` report drift; the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="fail if the committed code has drifted"
    )
    parser.add_argument("target", nargs="?", default=str(PACKAGE_DIR))
    args = parser.parse_args(argv)
    target = ROOT / args.target
    with tempfile.TemporaryDirectory() as tmp:
        out_root = Path(tmp)
        _generate(out_root)
        generated = out_root / PACKAGE_DIR
        if args.check:
            target.mkdir(parents=True, exist_ok=True)
            drift = _differences(generated, target)
            if drift:
                print(
                    "generated code differs from protos/ for: " + ", ".join(drift), file=sys.stderr
                )
                print("run `make protos` and commit the result", file=sys.stderr)
                return 1
            print("generated code matches protos/")
            return 0
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob("*_pb2*.py*"):
            old.unlink()
        for new in generated.iterdir():
            if new.is_file():
                shutil.copy2(new, target / new.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
