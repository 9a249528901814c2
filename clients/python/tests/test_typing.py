"""The type hints are real: mypy --strict passes on the installed package (py.typed, the .pyi
of the generated code), and the README's examples type-check against it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy", reason="mypy is in requirements-ci.txt")

ROOT = Path(__file__).resolve().parents[1]


def mypy(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", *args], cwd=cwd, capture_output=True, text=True)


def test_package_is_strictly_typed(tmp_path: Path) -> None:
    # From a directory without the source tree, so that the installed package is checked.
    r = mypy("--config-file", str(ROOT / "pyproject.toml"), "-p", "classifyd", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_readme_examples_type_check(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    files = []
    for i, b in enumerate(blocks):
        f = tmp_path / f"readme_{i}.py"
        f.write_text(b)
        files.append(str(f))
    r = mypy("--check-untyped-defs", "--warn-unused-ignores", *files, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_wrong_attribute_is_caught(tmp_path: Path) -> None:
    f = tmp_path / "wrong.py"
    f.write_text('from classifyd import Client\nprint(Client("/x").classify(["t"])[0].lable)\n')
    r = mypy(str(f), cwd=tmp_path)
    assert r.returncode == 1 and "lable" in r.stdout, r.stdout
