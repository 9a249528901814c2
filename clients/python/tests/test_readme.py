"""Every Python example in clients/python/README.md runs, against a real daemon serving the
default model and the tok-bert fixture as "sentiment" and "pii" (the token-classification
example: a daemon of the tok-bert fixture alone), with the README's
paths pointed at the test's sockets, QUIC port and PKI; and the first examples ("Three lines")
run exactly as pasted, against a daemon on the very socket they name."""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from daemon import DEFAULT_MODEL, FIXTURES, Daemon, dev_pki

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Path]]:
    """The default model as "sentiment" (the default, listed first) beside the tok-bert fixture
    as "pii", the names of the "Several models in one daemon" example."""
    pki = dev_pki(tmp_path_factory.mktemp("pki"))
    with Daemon(f"sentiment={DEFAULT_MODEL}", "--model", f"pii={FIXTURES / 'tok-bert'}", quic_pki=pki) as d:
        yield d, pki


def test_the_readme_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(block: str, served: tuple[Daemon, Path], tok_bert: Daemon) -> None:
    d, pki = served
    assert d.quic_addr is not None
    code = (
        block.replace("/run/classifyd/classifyd.sock", d.socket)
        .replace("/tmp/classifyd.sock", d.socket)
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


class Fence(NamedTuple):
    section: str  # the heading above it
    lang: str  # the info string's first word
    code: str


def fences(markdown: str) -> list[Fence]:
    """The fenced code blocks of a Markdown text, each with the heading it is under."""
    out: list[Fence] = []
    section, lang, lines = "", None, []
    for line in markdown.splitlines(keepends=True):
        if lang is None:
            if line.startswith("#"):
                section = line.strip("#").strip()
            elif line.startswith("```"):
                lang, lines = (line[3:].split() or [""])[0], []
        elif line.rstrip() == "```":
            out.append(Fence(section, lang, "".join(lines)))
            lang = None
        else:
            lines.append(line)
    assert lang is None, "an unclosed fence"
    return out


THREE_LINES = [f.code for f in fences(README.read_text()) if f.section == "Three lines" and f.lang == "python"]


def names_socket(code: str) -> str:
    found = set(re.findall(r"Client\(\"([^\"]+)\"", code))
    assert len(found) == 1, found
    return found.pop()


@pytest.fixture(scope="module")
def on_the_readme_socket() -> Iterator[Daemon]:
    """The default model served on the socket the "Three lines" examples name, unless that path
    is someone else's: a live daemon's socket, or not a socket at all, is left alone (skip). A
    stale socket is replaced, as `classifyd serve` on that path would."""
    paths = {names_socket(code) for code in THREE_LINES}
    assert len(paths) == 1, f"the examples name different sockets: {paths}"
    path = paths.pop()
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(mode):
            pytest.skip(f"{path} exists and is not a socket; not touching it")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(path)
            except OSError:
                pass  # stale
            else:
                pytest.skip(f"{path} is in use (a daemon answers on it); stop it to run this test")
    try:
        d = Daemon(DEFAULT_MODEL, uds=path)
    except AssertionError as e:
        # Another run took the path between the look above and the daemon's bind.
        if "already serving on this socket" in str(e) or "is not a socket" in str(e):
            pytest.skip(f"{path} was taken while this test started its daemon: {e}")
        raise
    with d:
        yield d


def test_the_readme_starts_with_the_main_readmes_socket() -> None:
    assert len(THREE_LINES) == 2, "the blocking and the asyncio example"
    main_readme = (README.parents[2] / "README.md").read_text()
    for code in THREE_LINES:
        path = names_socket(code)
        assert f"--uds {path}" in main_readme, f"the main README serves on another socket than {path}"


@pytest.mark.parametrize("code", THREE_LINES, ids=["blocking", "asyncio"])
def test_three_lines_run_as_pasted(code: str, on_the_readme_socket: Daemon) -> None:
    # A fresh interpreter, as a reader pastes it: no CLASSIFYD_SOCKET, no test module around it.
    env = {k: v for k, v in os.environ.items() if k != "CLASSIFYD_SOCKET"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    want = re.findall(r"print\(.*\)\s+# (\w+)", code)
    if want:
        # The comment after a print names what it prints.
        assert r.stdout.split() == want, (r.stdout, want)
    else:
        labels = ast.literal_eval(r.stdout.strip())
        assert len(labels) == 3 and set(labels) <= {"NEGATIVE", "POSITIVE"}, r.stdout
