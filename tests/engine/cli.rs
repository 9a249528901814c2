//! The `classifyd` binary on the committed default model.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::helpers::*;

fn classifyd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_classifyd"))
}

fn json_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8(stdout.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[test]
fn classify_arguments_prints_one_json_object_each() {
    let out = succeeded(
        classifyd()
            .args(["classify", "--model"])
            .arg(default_model())
            .args(["what a wonderful film", "--", "--not-a-flag", ""])
            .output()
            .unwrap(),
    );
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["label"], "POSITIVE");
    let p = lines[0]["scores"]["POSITIVE"].as_f64().unwrap();
    let n = lines[0]["scores"]["NEGATIVE"].as_f64().unwrap();
    assert!((p + n - 1.0).abs() < 1e-5 && (lines[0]["score"].as_f64().unwrap() - p).abs() < 1e-9);
    assert_eq!(lines[0]["logits"].as_array().unwrap().len(), 2);
    // [CLS] what a wonderful film [SEP]
    assert_eq!(lines[0]["tokens"], 6);
    // The empty string is a text like any other: [CLS] [SEP].
    assert_eq!(lines[2]["tokens"], 2);
}

#[test]
fn classify_reads_stdin_lines_and_pairs() {
    let run = |args: &[&str], input: &[u8]| {
        let mut child = classifyd()
            .args(["classify", "--model"])
            .arg(default_model())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(
        &["--batch-size", "2"],
        b"a delight from start to finish\nterrible\r\nfine\n",
    );
    assert!(out.status.success());
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["label"], "POSITIVE");
    assert_eq!(lines[1]["label"], "NEGATIVE");

    let out = run(&["--pair"], b"the plot\tis great\nno tab here\n\xff\xfe\n");
    assert_eq!(out.status.code(), Some(2));
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["tokens"], 7);
    assert!(lines[1]["error"]
        .as_str()
        .unwrap()
        .contains("line 2: expected two texts"));
    assert!(lines[2]["error"].as_str().unwrap().contains("not UTF-8"));

    let long = format!("{}\n", "so good ".repeat(400));
    let out = run(&["--no-truncate"], long.as_bytes());
    assert_eq!(out.status.code(), Some(2));
    assert!(json_lines(&out.stdout)[0]["error"]
        .as_str()
        .unwrap()
        .contains("at most 512"));
}

#[test]
fn inspect_describes_the_model() {
    let out = classifyd()
        .args(["inspect", "--json", "--model"])
        .arg(default_model())
        .output()
        .unwrap();
    assert!(out.status.success());
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["architecture"], "BertForSequenceClassification");
    assert_eq!(info["labels"], serde_json::json!(["NEGATIVE", "POSITIVE"]));
    assert_eq!(info["max_length"], 512);
    assert_eq!(info["weight_dtype"], "F16");
    let params = info["parameters"].as_u64().unwrap();
    assert!((22_000_000..23_000_000).contains(&params), "{params}");

    let out = classifyd()
        .args(["classify", "--device", "gpu", "--model"])
        .arg(default_model())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap rejects a bad flag value");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown device"));
}

/// `(tensors created, tensors made from host data)` by one pass, from `inspect --ops` in a
/// process of its own (the counters are process-wide, and this test binary runs tests in
/// parallel).
fn ops_per_forward(model: &std::path::Path, dtype: &str) -> (u64, u64) {
    let out = succeeded(
        classifyd()
            .args([
                "inspect", "--json", "--device", "cpu", "--ops", "16", "--dtype", dtype,
            ])
            .arg("--model")
            .arg(model)
            .env("CLASSIFYD_NO_WEIGHTS_CACHE", "1")
            .output()
            .unwrap(),
    );
    let info = json_lines(&out.stdout).remove(0);
    let count = |key: &str| {
        info[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key}: {info}"))
    };
    (count("tensors_per_forward"), count("uploads_per_forward"))
}

