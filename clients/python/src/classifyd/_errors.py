"""Exceptions: one per non-OK status of the protocol, all subclasses of ClassifydError."""

from __future__ import annotations


class ClassifydError(Exception):
    """Any error from the daemon or from reaching it.

    ``status`` is the protocol's status name (``"INVALID_ARGUMENT"``, ...) or, for errors
    that arise in the client, the status that describes them best. ``message`` is the
    server's reason when the server gave one. ``request_id`` is the id of the request, or 0
    when the server could not read the request at all.
    """

    status: str = "UNKNOWN"

    def __init__(self, message: str, *, request_id: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


class InvalidArgument(ClassifydError):
    """The request is malformed or names something the model cannot take: no inputs (an
    empty list), too many, a text over the server's byte limit, a frame over the size limit;
    or every input refused: one with no tokens (an empty list of ids, or a text that
    tokenizes to none), an over-long input with ``no_truncate``, an id outside the
    vocabulary; a ``model=`` the daemon does not serve (the message lists the served names).
    An empty text is not refused: it is classified. Do not retry; fix the request."""

    status = "INVALID_ARGUMENT"


class Overloaded(ClassifydError):
    """The server's queue is full (or, over QUIC, it is receiving its limit of request
    bytes). Retry after a back-off."""

    status = "OVERLOADED"


class DeadlineExceeded(ClassifydError):
    """The request's ``deadline_ms`` passed while it was queued; it was not computed."""

    status = "DEADLINE_EXCEEDED"


class Timeout(DeadlineExceeded, TimeoutError):
    """No answer within the call's ``timeout`` (client side). The connection stays usable: a
    late answer is recognised by its id and dropped."""

    def __init__(self, message: str, *, request_id: int | None = None) -> None:
        DeadlineExceeded.__init__(self, message, request_id=request_id)

    def __str__(self) -> str:
        return ClassifydError.__str__(self)


class Unavailable(ClassifydError):
    """The server is shutting down, or cannot be reached (no socket, connection refused or
    lost, TLS handshake refused), or the model asked for is unhealthy (its engine failed its
    health probe; ``info().models`` shows it not ready while the others serve). Retry later
    or elsewhere."""

    status = "UNAVAILABLE"


class InternalError(ClassifydError):
    """The forward pass failed on the server; the server goes on serving."""

    status = "INTERNAL"


class ProtocolError(ClassifydError):
    """The server's answer could not be understood (not a classifyd server, or a version this
    client does not speak). The connection is closed."""

    status = "PROTOCOL"


BY_STATUS: dict[int, type[ClassifydError]] = {
    1: InvalidArgument,
    2: Overloaded,
    3: DeadlineExceeded,
    4: Unavailable,
    5: InternalError,
}


def from_status(status: int, message: str, request_id: int) -> ClassifydError:
    cls = BY_STATUS.get(status)
    if cls is None:
        return ProtocolError(f"unknown status {status}: {message}", request_id=request_id)
    return cls(message or cls.status.lower().replace("_", " "), request_id=request_id)
