"""Several models in one daemon (issue 32): `model=` on every classify method picks the model,
`Info.models` lists them, the default first, and a name the daemon does not serve raises
InvalidArgument naming the served ones.

The codec tests need no daemon (a fake transport answers); the rest run against
`classifyd serve --model seq=<sentiment-minilm> --model tok=<tok-bert>`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, Optional

import pytest
from daemon import DEFAULT_MODEL, FIXTURES, Daemon
from helpers import close

import classifyd
from classifyd import AsyncClient, Client, Info, InvalidArgument, ModelInfo
from classifyd import _codec
from classifyd._pb import classifyd_pb2 as pb

TOKEN_TEXT = "Maria Lopez flew from Madrid to New York on Tuesday."
TOK_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "EMAIL", "ID-NUM"]


# ---- the codec: no daemon -------------------------------------------------------------------


def unframe(data: bytes) -> pb.Request:
    (n,) = _codec.PREFIX.unpack_from(data)
    assert len(data) == 4 + n
    return pb.Request.FromString(data[4:])


class Recorder:
    """A SyncTransport that keeps every request and answers each classify with one result,
    named after the model the request asked for."""

    def __init__(self) -> None:
        self.sent: list[pb.Request] = []

    def request(self, req_id: int, data: bytes, deadline: Optional[float]) -> pb.Response:
        req = unframe(data)
        assert req.id == req_id
        self.sent.append(req)
        body = pb.ClassifyResponse(
            results=[pb.Result(label="x", score=1.0) for _ in req.classify.inputs],
            model=req.classify.model or "the-default",
            revision="r1",
        )
        return pb.Response(version=_codec.VERSION, id=req_id, status=pb.OK, classify=body)

    def wait_connected(self, wait: float) -> None:
        pass

    def close(self) -> None:
        pass


class AsyncRecorder:
    def __init__(self) -> None:
        self.sync = Recorder()

    async def request(self, req_id: int, data: bytes, deadline: Optional[float]) -> pb.Response:
        return self.sync.request(req_id, data, deadline)

    async def wait_connected(self, wait: float) -> None:
        pass

    async def close(self) -> None:
        pass


def test_the_request_carries_the_model_name() -> None:
    r = unframe(_codec.classify_request(7, _codec.text_inputs(["a text"]), model="ner"))
    assert r.WhichOneof("body") == "classify"
    assert r.classify.model == "ner"
    assert [i.text for i in r.classify.inputs] == ["a text"]
    # Without model=: the empty string, which the daemon reads as its default model (and which
    # protobuf does not even put on the wire).
    plain = _codec.classify_request(8, _codec.text_inputs(["a text"]))
    assert unframe(plain).classify.model == ""
    assert plain == _codec.classify_request(8, _codec.text_inputs(["a text"]), model="")
    with pytest.raises(TypeError, match="model must be a str"):
        _codec.classify_request(9, _codec.text_inputs(["a text"]), model=None)  # type: ignore[arg-type]


def test_every_classify_method_sends_model() -> None:
    t = Recorder()
    c = Client(_transport=t)
    assert c.classify(["a"], model="seq").model == "seq"
    assert c.classify_pairs([("a", "b")], model="rerank").model == "rerank"
    assert c.classify_ids([[101, 102]], model="tok").model == "tok"
    assert c.classify(["a"]).model == "the-default"
    assert [r.classify.model for r in t.sent] == ["seq", "rerank", "tok", ""]


def test_every_async_classify_method_sends_model() -> None:
    t = AsyncRecorder()

    async def main() -> list[str]:
        c = AsyncClient(_transport=t)
        rs = await asyncio.gather(
            c.classify(["a"], model="seq"),
            c.classify_pairs([("a", "b")], model="rerank"),
            c.classify_ids([[101, 102]], model="tok"),
            c.classify(["a"]),
        )
        return [r.model for r in rs]

    assert asyncio.run(main()) == ["seq", "rerank", "tok", "the-default"]
    assert [r.classify.model for r in t.sync.sent] == ["seq", "rerank", "tok", ""]


def model_info_pb(name: str, task: str, default: bool = False) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=name,
        revision=f"{name}-rev",
        architecture="BertForTokenClassification" if task == "token" else "BertForSequenceClassification",
        labels=TOK_LABELS if task == "token" else ["NEGATIVE", "POSITIVE"],
        max_length=64 if task == "token" else 512,
        device="cpu",
        dtype="f32",
        ready=name != "sick",
        problem_type="single_label_classification",
        task=task,
        batches=3,
        computed=5,
        default=default,
    )


def test_info_with_models_decodes() -> None:
    resp = pb.Response(
        version=_codec.VERSION,
        id=1,
        status=pb.OK,
        info=pb.InfoResponse(
            model="seq",
            revision="seq-rev",
            task="sequence",
            ready=True,
            protocol_version=1,
            server_version="0.1.0",
            models=[model_info_pb("seq", "sequence", default=True), model_info_pb("tok", "token"), model_info_pb("sick", "sequence")],
        ),
    )
    i = _codec.info(pb.Response.FromString(resp.SerializeToString()))
    assert isinstance(i, Info) and i.model == "seq"
    assert [m.name for m in i.models] == ["seq", "tok", "sick"]
    assert all(isinstance(m, ModelInfo) for m in i.models)
    seq, tok, sick = i.models
    assert seq.default and not tok.default and not sick.default
    assert tok == ModelInfo(
        name="tok",
        revision="tok-rev",
        architecture="BertForTokenClassification",
        labels=TOK_LABELS,
        max_length=64,
        device="cpu",
        dtype="f32",
        ready=True,
        problem_type="single_label_classification",
        task="token",
        batches=3,
        computed=5,
        default=False,
    )
    assert isinstance(tok.labels, list)
    assert sick.ready is False and seq.ready is True


def test_info_from_a_daemon_without_models() -> None:
    """A daemon from before issue 32 sends no `models`: the list is empty, the rest as before."""
    resp = pb.Response(version=1, id=1, status=pb.OK, info=pb.InfoResponse(model="bert", task="sequence"))
    i = _codec.info(resp)
    assert i.model == "bert" and i.models == []


def test_model_info_is_exported() -> None:
    assert "ModelInfo" in classifyd.__all__ and classifyd.ModelInfo is ModelInfo


# ---- against a daemon serving two models ----------------------------------------------------

TOK = FIXTURES / "tok-bert"


@pytest.fixture(scope="module")
def two() -> Iterator[Daemon]:
    """seq (the default model, listed first) and tok (the tiny token-classification BERT)."""
    with Daemon(f"seq={DEFAULT_MODEL}", "--model", f"tok={TOK}") as d:
        yield d


def test_classify_picks_the_model_by_name(two: Daemon) -> None:
    with Client(two.socket) as c:
        seq = c.classify(["what a wonderful film"], model="seq")
        assert seq.model == "seq"
        assert seq[0].label == "POSITIVE" and set(seq[0].scores) == {"NEGATIVE", "POSITIVE"}
        assert seq[0].entities == []
        tok = c.classify([TOKEN_TEXT], model="tok", redact=True)
        assert tok.model == "tok"
        assert tok[0].label == "" and tok[0].entities and tok[0].redacted and "[" in tok[0].redacted
        # No model=: the default, the first one listed.
        default = c.classify(["what a wonderful film"])
        assert default.model == "seq" and default[0].label == "POSITIVE"
        # Each model's revision, as info() gives it.
        revisions = {m.name: m.revision for m in c.info().models}
        assert seq.revision == revisions["seq"] and tok.revision == revisions["tok"]
        # Token options go to the token model only: the sequence model still refuses them.
        with pytest.raises(InvalidArgument, match="only for token"):
            c.classify(["great movie"], model="seq", redact=True)
        # The pair and ids methods take model= too (a token model refuses pairs).
        assert c.classify_pairs([("a great film", "I loved it")], model="seq")[0].label
        with pytest.raises(InvalidArgument, match="text pair"):
            c.classify_pairs([(TOKEN_TEXT, "x")], model="tok")


def test_each_model_answers_as_it_does_alone(two: Daemon, sentiment: Daemon, tok_bert: Daemon) -> None:
    texts = ["what a wonderful film", "a dull, tedious and dreadful film", "fine"]
    with Client(two.socket) as both, Client(sentiment.socket) as alone:
        got = both.classify(texts, model="seq", logits=True)
        want = alone.classify(texts, logits=True)
        for g, w in zip(got, want):
            assert g.label == w.label
            assert g.logits is not None and w.logits is not None and close(g.logits, w.logits, 1e-5)
    with Client(two.socket) as both, Client(tok_bert.socket) as alone:
        g, w = both.classify([TOKEN_TEXT], model="tok")[0], alone.classify([TOKEN_TEXT])[0]
        assert [(e.label, e.start, e.end) for e in g.entities] == [(e.label, e.start, e.end) for e in w.entities]
        assert close([e.score for e in g.entities], [e.score for e in w.entities], 1e-5)


def test_an_unknown_model_is_refused_with_the_served_names(two: Daemon) -> None:
    with Client(two.socket) as c:
        c.info()
        sock = c._t._sock  # type: ignore[attr-defined]
        with pytest.raises(InvalidArgument) as e:
            c.classify(["what a wonderful film"], model="nosuch")
        assert e.value.status == "INVALID_ARGUMENT"
        msg = e.value.message
        assert "nosuch" in msg and "seq" in msg and "tok" in msg, msg
        with pytest.raises(InvalidArgument, match="nosuch"):
            c.classify_ids([[101, 102]], model="nosuch")
        # The connection goes on, for either model.
        assert c.classify(["still here"], model="tok").model == "tok"
        assert c._t._sock is sock, "the same connection served the next call"  # type: ignore[attr-defined]


def test_info_lists_both_models_default_first(two: Daemon) -> None:
    with Client(two.socket) as c:
        before = {m.name: m.computed for m in c.info().models}
        c.classify([TOKEN_TEXT], model="tok")
        i = c.info()
    assert [m.name for m in i.models] == ["seq", "tok"]
    seq, tok = i.models
    assert isinstance(seq, ModelInfo)
    assert seq.default and not tok.default
    assert seq.task == "sequence" and tok.task == "token"
    assert seq.labels == ["NEGATIVE", "POSITIVE"] and tok.labels == TOK_LABELS
    assert seq.architecture == "BertForSequenceClassification" and tok.architecture == "BertForTokenClassification"
    assert tok.max_length == 64
    for m in i.models:
        assert m.ready and m.revision and m.device == "cpu" and m.dtype == "f32", m
    # The top-level fields describe the default model, as they did with one model.
    assert (i.model, i.revision, i.labels, i.task) == (seq.name, seq.revision, seq.labels, seq.task)
    assert i.ready
    # Counters per model: only tok's moved.
    assert tok.computed == before["tok"] + 1
    assert seq.computed == before["seq"]


def test_async_requests_for_both_models_interleave(two: Daemon) -> None:
    texts = ["what a wonderful film", "a dull, tedious and dreadful film"] * 8

    async def main() -> list[Any]:
        async with AsyncClient(two.socket) as c:
            calls = []
            for t in texts:
                calls.append(c.classify([t], model="seq"))
                calls.append(c.classify([TOKEN_TEXT], model="tok"))
            return list(await asyncio.gather(*calls))

    rs = asyncio.run(main())
    for i, r in enumerate(rs):
        if i % 2 == 0:
            assert r.model == "seq" and r[0].label == ("POSITIVE" if i % 4 == 0 else "NEGATIVE"), (i, r)
        else:
            assert r.model == "tok" and r[0].entities, (i, r)


def test_default_model_names_the_default() -> None:
    with Daemon(f"bert={FIXTURES / 'bert'}", "--model", f"tok={TOK}", "--default-model", "tok") as d, Client(d.socket) as c:
        i = c.info()
        assert [m.name for m in i.models] == ["tok", "bert"], "the default first"
        assert i.models[0].default and not i.models[1].default
        assert i.model == "tok" and i.task == "token"
        r = c.classify([TOKEN_TEXT])
        assert r.model == "tok" and r[0].entities
        assert c.classify(["great movie"], model="bert")[0].label in {"neg", "neu", "pos"}


def test_a_bare_model_dir_is_named_after_it(bert: Daemon) -> None:
    """One model given as `--model DIR`, as before: named after the directory, the default."""
    with Client(bert.socket) as c:
        (m,) = c.info().models
        assert m.name == "bert" and m.default and m.ready
        assert c.classify(["great movie"], model="bert").model == "bert"
        assert c.classify(["great movie"]).model == "bert"
