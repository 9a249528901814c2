"""Client (blocking) and AsyncClient (asyncio): the same methods over either transport."""

from __future__ import annotations

import asyncio
import enum
import itertools
import os
import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Optional, Union

from . import _codec
from ._codec import Pair
from ._pb import classifyd_pb2 as pb
from ._transport import (
    DEFAULT_SOCKET,
    AsyncTransport,
    AsyncUnixTransport,
    SyncTransport,
    UnixTransport,
    check_wait,
)
from ._types import Info, Results


class _Default(enum.Enum):
    TIMEOUT = "the client's timeout"


DEFAULT = _Default.TIMEOUT
Timeout = Union[float, None, _Default]


def _path(path: Union[str, os.PathLike[str], None]) -> str:
    return os.fspath(path) if path is not None else os.environ.get("CLASSIFYD_SOCKET", DEFAULT_SOCKET)


class _Base:
    def __init__(self, timeout: Optional[float]) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds (or None for none), not {timeout!r}")
        self.timeout = timeout
        # Request ids: unique on the connection for as long as this client lives.
        self._ids = itertools.count(1)

    def _deadline(self, timeout: Timeout) -> Optional[float]:
        t = self.timeout if timeout is DEFAULT else timeout
        return None if t is None else time.monotonic() + t


