"""Starting a real `classifyd serve` for the tests (the idea of tests/daemon/harness.rs)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional, Union

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "tests" / "fixtures"
DEFAULT_MODEL = REPO / "models" / "sentiment-minilm"


def binary() -> Path:
    """$CLASSIFYD_BIN, else target/debug/classifyd (what `cargo test` builds in CI)."""
    b = Path(os.environ.get("CLASSIFYD_BIN") or REPO / "target" / "debug" / "classifyd")
    if not os.access(b, os.X_OK):
        raise RuntimeError(
            f"no classifyd binary at {b}: run `cargo build` (or `cargo test`) in {REPO}, "
            "or point CLASSIFYD_BIN at one"
        )
    return b


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, cond: Callable[[], bool], limit: float = 60.0, log: Callable[[], str] = lambda: "") -> None:
    """Polls `cond` every 20 ms; fails after `limit` seconds (a hang guard, not a speed test)."""
    end = time.monotonic() + limit
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"{what} not within {limit} s\n{log()}")
        time.sleep(0.02)


def http_get(addr: str, path: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Daemon:
    """A `classifyd serve` child on a fresh socket in a temp dir (or on `uds`); `with` stops it.

    `model` is what `--model` takes: a directory, or `NAME=DIR`; more models go in `args`
    (`"--model", "tok=DIR"`)."""

    def __init__(
        self,
        model: Union[Path, str] = DEFAULT_MODEL,
        *args: str,
        metrics: bool = False,
        quic_pki: Optional[Path] = None,
        uds: Optional[str] = None,
        quic_addr: Optional[str] = None,
    ) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="classifyd-py-")
        d = Path(self.dir.name)
        self.socket = uds or str(d / "classifyd.sock")
        self.stderr_path = d / "stderr.log"
        cmd = [str(binary()), "serve", "--model", str(model), "--uds", self.socket]
        self.metrics_addr: Optional[str] = None
        if metrics:
            self.metrics_addr = f"127.0.0.1:{free_port()}"
            cmd += ["--metrics-addr", self.metrics_addr]
        self.quic_addr: Optional[str] = None
        if quic_pki is not None:
            self.quic_addr = quic_addr or f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
            cmd += [
                "--quic", self.quic_addr,
                "--tls-cert", str(quic_pki / "server.pem"),
                "--tls-key", str(quic_pki / "server-key.pem"),
                "--client-ca", str(quic_pki / "ca.pem"),
            ]  # fmt: skip
        cmd += list(args)
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "WATCHDOG_USEC")}
        env["CLASSIFYD_LOG"] = "info"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            self.wait_ready()
        except BaseException:
            self.kill()
            raise

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, limit: float = 180.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited early with {self.proc.returncode}:\n{self.stderr()}")
            if "ready" not in self.stderr() or not os.path.exists(self.socket):
                return False
            return self.metrics_addr is None or http_get(self.metrics_addr, "/readyz")[0] == 200

        wait_until("daemon ready", ready, limit, self.stderr)

    def metrics(self) -> str:
        assert self.metrics_addr is not None, "started without metrics=True"
        code, body = http_get(self.metrics_addr, "/metrics")
        assert code == 200, body
        return body

    def metric(self, series: str) -> float:
        """The value of `series`: a name and some of its labels, as a query selects them (e.g.
        `classifyd_queue_depth` or `classifyd_connections{transport="unix"}`); the sum of the
        samples it selects, as `sum()` gives it (a per-model series carries `model` too)."""
        name, _, want = series.partition("{")
        wanted = [w for w in want.rstrip("}").split(",") if w]
        total = None
        for line in self.metrics().splitlines():
            if line.startswith("#") or " " not in line:
                continue
            head, value = line.rsplit(" ", 1)
            n, _, labels = head.partition("{")
            have = labels.rstrip("}").split(",")
            if n == name and all(w in have for w in wanted):
                total = (total or 0.0) + float(value)
        if total is None:
            raise AssertionError(f"no {series} in the scrape")
        return total

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, limit: float = 60.0) -> int:
        return self.proc.wait(limit)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> int:
        """SIGTERM and the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                return self.wait()
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"daemon did not exit on SIGTERM:\n{self.stderr()}")
        return self.proc.returncode

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self.kill()
            self.dir.cleanup()


def dev_pki(out: Path) -> Path:
    """`classifyd cert --out DIR`: ca.pem, server.pem, server-key.pem, client.pem, client-key.pem."""
    subprocess.run([str(binary()), "cert", "--out", str(out)], check=True, capture_output=True)
    return out
