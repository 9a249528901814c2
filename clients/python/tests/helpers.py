from __future__ import annotations

import math
from typing import Any


def softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    s = sum(e)
    return [v / s for v in e]


def close(a: list[float], b: list[float], tol: float = 1e-4) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


def texts(golden: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in golden["cases"] if c["text_pair"] is None]


def pairs(golden: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in golden["cases"] if c["text_pair"] is not None]
