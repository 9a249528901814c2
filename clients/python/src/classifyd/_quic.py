"""QUIC transport (the ``[quic]`` extra, aioquic): one bidirectional stream per request.

TLS 1.3 with ALPN ``classifyd/1`` and, normally, a client certificate (mTLS). Each request
opens a stream, writes one frame and finishes its side; the server answers with one frame on
the same stream (docs/PROTOCOL.md, "QUIC").
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine
from typing import Any, Optional, TypeVar

from . import _errors
from ._codec import FrameBuffer, decode
from ._pb import classifyd_pb2 as pb
from ._transport import Lost, attempt_limit, pauses, remaining, unavailable, wait, waited

try:
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic import events
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "QUIC needs aioquic: pip install 'classifyd-client[quic]' (or pip install aioquic)"
    ) from e

ALPN = "classifyd/1"

# Stream error codes the server resets a request's stream with (docs/PROTOCOL.md).
_STREAM_CODES: dict[int, tuple[type[_errors.ClassifydError], str]] = {
    1: (_errors.InvalidArgument, "the request frame is longer than the server's max_frame_bytes"),
    2: (_errors.ProtocolError, "the server saw the request stream end in the middle of a frame"),
    3: (_errors.DeadlineExceeded, "the request was not received, or its answer not taken, within the server's frame_timeout_secs"),
}
# Application codes the server closes a connection with.
_CLOSE_CODES = {0: "closed", 1: "the server is shutting down", 2: "closed by the server after its idle timeout", 3: "the server has max_connections open"}

T = TypeVar("T")

# While waiting for a daemon (wait=), how long one handshake may take before it is begun again
# on a new connection: a server that was not listening when the first Initial packet went out
# is only reached by aioquic's retransmissions, 0.2 s apart and doubling (1.6 s apart after
# three), so a fresh attempt finds a server that has just started sooner. Doubling up to a
# limit, so that a slow but present server still completes one.
FIRST_HANDSHAKE = 1.0
MAX_HANDSHAKE = 4.0


def parse_address(address: str) -> tuple[str, int]:
    """ "host:port" or "[v6]:port"."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"QUIC address must be HOST:PORT, not {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class _Stream:
    __slots__ = ("fut", "frames", "req_id")

    def __init__(self, fut: asyncio.Future[pb.Response], req_id: int) -> None:
        self.fut = fut
        self.frames = FrameBuffer()
        self.req_id = req_id


class _QuicProtocol(QuicConnectionProtocol):
    def __init__(self, quic: QuicConnection) -> None:
        super().__init__(quic)
        self.streams: dict[int, _Stream] = {}
        self.lost: Optional[BaseException] = None

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            st = self.streams.get(event.stream_id)
            if st is None or st.fut.done():
                return
            st.frames.feed(event.data)
            try:
                msg = st.frames.next()
            except _errors.ProtocolError as e:
                st.fut.set_exception(e)
                return
            if msg is not None:
                try:
                    st.fut.set_result(decode(msg))
                except _errors.ProtocolError as e:
                    st.fut.set_exception(e)
            elif event.end_stream:
                st.fut.set_exception(_errors.ProtocolError("the answer's stream ended in the middle of a frame"))
        elif isinstance(event, events.StreamReset):
            st = self.streams.get(event.stream_id)
            if st is not None and not st.fut.done():
                cls, what = _STREAM_CODES.get(
                    event.error_code, (_errors.ProtocolError, f"stream reset with code {event.error_code}")
                )
                st.fut.set_exception(cls(what, request_id=st.req_id))
        elif isinstance(event, events.ConnectionTerminated):
            why = _CLOSE_CODES.get(event.error_code) if event.frame_type is None else None
            if why is None:
                why = f"QUIC error 0x{event.error_code:x}"
            if event.reason_phrase:
                why += f" ({event.reason_phrase})"
            self.lost = Lost(why)
            streams, self.streams = self.streams, {}
            for st in streams.values():
                if not st.fut.done():
                    st.fut.set_exception(Lost(why))

    async def call(self, req_id: int, data: bytes, deadline: Optional[float]) -> pb.Response:
        if self.lost is not None:
            raise self.lost
        sid = self._quic.get_next_available_stream_id()
        fut: asyncio.Future[pb.Response] = self._loop.create_future()
        self.streams[sid] = _Stream(fut, req_id)
        self._quic.send_stream_data(sid, data, end_stream=True)
        self.transmit()
        try:
            resp = await wait(fut, req_id, deadline)
        except _errors.Timeout:
            if self.lost is None:
                self._quic.reset_stream(sid, 0)
                self.transmit()
            raise
        finally:
            self.streams.pop(sid, None)
        if resp.id not in (req_id, 0):
            raise _errors.ProtocolError(f"answer for request {resp.id} on the stream of request {req_id}")
        return resp


class AsyncQuicTransport:
    """One QUIC connection, made on first use and again after the server closes it."""

    def __init__(
        self,
        address: str,
        *,
        ca: str,
        cert: Optional[str] = None,
        key: Optional[str] = None,
        server_name: Optional[str] = None,
    ) -> None:
        if (cert is None) != (key is None):
            raise ValueError("give both cert and key (the client certificate and its key), or neither")
        self.address = address
        self.host, self.port = parse_address(address)
        self.ca, self.cert, self.key = ca, cert, key
        self.server_name = server_name or self.host
        self._proto: Optional[_QuicProtocol] = None
        self._transport: Optional[asyncio.DatagramTransport] = None
        self._connecting: Optional[asyncio.Lock] = None

    def _configuration(self) -> QuicConfiguration:
        cfg = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], server_name=self.server_name)
        cfg.load_verify_locations(cafile=self.ca)
        if self.cert is not None:
            cfg.load_cert_chain(self.cert, self.key)
        return cfg

    async def _get(self, deadline: Optional[float], req_id: int) -> tuple[_QuicProtocol, bool]:
        p = self._proto
        if p is not None and p.lost is None:
            return p, False
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            p = self._proto
            if p is not None and p.lost is None:
                return p, False
            self._drop()
            p = await self._connect(deadline, req_id)
            return p, True

    async def _resolve(self) -> tuple[int, Any]:
        infos = await asyncio.get_running_loop().getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
        family, _, _, _, addr = infos[0]
        return family, addr

    async def _handshake(
        self, family: int, addr: Any, cfg: QuicConfiguration, timeout: Optional[float]
    ) -> _QuicProtocol:
        """One connection: asyncio.TimeoutError if the handshake does not complete within
        `timeout`, Lost (saying why) if it fails; either way nothing is left open."""
        conn = QuicConnection(configuration=cfg)
        transport, proto = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _QuicProtocol(conn),
            local_addr=("::" if family == socket.AF_INET6 else "0.0.0.0", 0),
            family=family,
        )
        self._transport, self._proto = transport, proto
        try:
            proto.connect(addr)
            await asyncio.wait_for(proto.wait_connected(), timeout)
        except asyncio.TimeoutError:
            self._drop()
            raise
        except ConnectionError:
            why = proto.lost or "handshake failed"
            self._drop()
            raise Lost(str(why)) from None
        return proto

    async def _connect(self, deadline: Optional[float], req_id: int) -> _QuicProtocol:
        what = f"cannot connect to {self.address} over QUIC"
        try:
            family, addr = await self._resolve()
            cfg = self._configuration()
        except OSError as e:
            raise unavailable(what, e, req_id) from None
        try:
            return await self._handshake(family, addr, cfg, remaining(deadline, req_id))
        except asyncio.TimeoutError:
            raise _errors.Timeout(f"QUIC handshake with {self.address} timed out", request_id=req_id) from None
        except Lost as e:
            raise _errors.Unavailable(f"{what}: {e}", request_id=req_id) from None

    async def wait_connected(self, wait: float) -> None:
        """Connects, beginning the handshake again while it gets no answer (nothing listens
        yet: UDP does not refuse) for up to `wait` seconds; then Unavailable. A server that
        answers and refuses (TLS, or closing) raises at once: another try would not mend it."""
        deadline = time.monotonic() + wait
        what = f"cannot connect to {self.address} over QUIC"
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            p = self._proto
            if p is not None and p.lost is None:
                return
            try:
                family, addr = await self._resolve()
                cfg = self._configuration()
            except OSError as e:
                raise unavailable(what, e, None) from None
            limit = FIRST_HANDSHAKE
            for pause in pauses(deadline):
                await asyncio.sleep(pause)
                self._drop()
                try:
                    await self._handshake(family, addr, cfg, min(attempt_limit(deadline), limit))
                    return
                except asyncio.TimeoutError:
                    pass
                except Lost as e:
                    raise _errors.Unavailable(f"{what}: {e}") from None
                limit = min(2 * limit, MAX_HANDSHAKE)
        raise waited(what, wait, "no answer to the handshake")

    def _drop(self) -> None:
        p, t = self._proto, self._transport
        self._proto = self._transport = None
        if p is not None and p.lost is None:
            p.close(error_code=0, reason_phrase="client done")
        if t is not None:
            t.close()

    async def request(self, req_id: int, data: bytes, deadline: Optional[float]) -> pb.Response:
        for attempt in (0, 1):
            p, fresh = await self._get(deadline, req_id)
            try:
                return await p.call(req_id, data, deadline)
            except Lost as e:
                # The server answers every request it accepts; one that lost its connection
                # before an answer was not computed: sent once more on a new connection.
                if fresh or attempt == 1:
                    raise unavailable(f"QUIC connection to {self.address} lost", e, req_id) from None
        raise AssertionError("unreachable")

    async def close(self) -> None:
        p = self._proto
        if p is not None and p.lost is None:
            p.close(error_code=0, reason_phrase="client done")
            try:
                await asyncio.wait_for(p.wait_closed(), 1.0)
            except asyncio.TimeoutError:
                pass
        self._drop()


class SyncQuicTransport:
    """AsyncQuicTransport on an event loop of its own, in a daemon thread."""

    def __init__(self, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="classifyd-quic", daemon=True)
        self._thread.start()
        self._closed = False

        async def make() -> AsyncQuicTransport:
            return AsyncQuicTransport(**kwargs)

        try:
            self._async = self._run(make())
        except BaseException:
            self.close()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def request(self, req_id: int, data: bytes, deadline: Optional[float]) -> pb.Response:
        if self._closed:
            raise _errors.Unavailable("the client was closed", request_id=req_id)
        return self._run(self._async.request(req_id, data, deadline))

    def wait_connected(self, wait: float) -> None:
        if self._closed:
            raise _errors.Unavailable("the client was closed")
        self._run(self._async.wait_connected(wait))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if hasattr(self, "_async"):
            try:
                self._run(self._async.close())
            except Exception:
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()
