//! The serving path under long and large work: requests that compute past the idle timeout,
//! short jobs batched with long ones, large requests' tokenization, and attention memory.

use std::path::Path;
use std::time::Duration;

use candle_core::DType;
use classifyd::client::quic::QuicClient;
use classifyd::client::{text, Client};
use classifyd::engine::entities::Aggregation;
use classifyd::engine::tokenize::Input;
use classifyd::engine::{Answer, DTypeChoice, DeviceChoice, Engine, TokenOptions};
use classifyd::wire::protocol::pb;

use crate::harness::*;

fn ids(ids: Vec<u32>) -> pb::Input {
    pb::Input {
        kind: Some(pb::input::Kind::Ids(pb::TokenIds { ids })),
    }
}

/// Holds the engine on a first request until `hold` is removed, so that what follows queues.
fn hold_engine(daemon: &Daemon, rt: &tokio::runtime::Runtime, hold: &Path) -> Client {
    std::fs::write(hold, b"").unwrap();
    let c = rt.block_on(daemon.client());
    let held = rt.block_on(daemon.client());
    rt.spawn(async move { held.classify(vec![text("held")], logits_opts()).await });
    wait_until(daemon, "the held batch", Duration::from_secs(60), || {
        daemon.stderr().contains("test hook: holding a batch")
    });
    c
}