#[test]
fn a_bert_layer_on_candles_path_creates_at_most_39_tensors() {
    // The default model has 6 layers, the bert fixture 2, and the same ops around them, so the
    // difference is 4 layers' worth. F16 takes candle's ops, as every GPU build does; each
    // tensor made from data is a kernel launch there (docs/GPU.md, BENCHMARKS.md).
    let (six, _) = ops_per_forward(&default_model(), "f16");
    let (two, _) = ops_per_forward(&fixture("bert"), "f16");
    let per_layer = (six - two) / 4;
    assert_eq!((six - two) % 4, 0, "{six} vs {two}");
    assert!(
        per_layer <= 39,
        "{per_layer} tensors per layer (46 before #17)"
    );
}

/// Host-to-device copies per pass on the GPU path: an encoder's inputs are one upload (four
/// planes of one tensor); DeBERTa adds its pass's two relative-position gather tables;
/// ModernBERT its local layers' band mask per query chunk; a decoder its causal masks (global
/// and sliding) and the head's row offsets.
#[test]
fn a_pass_uploads_its_inputs_once_and_the_masks_it_builds_on_the_host() {
    for (model, uploads) in [
        ("bert", 1),
        ("deberta-v2", 3),
        ("modernbert", 2),
        ("qwen3", 4),
        ("llama", 3),
    ] {
        let (_, n) = ops_per_forward(&fixture(model), "f16");
        assert_eq!(n, uploads, "{model}");
    }
}

#[test]
fn classify_prints_entities_and_redacts_for_a_token_model() {
    let text = "Maria Lopez flew from Madrid to New York on Tuesday.";
    let golden = golden(&fixture("tok-bert"));
    let case = golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["text"] == text)
        .unwrap()
        .clone();
    for strategy in ["simple", "none", "max"] {
        let out = succeeded(
            classifyd()
                .args(["classify", "--model"])
                .arg(fixture("tok-bert"))
                .args([
                    "--aggregation",
                    strategy,
                    "--redact",
                    "--pipeline-keys",
                    text,
                ])
                .output()
                .unwrap(),
        );
        let line = json_lines(&out.stdout).remove(0);
        let want = case["entities"][strategy].as_array().unwrap();
        let got = line["entities"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{strategy}");
        let key = if strategy == "none" {
            "entity"
        } else {
            "entity_group"
        };
        for (g, w) in got.iter().zip(want) {
            for k in [key, "word", "start", "end"] {
                assert_eq!(g[k], w[k], "{strategy} {k}: {g} vs {w}");
            }
            assert!(g.get("start_byte").is_some() && g.get("end_byte").is_some());
            assert_eq!(g.get("index").is_some(), strategy == "none");
        }
        assert_eq!(line["tokens"], case["input_ids"].as_array().unwrap().len());
        assert_eq!(
            line["token_logits"].as_array().unwrap().len(),
            line["tokens"].as_u64().unwrap() as usize
        );
        let redacted = line["redacted"].as_str().unwrap();
        assert!(redacted.contains('['), "{redacted}");
        // Without --pipeline-keys: the protocol's `label` (and `index` for tokens), as the
        // Python client names it; with --fields, only the keys asked for.
        let out = classifyd()
            .args(["classify", "--model"])
            .arg(fixture("tok-bert"))
            .args(["--aggregation", strategy, "--redact"])
            .args(["--fields", "entities,redacted", text])
            .output()
            .unwrap();
        assert!(out.status.success());
        let plain = json_lines(&out.stdout).remove(0);
        let keys: Vec<&String> = plain.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["entities", "redacted"], "{plain}");
        assert_eq!(plain["redacted"], line["redacted"]);
        for (p, g) in plain["entities"].as_array().unwrap().iter().zip(got) {
            assert_eq!(p["label"], g[key], "{strategy}: {p}");
            assert!(
                p.get("entity").is_none() && p.get("entity_group").is_none(),
                "{p}"
            );
            assert_eq!(p["index"], g["index"]);
        }
    }
    let out = classifyd()
        .args(["classify", "--model"])
        .arg(fixture("tok-bert"))
        .args(["--fields", "label,entitys", text])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("invalid value 'entitys' for '--fields"), "{e}");
    assert!(e.contains("tip: a similar value exists: 'entities'"), "{e}");
    // Bad flags are refused before any work.
    let out = classifyd()
        .args(["classify", "--model"])
        .arg(fixture("tok-bert"))
        .args(["--min-score", "PER=7", text])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PER=7"));
}

