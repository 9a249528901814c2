//! Several models in one daemon (issue 32): a sequence model, a token model and a decoder,
//! routed by name over both transports, reloaded one at a time, each with its own share of the
//! queue.

use std::path::{Path, PathBuf};
use std::time::Duration;

use classifyd::client::quic::QuicClient;
use classifyd::client::{text, Client};
use classifyd::engine::tokenize::Input;
use classifyd::engine::{Answer, Engine, TokenOptions};
use classifyd::wire::protocol::pb;

use crate::common::{default_model, fixture};
use crate::harness::*;

const NAMES: [&str; 3] = ["seq", "tok", "dec"];

fn dirs() -> [PathBuf; 3] {
    [default_model(), fixture("tok-bert"), fixture("qwen3")]
}

/// `--model NAME=DIR` for each; the first goes where the harness puts its `--model`.
fn model_flags(dirs: &[PathBuf; 3]) -> (PathBuf, Vec<String>) {
    let flag = |i: usize| format!("{}={}", NAMES[i], dirs[i].display());
    let mut rest = Vec::new();
    for i in 1..3 {
        rest.push("--model".to_string());
        rest.push(flag(i));
    }
    (PathBuf::from(flag(0)), rest)
}

/// What the in-process engine says of `t`, in a form both answers can be compared in: the
/// logits of a sequence model, the entities of a token model.
fn expected(engine: &Engine, t: &str) -> Vec<String> {
    match engine
        .classify_with(&[Input::Text(t.into())], true, &TokenOptions::default())
        .unwrap()
        .remove(0)
        .unwrap()
    {
        Answer::Token(p) => p
            .entities
            .iter()
            .map(|e| format!("{} {}..{}", e.label, e.start, e.end))
            .collect(),
        Answer::Sequence(_) => local_logits(engine, t)
            .iter()
            .map(|l| format!("{l:.4}"))
            .collect(),
    }
}

fn answered(r: &pb::Result, token: bool) -> Vec<String> {
    if token {
        r.entities
            .iter()
            .map(|e| format!("{} {}..{}", e.label, e.start, e.end))
            .collect()
    } else {
        r.logits.iter().map(|l| format!("{l:.4}")).collect()
    }
}

/// Sends every text to every model (in an order of its own per worker) and checks each answer
/// against its own model's in-process one.
async fn interleave(client: Client, engines: &[(Engine, bool); 3], worker: usize) -> usize {
    let texts = mixed_texts();
    let mut n = 0;
    // Not the empty text: the decoder's tokenizer adds no special tokens, so it has none.
    for (k, t) in texts.iter().filter(|t| !t.is_empty()).take(12).enumerate() {
        let m = (k + worker) % 3;
        let (engine, token) = &engines[m];
        let r = client
            .classify_model(NAMES[m], vec![text(t.as_str())], logits_opts())
            .await
            .unwrap();
        assert_eq!(status(&r), pb::Status::Ok, "{}: {}", NAMES[m], r.message);
        let body = classify_body(r);
        assert_eq!(body.model, NAMES[m]);
        let got = answered(&body.results[0], *token);
        let want = expected(engine, t);
        if *token {
            assert_eq!(got, want, "{} on {t:?}", NAMES[m]);
        } else {
            for (g, w) in got.iter().zip(&want) {
                let (g, w): (f32, f32) = (g.parse().unwrap(), w.parse().unwrap());
                assert!((g - w).abs() <= 2e-4, "{} on {t:?}: {g} vs {w}", NAMES[m]);
            }
            assert_eq!(got.len(), want.len());
        }
        n += 1;
    }
    n
}