#[test]
fn a_request_computing_past_the_idle_timeout_keeps_its_quic_and_unix_connections() {
    let scratch = tempfile::tempdir().unwrap();
    let hold = scratch.path().join("hold");
    dev_pki(scratch.path());
    let addr = free_udp_port();
    let mut flags = quic_flags(scratch.path(), addr);
    flags.extend(
        [
            "--idle-timeout-secs",
            "1",
            "--test-hold-batches-while",
            hold.to_str().unwrap(),
        ]
        .map(String::from),
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let daemon = Daemon::start(&fixture("bert"), &flags);
    let rt = runtime();
    let cfg = quic_client(scratch.path(), addr);
    let quic = Client::Quic(rt.block_on(QuicClient::connect(&cfg)).unwrap());
    let unix = rt.block_on(daemon.client());

    // Both requests are held in the engine for three idle timeouts: before the QUIC transport
    // outlived the application's idle timeout, both ends timed the QUIC connection out here.
    std::fs::write(&hold, b"").unwrap();
    let over_quic = rt.spawn(async move {
        let r = quic
            .classify(vec![text("computed for a long time")], logits_opts())
            .await;
        (quic, r)
    });
    let over_unix = rt.spawn(async move {
        let r = unix
            .classify(vec![text("computed for a long time")], logits_opts())
            .await;
        (unix, r)
    });
    wait_until(&daemon, "the held batch", Duration::from_secs(60), || {
        daemon.stderr().contains("test hook: holding a batch")
    });
    std::thread::sleep(Duration::from_secs(3));
    std::fs::remove_file(&hold).unwrap();
    for task in [over_quic, over_unix] {
        let (client, r) = rt.block_on(task).unwrap();
        let r = r.unwrap_or_else(|e| panic!("lost mid-request: {e}\n{}", daemon.stderr()));
        assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
        // The connection itself is still usable afterwards.
        let again = rt
            .block_on(client.classify(vec![text("again")], logits_opts()))
            .unwrap();
        assert_eq!(status(&again), pb::Status::Ok);
    }
    assert!(
        !daemon.stderr().contains("timed out: no packets"),
        "{}",
        daemon.stderr()
    );
}

#[test]
fn a_short_job_batched_with_long_ones_is_answered_after_its_own_pass() {
    let scratch = tempfile::tempdir().unwrap();
    let hold = scratch.path().join("hold");
    let metrics = metrics_addr();
    let daemon = Daemon::start(
        &fixture("bert"),
        &[
            "--metrics-addr",
            &metrics.to_string(),
            "--test-hold-batches-while",
            hold.to_str().unwrap(),
        ],
    );
    let rt = runtime();
    let long_client = hold_engine(&daemon, &rt, &hold);
    let short_client = rt.block_on(daemon.client());
    // Sixteen texts of sixteen different lengths: sixteen passes on the CPU.
    let words = "the plot of this film was not very good but the actors were";
    let long: Vec<pb::Input> = (1..=16)
        .map(|n| {
            let w: Vec<&str> = words.split(' ').cycle().take(n * 3).collect();
            text(w.join(" "))
        })
        .collect();
    let long = rt.spawn(async move { long_client.classify(long, logits_opts()).await });
    wait_until(
        &daemon,
        "the long job queued",
        Duration::from_secs(60),
        || metric(metrics, "classifyd_queue_depth") == 1.0,
    );
    // Queued after the long job, so the long one is the batch's anchor.
    let short =
        rt.spawn(async move { short_client.classify(vec![text("ok")], logits_opts()).await });
    wait_until(&daemon, "both jobs queued", Duration::from_secs(60), || {
        metric(metrics, "classifyd_queue_depth") == 2.0
    });
    std::fs::remove_file(&hold).unwrap();
    let timings = |r: pb::Response| {
        assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
        classify_body(r).timings.unwrap()
    };
    let short = timings(rt.block_on(short).unwrap().unwrap());
    let long = timings(rt.block_on(long).unwrap().unwrap());
    // One batch of 17 rows computed both; the short job's own pass ran first and answered it.
    assert_eq!((short.batch_size, long.batch_size), (17, 17));
    assert!(
        short.inference_us < long.inference_us,
        "short {short:?} long {long:?}"
    );
}

#[test]
fn large_requests_are_tokenized_off_the_io_threads_while_probes_and_others_are_served() {
    let metrics = metrics_addr();
    let daemon = Daemon::start(&fixture("bert"), &["--metrics-addr", &metrics.to_string()]);
    let rt = runtime();
    // Three clients at once, each sending the largest request the limits allow: 64 texts of
    // 16 KiB (a 1 MiB frame), about as much tokenizer work as a request can carry.
    let big: Vec<pb::Input> = (0..64)
        .map(|i| text(format!("word{i} ").repeat(16 * 1024 / 7)))
        .collect();
    let senders: Vec<_> = (0..3)
        .map(|_| {
            let c = rt.block_on(daemon.client());
            let big = big.clone();
            rt.spawn(async move {
                for _ in 0..3 {
                    let r = c.classify(big.clone(), logits_opts()).await.unwrap();
                    assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
                    let t = classify_body(r).timings.unwrap();
                    assert!(t.tokenize_us > 0);
                }
            })
        })
        .collect();
    let small = rt.block_on(daemon.client());
    for _ in 0..20 {
        let (code, body) = crate::metrics::get(metrics, "/healthz").unwrap();
        assert_eq!(code, 200, "{body}");
        let r = rt
            .block_on(small.classify(vec![text("still served")], logits_opts()))
            .unwrap();
        assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
    }
    for s in senders {
        rt.block_on(s).unwrap();
    }
    let threads = std::fs::read_dir(format!("/proc/{}/task", daemon.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("classifyd-toke"))
        .count();
    assert!(threads >= 1, "no tokenizer threads in the daemon");
}

/// A copy of fixture `name` whose positions reach `len`: for ModernBERT (RoPE) and DeBERTa-v2
/// with position buckets no weight depends on it, so only the config and the tokenizer's
/// limit change.
fn long_fixture(name: &str, dir: &Path, len: usize) {
    let src = fixture(name);
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    for (file, key) in [
        ("config.json", "max_position_embeddings"),
        ("tokenizer_config.json", "model_max_length"),
    ] {
        let path = dir.join(file);
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v[key] = len.into();
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }
}

fn vm_hwm_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn an_8192_token_modernbert_input_stays_within_the_documented_attention_memory() {
    const T: usize = 8192;
    let model = tempfile::tempdir().unwrap();
    long_fixture("modernbert", model.path(), T);
    let daemon = Daemon::start(model.path(), &[]);
    let before = vm_hwm_kib(daemon.pid());
    let rt = runtime();
    let c = rt.block_on(daemon.client());
    // [CLS] ... [SEP] around ids from the vocabulary, exactly the longest input allowed.
    let mut row: Vec<u32> = (0..T as u32).map(|i| 5 + i % 400).collect();
    row[0] = 0;
    row[T - 1] = 2;
    let opts = pb::Options {
        no_truncate: true,
        ..logits_opts()
    };
    let r = rt
        .block_on(c.classify(vec![ids(row), text("and a short one")], opts))
        .unwrap();
    assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
    let results = classify_body(r).results;
    assert_eq!(results[0].tokens as usize, T);
    assert!(results[0].logits.iter().all(|l| l.is_finite()));
    let after = vm_hwm_kib(daemon.pid());
    // docs/SECURITY.md: attention takes at most 3 × 32 MiB of scores per chunk plus the band
    // masks (here 1 × 8192 × 9 f32, 0.3 MiB); the pass's other activations at 8192 tokens of
    // this 32-wide model are a few MiB. Whole T × T scores would be 4 heads × 8192² f32 = 1 GiB
    // each, three of them at once.
    let grew_mib = after.saturating_sub(before) / 1024;
    assert!(
        grew_mib <= 160,
        "peak RSS grew by {grew_mib} MiB ({before} → {after} KiB) for one 8192-token pass"
    );
}

#[test]
fn an_input_whose_attention_is_over_the_budget_is_refused_and_the_rest_answered() {
    // DeBERTa-v2 holds whole T × T tables: 6 × heads × T² f32, the position products and 8 T²
    // bytes. With a 1 MiB budget and 4 heads, 64 tokens (0.5 MiB) fit and 512 (28 MB) do not.
    let model = tempfile::tempdir().unwrap();
    long_fixture("deberta-v2", model.path(), 512);
    let daemon = Daemon::start(model.path(), &["--max-attention-mib", "1"]);
    let rt = runtime();
    let c = rt.block_on(daemon.client());
    let long = "word ".repeat(600);
    let r = rt
        .block_on(c.classify(vec![text("short"), text(long.clone())], logits_opts()))
        .unwrap();
    // The request is answered; the long input alone is refused, in its own result.
    assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
    let results = classify_body(r).results;
    assert_eq!(results[0].status, pb::Status::Ok as i32);
    assert!(!results[0].logits.is_empty());
    assert_eq!(results[1].status, pb::Status::InvalidArgument as i32);
    assert!(results[1].label.is_empty() && results[1].logits.is_empty());
    let why = &results[1].message;
    assert!(
        why.contains("input 1") && why.contains("--max-attention-mib"),
        "{why}"
    );
    // A request of nothing but refused inputs is refused as a whole, naming the first.
    let r = rt
        .block_on(c.classify(vec![text(long)], logits_opts()))
        .unwrap();
    assert_eq!(status(&r), pb::Status::InvalidArgument, "{}", r.message);
    assert!(r.message.contains("input 0"), "{}", r.message);
    let r = rt
        .block_on(c.classify(vec![text("short")], logits_opts()))
        .unwrap();
    assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
}

#[test]
fn a_short_request_is_answered_while_a_bulk_request_computes() {
    let scratch = tempfile::tempdir().unwrap();
    let hold = scratch.path().join("hold-bulk");
    let daemon = Daemon::start(
        &fixture("bert"),
        &[
            "--max-batch-tokens",
            "1024",
            "--test-hold-bulk-while",
            hold.to_str().unwrap(),
        ],
    );
    let rt = runtime();
    let engine = in_process(&fixture("bert"));
    std::fs::write(&hold, b"").unwrap();
    // 32 texts truncated to the fixture's 64 tokens: 2048 tokens, over a quarter of
    // --max-batch-tokens, so bulk work.
    let words = "the plot of this film was not very good but the actors were fine ";
    let bulk: Vec<pb::Input> = (0..32).map(|_| text(words.repeat(8))).collect();
    let big = rt.block_on(daemon.client());
    let bulk = rt.spawn(async move { big.classify(bulk, logits_opts()).await });
    wait_until(
        &daemon,
        "the held bulk batch",
        Duration::from_secs(60),
        || daemon.stderr().contains("holding a batch (Bulk lane)"),
    );
    // The bulk lane is held mid-batch; the fast lane answers meanwhile, as the engine would.
    let small = rt.block_on(daemon.client());
    for t in mixed_texts() {
        let r = rt
            .block_on(small.classify(vec![text(t.as_str())], logits_opts()))
            .unwrap();
        assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
        let got = classify_body(r).results.remove(0).logits;
        assert!(
            max_abs_diff(&got, &local_logits(&engine, &t)) <= 1e-5,
            "{t:?}"
        );
    }
    assert!(!bulk.is_finished(), "the bulk request was not held");
    std::fs::remove_file(&hold).unwrap();
    let r = rt.block_on(bulk).unwrap().unwrap();
    assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
    assert_eq!(classify_body(r).results.len(), 32);
}

#[test]
fn a_decoder_classifier_serves_batched_texts_as_it_computes_them_alone_and_refuses_no_tokens() {
    // Qwen3's tokenizer adds nothing, so "" is no tokens: refused as INVALID_ARGUMENT naming
    // the input, as every bad input is (the protocol has no per-input status yet), and other
    // requests are answered. Pipelined requests of mixed lengths share the engine's batches.
    let daemon = Daemon::start(&fixture("qwen3"), &[]);
    let engine = in_process(&fixture("qwen3"));
    let rt = runtime();
    let client = std::sync::Arc::new(rt.block_on(daemon.client()));
    let texts = mixed_texts();
    let answers = rt.block_on(futures::future::join_all(texts.iter().map(|t| {
        let (client, t) = (client.clone(), t.clone());
        async move { client.classify(vec![text(t)], logits_opts()).await }
    })));
    for (t, r) in texts.iter().zip(answers) {
        let r = r.unwrap();
        if t.is_empty() {
            assert_eq!(status(&r), pb::Status::InvalidArgument, "{}", r.message);
            assert!(r.message.contains("no tokens"), "{}", r.message);
            continue;
        }
        assert_eq!(status(&r), pb::Status::Ok, "{t:?}: {}", r.message);
        let got = classify_body(r).results.remove(0).logits;
        let want = local_logits(&engine, t);
        assert!(
            max_abs_diff(&got, &want) <= 1e-4,
            "{t:?}: {got:?} vs {want:?}"
        );
    }
    // The text of no tokens is refused in its own result; the others are answered.
    let r = rt
        .block_on(client.classify(
            vec![text("great movie"), text(""), text("a")],
            logits_opts(),
        ))
        .unwrap();
    assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
    let results = classifyd::client::per_input(r).unwrap();
    let why = results[1].as_ref().unwrap_err();
    assert!(
        why.contains("input 1") && why.contains("no tokens"),
        "{why}"
    );
    for (i, t) in [(0, "great movie"), (2, "a")] {
        let got = results[i].as_ref().unwrap();
        let want = local_logits(&engine, t);
        assert!(max_abs_diff(&got.logits, &want) <= 1e-4, "{t:?}");
    }
    // Every input refused: the request itself is.
    let r = rt
        .block_on(client.classify(vec![text("")], logits_opts()))
        .unwrap();
    let (code, why) = classifyd::client::per_input(r).unwrap_err();
    assert_eq!(code, pb::Status::InvalidArgument);
    assert!(why.contains("input 0"), "{why}");
}

#[test]
fn a_token_classifier_serves_entities_redaction_and_per_input_refusals() {
    let dir = fixture("tok-bert");
    let engine = Engine::load(&dir, DeviceChoice::Cpu, DTypeChoice::Fixed(DType::F32)).unwrap();
    let daemon = Daemon::start(&dir, &[]);
    let rt = runtime();
    let client = rt.block_on(daemon.client());
    let info = rt.block_on(client.info()).unwrap();
    match info.body {
        Some(pb::response::Body::Info(i)) => assert_eq!(i.task, "token"),
        other => panic!("{other:?}"),
    }
    let texts = [
        "Maria Lopez flew from Madrid to New York on Tuesday.",
        "Contact john.smith@example.com or call +1 555 0100 before 5pm.",
    ];
    let opts = pb::Options {
        redact: true,
        return_tokens: true,
        return_logits: true,
        aggregation: pb::Aggregation::First as i32,
        ..Default::default()
    };
    let local = TokenOptions {
        aggregation: Aggregation::First,
        redact: true,
        ..Default::default()
    };
    let mut inputs: Vec<pb::Input> = texts.iter().map(|t| text(*t)).collect();
    inputs.push(classifyd::client::pair("a", "b"));
    let r = rt.block_on(client.classify(inputs, opts)).unwrap();
    assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
    let results = classify_body(r).results;
    for (t, got) in texts.iter().zip(&results) {
        let want = match engine
            .classify_with(&[Input::Text((*t).into())], true, &local)
            .unwrap()
            .remove(0)
        {
            Ok(Answer::Token(p)) => p,
            other => panic!("{other:?}"),
        };
        assert!(!want.entities.is_empty());
        assert_eq!(got.entities.len(), want.entities.len(), "{t:?}");
        for (g, w) in got.entities.iter().zip(&want.entities) {
            assert_eq!(
                (&g.label, &g.word, g.start, g.end, g.start_byte, g.end_byte),
                (
                    &w.label,
                    &w.word,
                    w.start as u32,
                    w.end as u32,
                    w.start_byte as u32,
                    w.end_byte as u32
                )
            );
            assert!((g.score - w.score).abs() <= 1e-5);
        }
        assert_eq!(got.redacted, want.redacted);
        assert_eq!(got.token_outputs.len(), want.tokens);
        assert_eq!(
            got.token_outputs[0].logits.len(),
            engine.info().labels.len()
        );
    }
    // A pair has no text for entities to point into: refused alone, named.
    assert_eq!(results[2].status, pb::Status::InvalidArgument as i32);
    assert!(
        results[2].message.contains("input 2"),
        "{}",
        results[2].message
    );
    // The CLI prints the same line through the daemon as in process.
    let cli = |target: &[&std::ffi::OsStr]| {
        let out = succeeded(
            std::process::Command::new(env!("CARGO_BIN_EXE_classifyd"))
                .arg("classify")
                .args(target)
                .args(["--aggregation", "none", "--redact", "--min-score", "0.5"])
                .arg(texts[0])
                .output()
                .unwrap(),
        );
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        line
    };
    let remote = cli(&["--uds".as_ref(), daemon.socket.as_os_str()]);
    let local = cli(&["--model".as_ref(), dir.as_os_str()]);
    assert!(!local["entities"].as_array().unwrap().is_empty());
    assert_eq!(
        remote["entities"].as_array().unwrap().len(),
        local["entities"].as_array().unwrap().len()
    );
    for (r, l) in remote["entities"]
        .as_array()
        .unwrap()
        .iter()
        .zip(local["entities"].as_array().unwrap())
    {
        for k in [
            "label",
            "index",
            "word",
            "start",
            "end",
            "start_byte",
            "end_byte",
        ] {
            assert_eq!(r[k], l[k], "{k}");
        }
        assert!(l["score"].as_f64().unwrap() >= 0.5);
    }
    assert_eq!(remote["redacted"], local["redacted"]);
    assert_eq!(remote["tokens"], local["tokens"]);
    assert_eq!(
        remote["token_logits"].as_array().unwrap().len(),
        local["token_logits"].as_array().unwrap().len()
    );
    // Redaction never truncates: an over-long text would come back with its tail unredacted.
    let long = "Maria Lopez ".repeat(100);
    let redact = classifyd::client::token_options(pb::Aggregation::Simple, true);
    let r = rt
        .block_on(client.classify(vec![text(long.clone())], redact))
        .unwrap();
    assert_eq!(status(&r), pb::Status::InvalidArgument);
    assert!(r.message.contains("at most 64"), "{}", r.message);
    let r = rt
        .block_on(client.classify(vec![text(long)], pb::Options::default()))
        .unwrap();
    assert_eq!(
        status(&r),
        pb::Status::Ok,
        "without redaction it is truncated as usual"
    );
    // A score outside 0..1 is a bad request, not a silent filter.
    let bad = pb::Options {
        min_score: 1.5,
        ..Default::default()
    };
    let r = rt
        .block_on(client.classify(vec![text("hello")], bad))
        .unwrap();
    assert_eq!(status(&r), pb::Status::InvalidArgument);
    assert!(r.message.contains("min_score"), "{}", r.message);
}