/// `classifyd parity --device cpu ARGS` with `feed` on stdin (the weights cache off).
fn parity(args: &[&str], feed: &str) -> std::process::Output {
    let mut child = classifyd()
        .args(["parity", "--device", "cpu"])
        .args(args)
        .env("CLASSIFYD_NO_WEIGHTS_CACHE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(feed.as_bytes()).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

/// `classifyd parity` (gpu-check's parity step): several model directories in one process,
/// one answer line per job, each fixture's golden logits within F32 tolerance; a job whose
/// model cannot load is an error line and the next job still runs.
#[test]
fn parity_answers_many_models_in_one_process() {
    let job = |id: &str, model: &std::path::Path, cases: &[&Value]| {
        let inputs: Vec<Value> = cases
            .iter()
            .map(|c| match c["text_pair"].as_str() {
                Some(pair) => serde_json::json!([c["text"], pair]),
                None => serde_json::json!([c["text"]]),
            })
            .collect();
        serde_json::json!({ "id": id, "model": model, "inputs": inputs }).to_string() + "\n"
    };
    let (bert, roberta) = (fixture("bert"), fixture("roberta"));
    let (bert_golden, roberta_golden) = (golden(&bert), golden(&roberta));
    let (b, r) = (
        classified_cases(&bert_golden),
        classified_cases(&roberta_golden),
    );
    let missing = fixture("no-such-fixture");
    let feed =
        job("bert", &bert, &b) + &job("gone", &missing, &b[..1]) + &job("roberta", &roberta, &r);
    let out = succeeded(parity(&["--dtype", "f32"], &feed));
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[1]["id"], "gone");
    assert!(
        lines[1]["error"]
            .as_str()
            .unwrap()
            .contains("no-such-fixture"),
        "{}",
        lines[1]
    );
    for (line, id, cases) in [(&lines[0], "bert", &b), (&lines[2], "roberta", &r)] {
        assert_eq!(line["id"], id);
        let answers = line["answers"].as_array().unwrap();
        assert_eq!(answers.len(), cases.len(), "{id}");
        for (got, want) in answers.iter().zip(cases.iter()) {
            let got: Vec<f32> = serde_json::from_value(got["logits"].clone()).unwrap();
            let want: Vec<f32> = serde_json::from_value(want["logits"].clone()).unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(d <= 1e-4, "{id} {:?}: {d}", want);
        }
    }
}

/// A job that overruns `--job-timeout-secs` is named in a timed-out line and the process ends
/// with status 3 at once, without the jobs after it. The job is 4,000 texts of ~100 tokens in
/// F16 on the CPU (candle's scalar path; 200 of them took 10 s here), against a 1 s limit.
#[test]
fn parity_reports_a_job_that_overruns_and_stops() {
    let text = "the long film ".repeat(33);
    let inputs: Vec<Value> = (0..4000).map(|_| serde_json::json!([text])).collect();
    let model = default_model();
    let feed = [
        serde_json::json!({ "id": "slow", "model": model, "inputs": inputs }),
        serde_json::json!({ "id": "after", "model": model, "inputs": [["fine"]] }),
    ]
    .map(|j| j.to_string() + "\n")
    .concat();
    let out = parity(&["--dtype", "f16", "--job-timeout-secs", "1"], &feed);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    assert_eq!(
        lines,
        vec![serde_json::json!({ "id": "slow", "error": "timed out after 1 s" })]
    );
}