#[test]
fn three_models_interleave_over_uds_and_quic_and_unknown_names_are_refused() {
    let dirs = dirs();
    let (first, rest) = model_flags(&dirs);
    let pki = tempfile::tempdir().unwrap();
    dev_pki(pki.path());
    let addr = free_udp_port();
    let metrics = metrics_addr();
    let mut extra: Vec<String> = rest;
    extra.extend(quic_flags(pki.path(), addr));
    extra.extend(["--metrics-addr".into(), metrics.to_string()]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let daemon = Daemon::start(&first, &extra);
    let engines: [(Engine, bool); 3] = [
        (in_process(&dirs[0]), false),
        (in_process(&dirs[1]), true),
        (in_process(&dirs[2]), false),
    ];
    let info = info(&daemon);
    let names: Vec<&str> = info.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, NAMES);
    assert_eq!(info.model, "seq", "the top level is the default model");
    assert!(info.models[0].default && !info.models[1].default);
    assert_eq!(info.models[1].task, "token");
    assert!(info.models.iter().all(|m| m.ready));
    let quic = quic_client(pki.path(), addr);
    let done = runtime().block_on(async {
        let mut jobs = Vec::new();
        for w in 0..6 {
            let client = if w % 2 == 0 {
                daemon.client().await
            } else {
                Client::Quic(QuicClient::connect(&quic).await.unwrap())
            };
            jobs.push(interleave(client, &engines, w));
        }
        let counts = futures::future::join_all(jobs).await;
        // A name not served: refused over either transport, naming it and what is served.
        let quic_client = Client::Quic(QuicClient::connect(&quic).await.unwrap());
        for client in [daemon.client().await, quic_client] {
            let r = client
                .classify_model("nosuch", vec![text("hello")], logits_opts())
                .await
                .unwrap();
            assert_eq!(status(&r), pb::Status::InvalidArgument);
            assert!(
                r.message.contains("\"nosuch\"") && r.message.contains("seq, tok, dec"),
                "{}",
                r.message
            );
        }
        let client = daemon.client().await;
        // No name: the default model.
        let r = client
            .classify(vec![text("a fine film")], logits_opts())
            .await
            .unwrap();
        assert_eq!(classify_body(r).model, "seq");
        counts.into_iter().sum::<usize>()
    });
    let per_worker = mixed_texts()
        .iter()
        .filter(|t| !t.is_empty())
        .take(12)
        .count();
    assert_eq!(done, 6 * per_worker);
    for name in NAMES {
        let ok = metric(
            metrics,
            &format!("classifyd_requests_total{{model=\"{name}\",status=\"ok\"}}"),
        );
        assert!(ok >= (2 * per_worker) as f64, "{name}: {ok}");
        assert_eq!(
            metric(
                metrics,
                &format!("classifyd_model_ready{{model=\"{name}\"}}")
            ),
            1.0
        );
    }
    let (code, body) = crate::metrics::get(metrics, "/readyz?model=tok").unwrap();
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    let (code, _) = crate::metrics::get(metrics, "/readyz?model=nosuch").unwrap();
    assert_eq!(code, 404);
}

/// A copy of `from` in a fresh directory, which a test may change under the daemon.
fn copy_of(from: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    crate::reload::install(from, dir.path());
    dir
}

fn revisions(daemon: &Daemon) -> Vec<String> {
    info(daemon)
        .models
        .into_iter()
        .map(|m| m.revision)
        .collect()
}

