"""The Unix-socket transports, blocking and asyncio, and what every transport shares."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Optional, Protocol, Union

from . import _errors
from ._codec import FrameBuffer, decode
from ._pb import classifyd_pb2 as pb

DEFAULT_SOCKET = "/run/classifyd/classifyd.sock"

# Pauses between connection attempts while waiting for a daemon (wait=): short at first, so a
# daemon that comes up is found soon after, then no more often than a daemon that takes long to
# start (a large model, a GPU) needs.
FIRST_PAUSE = 0.05
MAX_PAUSE = 0.5
# An attempt made at (or past) the deadline still gets this long to connect, so that the last
# attempt is a real one.
LAST_ATTEMPT = 0.05

# What a Unix socket gives while its daemon is not serving yet: no file (not started, or the
# directory not made yet), a stale file (refused), or a file just bound and not yet given its
# mode and group (the daemon binds, then chmods and chowns).
NOT_YET = (FileNotFoundError, ConnectionRefusedError, PermissionError)


class Lost(Exception):
    """The connection ended before the request's answer arrived (internal)."""


class SyncTransport(Protocol):
    def request(self, req_id: int, data: bytes, deadline: Optional[float]) -> pb.Response: ...

    def wait_connected(self, wait: float) -> None: ...

    def close(self) -> None: ...


class AsyncTransport(Protocol):
    async def request(self, req_id: int, data: bytes, deadline: Optional[float]) -> pb.Response: ...

    async def wait_connected(self, wait: float) -> None: ...

    async def close(self) -> None: ...


def remaining(deadline: Optional[float], req_id: int) -> Optional[float]:
    """Seconds left until `deadline` (time.monotonic()); raises Timeout when none are."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise _errors.Timeout("no answer within the call's timeout", request_id=req_id)
    return left


def unavailable(what: str, e: BaseException, req_id: Optional[int]) -> _errors.Unavailable:
    reason = str(e) or type(e).__name__
    return _errors.Unavailable(f"{what}: {reason}", request_id=req_id)


def check_wait(wait: Optional[float]) -> Optional[float]:
    if wait is not None and not wait >= 0:
        raise ValueError(f"wait must be >= 0 seconds (or None not to wait), not {wait!r}")
    return wait


def pauses(deadline: float) -> Iterator[float]:
    """How long to sleep before each connection attempt: 0 before the first, then
    FIRST_PAUSE doubling to MAX_PAUSE, the last cut to end at `deadline`. Ends only once
    `deadline` (time.monotonic()) has passed, so a wait never gives up early."""
    yield 0.0
    pause = FIRST_PAUSE
    while (left := deadline - time.monotonic()) > 0:
        yield min(pause, left)
        pause = min(2 * pause, MAX_PAUSE)


def attempt_limit(deadline: float) -> float:
    return max(deadline - time.monotonic(), LAST_ATTEMPT)


def waited(what: str, wait: float, last: Union[BaseException, str]) -> _errors.Unavailable:
    """The Unavailable of a wait that ran out, with the last attempt's reason."""
    if isinstance(last, str):
        reason = last
    elif isinstance(last, (TimeoutError, asyncio.TimeoutError)):
        reason = str(last) or "no answer"
    else:
        reason = str(last) or type(last).__name__
    return _errors.Unavailable(f"{what} (waited {wait:g} s): {reason}")


