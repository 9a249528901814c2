//! Round trip through a real daemon against the in-process call (tokenize + forward + scores),
//! same text, same run: the difference is what the socket, framing, queue and scheduler cost.
//! One client, one request in flight (the latency a lone caller sees). Run for the default model
//! and for the tiny BERT fixture, whose ~0.3 ms forward pass leaves the transport cost visible
//! above this machine's noise.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use classifyd::client::quic::{QuicClient, QuicClientConfig};
use classifyd::client::{text, Client, UnixClient};
use classifyd::engine::tokenize::Input;
use classifyd::engine::{DTypeChoice, DeviceChoice, Engine};
use classifyd::sched::queue::SchedulerConfig;
use classifyd::serve::{self, QuicOptions, ServeConfig};
use classifyd::serve::{unix::UnixOptions, ConnectionLimits};
use classifyd::wire::protocol::{pb, RequestLimits};
use criterion::{criterion_group, criterion_main, Criterion};

const TEXT: &str = "a quietly moving film with two fine performances at its heart";

fn roundtrip(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    bench_model(c, "default", root.join("models/sentiment-minilm"));
    bench_model(c, "tiny", root.join("tests/fixtures/bert"));
}

fn bench_model(c: &mut Criterion, name: &str, model: PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("bench.sock");
    classifyd::wire::cert::write_dev_pki(dir.path(), &["localhost".into(), "127.0.0.1".into()])
        .expect("dev pki");
    let quic_addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port");
    let cfg = ServeConfig {
        models: vec![classifyd::serve::config::ServedModel::single(
            &model,
            DTypeChoice::Auto,
        )],
        model_from_file: None,
        device: DeviceChoice::Cpu,
        dtype: DTypeChoice::Auto,
        load: classifyd::engine::LoadOptions {
            cache_dir: Some(dir.path().join("cache")),
            ..Default::default()
        },
        unix: Some(UnixOptions {
            path: socket.clone(),
            mode: 0o600,
            ..Default::default()
        }),
        quic: Some(QuicOptions {
            listen: quic_addr,
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server-key.pem"),
            client_ca: Some(dir.path().join("ca.pem")),
            allow_anonymous_loopback: false,
        }),
        connections: ConnectionLimits::default(),
        requests: RequestLimits::default(),
        scheduler: SchedulerConfig::default(),
        drain_timeout: Duration::from_secs(5),
        metrics_addr: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(serve::run(cfg, async {
            let _ = stop_rx.await;
        }))
        .expect("server");
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let unix = rt.block_on(async {
        for _ in 0..600 {
            if let Ok(c) = UnixClient::connect(&socket).await {
                return Client::Unix(c);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("daemon did not come up");
    });
    let quic = rt.block_on(async {
        Client::Quic(
            QuicClient::connect(&QuicClientConfig {
                addr: quic_addr,
                server_name: "localhost".into(),
                ca: dir.path().join("ca.pem"),
                cert: Some(dir.path().join("client.pem")),
                key: Some(dir.path().join("client-key.pem")),
            })
            .await
            .expect("quic connect"),
        )
    });
    let engine =
        Arc::new(Engine::load(&model, DeviceChoice::Cpu, DTypeChoice::Auto).expect("model"));
    let opts = pb::Options::default();

    let mut g = c.benchmark_group(format!("roundtrip/{name}"));
    g.sample_size(200);
    g.bench_function("in_process_tokenize_forward", |b| {
        b.iter(|| {
            engine
                .classify(&[Input::Text(TEXT.into())], true)
                .expect("classify")
        })
    });
    g.bench_function("uds", |b| {
        b.iter(|| {
            rt.block_on(unix.classify(vec![text(TEXT)], opts.clone()))
                .expect("uds")
        })
    });
    g.bench_function("quic", |b| {
        b.iter(|| {
            rt.block_on(quic.classify(vec![text(TEXT)], opts.clone()))
                .expect("quic")
        })
    });
    g.finish();
    let _ = stop_tx.send(());
    let _ = server.join();
}

criterion_group!(benches, roundtrip);
criterion_main!(benches);
