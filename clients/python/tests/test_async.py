"""AsyncClient (asyncio, Unix socket) against a real daemon: many requests in flight on one
connection, answered in completion order and matched by id."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from daemon import FIXTURES, Daemon, wait_until
from helpers import close, texts

from classifyd import AsyncClient, InvalidArgument, Timeout


def test_three_lines_async(sentiment: Daemon) -> None:
    async def main() -> list[str]:
        async with AsyncClient(sentiment.socket) as c:
            rs = await c.classify(["what a wonderful film"])
            return [r.label for r in rs]

    assert asyncio.run(main()) == ["POSITIVE"]


def test_token_options_async(tok_bert: Daemon) -> None:
    text = "Maria Lopez flew from Madrid to New York on Tuesday."

    async def main() -> tuple[Any, Any]:
        async with AsyncClient(tok_bert.socket) as c:
            return await asyncio.gather(
                c.classify([text], redact=True), c.classify([text], aggregation="none", min_score=0.5)
            )

    grouped, tokens = asyncio.run(main())
    assert grouped[0].entities and grouped[0].redacted and "[" in grouped[0].redacted
    assert tokens[0].entities and all(e.index is not None and e.score >= 0.5 for e in tokens[0].entities)


def test_many_in_flight_on_one_connection(bert: Daemon, golden: dict[str, Any]) -> None:
    cases = texts(golden) * 4

    async def main() -> tuple[list[Any], float]:
        async with AsyncClient(bert.socket) as c:
            await c.info()
            proto = c._t._proto  # type: ignore[attr-defined]
            rs = await asyncio.gather(*(c.classify([k["text"]], logits=True) for k in cases))
            assert c._t._proto is proto, "one connection"  # type: ignore[attr-defined]
            conns = await asyncio.to_thread(bert.metric, 'classifyd_connections{transport="unix"}')
            return list(rs), conns

    rs, conns = asyncio.run(main())
    assert conns == 1
    for k, r in zip(cases, rs):
        assert r[0].logits is not None and close(r[0].logits, k["logits"]), k["text"]
    assert max(r.timings.batch_size for r in rs) >= 1


def test_answers_out_of_order_are_matched_by_id(tmp_path: Path, golden: dict[str, Any]) -> None:
    """Requests that the engine holds are overtaken on the connection by answers that need no
    engine (info, a refused request): whatever the scheduler's policy, the answers come back in
    another order than the requests went out, and each reaches its own call."""
    hold = tmp_path / "hold"
    cases = texts(golden)
    with Daemon(FIXTURES / "bert", "--test-hold-batches-while", str(hold), metrics=True) as d:

        async def main() -> tuple[list[str], dict[str, Any]]:
            done: list[str] = []
            got: dict[str, Any] = {}
            async with AsyncClient(d.socket) as c:

                async def call(name: str, coro: Any) -> None:
                    try:
                        got[name] = await coro
                    except InvalidArgument as e:
                        got[name] = e
                    done.append(name)

                hold.write_bytes(b"")
                held = asyncio.create_task(call("held", c.classify([cases[0]["text"]], logits=True)))
                await asyncio.to_thread(
                    wait_until, "the engine to hold", lambda: "test hook: holding a batch" in d.stderr()
                )
                queued = asyncio.create_task(call("queued", c.classify([cases[3]["text"]], logits=True)))
                await asyncio.to_thread(wait_until, "one queued", lambda: d.metric("classifyd_queue_depth") == 1)
                # Sent after the two above, answered before them.
                await call("info", c.info())
                await call("refused", c.classify([]))
                assert not held.done() and not queued.done()
                hold.unlink()
                await asyncio.gather(held, queued)
            return done, got

        done, got = asyncio.run(main())
    assert done[:2] == ["info", "refused"] and set(done[2:]) == {"held", "queued"}, done
    assert got["info"].labels == golden["labels"]
    assert isinstance(got["refused"], InvalidArgument)
    assert close(got["held"][0].logits, cases[0]["logits"])
    assert close(got["queued"][0].logits, cases[3]["logits"])


def test_errors_in_flight_do_not_disturb_the_others(bert: Daemon, golden: dict[str, Any]) -> None:
    cases = texts(golden)

    async def main() -> list[Any]:
        async with AsyncClient(bert.socket) as c:
            calls = []
            for i, k in enumerate(cases):
                calls.append(c.classify([k["text"]], logits=True))
                if i % 2 == 0:
                    calls.append(c.classify([]))
                    calls.append(c.classify_ids([[2, 10_000_000, 3]]))
            got = await asyncio.gather(*calls, return_exceptions=True)
            got.append(await c.classify(["after the errors"]))
            return list(got)

    got = asyncio.run(main())
    oks = [g for g in got if not isinstance(g, BaseException)]
    errs = [g for g in got if isinstance(g, BaseException)]
    assert len(errs) == 2 * len(cases[::2]) and all(isinstance(e, InvalidArgument) for e in errs), errs
    for k, r in zip(cases, oks):
        assert close(r[0].logits, k["logits"])


def test_timeout_and_cancel_leave_the_connection_usable(tmp_path: Path, golden: dict[str, Any]) -> None:
    hold = tmp_path / "hold"
    a, b = texts(golden)[0], texts(golden)[3]
    with Daemon(FIXTURES / "bert", "--test-hold-batches-while", str(hold)) as d:

        async def main() -> Any:
            async with AsyncClient(d.socket) as c:
                hold.write_bytes(b"")
                with pytest.raises(Timeout):
                    await c.classify([a["text"]], timeout=0.3)
                cancelled = asyncio.create_task(c.classify(["cancelled"]))
                await asyncio.sleep(0.1)
                cancelled.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await cancelled
                assert not c._t._proto.pending, "nothing left waiting"  # type: ignore[attr-defined]
                hold.unlink()
                return await c.classify([b["text"]], logits=True)

        r = asyncio.run(main())
    assert close(r[0].logits, b["logits"])


def test_async_reconnects_after_idle_close() -> None:
    with Daemon(FIXTURES / "bert", "--idle-timeout-secs", "1", metrics=True) as d:

        async def main() -> None:
            async with AsyncClient(d.socket) as c:
                await c.classify(["before"])
                first = c._t._proto  # type: ignore[attr-defined]
                await asyncio.to_thread(
                    wait_until, "idle close", lambda: d.metric('classifyd_connections{transport="unix"}') == 0
                )
                assert (await c.classify(["after"]))[0].label
                assert c._t._proto is not first  # type: ignore[attr-defined]

        asyncio.run(main())