class UnixTransport:
    """One blocking connection, made on first use and again after the server closes it.

    One request at a time (callers hold `lock`). Answers that belong to no request in flight
    (the late answer of a call that timed out) are dropped by id.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self._frames = FrameBuffer()
        # The socket is in blocking mode, its sends and receives limited by SO_SNDTIMEO and
        # SO_RCVTIMEO: two syscalls a round trip instead of Python's timeout mode's six (a
        # poll before each send and receive, and switching the mode per call). The limit
        # set now, in seconds; None: none; -1: not set on this connection yet.
        self._limit_s: Optional[float] = -1.0

    def _limit(self, sock: socket.socket, deadline: Optional[float], req_id: int) -> None:
        """Limits the next send or receive to what is left of the call's time; set again only
        when that differs from the limit in force by more than 1 % (at least 2 ms), so a
        call may end that much early or late."""
        left = remaining(deadline, req_id)
        cur = self._limit_s
        if left is None:
            if cur is None:
                return
            tv = struct.pack("ll", 0, 0)
        else:
            if cur is not None and cur >= 0 and abs(left - cur) <= max(0.002, 0.01 * left):
                return
            sec = int(left)
            usec = int((left - sec) * 1e6)
            # 0 would mean no limit at all.
            tv = struct.pack("ll", sec, max(usec, 1) if sec == 0 else usec)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        self._limit_s = left

    def _connect(self, deadline: Optional[float], req_id: int) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(remaining(deadline, req_id))
            s.connect(self.path)
            s.settimeout(None)
        except _errors.Timeout:
            s.close()
            raise
        except socket.timeout:
            s.close()
            raise _errors.Timeout(f"connecting to {self.path} timed out", request_id=req_id) from None
        except OSError as e:
            s.close()
            raise unavailable(f"cannot connect to {self.path}", e, req_id) from None
        return self._adopt(s)

    def _adopt(self, s: socket.socket) -> socket.socket:
        self._sock = s
        self._frames = FrameBuffer()
        self._limit_s = -1.0
        return s

    def wait_connected(self, wait: float) -> None:
        """Connects, trying again while the daemon is not serving yet (NOT_YET, or a connect
        that does not complete) for up to `wait` seconds; then Unavailable."""
        deadline = time.monotonic() + wait
        what = f"cannot connect to {self.path}"
        last: BaseException = TimeoutError()
        with self.lock:
            if self._sock is not None:
                return
            for pause in pauses(deadline):
                time.sleep(pause)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.settimeout(attempt_limit(deadline))
                    s.connect(self.path)
                    s.settimeout(None)
                except (socket.timeout, BlockingIOError, *NOT_YET) as e:
                    # BlockingIOError: the daemon is there but its listen backlog is full.
                    s.close()
                    last = e
                    continue
                except OSError as e:
                    # Not a daemon still starting (a path under a file, one too long for a
                    # socket): waiting would not help.
                    s.close()
                    raise unavailable(what, e, None) from None
                self._adopt(s)
                return
        raise waited(what, wait, last)

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def request(self, req_id: int, data: bytes, deadline: Optional[float]) -> pb.Response:
        with self.lock:
            for attempt in (0, 1):
                fresh = self._sock is None
                sock = self._sock or self._connect(deadline, req_id)
                try:
                    return self._roundtrip(sock, req_id, data, deadline)
                except Lost as e:
                    self._drop()
                    # A connection that had served before may have been closed for idleness
                    # just as this request went out; the server answers every request it
                    # reads, so this one was not read: send it once more on a new connection.
                    if fresh or attempt == 1:
                        raise unavailable(f"connection to {self.path} lost", e, req_id) from None
            raise AssertionError("unreachable")

    def _roundtrip(
        self, sock: socket.socket, req_id: int, data: bytes, deadline: Optional[float]
    ) -> pb.Response:
        self._limit(sock, deadline, req_id)
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise Lost(str(e)) from None
        except BaseException as e:
            # Part of the frame may have gone out: the stream cannot be resynchronised.
            self._drop()
            if isinstance(e, (BlockingIOError, socket.timeout)):
                raise _errors.Timeout("sending the request timed out", request_id=req_id) from None
            if isinstance(e, OSError):
                raise unavailable(f"sending to {self.path}", e, req_id) from None
            raise
        frames = self._frames
        while True:
            msg = frames.next()
            if msg is None:
                self._limit(sock, deadline, req_id)
                try:
                    chunk = sock.recv(65536)
                except (BlockingIOError, socket.timeout):
                    # SO_RCVTIMEO ran out (EAGAIN). A partial frame stays in the buffer.
                    raise _errors.Timeout("no answer within the call's timeout", request_id=req_id) from None
                except ConnectionResetError as e:
                    raise Lost(str(e)) from None
                if not chunk:
                    raise Lost("closed by the server")
                frames.feed(chunk)
                continue
            try:
                resp = decode(msg)
            except _errors.ProtocolError:
                self._drop()
                raise
            if resp.id == req_id:
                return resp
            if resp.id == 0:
                # The server could not read a frame and closes the connection after saying why.
                self._drop()
                return resp
            # The late answer of an earlier call that timed out.

    def close(self) -> None:
        with self.lock:
            self._drop()


class _UnixProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.frames = FrameBuffer()
        self.pending: dict[int, asyncio.Future[pb.Response]] = {}
        self.transport: Optional[asyncio.Transport] = None
        self.lost: Optional[BaseException] = None
        self._writable: Optional[asyncio.Future[None]] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.frames.feed(data)
        try:
            while (msg := self.frames.next()) is not None:
                resp = decode(msg)
                if resp.id == 0:
                    # A frame the server could not read: it says why and closes.
                    self._fail(_errors.from_status(resp.status, resp.message, 0))
                    if self.transport is not None:
                        self.transport.close()
                    return
                fut = self.pending.pop(resp.id, None)
                if fut is not None and not fut.done():
                    fut.set_result(resp)
        except _errors.ProtocolError as e:
            self._fail(e)
            if self.transport is not None:
                self.transport.abort()

    def _fail(self, exc: BaseException) -> None:
        if self.lost is None:
            self.lost = exc
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._fail(Lost(str(exc) if exc else "closed by the server"))
        self._wake()

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake()

    def _wake(self) -> None:
        w, self._writable = self._writable, None
        if w is not None and not w.done():
            w.set_result(None)

    async def writable(self) -> None:
        if self._writable is not None:
            await asyncio.shield(self._writable)


def _expire(fut: asyncio.Future[pb.Response], req_id: int) -> None:
    if not fut.done():
        fut.set_exception(_errors.Timeout("no answer within the call's timeout", request_id=req_id))


async def wait(fut: asyncio.Future[pb.Response], req_id: int, deadline: Optional[float]) -> pb.Response:
    """Awaits `fut`, failing it with Timeout at `deadline` (cheaper than asyncio.wait_for)."""
    left = remaining(deadline, req_id)
    if left is None:
        return await fut
    handle = asyncio.get_running_loop().call_later(left, _expire, fut, req_id)
    try:
        return await fut
    finally:
        handle.cancel()


class AsyncUnixTransport:
    """One asyncio connection with any number of requests in flight, matched by id."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._proto: Optional[_UnixProtocol] = None
        self._connecting: Optional[asyncio.Lock] = None

    async def _get(self, deadline: Optional[float], req_id: int) -> tuple[_UnixProtocol, bool]:
        p = self._proto
        if p is not None and p.lost is None:
            return p, False
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            p = self._proto
            if p is not None and p.lost is None:
                return p, False
            loop = asyncio.get_running_loop()
            try:
                _, new = await asyncio.wait_for(
                    loop.create_unix_connection(_UnixProtocol, self.path), remaining(deadline, req_id)
                )
            except asyncio.TimeoutError:
                raise _errors.Timeout(f"connecting to {self.path} timed out", request_id=req_id) from None
            except OSError as e:
                raise unavailable(f"cannot connect to {self.path}", e, req_id) from None
            self._proto = new
            return new, True

    async def wait_connected(self, wait: float) -> None:
        """As UnixTransport.wait_connected."""
        deadline = time.monotonic() + wait
        what = f"cannot connect to {self.path}"
        last: BaseException = TimeoutError()
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            p = self._proto
            if p is not None and p.lost is None:
                return
            loop = asyncio.get_running_loop()
            for pause in pauses(deadline):
                await asyncio.sleep(pause)
                try:
                    _, new = await asyncio.wait_for(
                        loop.create_unix_connection(_UnixProtocol, self.path), attempt_limit(deadline)
                    )
                except (asyncio.TimeoutError, *NOT_YET) as e:
                    last = e
                    continue
                except OSError as e:
                    raise unavailable(what, e, None) from None
                self._proto = new
                return
        raise waited(what, wait, last)

    async def request(self, req_id: int, data: bytes, deadline: Optional[float]) -> pb.Response:
        for attempt in (0, 1):
            p, fresh = await self._get(deadline, req_id)
            fut: asyncio.Future[pb.Response] = asyncio.get_running_loop().create_future()
            p.pending[req_id] = fut
            try:
                assert p.transport is not None
                p.transport.write(data)
                await p.writable()
                return await wait(fut, req_id, deadline)
            except Lost as e:
                # As in UnixTransport.request: unread, so sent once more on a new connection.
                if fresh or attempt == 1:
                    raise unavailable(f"connection to {self.path} lost", e, req_id) from None
            finally:
                p.pending.pop(req_id, None)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        p, self._proto = self._proto, None
        if p is not None and p.transport is not None:
            p.transport.close()
            p._fail(_errors.Unavailable("the client was closed"))
