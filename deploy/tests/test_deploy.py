"""The deploy kit against its tools and a real daemon.

- promtool: the rules parse (`check rules`), their unit tests pass (`test rules`), the example
  Prometheus config parses (`check config`).
- Every classifyd_* metric and label value that the rules and the Grafana dashboard name is in
  a real /metrics scrape of `classifyd serve` (serving two models), every per-model series with
  its `model` label; the dashboard filters and the rules aggregate by model.
- kubernetes-validate --strict accepts every manifest, the manifests agree with each other and
  the ConfigMap's classifyd.toml serves, with the probes the DaemonSet declares.
- A real Prometheus (Debian's package) on loopback scrapes a real daemon with the rules loaded:
  every series, recording rule and dashboard query returns data, and the not-ready and error
  alerts go pending when they should.

promtool and prometheus come from Debian's `prometheus` package. Without it the tests that need
them are skipped with a message, unless CLASSIFYD_REQUIRE_PROMETHEUS=1 (which .ci/run sets once
the package is installed): then they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon import DEFAULT_MODEL, FIXTURES, REPO, Daemon, binary, free_port, http_get, wait_until

from classifyd import Client, ClassifydError, InvalidArgument

DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus" / "classifyd-rules.yml"
RULE_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))
DASHBOARD = DEPLOY / "grafana" / "classifyd.json"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
# What Prometheus adds to every target, not the daemon.
SYNTHETIC = {"up"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        msg = f"{name} not found: Debian's prometheus package is not installed (apt-get install prometheus)"
        if os.environ.get("CLASSIFYD_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(msg + ", and CLASSIFYD_REQUIRE_PROMETHEUS=1")
        pytest.skip(msg)
    return path


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


# ---- what the rules and the dashboard name ----------------------------------------------------


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expression) of every query in the dashboard."""
    out = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            for t in p.get("targets", []):
                out.append((p["title"], t["expr"]))
            walk(p.get("panels", []))

    walk(json.loads(DASHBOARD.read_text())["panels"])
    return out


def grafana_to_promql(expr: str) -> str:
    """A dashboard query as Prometheus runs it with every instance and model of job classifyd
    selected."""
    return (
        expr.replace("$__rate_interval", "30s")
        .replace('"$job"', '"classifyd"')
        .replace('"$instance"', '".*"')
        .replace('"$model"', '".*"')
    )


# The series that carry a `model` label (one per model the daemon serves), and those of the
# process, which do not (docs/OPERATIONS.md, "Several models in one daemon").
PER_MODEL = {
    "classifyd_requests_total",
    "classifyd_queue_seconds",
    "classifyd_tokenize_seconds",
    "classifyd_inference_seconds",
    "classifyd_request_seconds",
    "classifyd_batch_rows",
    "classifyd_batch_padded_tokens",
    "classifyd_batches_total",
    "classifyd_computed_total",
    "classifyd_queue_depth",
    "classifyd_reloads_total",
    "classifyd_model_info",
    "classifyd_model_ready",
}
PER_PROCESS = {
    "classifyd_connections",
    "classifyd_requests_in_flight",
    "classifyd_process_resident_memory_bytes",
}
# Alerts on the daemon as a whole (its models share the process and the engine); every other
# alert is per model and names it.
PER_DAEMON_ALERTS = {
    "ClassifydNotReady",
    "ClassifydTargetMissing",
    "ClassifydConnectionsNearLimit",
    "ClassifydEngineStalled",
    "ClassifydRestarting",
    "ClassifydMemoryGrowth",
}


def family(name: str) -> str:
    """A sample name's metric: classifyd_request_seconds_bucket -> classifyd_request_seconds."""
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in PER_MODEL:
            return name[: -len(suffix)]
    return name


SELECTOR = re.compile(r"\b(classifyd_[a-z0-9_]+)\{([^}]*)\}")


METRIC = re.compile(r"\b(classifyd_[a-z0-9_]+)\b")
RECORDED = re.compile(r"\b((?:job:)?classifyd:[a-z0-9_:]+)\b")
LABEL_VALUE = re.compile(r'\b(status|transport)\s*(=|!=|=~|!~)\s*"([^"]*)"')


def names_in(exprs: list[str]) -> set[str]:
    return {m for e in exprs for m in METRIC.findall(e)}


