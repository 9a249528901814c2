"""Client.quic / AsyncClient.quic (aioquic) against a real daemon's QUIC listener on 127.0.0.1,
with mTLS from a development PKI made by `classifyd cert`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon import FIXTURES, Daemon, dev_pki, wait_until
from helpers import close, texts

from classifyd import AsyncClient, Client, InvalidArgument, Timeout, Unavailable


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dev_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def quic(pki: Path) -> Iterator[Daemon]:
    with Daemon(FIXTURES / "bert", "--max-frame-bytes", "4096", quic_pki=pki, metrics=True) as d:
        yield d


def client(d: Daemon, pki: Path, **kw: Any) -> Client:
    assert d.quic_addr is not None
    return Client.quic(d.quic_addr, ca=pki / "ca.pem", cert=pki / "client.pem", key=pki / "client-key.pem", **kw)


def test_classify_over_quic_matches_transformers(quic: Daemon, pki: Path, golden: dict[str, Any]) -> None:
    cases = texts(golden)
    with client(quic, pki) as c:
        rs = c.classify([k["text"] for k in cases], logits=True)
        for k, r in zip(cases, rs):
            assert r.logits is not None and close(r.logits, k["logits"])
        assert c.info().labels == golden["labels"]
        p = next(k for k in golden["cases"] if k["text_pair"])
        r = c.classify_pairs([(p["text"], p["text_pair"])], logits=True)[0]
        assert r.logits is not None and close(r.logits, p["logits"])


def test_server_name_defaults_to_the_host_and_can_be_given(quic: Daemon, pki: Path) -> None:
    # The dev certificate names localhost, 127.0.0.1 and ::1.
    with client(quic, pki, server_name="localhost") as c:
        assert c.classify(["x"])[0].label
    with client(quic, pki, server_name="not-the-server.example") as c:
        with pytest.raises(Unavailable):
            c.classify(["x"])


def test_errors_over_quic_keep_the_connection(quic: Daemon, pki: Path) -> None:
    with client(quic, pki) as c:
        c.info()
        proto = c._t._async._proto  # type: ignore[attr-defined]
        with pytest.raises(InvalidArgument):
            c.classify([])
        with pytest.raises(InvalidArgument):
            c.classify_ids([[2, 10_000_000, 3]])
        # Over --max-frame-bytes: the server resets this request's stream (code 1) only.
        with pytest.raises(InvalidArgument) as e:
            c.classify(["y" * 5000])
        assert "max_frame_bytes" in e.value.message
        assert c.classify(["fine"])[0].label
        assert c._t._async._proto is proto, "one connection throughout"  # type: ignore[attr-defined]


def test_async_quic_many_streams(quic: Daemon, pki: Path, golden: dict[str, Any]) -> None:
    cases = texts(golden) * 3
    assert quic.quic_addr is not None
    addr = quic.quic_addr

    async def main() -> list[Any]:
        c = AsyncClient.quic(addr, ca=pki / "ca.pem", cert=pki / "client.pem", key=pki / "client-key.pem")
        async with c:
            return list(await asyncio.gather(*(c.classify([k["text"]], logits=True) for k in cases)))

    for k, r in zip(cases, asyncio.run(main())):
        assert close(r[0].logits, k["logits"])


def test_a_client_without_a_certificate_is_refused(quic: Daemon, pki: Path) -> None:
    assert quic.quic_addr is not None
    with Client.quic(quic.quic_addr, ca=pki / "ca.pem") as c:
        with pytest.raises(Unavailable):
            c.classify(["x"])


def test_a_server_from_another_ca_is_refused(quic: Daemon, tmp_path: Path) -> None:
    other = dev_pki(tmp_path / "other")
    assert quic.quic_addr is not None
    with Client.quic(quic.quic_addr, ca=other / "ca.pem", cert=other / "client.pem", key=other / "client-key.pem") as c:
        with pytest.raises(Unavailable) as e:
            c.classify(["x"])
    assert "connect" in e.value.message


def test_quic_reconnects_after_the_server_closes_an_idle_connection(pki: Path) -> None:
    with Daemon(FIXTURES / "bert", "--idle-timeout-secs", "1", quic_pki=pki, metrics=True) as d, client(d, pki) as c:
        c.classify(["before"])
        first = c._t._async._proto  # type: ignore[attr-defined]
        wait_until(
            "the idle QUIC connection closed",
            lambda: d.metric('classifyd_connections{transport="quic"}') == 0 and first.lost is not None,
            log=d.stderr,
        )
        assert c.classify(["after"])[0].label
        assert c._t._async._proto is not first  # type: ignore[attr-defined]


def test_quic_timeout_keeps_the_connection(pki: Path, tmp_path: Path, golden: dict[str, Any]) -> None:
    hold = tmp_path / "hold"
    b = texts(golden)[3]
    with Daemon(FIXTURES / "bert", "--test-hold-batches-while", str(hold), quic_pki=pki) as d, client(d, pki) as c:
        c.info()
        proto = c._t._async._proto  # type: ignore[attr-defined]
        hold.write_bytes(b"")
        with pytest.raises(Timeout):
            c.classify(["held"], timeout=0.3)
        wait_until("the engine to hold", lambda: "test hook: holding a batch" in d.stderr(), log=d.stderr)
        hold.unlink()
        r = c.classify([b["text"]], logits=True)[0]
        assert r.logits is not None and close(r.logits, b["logits"])
        assert c._t._async._proto is proto  # type: ignore[attr-defined]
