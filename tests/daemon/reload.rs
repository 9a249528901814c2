//! SIGHUP reloads the model directory under load: no request fails, new requests name the new
//! revision, and a broken new model leaves the old one serving.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use classifyd::client::{text, Client, UnixClient};
use classifyd::wire::protocol::pb;

use crate::harness::*;

/// Replaces `dir`'s files with `from`'s, each written under a temp name and renamed over, so
/// the daemon never reads a half-written file.
pub(crate) fn install(from: &Path, dir: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let src = entry.unwrap().path();
        let name = src.file_name().unwrap().to_owned();
        let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
        std::fs::copy(&src, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(&name)).unwrap();
    }
}

/// Keeps classifying until `stop`; counts answers and failures, and checks that every request
/// started while `expected` names a revision is answered by that revision.
struct Load {
    stop: AtomicBool,
    expected: Mutex<Option<String>>,
    ok: AtomicU64,
    failures: Mutex<Vec<String>>,
}

async fn client_loop(socket: std::path::PathBuf, load: Arc<Load>, c: usize) {
    let client = Client::Unix(UnixClient::connect(&socket).await.unwrap());
    let mut i = 0usize;
    while !load.stop.load(Ordering::Acquire) {
        i += 1;
        let expected = load.expected.lock().unwrap().clone();
        let t = format!("client {c} request {i}: the film was fine");
        match client.classify(vec![text(t.as_str())], logits_opts()).await {
            Ok(r) if status(&r) == pb::Status::Ok => {
                let c = classify_body(r);
                if let Some(want) = expected {
                    if c.revision != want {
                        load.failures
                            .lock()
                            .unwrap()
                            .push(format!("revision {} after reload to {want}", c.revision));
                    }
                }
                load.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => load
                .failures
                .lock()
                .unwrap()
                .push(format!("{:?}: {}", status(&r), r.message)),
            Err(e) => load
                .failures
                .lock()
                .unwrap()
                .push(format!("transport: {e}")),
        }
    }
}

async fn revision(client: &Client) -> String {
    let r = client
        .classify(vec![text("probe")], logits_opts())
        .await
        .unwrap();
    assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
    classify_body(r).revision
}

/// Polls until a response names a revision other than `old` (hang guard: 120 s).
async fn wait_new_revision(client: &Client, daemon: &Daemon, old: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rev = revision(client).await;
        if rev != old {
            return rev;
        }
        assert!(
            Instant::now() < deadline,
            "no new revision after SIGHUP: {}",
            daemon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn sighup_reloads_under_load_and_a_broken_model_keeps_the_old_one() {
    let model = tempfile::tempdir().unwrap();
    install(&fixture("bert"), model.path());
    let metrics: std::net::SocketAddr = ([127, 0, 0, 1], crate::metrics::free_port()).into();
    let mut daemon = Daemon::start(model.path(), &["--metrics-addr", &metrics.to_string()]);
    let load = Arc::new(Load {
        stop: AtomicBool::new(false),
        expected: Mutex::new(None),
        ok: AtomicU64::new(0),
        failures: Mutex::new(Vec::new()),
    });
    runtime().block_on(async {
        let probe = daemon.client().await;
        let mut current = revision(&probe).await;
        let mut clients = tokio::task::JoinSet::new();
        for c in 0..4 {
            clients.spawn(client_loop(daemon.socket.clone(), load.clone(), c));
        }
        for (round, fixture_name) in ["xlm-roberta", "bert", "xlm-roberta"].iter().enumerate() {
            *load.expected.lock().unwrap() = None;
            install(&fixture(fixture_name), model.path());
            daemon.signal(1);
            let new = wait_new_revision(&probe, &daemon, &current).await;
            assert_ne!(new, current, "round {round}");
            *load.expected.lock().unwrap() = Some(new.clone());
            let before = load.ok.load(Ordering::Relaxed);
            // Let the clients get answers from the new model.
            let deadline = Instant::now() + Duration::from_secs(60);
            while load.ok.load(Ordering::Relaxed) < before + 8 {
                assert!(Instant::now() < deadline, "clients stalled after reload");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            current = new;
        }

        // A truncated weight file: the reload fails and the old model keeps serving.
        // (`expected` still names the current revision, so the clients check that too.)
        let weights = model.path().join("model.safetensors");
        let bytes = std::fs::read(&weights).unwrap();
        let tmp = model.path().join(".model.safetensors.tmp");
        std::fs::write(&tmp, &bytes[..bytes.len() / 2]).unwrap();
        std::fs::rename(&tmp, &weights).unwrap();
        daemon.signal(1);
        let deadline = Instant::now() + Duration::from_secs(120);
        while !daemon.stderr().contains("reload failed") {
            assert!(
                Instant::now() < deadline,
                "no reload failure logged: {}",
                daemon.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            daemon
                .stderr()
                .contains(&format!("still serving revision {current}")),
            "{}",
            daemon.stderr()
        );
        let before = load.ok.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(60);
        while load.ok.load(Ordering::Relaxed) < before + 8 {
            assert!(
                Instant::now() < deadline,
                "clients stalled after failed reload"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(revision(&probe).await, current);

        load.stop.store(true, Ordering::Release);
        while let Some(r) = clients.join_next().await {
            r.unwrap();
        }
        // Metrics follow the reloads: the info series names the model serving now, and the
        // computed counter kept counting across the scheduler changes.
        let (code, body) = crate::metrics::get(metrics, "/metrics").unwrap();
        assert_eq!(code, 200);
        let info = body
            .lines()
            .find(|l| l.starts_with("classifyd_model_info{"))
            .expect("model info series");
        assert!(info.contains(&format!("revision=\"{current}\"")), "{info}");
        assert!(
            info.contains("XLMRobertaForSequenceClassification"),
            "{info}"
        );
        assert_eq!(
            body.lines()
                .filter(|l| l.starts_with("classifyd_model_info{"))
                .count(),
            1
        );
        let computed = sample(&body, "classifyd_computed_total").expect("computed counter");
        // Every round above waited for 8 more answers, 4 rounds: counted across reloads.
        assert!(computed >= 32.0, "computed {computed}");
        // Three reloads swapped in, one failed.
        for (result, n) in [("ok", 3.0), ("failed", 1.0)] {
            let series = format!("classifyd_reloads_total{{result=\"{result}\"}}");
            assert_eq!(sample(&body, &series), Some(n), "{series} in {body}");
        }
    });
    let failures = load.failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        load.ok.load(Ordering::Relaxed) + failures.len() as u64,
        &failures[..failures.len().min(10)]
    );
    assert!(load.ok.load(Ordering::Relaxed) > 0);
    daemon.signal(15);
    let s = daemon.wait();
    assert!(s.success(), "{}: {}", exit_code(s), daemon.stderr());
}

#[test]
fn sighup_rereads_the_model_path_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("classifyd.toml");
    let write = |model: &str| {
        let tmp = dir.path().join(".classifyd.toml.tmp");
        std::fs::write(&tmp, model).unwrap();
        std::fs::rename(&tmp, &config).unwrap();
    };
    write(&format!(
        "model = {:?}\n",
        fixture("bert").display().to_string()
    ));
    let mut daemon = Daemon::start(Path::new("unused"), &["--config", config.to_str().unwrap()]);
    let arch = |daemon: &Daemon| {
        runtime()
            .block_on(async { info_body(daemon.client().await.info().await.unwrap()).architecture })
    };
    assert_eq!(arch(&daemon), "BertForSequenceClassification");

    // The file now names another model: the reload serves it.
    write(&format!(
        "model = {:?}\n",
        fixture("electra").display().to_string()
    ));
    daemon.signal(1);
    let deadline = Instant::now() + Duration::from_secs(120);
    while arch(&daemon) != "ElectraForSequenceClassification" {
        assert!(
            Instant::now() < deadline,
            "no reload to electra: {}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // A broken file: the reload fails, the model keeps serving.
    write("model = \"x\"\nqueue_capacty = 3\n");
    daemon.signal(1);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !daemon.stderr().contains("reload failed") {
        assert!(
            Instant::now() < deadline,
            "no reload failure: {}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        daemon.stderr().contains("queue_capacty"),
        "{}",
        daemon.stderr()
    );
    assert_eq!(arch(&daemon), "ElectraForSequenceClassification");
    daemon.signal(15);
    assert_eq!(daemon.wait().code(), Some(0));
}

#[test]
fn weights_truncated_in_place_or_replaced_with_garbage_never_crash_the_daemon() {
    let model = tempfile::tempdir().unwrap();
    install(&fixture("bert"), model.path());
    let mut daemon = Daemon::start(model.path(), &[]);
    // Nothing of the weight file stays mapped once the model is loaded, so shrinking it cannot
    // turn a later read into a SIGBUS.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", daemon.pid())).unwrap();
    assert!(!maps.contains("model.safetensors"), "{maps}");

    let rt = runtime();
    let client = rt.block_on(daemon.client());
    let serving = rt.block_on(revision(&client));
    let all_ok = |daemon: &mut Daemon, when: &str| {
        for i in 0..20 {
            let r = rt
                .block_on(client.classify(vec![text(format!("{when} {i}"))], logits_opts()))
                .unwrap();
            assert_eq!(status(&r), pb::Status::Ok, "{when}: {}", r.message);
            assert_eq!(classify_body(r).revision, serving, "{when}");
        }
        assert!(daemon.try_wait().is_none(), "{when}: {}", daemon.stderr());
    };
    let failed_reloads = |daemon: &Daemon| daemon.stderr().matches("reload failed").count();
    let reload_refused = |daemon: &Daemon, n: usize| {
        daemon.signal(1);
        wait_until(
            daemon,
            "the reload refused",
            Duration::from_secs(120),
            || failed_reloads(daemon) == n,
        );
        let log = daemon.stderr();
        let line = log
            .lines()
            .filter(|l| l.contains("reload failed"))
            .nth(n - 1)
            .unwrap();
        assert!(
            line.contains(&format!("still serving revision {serving}"))
                && line.contains("model.safetensors"),
            "{line}"
        );
    };
    let weights = model.path().join("model.safetensors");
    let len = std::fs::metadata(&weights).unwrap().len();

    // Cut in half in place, as an interrupted copy over the file would leave it.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    all_ok(&mut daemon, "after the truncation");
    reload_refused(&daemon, 1);
    all_ok(&mut daemon, "after the refused reload");

    // Garbage of the same size renamed over it.
    let tmp = model.path().join(".model.safetensors.tmp");
    let garbage: Vec<u8> = (0..len).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&tmp, garbage).unwrap();
    std::fs::rename(&tmp, &weights).unwrap();
    all_ok(&mut daemon, "after the garbage");
    reload_refused(&daemon, 2);
    all_ok(&mut daemon, "after the second refused reload");

    daemon.signal(15);
    let s = daemon.wait();
    assert!(s.success(), "{}: {}", exit_code(s), daemon.stderr());
}

/// A config.json asking for a billion positions (ModernBERT's rotary tables, DeBERTa's
/// relative-position indices) is refused before anything is allocated: put in place under a
/// serving daemon and SIGHUPed, the reload fails and the old revision keeps answering; at start,
/// the daemon exits 1 with the key named.
#[test]
fn a_billion_positions_fails_the_reload_and_the_start_cleanly() {
    for name in ["modernbert", "deberta-v2"] {
        let model = tempfile::tempdir().unwrap();
        install(&fixture(name), model.path());
        let mut daemon = Daemon::start(model.path(), &[]);
        let broken = tempfile::tempdir().unwrap();
        let config = broken.path().join("config.json");
        let mut c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(model.path().join("config.json")).unwrap())
                .unwrap();
        c["max_position_embeddings"] = serde_json::json!(1_000_000_000u64);
        std::fs::write(&config, serde_json::to_vec(&c).unwrap()).unwrap();
        runtime().block_on(async {
            let client = daemon.client().await;
            let before = revision(&client).await;
            install(broken.path(), model.path());
            daemon.signal(1);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !daemon.stderr().contains("reload failed") {
                assert!(Instant::now() < deadline, "{name}: {}", daemon.stderr());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(
                daemon
                    .stderr()
                    .contains("max_position_embeddings 1000000000"),
                "{name}: {}",
                daemon.stderr()
            );
            assert_eq!(revision(&client).await, before, "{name}");
        });
        daemon.signal(15);
        assert!(daemon.wait().success(), "{name}: {}", daemon.stderr());
        assert!(daemon.try_wait().is_some());

        // The same directory at start: exit 1, the key named, no panic.
        let mut failed = Daemon::spawn(model.path(), None, &[], Launch::default());
        let status = failed.wait();
        assert_eq!(exit_code(status), "exit 1", "{name}: {}", failed.stderr());
        let stderr = failed.stderr();
        assert!(
            stderr.contains("max_position_embeddings") && !stderr.contains("panicked"),
            "{name}: {stderr}"
        );
    }
}

/// `(mappings, Private_Dirty KiB, Rss KiB)` of a process, from /proc.
fn memory(pid: i32) -> (usize, u64, u64) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let kib = |key: &str| -> u64 {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {rollup}"))
    };
    (maps.lines().count(), kib("Private_Dirty:"), kib("Rss:"))
}

/// Twenty reloads of the default model keep nothing: after each, the old model's maps, engine
/// threads and heap go, so the number of mappings and the private memory come back to their
/// level after the first reload. Slack: 16 mappings, and 16 MiB of private memory. Private
/// memory (all of it anonymous) sits in one of two states a little over 10 MiB apart, about 18
/// or about 28-30 MiB, and moves between them in both directions from one reload to another
/// (measured 2026-12-05, 20 runs): a snapshot of the allocator, not growth. A leak of 1 MiB a
/// reload would still pass 16 MiB over the nineteen reloads measured.
#[test]
fn twenty_reloads_return_mappings_and_private_memory_to_their_level() {
    let cache = tempfile::tempdir().unwrap();
    let metrics = metrics_addr();
    let mut daemon = Daemon::start(
        &default_model(),
        &[
            "--metrics-addr",
            &metrics.to_string(),
            "--cache-dir",
            &cache.path().display().to_string(),
        ],
    );
    let pid = daemon.pid();
    let reloads = |n: f64| {
        daemon.signal(1);
        let deadline = Instant::now() + Duration::from_secs(60);
        while metric(metrics, "classifyd_reloads_total{result=\"ok\"}") < n {
            assert!(Instant::now() < deadline, "reload {n}: {}", daemon.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
        // Measured once the replaced model is gone and the heap trimmed, not while it may
        // still be held: otherwise the figures depend on when they are taken.
        while daemon.stderr().matches("freed the replaced model").count() < n as usize {
            assert!(
                Instant::now() < deadline,
                "reload {n} never freed: {}",
                daemon.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let exercise = || {
        runtime().block_on(async {
            let client = daemon.client().await;
            for t in mixed_texts().iter().take(20) {
                let r = client
                    .classify(vec![text(t.as_str())], logits_opts())
                    .await
                    .unwrap();
                assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
            }
        })
    };
    reloads(1.0);
    exercise();
    let first = memory(pid);
    let mut seen = vec![first];
    for n in 2..=20 {
        reloads(n as f64);
        exercise();
        seen.push(memory(pid));
    }
    let last = *seen.last().unwrap();
    assert!(
        last.0 <= first.0 + 16,
        "mappings grew from {} to {}: {seen:?}",
        first.0,
        last.0
    );
    assert!(
        last.1 <= first.1 + 16 * 1024,
        "Private_Dirty grew from {} to {} KiB: {seen:?}",
        first.1,
        last.1
    );
    eprintln!("(mappings, Private_Dirty KiB, Rss KiB) after each reload: {seen:?}");
    daemon.signal(15);
    assert!(daemon.wait().success(), "{}", daemon.stderr());
}
