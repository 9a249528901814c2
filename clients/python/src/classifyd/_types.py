"""What the client returns: plain Python objects, independent of the protobuf classes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class Entity:
    """One entity a token-classification model found in a text, in text order.

    ``label`` is the entity group ("PER" for B-PER/I-PER tokens), or the token's own label
    with ``aggregation="none"``; ``score`` is its score (a group's: the mean over its tokens or
    words). ``word`` is the
    entity's text as the tokenizer decodes its tokens. ``start``/``end`` are offsets in code
    points, as Python slices the text (``text[e.start:e.end]``); ``start_byte``/``end_byte``
    are the same span in UTF-8 bytes (``text.encode()[e.start_byte:e.end_byte]``). ``index``
    is the token's position, special tokens counted, only with ``aggregation="none"`` (else
    None).
    """

    label: str
    score: float
    word: str
    start: int
    end: int
    start_byte: int
    end_byte: int
    index: Optional[int]


@dataclass(frozen=True)
class Result:
    """The classification of one input.

    Sequence models: ``label`` and ``score`` are the best label and its score; ``scores``
    maps each label to its score, best first (only the ``top_k`` best when the call asked
    for that). Scores are softmax probabilities, sigmoid probabilities for multi-label
    models, or the raw value for regression models. ``logits`` is in label order and present
    only when the call asked for ``logits=True``. ``tokens`` counts the tokens after
    truncation, special tokens included.

    Token-classification models (``Info.task == "token"``): ``entities``, in text order, and
    with ``redact=True`` the text with each entity replaced by ``[LABEL]`` in ``redacted``
    (else None); ``label`` is empty and ``scores`` too.

    ``error`` is None when the input was classified (an empty text is: the model sees its
    special tokens alone). An input the server refused in a request whose other inputs it
    classified (no tokens, too long with ``no_truncate``, a pair sent to a token model) has
    the server's reason here ("input 1: ..."), an empty
    ``label``, no scores and no entities; a request whose inputs are all refused raises
    InvalidArgument instead.
    """

    label: str
    score: float
    scores: dict[str, float]
    logits: Optional[list[float]]
    tokens: int
    error: Optional[str] = None
    entities: list[Entity] = field(default_factory=list)
    redacted: Optional[str] = None


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
class ModelInfo:
    """One model the daemon serves: an item of ``Info.models``.

    ``name`` is what ``classify(..., model=name)`` selects it by; ``default`` is True for the
    model a call without ``model=`` gets. ``ready`` is False while the model's engine is
    unhealthy (its requests are answered Unavailable; the daemon's other models still serve).
    ``batches`` and ``computed`` count this model's batches and computed requests since the
    daemon started.
    """

    name: str
    revision: str
    architecture: str
    labels: list[str]
    max_length: int
    device: str
    dtype: str
    ready: bool
    problem_type: str
    # "sequence" (a Result.label per text) or "token" (Result.entities per text).
    task: str
    batches: int
    computed: int
    default: bool


@dataclass(frozen=True)
class Info:
    """What the daemon serves: ``Client.info()``.

    ``model`` to ``task`` describe the default model (the daemon's only one, or the one its
    configuration names ``default_model``), as they did before a daemon served several;
    ``models`` lists every model it serves, the default first (empty from a daemon older than
    that).
    """

    model: str
    revision: str
    architecture: str
    labels: list[str]
    max_length: int
    device: str
    dtype: str
    ready: bool
    problem_type: str
    # "sequence" (a Result.label per text) or "token" (Result.entities per text).
    task: str
    protocol_version: int
    server_version: str
    # Batches run (each one or more forward passes) and requests computed since the daemon started.
    batches: int
    computed: int
    models: list[ModelInfo] = field(default_factory=list)
