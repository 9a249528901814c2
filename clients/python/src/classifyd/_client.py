"""Client (blocking) and AsyncClient (asyncio): the same methods over either transport."""

from __future__ import annotations

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
from ._transport import DEFAULT_SOCKET, AsyncTransport, AsyncUnixTransport, SyncTransport, UnixTransport
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

        with Client("/run/classifyd/classifyd.sock") as c:
            print(c.classify(["what a wonderful film"])[0].label)
    """

    def __init__(
        self,
        path: Union[str, os.PathLike[str], None] = None,
        *,
        timeout: Optional[float] = 30.0,
        _transport: Optional[SyncTransport] = None,
    ) -> None:
        super().__init__(timeout)
        self._t: SyncTransport = _transport or UnixTransport(_path(path))

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
    ) -> Client:
        """A client of the daemon's QUIC listener at ``address`` ("host:port"), trusting the
        server certificates that chain to ``ca`` and presenting ``cert``/``key`` (PEM) for
        mTLS. ``server_name`` is the name the server certificate must carry (default: the
        host). Needs the ``[quic]`` extra (aioquic)."""
        from ._quic import SyncQuicTransport

        t = SyncQuicTransport(
            address=address,
            ca=os.fspath(ca),
            cert=None if cert is None else os.fspath(cert),
            key=None if key is None else os.fspath(key),
            server_name=server_name,
        )
        return cls(timeout=timeout, _transport=t)

    def classify(
        self,
        texts: Iterable[str],
        *,
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

        A text the server refuses (no tokens, too long with ``no_truncate``) gets a Result
        with ``error`` set while the others are classified; InvalidArgument is raised only
        when every text is refused.
        """
        return self._classify(
            _codec.text_inputs(texts), top_k, logits, no_truncate, deadline_ms, priority, timeout,
            aggregation=aggregation, redact=redact, min_score=min_score,
        )

    def classify_pairs(
        self,
        pairs: Iterable[Pair],
        *,
        top_k: int = 0,
        logits: bool = False,
        no_truncate: bool = False,
        deadline_ms: Optional[float] = None,
        priority: str = "normal",
        timeout: Timeout = DEFAULT,
    ) -> Results:
        """Classifies text pairs (text, text_pair), as cross-encoders and NLI models take them."""
        return self._classify(_codec.pair_inputs(pairs), top_k, logits, no_truncate, deadline_ms, priority, timeout)

    def classify_ids(
        self,
        ids: Iterable[Sequence[int]],
        *,
        top_k: int = 0,
        logits: bool = False,
        no_truncate: bool = False,
        deadline_ms: Optional[float] = None,
        priority: str = "normal",
        timeout: Timeout = DEFAULT,
    ) -> Results:
        """Classifies pre-tokenized inputs: ids from the model's own tokenizer, special tokens
        included."""
        return self._classify(_codec.id_inputs(ids), top_k, logits, no_truncate, deadline_ms, priority, timeout)

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
        )
        return _codec.results(self._t.request(req_id, data, self._deadline(timeout)), logits)

    def info(self, *, timeout: Timeout = DEFAULT) -> Info:
        """The model being served and the daemon's counters."""
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

        async with AsyncClient("/run/classifyd/classifyd.sock") as c:
            rs = await asyncio.gather(*(c.classify([t]) for t in texts))
    """

    def __init__(
        self,
        path: Union[str, os.PathLike[str], None] = None,
        *,
        timeout: Optional[float] = 30.0,
        _transport: Optional[AsyncTransport] = None,
    ) -> None:
        super().__init__(timeout)
        self._t: AsyncTransport = _transport or AsyncUnixTransport(_path(path))

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
    ) -> AsyncClient:
        """As Client.quic; each call is a QUIC stream of its own."""
        from ._quic import AsyncQuicTransport

        t = AsyncQuicTransport(
            address,
            ca=os.fspath(ca),
            cert=None if cert is None else os.fspath(cert),
            key=None if key is None else os.fspath(key),
            server_name=server_name,
        )
        return cls(timeout=timeout, _transport=t)

    async def classify(
        self,
        texts: Iterable[str],
        *,
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
            aggregation=aggregation, redact=redact, min_score=min_score,
        )

    async def classify_pairs(
        self,
        pairs: Iterable[Pair],
        *,
        top_k: int = 0,
        logits: bool = False,
        no_truncate: bool = False,
        deadline_ms: Optional[float] = None,
        priority: str = "normal",
        timeout: Timeout = DEFAULT,
    ) -> Results:
        """As Client.classify_pairs."""
        return await self._classify(
            _codec.pair_inputs(pairs), top_k, logits, no_truncate, deadline_ms, priority, timeout
        )

    async def classify_ids(
        self,
        ids: Iterable[Sequence[int]],
        *,
        top_k: int = 0,
        logits: bool = False,
        no_truncate: bool = False,
        deadline_ms: Optional[float] = None,
        priority: str = "normal",
        timeout: Timeout = DEFAULT,
    ) -> Results:
        """As Client.classify_ids."""
        return await self._classify(
            _codec.id_inputs(ids), top_k, logits, no_truncate, deadline_ms, priority, timeout
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
        )
        return _codec.results(await self._t.request(req_id, data, self._deadline(timeout)), logits)

    async def info(self, *, timeout: Timeout = DEFAULT) -> Info:
        """As Client.info."""
        req_id = next(self._ids)
        return _codec.info(await self._t.request(req_id, _codec.info_request(req_id), self._deadline(timeout)))

    async def aclose(self) -> None:
        await self._t.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.aclose()
