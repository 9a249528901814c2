"""Client (blocking, Unix socket) against a real daemon."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from daemon import FIXTURES, Daemon, wait_until
from helpers import close, pairs, softmax, texts

import classifyd
from classifyd import (
    ClassifydError,
    Client,
    DeadlineExceeded,
    InternalError,
    InvalidArgument,
    Overloaded,
    Timeout,
    Unavailable,
)


def test_three_lines_with_the_default_model(sentiment: Daemon) -> None:
    c = Client(sentiment.socket)
    rs = c.classify(["what a wonderful film", "a dull, tedious and dreadful film"])
    assert [r.label for r in rs] == ["POSITIVE", "NEGATIVE"]
    for r in rs:
        assert set(r.scores) == {"NEGATIVE", "POSITIVE"}
        assert abs(sum(r.scores.values()) - 1) < 1e-5
        assert r.score == max(r.scores.values()) == r.scores[r.label]
        assert list(r.scores)[0] == r.label, "best first"
        assert r.logits is None
        assert r.tokens > 2
    assert rs.model == "sentiment-minilm"
    assert rs.revision
    assert rs.timings.total_us > 0 and rs.timings.batch_size >= 1
    c.close()


def test_texts_match_transformers(bert: Daemon, golden: dict[str, Any]) -> None:
    cases = texts(golden)
    with Client(bert.socket) as c:
        rs = c.classify([k["text"] for k in cases], logits=True)
    assert len(rs) == len(cases)
    for k, r in zip(cases, rs):
        assert r.logits is not None and close(r.logits, k["logits"]), (k["text"], r.logits, k["logits"])
        probs = softmax(k["logits"])
        best = max(range(len(probs)), key=probs.__getitem__)
        assert r.label == golden["labels"][best]
        assert close([r.scores[lab] for lab in golden["labels"]], probs, 1e-5)
        assert r.tokens == min(len(k["input_ids"]), golden["max_length"])


def test_pairs_and_ids_match_transformers(bert: Daemon, golden: dict[str, Any]) -> None:
    with Client(bert.socket) as c:
        ps = pairs(golden)
        assert ps
        rs = c.classify_pairs([(k["text"], k["text_pair"]) for k in ps], logits=True)
        for k, r in zip(ps, rs):
            assert r.logits is not None and close(r.logits, k["logits"]), k
        # Ids carry no token types, so only single texts (all type 0) compare.
        short = [k for k in texts(golden) if len(k["input_ids"]) <= golden["max_length"]]
        assert short
        rs = c.classify_ids([k["input_ids"] for k in short], logits=True)
        for k, r in zip(short, rs):
            assert r.logits is not None and close(r.logits, k["logits"]), k
            assert r.tokens == len(k["input_ids"])


def test_options_top_k_and_priority(bert: Daemon) -> None:
    with Client(bert.socket) as c:
        full = c.classify(["great movie"])[0]
        r = c.classify(["great movie"], top_k=1, priority="high", deadline_ms=60_000)[0]
        assert list(r.scores) == [full.label]
        assert r.label == full.label
        with pytest.raises(ValueError):
            c.classify(["x"], priority="urgent")
        with pytest.raises(TypeError):
            c.classify("a single string")  # type: ignore[arg-type]


def test_one_refused_input_does_not_fail_the_others(sentiment: Daemon) -> None:
    with Client(sentiment.socket) as c:
        rs = c.classify(["great film", "word " * 2000], no_truncate=True)
    assert len(rs) == 2
    assert rs[0].error is None and rs[0].label == "POSITIVE"
    assert rs[1].error is not None and "input 1" in rs[1].error, rs[1].error
    assert rs[1].label == "" and rs[1].scores == {} and rs[1].entities == []


TOKEN_TEXT = "Maria Lopez flew from Madrid to New York on Tuesday."


def test_token_model_entities_and_redaction(tok_bert: Daemon) -> None:
    with Client(tok_bert.socket) as c:
        assert c.info().task == "token"
        r = c.classify([TOKEN_TEXT], redact=True)[0]
        assert r.error is None
        assert r.entities, r
        for e in r.entities:
            assert isinstance(e, classifyd.Entity)
            span = TOKEN_TEXT[e.start : e.end]
            assert span and span in TOKEN_TEXT
            assert TOKEN_TEXT.encode()[e.start_byte : e.end_byte].decode() == span
            assert e.label in {"PER", "LOC", "EMAIL", "ID-NUM"} and 0 < e.score <= 1
            assert e.index is None, "only with aggregation='none'"
        assert r.redacted is not None and "[" in r.redacted
        assert c.classify([TOKEN_TEXT])[0].redacted is None, "only with redact=True"
        # One entity per labelled token with aggregation="none", each with its token index.
        tokens = c.classify([TOKEN_TEXT], aggregation="none")[0].entities
        assert tokens and all(e.index is not None and e.index > 0 for e in tokens)
        # min_score=1 keeps none of this model's entities and leaves the text as it is.
        r = c.classify([TOKEN_TEXT], redact=True, min_score=1.0)[0]
        assert r.entities == [] and r.redacted == TOKEN_TEXT
        # A token model takes texts only: a request of pairs alone is refused whole.
        with pytest.raises(InvalidArgument, match="input 0: .*text pair"):
            c.classify_pairs([(TOKEN_TEXT, "x")])
        assert c.classify([TOKEN_TEXT])[0].entities


def test_sequence_model_info_task(bert: Daemon) -> None:
    with Client(bert.socket) as c:
        assert c.info().task == "sequence"
        r = c.classify(["great movie"])[0]
        assert r.label and r.entities == [] and r.redacted is None
        # Token-only options are refused by a sequence model, never answered without them: an
        # answer with no `redacted` text must not pass for a clean one.
        with pytest.raises(InvalidArgument, match="redact, aggregation are only for token"):
            c.classify(["great movie"], aggregation="max", redact=True)


def test_token_options_are_checked() -> None:
    c = Client("/nonexistent/classifyd.sock")
    with pytest.raises(ValueError, match="none.*simple.*first.*average.*max"):
        c.classify(["x"], aggregation="mean")
    with pytest.raises(ValueError, match="min_score"):
        c.classify(["x"], min_score=1.5)


def test_info(bert: Daemon, golden: dict[str, Any]) -> None:
    with Client(bert.socket) as c:
        before = c.info()
        c.classify(["one more"])
        i = c.info()
    assert i.model == "bert"
    assert i.labels == golden["labels"]
    assert i.max_length == golden["max_length"]
    assert i.architecture == golden["architecture"]
    assert i.device == "cpu" and i.dtype == "f32"
    assert i.ready and i.protocol_version == 1 and i.server_version
    assert i.computed == before.computed + 1


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda c: c.classify([]), "input"),
        (lambda c: c.classify(["word " * 200], no_truncate=True), "token"),
        (lambda c: c.classify_ids([[2, 10_000_000, 3]]), "vocab"),
        (lambda c: c.classify_ids([[]]), ""),
        (lambda c: c.classify(["x"] * 65), "64"),
    ],
    ids=["no-inputs", "over-long-no-truncate", "id-outside-vocab", "empty-ids", "too-many-inputs"],
)
def test_invalid_argument_and_the_connection_goes_on(bert: Daemon, call: Any, needle: str) -> None:
    with Client(bert.socket) as c:
        c.info()
        sock = c._t._sock  # type: ignore[attr-defined]
        with pytest.raises(InvalidArgument) as e:
            call(c)
        assert isinstance(e.value, ClassifydError)
        assert e.value.status == "INVALID_ARGUMENT"
        assert needle in e.value.message.lower(), e.value.message
        assert e.value.request_id and e.value.request_id > 0
        assert c.classify(["still here"])[0].label
        assert c._t._sock is sock, "the same connection served the next call"  # type: ignore[attr-defined]


def test_an_empty_text_is_classified(bert: Daemon) -> None:
    # docs/PROTOCOL.md: a text may be empty; a BERT tokenizer still gives it [CLS] [SEP], so it
    # is classified, not refused (unlike an empty list of texts or of ids, above).
    with Client(bert.socket) as c:
        labels = c.info().labels
        r = c.classify([""])[0]
        assert r.error is None, r.error
        assert r.label in labels and set(r.scores) == set(labels), r
        assert r.tokens == 2
        rs = c.classify(["", "what a wonderful film"])
        assert [x.error for x in rs] == [None, None] and all(x.label in labels for x in rs), rs


def test_a_frame_over_the_limit_closes_the_connection_and_the_client_reconnects() -> None:
    with Daemon(FIXTURES / "bert", "--max-frame-bytes", "1024") as d, Client(d.socket) as c:
        with pytest.raises(InvalidArgument) as e:
            c.classify(["x" * 2000])
        assert e.value.request_id == 0 and "1024" in e.value.message, e.value
        assert c.classify(["small"])[0].label


def test_internal_error_then_recovery() -> None:
    with Daemon(FIXTURES / "bert", "--test-fail-batches", "1") as d, Client(d.socket) as c:
        with pytest.raises(InternalError) as e:
            c.classify(["one", "two"])
        assert "panicked" in e.value.message
        assert len(c.classify(["after"])) == 1


@pytest.fixture
def held(tmp_path: Path) -> Any:
    """A daemon whose engine holds each batch it picks while the file `hold` exists."""
    hold = tmp_path / "hold"
    with Daemon(
        FIXTURES / "bert",
        "--test-hold-batches-while", str(hold),
        "--queue-capacity", "1",
        "--max-batch-size", "1",
        "--drain-timeout-secs", "1",
        metrics=True,
    ) as d:  # fmt: skip
        yield d, hold


def wait_holding(d: Daemon, n: int = 1) -> None:
    wait_until("the engine to hold a batch", lambda: d.stderr().count("test hook: holding a batch") >= n, log=d.stderr)


def test_timeout_keeps_the_connection_and_drops_the_late_answer(held: Any, golden: dict[str, Any]) -> None:
    d, hold = held
    a, b = texts(golden)[0], texts(golden)[3]
    hold.write_bytes(b"")
    with Client(d.socket) as c:
        with pytest.raises(Timeout) as e:
            c.classify([a["text"]], logits=True, timeout=0.3)
        assert isinstance(e.value, DeadlineExceeded) and isinstance(e.value, TimeoutError)
        wait_holding(d)
        hold.unlink()
        # The late answer to `a` arrives first on this connection and must not be taken for b's.
        r = c.classify([b["text"]], logits=True)[0]
        assert r.logits is not None and close(r.logits, b["logits"])


def test_overloaded_and_deadline_exceeded(held: Any) -> None:
    d, hold = held
    hold.write_bytes(b"")
    results: dict[str, Any] = {}

    def call(name: str, **kw: Any) -> None:
        try:
            results[name] = Client(d.socket).classify([name], **kw)
        except ClassifydError as e:
            results[name] = e

    first = threading.Thread(target=call, args=("first",))
    first.start()
    wait_holding(d)  # `first` is in the engine
    queued = threading.Thread(target=call, args=("queued",), kwargs={"deadline_ms": 100})
    queued.start()
    wait_until("a queued request", lambda: d.metric("classifyd_queue_depth") == 1, log=d.stderr)
    with Client(d.socket) as c:
        with pytest.raises(Overloaded):
            c.classify(["one too many"])
        time.sleep(0.3)  # past `queued`'s deadline while it waits
        hold.unlink()
        first.join(30)
        queued.join(30)
        assert isinstance(results["queued"], DeadlineExceeded), results
        assert not isinstance(results["queued"], Timeout), "the server's answer, not a client timeout"
        assert len(results["first"]) == 1
        assert c.classify(["after"])[0].label


def test_unavailable_without_a_daemon(tmp_path: Path) -> None:
    with pytest.raises(Unavailable) as e:
        Client(tmp_path / "nothing.sock").classify(["x"])
    assert "nothing.sock" in str(e.value)


def test_reconnects_after_the_server_closes_an_idle_connection() -> None:
    with Daemon(FIXTURES / "bert", "--idle-timeout-secs", "1", metrics=True) as d, Client(d.socket) as c:
        c.classify(["before"])
        first = c._t._sock  # type: ignore[attr-defined]
        wait_until(
            "the idle connection closed",
            lambda: d.metric('classifyd_connections{transport="unix"}') == 0,
            log=d.stderr,
        )
        assert c.classify(["after"])[0].label
        assert c._t._sock is not first, "a new connection"  # type: ignore[attr-defined]


def test_unavailable_while_shutting_down(held: Any) -> None:
    d, hold = held
    hold.write_bytes(b"")
    # A request still queued when the drain timeout (1 s here) runs out is answered UNAVAILABLE.
    got: list[Any] = []

    def call(text: str) -> None:
        try:
            got.append(Client(d.socket).classify([text]))
        except ClassifydError as e:
            got.append(e)

    t1 = threading.Thread(target=call, args=("in the engine",))
    t1.start()
    wait_holding(d)
    t2 = threading.Thread(target=call, args=("queued",))
    t2.start()
    wait_until("a queued request", lambda: d.metric("classifyd_queue_depth") == 1, log=d.stderr)
    d.signal(signal.SIGTERM)
    t2.join(60)
    hold.unlink()
    t1.join(60)
    assert any(isinstance(g, Unavailable) for g in got), got
    assert d.wait() == 0, d.stderr()


def test_threads_share_one_client(bert: Daemon, golden: dict[str, Any]) -> None:
    cases = texts(golden)
    errors: list[BaseException] = []
    with Client(bert.socket) as c:

        def work(k: dict[str, Any]) -> None:
            try:
                for _ in range(5):
                    r = c.classify([k["text"]], logits=True)[0]
                    assert r.logits is not None and close(r.logits, k["logits"])
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        ts = [threading.Thread(target=work, args=(k,)) for k in cases]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
    assert not errors, errors


def test_socket_from_the_environment(bert: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLASSIFYD_SOCKET", bert.socket)
    assert Client().info().model == "bert"


def test_all_status_exceptions_are_classifyd_errors() -> None:
    for cls in (InvalidArgument, Overloaded, DeadlineExceeded, Unavailable, InternalError, Timeout):
        assert issubclass(cls, ClassifydError)
    assert set(classifyd.__all__) >= {
        "Client", "AsyncClient", "ClassifydError", "InvalidArgument", "Overloaded",
        "DeadlineExceeded", "Unavailable", "InternalError",
    }  # fmt: skip
    assert os.path.exists(Path(classifyd.__file__).parent / "py.typed")
