#!/usr/bin/env python3
"""Generates classifyd/_pb/classifyd_pb2.py and .pyi from proto/classifyd.proto.

    python clients/python/scripts/gen_proto.py            # rewrite the committed files
    python clients/python/scripts/gen_proto.py --out DIR  # write them into DIR instead

Needs grpcio-tools at exactly GRPCIO_TOOLS (its bundled protoc, and the protobuf version the
generated code asks for, follow from it): `pip install -r clients/python/requirements-ci.txt`.
tests/test_proto_fresh.py regenerates into a temp dir and fails when the committed files differ.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

# grpcio-tools 1.75.1 bundles protoc 31.1, whose Python code needs protobuf >= 6.31.1 at run time
# (pyproject.toml's dependency).
GRPCIO_TOOLS = "1.75.1"

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent / "src" / "classifyd" / "_pb"
PROTO = HERE.parent.parent.parent / "proto" / "classifyd.proto"


def generate(out: Path, proto: Path = PROTO) -> list[Path]:
    """Runs protoc on `proto` into `out`; returns the files written."""
    have = metadata.version("grpcio-tools")
    if have != GRPCIO_TOOLS:
        raise SystemExit(
            f"grpcio-tools {have} is installed; the committed code is generated with "
            f"{GRPCIO_TOOLS} (pip install grpcio-tools=={GRPCIO_TOOLS})"
        )
    from grpc_tools import protoc  # type: ignore[import-untyped]

    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{proto.parent}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        str(proto),
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {proto}")
    stem = proto.stem + "_pb2"
    return [out / f"{stem}.py", out / f"{stem}.pyi"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=PACKAGE)
    args = ap.parse_args()
    for f in generate(args.out):
        print(f"wrote {f}", file=sys.stderr)


if __name__ == "__main__":
    main()