#[test]
fn sighup_reloads_the_changed_model_only_and_a_failed_load_leaves_all_three_serving() {
    let copies = [
        copy_of(&fixture("bert")),
        copy_of(&fixture("tok-bert")),
        copy_of(&fixture("qwen3")),
    ];
    let dirs = [0, 1, 2].map(|i| copies[i].path().to_path_buf());
    let (first, rest) = model_flags(&dirs);
    let metrics = metrics_addr();
    let mut extra = rest;
    extra.extend(["--metrics-addr".into(), metrics.to_string()]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let daemon = Daemon::start(&first, &extra);
    let before = revisions(&daemon);

    // The sequence model's files change: it alone gets a new revision.
    crate::reload::install(&fixture("xlm-roberta"), &dirs[0]);
    daemon.signal(1);
    wait_until(&daemon, "seq reloaded", Duration::from_secs(120), || {
        metric(
            metrics,
            "classifyd_reloads_total{model=\"seq\",result=\"ok\"}",
        ) >= 1.0
    });
    let after = revisions(&daemon);
    assert_ne!(after[0], before[0]);
    assert_eq!(after[1..], before[1..], "the others were not reloaded");
    for name in ["tok", "dec"] {
        let series = format!("classifyd_reloads_total{{model=\"{name}\",result=\"ok\"}}");
        assert_eq!(metric(metrics, &series), 0.0, "{name}");
    }

    // The decoder's weights are truncated: its reload fails, and all three keep serving.
    let weights = dirs[2].join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    let tmp = dirs[2].join(".model.safetensors.tmp");
    std::fs::write(&tmp, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::rename(&tmp, &weights).unwrap();
    daemon.signal(1);
    wait_until(
        &daemon,
        "dec's reload failed",
        Duration::from_secs(120),
        || {
            metric(
                metrics,
                "classifyd_reloads_total{model=\"dec\",result=\"failed\"}",
            ) >= 1.0
        },
    );
    assert!(
        daemon.stderr().contains("reload failed"),
        "{}",
        daemon.stderr()
    );
    assert_eq!(revisions(&daemon), after);
    runtime().block_on(async {
        let client = daemon.client().await;
        for name in NAMES {
            let r = client
                .classify_model(name, vec![text("still here")], logits_opts())
                .await
                .unwrap();
            assert_eq!(status(&r), pb::Status::Ok, "{name}: {}", r.message);
        }
    });
}

#[test]
fn a_flood_on_one_model_is_refused_overloaded_from_its_share_while_another_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let hold = dir.path().join("hold");
    let config = dir.path().join("classifyd.toml");
    std::fs::write(
        &config,
        format!(
            "default_model = \"calm\"\n\
             [models.flood]\npath = \"{}\"\nqueue_capacity = 2\n\
             [models.calm]\npath = \"{}\"\npriority = \"high\"\n",
            fixture("bert").display(),
            fixture("tok-bert").display()
        ),
    )
    .unwrap();
    std::fs::write(&hold, b"").unwrap();
    let pki = tempfile::tempdir().unwrap();
    dev_pki(pki.path());
    let addr = free_udp_port();
    let mut extra: Vec<String> = vec![
        "--config".into(),
        config.to_str().unwrap().into(),
        "--test-hold-batches-while".into(),
        hold.to_str().unwrap().into(),
    ];
    extra.extend(quic_flags(pki.path(), addr));
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let daemon = Daemon::start(Path::new("unused"), &extra);
    let quic = quic_client(pki.path(), addr);
    let info = info(&daemon);
    let names: Vec<&str> = info.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["calm", "flood"], "default_model comes first");
    let rt = runtime();
    let client = rt.block_on(daemon.client());
    // The first request is picked and held; its batch holds the engine for every model.
    let first = rt.spawn({
        let socket = daemon.socket.clone();
        async move {
            let c = Client::Unix(
                classifyd::client::UnixClient::connect(&socket)
                    .await
                    .unwrap(),
            );
            c.classify_model("flood", vec![text("first")], logits_opts())
                .await
                .unwrap()
        }
    });
    wait_until(&daemon, "a held batch", Duration::from_secs(30), || {
        daemon.stderr().contains("holding a batch")
    });
    let outcome = rt.block_on(async {
        // The calm model's requests come over QUIC, the flood over the Unix socket.
        let calm_client = Client::Quic(QuicClient::connect(&quic).await.unwrap());
        let floods = (0..8).map(|i| {
            client.classify_model("flood", vec![text(format!("flood {i}"))], logits_opts())
        });
        let calms = (0..3).map(|i| {
            calm_client.classify_model(
                "calm",
                vec![text(format!("Maria in Madrid {i}"))],
                logits_opts(),
            )
        });
        tokio::join!(futures::future::join_all(floods), async {
            // Sent once the flood has filled its share, while the engine is still held: they
            // must be admitted, and answered once it is let go.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (calms, ()) = tokio::join!(futures::future::join_all(calms), async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                std::fs::remove_file(&hold).unwrap();
            });
            calms
        })
    });
    let (floods, calms) = outcome;
    let statuses: Vec<pb::Status> = floods.iter().map(|r| status(r.as_ref().unwrap())).collect();
    let overloaded = statuses
        .iter()
        .filter(|s| **s == pb::Status::Overloaded)
        .count();
    // One held, two in its share: the other six are refused.
    assert_eq!(overloaded, 6, "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == pb::Status::Ok).count(),
        2,
        "{statuses:?}"
    );
    for r in calms {
        let r = r.unwrap();
        assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
        let body = classify_body(r);
        assert_eq!(body.model, "calm");
        // Admitted while the engine was held (and the flood's share full), not sent after.
        let queued = body.timings.unwrap().queue_us;
        assert!(queued >= 150_000, "queued {queued} µs");
    }
    let first = rt.block_on(first).unwrap();
    assert_eq!(status(&first), pb::Status::Ok);
}
