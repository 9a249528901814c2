"""What the client returns: plain Python objects, independent of the protobuf classes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Result:
    """The classification of one input.

    ``scores`` maps each label to its score, best first (only the ``top_k`` best when the
    call asked for that). Scores are softmax probabilities, sigmoid probabilities for
    multi-label models, or the raw value for regression models. ``logits`` is in label order
    and present only when the call asked for ``logits=True``. ``tokens`` counts the tokens
    after truncation, special tokens included.
    """

    label: str
    score: float
    scores: dict[str, float]
    logits: Optional[list[float]]
    tokens: int
    # Token classification (per-token labels, entities, redacted text) is not in protocol
    # version 1. When the daemon's token-classification models land, their results become
    # fields here, decoded from the new protocol fields; until then there is nothing to decode.


@dataclass(frozen=True)
class Timings:
    """Server-side time spent on a request, in microseconds, and the rows in the forward
    pass that computed it."""

    queue_us: int
    tokenize_us: int
    inference_us: int
    total_us: int
    batch_size: int


class Results(list[Result]):
    """The results of one classify call, one per input in input order (a list), with the
    model and revision that computed them and the server's timings."""

    model: str
    revision: str
    timings: Timings

    def __init__(self, results: list[Result], model: str, revision: str, timings: Timings) -> None:
        super().__init__(results)
        self.model = model
        self.revision = revision
        self.timings = timings

    def __repr__(self) -> str:
        return (
            f"Results({list.__repr__(self)}, model={self.model!r}, "
            f"revision={self.revision!r}, timings={self.timings!r})"
        )


@dataclass(frozen=True)
class Info:
    """What the daemon serves: ``Client.info()``."""

    model: str
    revision: str
    architecture: str
    labels: list[str]
    max_length: int
    device: str
    dtype: str
    ready: bool
    problem_type: str
    protocol_version: int
    server_version: str
    # Batches run (each one or more forward passes) and requests computed since the daemon started.
    batches: int
    computed: int
