"""Requests to frames and frames to results: the part both transports share."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any, Union

from . import _errors
from ._pb import classifyd_pb2 as pb
from ._types import Entity, Info, ModelInfo, Result, Results, Timings

VERSION = 1
PREFIX = struct.Struct(">I")
# Largest response accepted (the server's requests are 1 MiB at most by default; a response
# of 64 inputs with logits is a few KiB).
MAX_RESPONSE_BYTES = 16 << 20
MAX_ID = (1 << 64) - 1

_PRIORITIES = {"normal": pb.PRIORITY_NORMAL, "high": pb.PRIORITY_HIGH}
_AGGREGATIONS = {
    "none": pb.AGGREGATION_NONE,
    "simple": pb.AGGREGATION_SIMPLE,
    "first": pb.AGGREGATION_FIRST,
    "average": pb.AGGREGATION_AVERAGE,
    "max": pb.AGGREGATION_MAX,
}

Pair = Union[tuple[str, str], Sequence[str]]


def frame(message: bytes) -> bytes:
    """The length prefix (u32, big-endian) and the message."""
    return PREFIX.pack(len(message)) + message


def _options(
    top_k: int,
    logits: bool,
    no_truncate: bool,
    deadline_ms: float | None,
    priority: str,
    aggregation: str,
    redact: bool,
    min_score: float,
) -> dict[str, Any]:
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 = all labels), not {top_k!r}")
    try:
        agg = _AGGREGATIONS[aggregation]
    except KeyError:
        allowed = ", ".join(repr(a) for a in _AGGREGATIONS)
        raise ValueError(f"aggregation must be one of {allowed}, not {aggregation!r}") from None
    if not 0 <= min_score <= 1:
        raise ValueError(f"min_score must be a score from 0 to 1 (0 = keep all), not {min_score!r}")
    try:
        prio = _PRIORITIES[priority]
    except KeyError:
        raise ValueError(f"priority must be 'normal' or 'high', not {priority!r}") from None
    deadline_us = 0
    if deadline_ms is not None:
        if not deadline_ms > 0:
            raise ValueError(f"deadline_ms must be > 0 (or None for none), not {deadline_ms!r}")
        # At least 1 µs: 0 would mean "no deadline" on the wire.
        deadline_us = max(1, int(deadline_ms * 1000))
    return {
        "options": pb.Options(
            top_k=top_k,
            return_logits=bool(logits),
            no_truncate=bool(no_truncate),
            aggregation=agg,
            redact=bool(redact),
            min_score=min_score,
        ),
        "deadline_us": deadline_us,
        "priority": prio,
    }


def _seq(items: object, what: str) -> list[Any]:
    if isinstance(items, (str, bytes)):
        raise TypeError(f"{what} must be a list, not a single {type(items).__name__}")
    if not isinstance(items, Iterable):
        raise TypeError(f"{what} must be a list, not {type(items).__name__}")
    return list(items)


def text_inputs(texts: Iterable[str]) -> list[pb.Input]:
    out = []
    for t in _seq(texts, "texts"):
        if not isinstance(t, str):
            raise TypeError(f"texts must be str, not {type(t).__name__}")
        out.append(pb.Input(text=t))
    return out


def pair_inputs(pairs: Iterable[Pair]) -> list[pb.Input]:
    out = []
    for p in _seq(pairs, "pairs"):
        if isinstance(p, str) or len(p) != 2 or not all(isinstance(s, str) for s in p):
            raise TypeError(f"each pair must be two str (text, text_pair), not {p!r}")
        out.append(pb.Input(pair=pb.TextPair(text=p[0], text_pair=p[1])))
    return out


def id_inputs(ids: Iterable[Sequence[int]]) -> list[pb.Input]:
    out = []
    for row in _seq(ids, "ids"):
        row = _seq(row, "each row of ids")
        if not all(isinstance(i, int) and 0 <= i < 1 << 32 for i in row):
            raise TypeError(f"token ids must be ints in 0..2^32-1, not {row!r}")
        out.append(pb.Input(ids=pb.TokenIds(ids=row)))
    return out


def classify_request(
    req_id: int,
    inputs: list[pb.Input],
    *,
    top_k: int = 0,
    logits: bool = False,
    no_truncate: bool = False,
    deadline_ms: float | None = None,
    priority: str = "normal",
    aggregation: str = "simple",
    redact: bool = False,
    min_score: float = 0.0,
    model: str = "",
) -> bytes:
    opts = _options(top_k, logits, no_truncate, deadline_ms, priority, aggregation, redact, min_score)
    if not isinstance(model, str):
        raise TypeError(f"model must be a str (a served model's name, '' for the default), not {model!r}")
    body = pb.ClassifyRequest(inputs=inputs, model=model, **opts)
    return frame(pb.Request(version=VERSION, id=req_id, classify=body).SerializeToString())


def info_request(req_id: int) -> bytes:
    return frame(pb.Request(version=VERSION, id=req_id, info=pb.InfoRequest()).SerializeToString())


def decode(message: bytes) -> pb.Response:
    try:
        return pb.Response.FromString(message)
    except Exception as e:  # google.protobuf.message.DecodeError
        raise _errors.ProtocolError(f"undecodable response: {e}") from None


def check(resp: pb.Response) -> pb.Response:
    """Raises the exception for a non-OK status."""
    if resp.status != pb.OK:
        raise _errors.from_status(resp.status, resp.message, resp.id)
    return resp


def results(resp: pb.Response, logits: bool) -> Results:
    check(resp)
    if resp.WhichOneof("body") != "classify":
        raise _errors.ProtocolError(f"expected a classify response, got {resp.WhichOneof('body')}")
    c = resp.classify
    out = [
        Result(
            label=r.label,
            score=r.score,
            scores={s.label: s.score for s in r.scores},
            logits=list(r.logits) if logits else None,
            tokens=r.tokens,
            error=r.message if r.status != pb.OK else None,
            entities=[
                Entity(
                    label=e.label,
                    score=e.score,
                    word=e.word,
                    start=e.start,
                    end=e.end,
                    start_byte=e.start_byte,
                    end_byte=e.end_byte,
                    index=e.index if e.HasField("index") else None,
                )
                for e in r.entities
            ],
            redacted=r.redacted if r.HasField("redacted") else None,
        )
        for r in c.results
    ]
    t = c.timings
    return Results(
        out,
        c.model,
        c.revision,
        Timings(t.queue_us, t.tokenize_us, t.inference_us, t.total_us, t.batch_size),
    )


def info(resp: pb.Response) -> Info:
    check(resp)
    if resp.WhichOneof("body") != "info":
        raise _errors.ProtocolError(f"expected an info response, got {resp.WhichOneof('body')}")
    i = resp.info
    return Info(
        model=i.model,
        revision=i.revision,
        architecture=i.architecture,
        labels=list(i.labels),
        max_length=i.max_length,
        device=i.device,
        dtype=i.dtype,
        ready=i.ready,
        problem_type=i.problem_type,
        task=i.task,
        protocol_version=i.protocol_version,
        server_version=i.server_version,
        batches=i.batches,
        computed=i.computed,
        models=[
            ModelInfo(
                name=m.name,
                revision=m.revision,
                architecture=m.architecture,
                labels=list(m.labels),
                max_length=m.max_length,
                device=m.device,
                dtype=m.dtype,
                ready=m.ready,
                problem_type=m.problem_type,
                task=m.task,
                batches=m.batches,
                computed=m.computed,
                default=m.default,
            )
            for m in i.models
        ],
    )


class FrameBuffer:
    """Bytes received, cut into whole frames; a partial frame waits for the rest."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data

    def next(self) -> bytes | None:
        buf = self.buf
        if len(buf) < 4:
            return None
        (n,) = PREFIX.unpack_from(buf)
        if n > MAX_RESPONSE_BYTES:
            raise _errors.ProtocolError(f"response frame of {n} bytes is over the client's limit")
        if len(buf) < 4 + n:
            return None
        msg = bytes(buf[4 : 4 + n])
        del buf[: 4 + n]
        return msg
