"""Python client for classifyd, the text- and token-classification daemon.

    from classifyd import Client
    c = Client("/run/classifyd/classifyd.sock")
    print(c.classify(["what a wonderful film"])[0].label)

Client is blocking, AsyncClient its asyncio twin; both speak the Unix socket, and QUIC with
``Client.quic(...)`` / ``AsyncClient.quic(...)`` and the ``[quic]`` extra. Every non-OK answer
raises a subclass of ClassifydError; the connection stays usable after one.
"""

from ._client import AsyncClient, Client
from ._errors import (
    ClassifydError,
    DeadlineExceeded,
    InternalError,
    InvalidArgument,
    Overloaded,
    ProtocolError,
    Timeout,
    Unavailable,
)
from ._types import Entity, Info, ModelInfo, Result, Results, Timings

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "ClassifydError",
    "Client",
    "DeadlineExceeded",
    "Entity",
    "Info",
    "InternalError",
    "InvalidArgument",
    "ModelInfo",
    "Overloaded",
    "ProtocolError",
    "Result",
    "Results",
    "Timeout",
    "Timings",
    "Unavailable",
    "__version__",
]
