//! `classifyd bench` against a real daemon: its JSON report, both loops, its failure modes.

use std::process::Command;

use serde_json::Value;

use crate::harness::*;

fn bench(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_classifyd"))
        .arg("bench")
        .args(args)
        .args(["--json", "--quiet"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let doc = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), doc, stderr)
}

fn check_run(run: &Value) {
    let ok = run["ok"].as_u64().unwrap();
    assert!(ok > 0, "{run}");
    assert_eq!(
        run["sent"].as_u64().unwrap(),
        ok,
        "every sent request answered OK: {run}"
    );
    assert!(run["errors"].as_object().unwrap().is_empty(), "{run}");
    let l = &run["latency_us"];
    let (p50, p99, max) = (
        l["p50"].as_u64().unwrap(),
        l["p99"].as_u64().unwrap(),
        l["max"].as_u64().unwrap(),
    );
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{l}");
    // The server's breakdown is carried back in every answer and averaged.
    let total = run["server_us"]["total"].as_f64().unwrap();
    let inference = run["server_us"]["inference"].as_f64().unwrap();
    assert!(inference > 0.0 && total >= inference, "{run}");
    // Server time is part of the end-to-end time the client saw.
    assert!(total <= l["mean"].as_f64().unwrap() + 1.0, "{run}");
    assert!(run["mean_batch_size"].as_f64().unwrap() >= 1.0);
}

#[test]
fn closed_loop_sweep_reports_every_level() {
    let d = Daemon::start(&fixture("bert"), &[]);
    let sock = d.socket.to_str().unwrap();
    let (code, doc, stderr) = bench(&[
        "--uds",
        sock,
        "--concurrency",
        "1,3",
        "--duration-secs",
        "1",
        "--warmup-secs",
        "0.2",
        "--inputs-per-request",
        "2",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let runs = doc["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for (run, c) in runs.iter().zip([1, 3]) {
        assert_eq!(run["mode"], "closed");
        assert_eq!(run["concurrency"], c);
        check_run(run);
    }
    assert!(doc["target"].as_str().unwrap().contains("uds"));
    assert_eq!(doc["inputs_per_request"], 2);
}

#[test]
fn open_loop_sends_on_schedule_whatever_the_answers_do() {
    let d = Daemon::start(&fixture("bert"), &[]);
    let dir = tempfile::tempdir().unwrap();
    let texts = dir.path().join("texts.txt");
    std::fs::write(&texts, "first text\n\nsecond, longer text here\n").unwrap();
    let (code, doc, stderr) = bench(&[
        "--uds",
        d.socket.to_str().unwrap(),
        "--rate",
        "100",
        "--arrival",
        "constant",
        "--duration-secs",
        "1",
        "--warmup-secs",
        "0.3",
        "--texts",
        texts.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let run = &doc["runs"][0];
    assert_eq!(run["mode"], "open");
    assert_eq!(run["offered_rps"], 100.0);
    // Constant arrivals at 100/s over a 1 s window: 100 sends, give or take the edges.
    let sent = run["sent"].as_u64().unwrap();
    assert!((99..=101).contains(&sent), "sent {sent}");
    check_run(run);
    assert_eq!(doc["texts"], 2);
}

#[test]
fn in_process_baseline_runs_the_same_texts() {
    let (code, doc, stderr) = bench(&[
        "--model",
        fixture("bert").to_str().unwrap(),
        "--duration-secs",
        "0.5",
        "--warmup-secs",
        "0.1",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let run = &doc["runs"][0];
    assert!(run["ok"].as_u64().unwrap() > 0);
    assert!(doc["target"].as_str().unwrap().starts_with("in-process"));
    // In process there is no server breakdown to report.
    assert!(run["server_us"]["total"].is_null());
}

#[test]
fn bad_targets_and_plans_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nobody.sock");
    let (code, _, stderr) = bench(&["--uds", missing.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("nobody.sock"), "{stderr}");
    let (code, _, stderr) = bench(&["--uds", missing.to_str().unwrap(), "--rate", "0"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--rate"), "{stderr}");
    let (code, _, stderr) = bench(&[
        "--model",
        fixture("bert").to_str().unwrap(),
        "--concurrency",
        "2",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--concurrency 1"), "{stderr}");
}
