from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from daemon import DEFAULT_MODEL, FIXTURES, Daemon, binary  # noqa: E402


def pytest_sessionstart(session: pytest.Session) -> None:
    # Fail at once, with the reason, rather than in every test.
    binary()


@pytest.fixture(scope="session")
def golden() -> dict[str, Any]:
    """tests/fixtures/bert/golden.json: texts, pairs and ids with the logits transformers gave."""
    return json.loads((FIXTURES / "bert" / "golden.json").read_text())


@pytest.fixture(scope="module")
def bert() -> Iterator[Daemon]:
    """A daemon serving the tiny BERT fixture (labels neg/neu/pos, 64 positions), with metrics."""
    with Daemon(FIXTURES / "bert", metrics=True) as d:
        yield d


@pytest.fixture(scope="module")
def sentiment() -> Iterator[Daemon]:
    """A daemon serving the committed default model (NEGATIVE/POSITIVE)."""
    with Daemon(DEFAULT_MODEL) as d:
        yield d


@pytest.fixture(scope="module")
def tok_bert() -> Iterator[Daemon]:
    """A daemon serving the tiny token-classification BERT fixture (labels O, B-PER, I-PER,
    B-LOC, I-LOC, EMAIL, ID-NUM; 64 positions)."""
    with Daemon(FIXTURES / "tok-bert") as d:
        yield d
