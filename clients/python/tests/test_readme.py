"""Every Python example in clients/python/README.md runs, against a real daemon serving the
default model (the token-classification example: the tok-bert fixture), with the README's
paths pointed at the test's sockets, QUIC port and PKI."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import DEFAULT_MODEL, Daemon, dev_pki

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Path]]:
    pki = dev_pki(tmp_path_factory.mktemp("pki"))
    with Daemon(DEFAULT_MODEL, quic_pki=pki) as d:
        yield d, pki


def test_the_readme_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(block: str, served: tuple[Daemon, Path], tok_bert: Daemon) -> None:
    d, pki = served
    assert d.quic_addr is not None
    code = (
        block.replace("/run/classifyd/classifyd.sock", d.socket)
        .replace("/run/classifyd/ner.sock", tok_bert.socket)
        .replace("127.0.0.1:4433", d.quic_addr)
        .replace("/etc/classifyd/pki/", f"{pki}/")
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
    printed = out.getvalue()
    # Each comment "# LABEL" after a print names what it prints.
    for want in re.findall(r"print\(.*\)\s+# (POSITIVE|request has no inputs)", block):
        assert want in printed, (want, printed)
    assert printed or "print" not in block