def label_values_in(exprs: list[str]) -> set[tuple[str, str]]:
    out = set()
    for e in exprs:
        for label, _, value in LABEL_VALUE.findall(e):
            out |= {(label, v) for v in value.split("|")}
    return out


def rule_exprs() -> list[str]:
    return [r["expr"] for r in rules()]


def recorded() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def scrape_names(text: str) -> tuple[set[str], set[tuple[str, str]]]:
    """Sample names and (label, value) pairs of status/transport in a /metrics exposition."""
    names, labels = set(), set()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s", line)
        assert m, line
        names.add(m.group(1))
        for k, v in re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""):
            if k in ("status", "transport"):
                labels.add((k, v))
    return names, labels


MODELS = ("bert", "tok")


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """Two models, each asked a few requests and one refused."""
    with Daemon(f"bert={FIXTURES / 'bert'}", "--model", f"tok={FIXTURES / 'tok-bert'}", metrics=True) as d:
        with Client(d.socket) as c:
            for model in MODELS:
                for t in ("great movie", "a", "the end"):
                    c.classify([t], model=model)
                with pytest.raises(InvalidArgument):
                    c.classify([], model=model)
        yield d


def test_every_metric_the_rules_and_dashboard_name_is_exposed(daemon: Daemon) -> None:
    names, labels = scrape_names(daemon.metrics())
    exprs = rule_exprs() + [e for _, e in dashboard_exprs()]
    used = names_in(exprs)
    assert used, "no classifyd_* metric found in the rules and the dashboard"
    missing = sorted(used - names)
    assert not missing, f"named in the rules or the dashboard but not exposed: {missing}"
    bad = sorted(label_values_in(exprs) - labels)
    assert not bad, f"label values the daemon never exposes: {bad}"


def test_per_model_series_carry_the_model_label(daemon: Daemon) -> None:
    """Every per-model metric has a series for each model, labelled with its name; the
    process's metrics have no model label."""
    seen: dict[str, set[str]] = {}
    for line in daemon.metrics().splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s", line)
        assert m, line
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        name = family(m.group(1))
        if name in PER_PROCESS:
            assert "model" not in labels, line
        elif name in PER_MODEL:
            assert "model" in labels, line
            seen.setdefault(name, set()).add(labels["model"])
    for name in sorted(PER_MODEL):
        assert seen.get(name) == set(MODELS), (name, seen.get(name))
    assert daemon.metric('classifyd_model_ready{model="tok"}') == 1
    assert daemon.metric('classifyd_requests_total{model="bert",status="ok"}') == 3


def test_readyz_per_model(daemon: Daemon) -> None:
    assert daemon.metrics_addr is not None
    assert http_get(daemon.metrics_addr, "/readyz")[0] == 200
    for model in MODELS:
        assert http_get(daemon.metrics_addr, f"/readyz?model={model}")[0] == 200, model
    assert http_get(daemon.metrics_addr, "/readyz?model=nosuch")[0] == 404


def test_the_dashboard_shows_what_operators_need() -> None:
    exprs = [e for _, e in dashboard_exprs()]
    used = names_in(exprs)
    for m in [
        "classifyd_requests_total",  # request rate by status
        "classifyd_queue_seconds_bucket",  # latency percentiles by stage
        "classifyd_tokenize_seconds_bucket",
        "classifyd_inference_seconds_bucket",
        "classifyd_request_seconds_bucket",
        "classifyd_batch_rows_bucket",  # batch sizes
        "classifyd_queue_depth",
        "classifyd_requests_in_flight",
        "classifyd_process_resident_memory_bytes",
        "classifyd_model_info",  # the models and revisions in use
        "classifyd_model_ready",  # which models serve
        "classifyd_reloads_total",  # reloads by model and result
    ]:
        assert m in used, f"the dashboard does not show {m}"
    assert any("by (model, status)" in e and "classifyd_requests_total" in e for e in exprs)
    for q in ("0.5", "0.99"):
        assert any(f"histogram_quantile({q}," in e for e in exprs)


def test_the_dashboard_is_well_formed() -> None:
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 36
    ids = []
    variables = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "job", "instance", "model"} <= variables
    for p in d["panels"]:
        ids.append(p["id"])
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p["targets"], p["title"]
        for t in p.get("targets", []):
            for var in re.findall(r"\$(\w+)", t["expr"]):
                assert var in variables or var == "__rate_interval", (p["title"], var)
    assert len(ids) == len(set(ids)), "panel ids are unique"


