from __future__ import annotations

import sys
from pathlib import Path

# The daemon harness of the Python client's tests: start a real `classifyd serve`.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python" / "tests"))