class Client(_Base):
    """A blocking client. ``Client(path)`` talks to the daemon's Unix socket (default
    ``$CLASSIFYD_SOCKET`` or /run/classifyd/classifyd.sock); ``Client.quic(...)`` over QUIC.

    The connection is made on the first call and made again after the server closes it (its
    idle timeout). A Client may be shared by threads; over the Unix socket their calls take
    turns on the one connection (use AsyncClient to have many requests in flight). Every
    method takes ``timeout`` (seconds, None for none), the longest the call waits for its
    answer; the default is the client's.

    ``wait`` (seconds; default None: do not wait) is for a daemon that may not be up yet, as
    ``classifyd classify --wait SECS`` is: the constructor connects at once and, while the
    socket is missing or refuses (a stale file) or is not yet accessible, tries again (after
    50 ms, doubling to 500 ms) for up to ``wait`` seconds, then raises Unavailable saying how
    long it waited. Any other error (a path under a regular file, one too long for a socket)
    raises at once. The wait is for the first connection only; reconnections later are as
    without it.

        with Client("/tmp/classifyd.sock", wait=10) as c:
            print(c.classify(["what a wonderful film"])[0].label)
    """

    def __init__(
        self,
        path: Union[str, os.PathLike[str], None] = None,
        *,
        timeout: Optional[float] = 30.0,
        wait: Optional[float] = None,
        _transport: Optional[SyncTransport] = None,
    ) -> None:
        try:
            check_wait(wait)
            super().__init__(timeout)
        except BaseException:
            # Client.quic made its transport, which runs a thread, before these checks.
            if _transport is not None:
                _transport.close()
            raise
        self._t: SyncTransport = _transport or UnixTransport(_path(path))
        if wait is not None:
            try:
                self._t.wait_connected(wait)
            except BaseException:
                # No client is returned to close it (a QUIC transport's thread would linger).
                self._t.close()
                raise

    @classmethod
    def quic(
        cls,
        address: str,
        *,
        ca: Union[str, os.PathLike[str]],
        cert: Union[str, os.PathLike[str], None] = None,
        key: Union[str, os.PathLike[str], None] = None,
        server_name: Optional[str] = None,
        timeout: Optional[float] = 30.0,
        wait: Optional[float] = None,
    ) -> Client:
        """A client of the daemon's QUIC listener at ``address`` ("host:port"), trusting the
        server certificates that chain to ``ca`` and presenting ``cert``/``key`` (PEM) for
        mTLS. ``server_name`` is the name the server certificate must carry (default: the
        host). Needs the ``[quic]`` extra (aioquic).

        ``wait``: as for Client(), the handshake is made at once and begun again while it gets
        no answer (nothing listening on a UDP port does not refuse; each try waits up to 1 s,
        doubling to 4 s), for up to ``wait`` seconds; a server that answers and refuses (TLS)
        raises Unavailable at once."""
        from ._quic import SyncQuicTransport

        t = SyncQuicTransport(
            address=address,
            ca=os.fspath(ca),
            cert=None if cert is None else os.fspath(cert),
            key=None if key is None else os.fspath(key),
            server_name=server_name,
        )
        return cls(timeout=timeout, wait=wait, _transport=t)

    def classify(
        self,
        texts: Iterable[str],
        *,
        model: str = "",
        top_k: int = 0,
        logits: bool = False,
        no_truncate: bool = False,
        deadline_ms: Optional[float] = None,
        priority: str = "normal",
        aggregation: str = "simple",
        redact: bool = False,
        min_score: float = 0.0,
        timeout: Timeout = DEFAULT,
    ) -> Results:
        """Classifies each text; one Result per text, in order.

        ``model``: which of the daemon's models answers, by the name it serves it under
        (``info().models``); "" (the default) is the daemon's default model. A name the daemon
        does not serve raises InvalidArgument naming the served ones.

        ``top_k``: only the k best labels in ``scores`` (0 = all). ``logits``: include the raw
        logits. ``no_truncate``: refuse over-long texts instead of truncating them.
        ``deadline_ms``: the server drops the request, answering DeadlineExceeded, if it is
        still queued after this long. ``priority``: "normal" or "high" (batched first).

        Token-classification models only (``info().task == "token"``; a sequence model
        refuses a request that sets any of them with InvalidArgument): ``aggregation``, how token labels become ``Result.entities``, as transformers'
        pipeline does it: "simple" (runs of agreeing BIO tags), "first", "average" or "max"
        (words take one label, then group), or "none" (one entity per labelled token, with
        its index). ``redact``: also return each text with every entity replaced by
        ``[LABEL]`` in ``Result.redacted``. ``min_score``: leave out (and do not redact)
        entities scoring below it.

        An empty text is classified like any other (the model sees only its special tokens,
        [CLS] [SEP] for BERT). A text the server refuses (one that tokenizes to no tokens,
        which only tokenizers that add no special tokens give, too long with ``no_truncate``)
        gets a Result with ``error`` set while the others are classified; InvalidArgument is
        raised only when every text is refused, or for an empty list of texts.
        """
        return self._classify(
            _codec.text_inputs(texts), top_k, logits, no_truncate, deadline_ms, priority, timeout,
            aggregation=aggregation, redact=redact, min_score=min_score, model=model,
        )

    def classify_pairs(
        self,
        pairs: Iterable[Pair],
        *,
        model: str = "",
        top_k: int = 0,
        logits: bool = False,
        no_truncate: bool = False,
        deadline_ms: Optional[float] = None,
        priority: str = "normal",
        timeout: Timeout = DEFAULT,
    ) -> Results:
        """Classifies text pairs (text, text_pair), as cross-encoders and NLI models take them."""
        return self._classify(
            _codec.pair_inputs(pairs), top_k, logits, no_truncate, deadline_ms, priority, timeout, model=model
        )

    def classify_ids(
        self,
        ids: Iterable[Sequence[int]],
        *,
        model: str = "",
        top_k: int = 0,
        logits: bool = False,
        no_truncate: bool = False,
        deadline_ms: Optional[float] = None,
        priority: str = "normal",
        timeout: Timeout = DEFAULT,
    ) -> Results:
        """Classifies pre-tokenized inputs: ids from the model's own tokenizer, special tokens
        included. An empty row of ids is refused, as a text with no tokens is."""
        return self._classify(
            _codec.id_inputs(ids), top_k, logits, no_truncate, deadline_ms, priority, timeout, model=model
        )

    def _classify(
        self,
        inputs: list[pb.Input],
        top_k: int,
        logits: bool,
        no_truncate: bool,
        deadline_ms: Optional[float],
        priority: str,
        timeout: Timeout,
        *,
        aggregation: str = "simple",
        redact: bool = False,
        min_score: float = 0.0,
        model: str = "",
    ) -> Results:
        req_id = next(self._ids)
        data = _codec.classify_request(
            req_id,
            inputs,
            top_k=top_k,
            logits=logits,
            no_truncate=no_truncate,
            deadline_ms=deadline_ms,
            priority=priority,
            aggregation=aggregation,
            redact=redact,
            min_score=min_score,
            model=model,
        )
        return _codec.results(self._t.request(req_id, data, self._deadline(timeout)), logits)

    def info(self, *, timeout: Timeout = DEFAULT) -> Info:
        """The models being served (the default one at the top level, every one in
        ``models``) and the daemon's counters."""
        req_id = next(self._ids)
        return _codec.info(self._t.request(req_id, _codec.info_request(req_id), self._deadline(timeout)))

    def close(self) -> None:
        self._t.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()


