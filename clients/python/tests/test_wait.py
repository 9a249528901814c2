"""wait=: a client made before its daemon is up waits for it (Unix socket and QUIC, blocking
and asyncio), gives up with Unavailable once the wait has passed, never before, and does not
wait for what waiting cannot mend."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Optional

import pytest
from daemon import FIXTURES, Daemon, dev_pki, free_port

from classifyd import AsyncClient, Client, Unavailable

BERT = FIXTURES / "bert"
LABELS = {"neg", "neu", "pos"}
# Late enough that a client which did not wait would have failed long before.
AFTER = 0.7
# Hang guards, not speed tests: the machine the tests run on may be busy.
PATIENCE = 10.0
SLOW = 10.0


class Later:
    """A daemon started AFTER seconds from now, from a thread, for a client to wait for."""

    def __init__(self, after: float = AFTER, model: Path = BERT, **kw: Any) -> None:
        self.daemon: Optional[Daemon] = None
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._start, args=(after, model, kw), daemon=True)
        self._thread.start()

    def _start(self, after: float, model: Path, kw: dict[str, Any]) -> None:
        time.sleep(after)
        try:
            self.daemon = Daemon(model, **kw)
        except BaseException as e:
            self.error = e

    def why(self) -> str:
        """For an assertion's message: why the daemon may not have come up."""
        return f"the daemon started later failed: {self.error!r}" if self.error else ""

    def __enter__(self) -> Later:
        return self

    def __exit__(self, t: Optional[type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self._thread.join(200)
        if self.daemon is not None:
            self.daemon.__exit__(t, e, tb)


def stale_socket(path: str) -> None:
    """What a daemon that was killed leaves: a socket file nobody listens on (refused)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()


# ---- Unix socket, blocking ------------------------------------------------------------------


@pytest.mark.parametrize("before", ["no socket", "stale socket"])
def test_client_waits_for_a_daemon_started_later(tmp_path: Path, before: str) -> None:
    path = str(tmp_path / "later.sock")
    if before == "stale socket":
        stale_socket(path)
    t0 = time.monotonic()
    with Later(uds=path) as later:
        try:
            c = Client(path, wait=PATIENCE)
        except Unavailable as e:
            raise AssertionError(later.why()) from e
        with c:
            took = time.monotonic() - t0
            # Connected by the constructor, to the daemon that came up after it began.
            assert c._t._sock is not None  # type: ignore[attr-defined]
            assert took >= AFTER, took
            assert c.classify(["what a wonderful film"])[0].label in LABELS


def test_client_wait_runs_out_without_a_daemon(tmp_path: Path) -> None:
    path = tmp_path / "nothing.sock"
    # Without wait nothing is tried before the first call, as before wait= existed.
    Client(path).close()
    t0 = time.monotonic()
    with pytest.raises(Unavailable) as e:
        Client(path, wait=0.3)
    took = time.monotonic() - t0
    assert 0.3 <= took < SLOW, took
    assert "nothing.sock" in str(e.value) and "waited 0.3 s" in str(e.value), str(e.value)


def test_wait_does_not_wait_for_what_cannot_come(tmp_path: Path) -> None:
    # A path under a regular file: no daemon can ever bind it.
    f = tmp_path / "a-file"
    f.write_text("")
    t0 = time.monotonic()
    with pytest.raises(Unavailable) as e:
        Client(f / "classifyd.sock", wait=30)
    assert time.monotonic() - t0 < SLOW
    assert "waited" not in str(e.value), str(e.value)


def test_wait_must_not_be_negative(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Client(tmp_path / "x.sock", wait=-1)
    with pytest.raises(ValueError):
        AsyncClient(tmp_path / "x.sock", wait=-1)


# ---- Unix socket, asyncio -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["async with", "first calls"])
def test_async_client_waits_for_a_daemon_started_later(tmp_path: Path, how: str) -> None:
    path = str(tmp_path / "later.sock")

    async def main() -> tuple[float, list[str]]:
        t0 = time.monotonic()
        if how == "async with":
            async with AsyncClient(path, wait=PATIENCE) as c:
                took = time.monotonic() - t0
                rs = await c.classify(["what a wonderful film"])
                return took, [rs[0].label]
        # Several calls made while the client waits share its one wait and connection.
        c = AsyncClient(path, wait=PATIENCE)
        try:
            rss = await asyncio.gather(*(c.classify([t]) for t in ["a delight", "a dud", "fine"]))
            return time.monotonic() - t0, [rs[0].label for rs in rss]
        finally:
            await c.aclose()

    with Later(uds=path) as later:
        try:
            took, labels = asyncio.run(main())
        except Unavailable as e:
            raise AssertionError(later.why()) from e
    assert took >= AFTER, took
    assert labels and all(label in LABELS for label in labels), labels


def test_async_client_wait_runs_out_without_a_daemon(tmp_path: Path) -> None:
    path = tmp_path / "nothing.sock"

    async def entered() -> None:
        async with AsyncClient(path, wait=0.3):
            raise AssertionError("entered without a daemon")

    t0 = time.monotonic()
    with pytest.raises(Unavailable) as e:
        asyncio.run(entered())
    took = time.monotonic() - t0
    assert 0.3 <= took < SLOW, took
    assert "nothing.sock" in str(e.value) and "waited 0.3 s" in str(e.value), str(e.value)

    async def first_calls() -> tuple[float, list[BaseException], BaseException]:
        c = AsyncClient(path, wait=0.3)
        t0 = time.monotonic()
        got = await asyncio.gather(*(c.classify(["x"]) for _ in range(4)), return_exceptions=True)
        took = time.monotonic() - t0
        errs = [g for g in got if isinstance(g, BaseException)]
        # The wait was for the first connection; a later call tries once, as without wait.
        with pytest.raises(Unavailable) as later:
            await c.classify(["x"])
        await c.aclose()
        return took, errs, later.value

    took, errs, later = asyncio.run(first_calls())
    assert 0.3 <= took < SLOW, took
    assert len(errs) == 4 and all(isinstance(e, Unavailable) for e in errs), errs
    assert all(e is errs[0] for e in errs), "one wait, shared by the calls made during it"
    assert "waited 0.3 s" in str(errs[0]), str(errs[0])
    assert "waited" not in str(later), str(later)


# ---- QUIC ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dev_pki(tmp_path_factory.mktemp("pki"))


def quic_kw(pki: Path) -> dict[str, Any]:
    return {"ca": pki / "ca.pem", "cert": pki / "client.pem", "key": pki / "client-key.pem"}


def test_quic_client_waits_for_a_daemon_started_later(pki: Path) -> None:
    addr = f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    t0 = time.monotonic()
    with Later(quic_pki=pki, quic_addr=addr) as later:
        try:
            c = Client.quic(addr, wait=PATIENCE, **quic_kw(pki))
        except Unavailable as e:
            raise AssertionError(later.why()) from e
        with c:
            assert time.monotonic() - t0 >= AFTER
            assert c.classify(["what a wonderful film"])[0].label in LABELS


def test_quic_wait_runs_out_without_a_daemon(pki: Path) -> None:
    addr = f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    t0 = time.monotonic()
    with pytest.raises(Unavailable) as e:
        Client.quic(addr, wait=0.3, **quic_kw(pki))
    took = time.monotonic() - t0
    assert 0.3 <= took < SLOW, took
    assert addr in str(e.value) and "waited 0.3 s" in str(e.value), str(e.value)

    async def entered() -> None:
        async with AsyncClient.quic(addr, wait=0.3, **quic_kw(pki)):
            raise AssertionError("entered without a daemon")

    t0 = time.monotonic()
    with pytest.raises(Unavailable) as e:
        asyncio.run(entered())
    took = time.monotonic() - t0
    assert 0.3 <= took < SLOW, took
    assert "waited 0.3 s" in str(e.value), str(e.value)


def test_quic_wait_does_not_wait_for_a_refusal(pki: Path, tmp_path: Path) -> None:
    # A server whose certificate the client's CA did not sign: it answers, and no wait mends it.
    other = dev_pki(tmp_path / "other")
    with Daemon(BERT, quic_pki=other) as d:
        assert d.quic_addr is not None
        t0 = time.monotonic()
        with pytest.raises(Unavailable) as e:
            Client.quic(d.quic_addr, wait=30, **quic_kw(pki))
        assert time.monotonic() - t0 < SLOW
        assert "waited" not in str(e.value), str(e.value)
