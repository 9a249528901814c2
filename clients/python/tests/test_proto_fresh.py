"""The committed protobuf code is what scripts/gen_proto.py makes from proto/classifyd.proto."""

from __future__ import annotations

import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPT = HERE.parent / "scripts" / "gen_proto.py"
COMMITTED = HERE.parent / "src" / "classifyd" / "_pb"


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_proto", SCRIPT)
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    written = gen.generate(tmp_path)
    assert len(written) == 2
    for f in written:
        committed = COMMITTED / f.name
        assert committed.read_bytes() == f.read_bytes(), (
            f"{committed} is stale: run `python clients/python/scripts/gen_proto.py` and commit it"
        )


def test_installed_package_carries_the_committed_code() -> None:
    import classifyd._pb.classifyd_pb2 as pb

    installed = Path(pb.__file__).parent
    for name in ("classifyd_pb2.py", "classifyd_pb2.pyi"):
        assert (installed / name).read_bytes() == (COMMITTED / name).read_bytes(), name