def test_the_dashboard_filters_and_splits_by_model() -> None:
    d = json.loads(DASHBOARD.read_text())
    (model,) = [v for v in d["templating"]["list"] if v["name"] == "model"]
    assert model["multi"] and model["includeAll"] and model["allValue"] == ".*"
    assert re.fullmatch(r"label_values\(classifyd_model_info(\{.*\})?, model\)", model["definition"]), model
    for title, expr in dashboard_exprs():
        for metric, selector in SELECTOR.findall(expr):
            if family(metric) in PER_MODEL:
                assert 'model=~"$model"' in selector, (title, expr)
            else:
                assert "model" not in selector, (title, expr)
        # A split keeps the models apart (a total, `sum(...)`, has no `by`).
        for by in re.findall(r"\bby \(([^)]*)\)", expr):
            assert "model" in by, (title, expr)


def test_the_rules_keep_the_model_apart() -> None:
    """Aggregations drop only what they sum over (`without`), and keep `model` unless the
    alert is on the daemon as a whole; every per-model alert names the model."""
    for r in rules():
        expr = r["expr"]
        for by in re.findall(r"\bby \(([^)]*)\)", expr):
            assert "model" in by, (r.get("record") or r.get("alert"), expr)
        drops_model = bool(re.search(r"without \([^)]*\bmodel\b", expr))
        if "alert" not in r:
            assert not drops_model, r["record"]
            continue
        per_model = any(family(m) in PER_MODEL for m in METRIC.findall(expr)) or "classifyd:" in expr
        if r["alert"] in PER_DAEMON_ALERTS:
            assert "$labels.model" not in r["annotations"]["summary"], r["alert"]
            assert not per_model or drops_model or r["alert"] == "ClassifydNotReady", r["alert"]
        else:
            assert per_model and not drops_model, r["alert"]
            assert "{{ $labels.model }}" in r["annotations"]["summary"], r["alert"]


def test_the_dashboard_uses_only_recording_rules_that_exist() -> None:
    used = {r for _, e in dashboard_exprs() for r in RECORDED.findall(e)}
    assert used <= recorded(), used - recorded()


# ---- promtool ----------------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    r = run(tool("promtool"), "check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules())} rules found" in r.stdout, r.stdout