class AsyncClient(_Base):
    """The asyncio client: Client's methods, awaitable. Any number of calls may be in flight
    on one connection (the server reads up to its ``max_in_flight`` at once); answers are
    matched to calls by id.

    ``wait`` means what it means for Client, but a constructor cannot await: the waiting is
    done by ``async with`` (which then raises Unavailable), or else by the first call (and the
    calls made while it waits, which all wait for the same connection), whose ``timeout``
    counts from when the daemon answered.

        async with AsyncClient("/run/classifyd/classifyd.sock") as c:
            rs = await asyncio.gather(*(c.classify([t]) for t in texts))
    """

    def __init__(
        self,
        path: Union[str, os.PathLike[str], None] = None,
        *,
        timeout: Optional[float] = 30.0,
        wait: Optional[float] = None,
        _transport: Optional[AsyncTransport] = None,
    ) -> None:
        super().__init__(timeout)
        self._wait = check_wait(wait)
        self._waiting: Optional[asyncio.Future[None]] = None
        self._t: AsyncTransport = _transport or AsyncUnixTransport(_path(path))

    async def _ready(self) -> None:
        """The wait for the first connection, shared by every call made during it."""
        w = self._waiting
        if w is None:
            assert self._wait is not None
            w = self._waiting = asyncio.ensure_future(self._t.wait_connected(self._wait))
            w.add_done_callback(self._waited)
        # Shielded: a caller that gives up (cancelled) must not end the wait of the others.
        await asyncio.shield(w)

    def _waited(self, w: asyncio.Future[None]) -> None:
        # Once settled, connected or not, calls go on as without `wait`; retrieving the
        # exception keeps asyncio from logging it when every caller had given up.
        self._wait = None
        if not w.cancelled():
            w.exception()

    @classmethod
    def quic(
        cls,
        address: str,
        *,
        ca: Union[str, os.PathLike[str]],
        cert: Union[str, os.PathLike[str], None] = None,
        key: Union[str, os.PathLike[str], None] = None,
        server_name: Optional[str] = None,
        timeout: Optional[float] = 30.0,
        wait: Optional[float] = None,
    ) -> AsyncClient:
        """As Client.quic (``wait`` as for AsyncClient()); each call is a QUIC stream of its own."""
        from ._quic import AsyncQuicTransport

        t = AsyncQuicTransport(
            address,
            ca=os.fspath(ca),
            cert=None if cert is None else os.fspath(cert),
            key=None if key is None else os.fspath(key),
            server_name=server_name,
        )
        return cls(timeout=timeout, wait=wait, _transport=t)

    async def classify(
        self,
        texts: Iterable[str],
        *,
        model: str = "",
        top_k: int = 0,
        logits: bool = False,
        no_truncate: bool = False,
        deadline_ms: Optional[float] = None,
        priority: str = "normal",
        aggregation: str = "simple",
        redact: bool = False,
        min_score: float = 0.0,
        timeout: Timeout = DEFAULT,
    ) -> Results:
        """As Client.classify."""
        return await self._classify(
            _codec.text_inputs(texts), top_k, logits, no_truncate, deadline_ms, priority, timeout,
            aggregation=aggregation, redact=redact, min_score=min_score, model=model,
        )

    async def classify_pairs(
        self,
        pairs: Iterable[Pair],
        *,
        model: str = "",
        top_k: int = 0,
        logits: bool = False,
        no_truncate: bool = False,
        deadline_ms: Optional[float] = None,
        priority: str = "normal",
        timeout: Timeout = DEFAULT,
    ) -> Results:
        """As Client.classify_pairs."""
        return await self._classify(
            _codec.pair_inputs(pairs), top_k, logits, no_truncate, deadline_ms, priority, timeout, model=model
        )

    async def classify_ids(
        self,
        ids: Iterable[Sequence[int]],
        *,
        model: str = "",
        top_k: int = 0,
        logits: bool = False,
        no_truncate: bool = False,
        deadline_ms: Optional[float] = None,
        priority: str = "normal",
        timeout: Timeout = DEFAULT,
    ) -> Results:
        """As Client.classify_ids."""
        return await self._classify(
            _codec.id_inputs(ids), top_k, logits, no_truncate, deadline_ms, priority, timeout, model=model
        )

    async def _classify(
        self,
        inputs: list[pb.Input],
        top_k: int,
        logits: bool,
        no_truncate: bool,
        deadline_ms: Optional[float],
        priority: str,
        timeout: Timeout,
        *,
        aggregation: str = "simple",
        redact: bool = False,
        min_score: float = 0.0,
        model: str = "",
    ) -> Results:
        if self._wait is not None:
            await self._ready()
        req_id = next(self._ids)
        data = _codec.classify_request(
            req_id,
            inputs,
            top_k=top_k,
            logits=logits,
            no_truncate=no_truncate,
            deadline_ms=deadline_ms,
            priority=priority,
            aggregation=aggregation,
            redact=redact,
            min_score=min_score,
            model=model,
        )
        return _codec.results(await self._t.request(req_id, data, self._deadline(timeout)), logits)

    async def info(self, *, timeout: Timeout = DEFAULT) -> Info:
        """As Client.info."""
        if self._wait is not None:
            await self._ready()
        req_id = next(self._ids)
        return _codec.info(await self._t.request(req_id, _codec.info_request(req_id), self._deadline(timeout)))

    async def aclose(self) -> None:
        await self._t.close()

    async def __aenter__(self) -> AsyncClient:
        if self._wait is not None:
            try:
                await self._ready()
            except BaseException:
                # __aexit__ is not called when __aenter__ raises.
                await self.aclose()
                raise
        return self

    async def __aexit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.aclose()