def test_promtool_test_rules() -> None:
    assert RULE_TESTS
    tested = set()
    for f in RULE_TESTS:
        tested |= set(re.findall(r"alertname: (\w+)", f.read_text()))
    # The issue asks for at least these two.
    assert {"ClassifydNotReady", "ClassifydModelNotReady", "ClassifydHighErrorRatio"} <= tested, tested
    r = run(tool("promtool"), "test", "rules", *map(str, RULE_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_has_a_unit_test() -> None:
    tested = set()
    for f in RULE_TESTS:
        tested |= set(re.findall(r"alertname: (\w+)", f.read_text()))
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert alerts <= tested, f"alerts without a promtool test: {sorted(alerts - tested)}"


def test_promtool_check_example_config() -> None:
    r = run(tool("promtool"), "check", "config", str(DEPLOY / "prometheus" / "prometheus.example.yml"))
    assert r.returncode == 0, r.stdout + r.stderr


# ---- Kubernetes --------------------------------------------------------------------------------


def docs() -> dict[str, dict[str, Any]]:
    out = {}
    for f in MANIFESTS:
        for doc in yaml.safe_load_all(f.read_text()):
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def test_kubernetes_validate_strict() -> None:
    exe = Path(sys.executable).with_name("kubernetes-validate")
    assert exe.exists(), f"kubernetes-validate is not installed beside {sys.executable} (deploy/requirements-ci.txt)"
    r = run(str(exe), "--strict", *map(str, MANIFESTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("passed") == len(docs()), r.stdout


def daemonsets() -> list[dict[str, Any]]:
    ds = [d for d in docs().values() if d["kind"] == "DaemonSet"]
    assert len(ds) == 2
    return ds


def main_container(ds: dict[str, Any]) -> dict[str, Any]:
    (c,) = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "classifyd"]
    return c


def config() -> dict[str, Any]:
    return tomllib.loads(docs()["ConfigMap/classifyd-config"]["data"]["classifyd.toml"])


def test_daemonsets_follow_the_fleet_pattern() -> None:
    cfg = config()
    metrics_host, metrics_port = cfg["metrics_addr"].rsplit(":", 1)
    assert metrics_host == "127.0.0.1"
    gpu = 0
    for ds in daemonsets():
        spec = ds["spec"]["template"]["spec"]
        c = main_container(ds)
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        # The socket on a hostPath directory, where the config puts it.
        sock_dir = mounts["socket-dir"]["mountPath"]
        assert os.path.dirname(cfg["uds"]) == sock_dir
        assert volumes["socket-dir"]["hostPath"]["path"] == sock_dir
        # The model from a volume, read-only, where the config looks for it.
        assert mounts["model"]["mountPath"] == cfg["model"] and mounts["model"]["readOnly"]
        # The config file the args name is the ConfigMap's key.
        conf_path = c["args"][c["args"].index("--config") + 1]
        assert os.path.dirname(conf_path) == mounts["config"]["mountPath"]
        assert volumes["config"]["configMap"]["name"] == "classifyd-config"
        assert os.path.basename(conf_path) in docs()["ConfigMap/classifyd-config"]["data"]
        # Probes on loopback, the port the config serves metrics on.
        assert spec["hostNetwork"] is True
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")):
            g = c[probe]["httpGet"]
            assert (g["host"], g["path"], str(g["port"])) == ("127.0.0.1", path, metrics_port), (ds["metadata"]["name"], probe)
        # Security context: non-root, read-only root, no escalation, no capabilities.
        sc = c["securityContext"]
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
        assert spec["automountServiceAccountToken"] is False
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
        # SIGTERM drains within drain_timeout_secs; the kubelet must wait longer.
        assert spec["terminationGracePeriodSeconds"] > cfg["drain_timeout_secs"]
        # Two daemons cannot share a node's socket: replace, do not surge.
        ru = ds["spec"]["updateStrategy"]["rollingUpdate"]
        assert ru["maxSurge"] == 0 and ru["maxUnavailable"] >= 1
        if "nvidia.com/gpu" in c["resources"]["limits"]:
            gpu += 1
            assert c["args"][-2:] == ["--device", "cuda"]
    assert gpu == 1, "one GPU variant"


def test_clients_reach_the_socket() -> None:
    cfg = config()
    (client,) = [d for d in docs().values() if d["kind"] == "Deployment"]
    spec = client["spec"]["template"]["spec"]
    daemon_gid = docs()["DaemonSet/classifyd"]["spec"]["template"]["spec"]["securityContext"]["runAsGroup"]
    assert daemon_gid in spec["securityContext"]["supplementalGroups"]
    assert cfg["uds_mode"] == "660"
    (vol,) = spec["volumes"]
    assert vol["hostPath"]["path"] == os.path.dirname(cfg["uds"])
    env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
    assert env["CLASSIFYD_SOCKET"] == cfg["uds"]


def test_the_configmap_config_serves_with_the_probes_of_the_daemonset(tmp_path: Path) -> None:
    """classifyd.toml from the ConfigMap, with its paths moved into a temp dir, passes
    check-config and serves; the DaemonSet's probe paths answer 200 on its metrics address."""
    text = docs()["ConfigMap/classifyd-config"]["data"]["classifyd.toml"]
    cfg = config()
    port = free_port()
    sock = tmp_path / "classifyd.sock"
    text = (
        text.replace(f'"{cfg["model"]}"', json.dumps(str(DEFAULT_MODEL)))
        .replace(f'"{cfg["uds"]}"', json.dumps(str(sock)))
        .replace(f'"{cfg["metrics_addr"]}"', f'"127.0.0.1:{port}"')
    )
    conf = tmp_path / "classifyd.toml"
    conf.write_text(text)
    r = run(str(binary()), "check-config", "--config", str(conf))
    assert r.returncode == 0, r.stdout + r.stderr
    c = main_container(docs()["DaemonSet/classifyd"])
    args = [a if a != c["args"][c["args"].index("--config") + 1] else str(conf) for a in c["args"]]
    with open(tmp_path / "stderr", "wb") as err:
        p = subprocess.Popen([str(binary()), *args], stderr=err, stdout=subprocess.DEVNULL)
    try:
        def ready() -> bool:
            assert p.poll() is None, (tmp_path / "stderr").read_text()
            return sock.exists() and http_get(f"127.0.0.1:{port}", "/readyz")[0] == 200

        wait_until("the daemon ready", ready, 120, (tmp_path / "stderr").read_text)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            g = c[probe]["httpGet"]
            assert http_get(f"{g['host']}:{port}", g["path"])[0] == 200, probe
        assert Client(str(sock)).classify(["what a wonderful film"])[0].label == "POSITIVE"
        oct_mode = oct(sock.stat().st_mode & 0o777)
        assert oct_mode == "0o660", oct_mode
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0


# ---- a real Prometheus -------------------------------------------------------------------------


class Prometheus:
    def __init__(self, targets: list[str], tmp: Path) -> None:
        self.addr = f"127.0.0.1:{free_port()}"
        conf = tmp / "prometheus.yml"
        conf.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "classifyd", "static_configs": [{"targets": targets}]}],
        }))  # fmt: skip
        self.log = tmp / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [tool("prometheus"), f"--config.file={conf}", f"--storage.tsdb.path={tmp / 'data'}",
                 f"--web.listen-address={self.addr}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        wait_until("prometheus ready", lambda: self._ready(), 60, self.log.read_text)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log.read_text()}")
        try:
            return http_get(self.addr, "/-/ready", timeout=1)[0] == 200
        except OSError:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        code, body = http_get(self.addr, "/api/v1/query?query=" + urllib.parse.quote(promql))
        assert code == 200, (promql, body)
        data = json.loads(body)
        assert data["status"] == "success", (promql, data)
        return list(data["data"]["result"])

    def wait_for(self, promql: str, what: str, limit: float = 60) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []

        def ok() -> bool:
            nonlocal got
            got = self.query(promql)
            return bool(got)

        wait_until(f"{what} ({promql})", ok, limit, self.log.read_text)
        return got

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def test_real_prometheus_scrapes_a_real_daemon() -> None:
    tool("prometheus")
    tmp = Path(tempfile.mkdtemp(prefix="classifyd-prom-"))
    try:
        # Three forward passes fail (INTERNAL), then the daemon serves normally.
        with Daemon(FIXTURES / "bert", "--test-fail-batches", "3", metrics=True) as d:
            assert d.metrics_addr is not None
            prom = Prometheus([d.metrics_addr], tmp)
            try:
                # Scraped once before any request, so that the failures below are an increase.
                prom.wait_for('up{job="classifyd"} == 1', "the daemon scraped")
                with Client(d.socket) as c:
                    for _ in range(3):
                        with pytest.raises(ClassifydError):
                            c.classify(["fails"])
                    for i in range(30):
                        c.classify([f"request {i}", "and another input"])
                    with pytest.raises(InvalidArgument):
                        c.classify([])
                    # Every series the rules and the dashboard use, as Prometheus stored it.
                    for name in sorted(names_in(rule_exprs() + [e for _, e in dashboard_exprs()])):
                        prom.wait_for(f'{name}{{job="classifyd"}}', f"series {name}")
                    # Rates need two scrapes with traffic between them.
                    c.classify(["one more"])
                    prom.wait_for('rate(classifyd_requests_total{status="ok"}[30s]) > 0', "a request rate")
                    # Every recording rule evaluates to data.
                    for rec in sorted(recorded()):
                        prom.wait_for(rec, f"recording rule {rec}")
                    got = prom.query('classifyd:requests_by_status:ratio_rate5m{status="internal"}')
                    assert got and float(got[0]["value"][1]) > 0, got
                    # Every dashboard query returns data.
                    for title, expr in dashboard_exprs():
                        prom.wait_for(grafana_to_promql(expr), f"dashboard panel {title!r}")
                    # 3 INTERNAL answers in ~35: the internal-errors and error-ratio alerts are
                    # pending (their `for:` is minutes).
                    for alert in ("ClassifydInternalErrors", "ClassifydHighErrorRatio"):
                        prom.wait_for(f'ALERTS{{alertname="{alert}", alertstate="pending"}}', f"{alert} pending")
                    assert not prom.query('ALERTS{alertname="ClassifydNotReady"}')
                    assert not prom.query('ALERTS{alertname="ClassifydModelNotReady"}')
                # The daemon goes away: its scrape fails and ClassifydNotReady goes pending.
                d.stop()
                prom.wait_for('ALERTS{alertname="ClassifydNotReady", alertstate="pending", job="classifyd"}', "not-ready pending")
            finally:
                prom.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
