//! The daemon's life: load → warm up → bind → ready → serve → (signal) → drain → exit.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::engine::{DTypeChoice, DeviceChoice, Engine};
use crate::error::LoadError;
use crate::protocol::RequestLimits;
use crate::queue::{Scheduler, SchedulerConfig};
use crate::service::{ModelIdentity, Service};
use crate::tokenize::Input;
use crate::transport::{self, unix::UnixOptions, ConnectionLimits};

/// QUIC listener settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicOptions {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub allow_anonymous_loopback: bool,
}

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub model: PathBuf,
    pub device: DeviceChoice,
    pub dtype: DTypeChoice,
    pub unix: Option<UnixOptions>,
    pub quic: Option<QuicOptions>,
    pub connections: ConnectionLimits,
    pub requests: RequestLimits,
    pub scheduler: SchedulerConfig,
    /// How long in-flight requests may take to finish after a stop signal before they are
    /// answered UNAVAILABLE.
    pub drain_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Bind(#[from] transport::unix::BindError),
    #[error("quic: {0}")]
    Quic(String),
    #[error("{0}")]
    Config(String),
    #[error("warm-up failed: {0}")]
    WarmUp(String),
}

/// Runs one forward pass per batch-size bucket the scheduler can form, so the first real
/// request finds every allocation and kernel path already taken.
fn warm_up(engine: &Engine, max_batch: usize) -> Result<usize, ServerError> {
    let text =
        Input::Text("warm up the model with a short sentence of about sixteen tokens".into());
    let one = engine
        .tokenize(&text, true)
        .map_err(|e| ServerError::WarmUp(e.to_string()))?;
    let mut size = 1;
    let mut runs = 0;
    loop {
        let batch: Vec<_> = std::iter::repeat_n(&one, size).collect();
        engine
            .logits(&batch)
            .map_err(|e| ServerError::WarmUp(e.to_string()))?;
        runs += 1;
        if size >= max_batch {
            return Ok(runs);
        }
        size = (size * 2).min(max_batch);
    }
}

/// Serves until `shutdown` resolves, then drains. Returns once every accepted request has been
/// answered and every listener is closed.
pub async fn run(cfg: ServeConfig, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    if cfg.unix.is_none() && cfg.quic.is_none() {
        return Err(ServerError::Config(
            "no listener: give --uds PATH and/or --quic ADDR".into(),
        ));
    }
    let started = Instant::now();
    let (model, device, dtype) = (cfg.model.clone(), cfg.device, cfg.dtype);
    let max_batch = cfg.scheduler.max_batch_size.max(1);
    let engine = tokio::task::spawn_blocking(move || -> Result<(Engine, usize), ServerError> {
        let engine = Engine::load(&model, device, dtype)?;
        let runs = warm_up(&engine, max_batch)?;
        Ok((engine, runs))
    })
    .await
    .map_err(|e| ServerError::WarmUp(e.to_string()))??;
    let (engine, warm_runs) = engine;
    let engine = Arc::new(engine);
    let identity = ModelIdentity::of(&cfg.model);
    let scheduler = Scheduler::start(engine.clone(), cfg.scheduler);
    let service = Arc::new(Service::new(
        engine.clone(),
        scheduler.clone(),
        cfg.requests,
        identity.clone(),
    ));

    let token = CancellationToken::new();
    let mut listeners = tokio::task::JoinSet::new();
    if let Some(opts) = &cfg.unix {
        let listener = transport::unix::bind(opts)?;
        info!("listening on unix socket {}", opts.path.display());
        listeners.spawn(transport::unix::serve(
            listener,
            service.clone(),
            opts.clone(),
            cfg.connections,
            token.clone(),
        ));
    }
    if let Some(q) = &cfg.quic {
        let endpoint = transport::quic::listen(q, &cfg.connections)
            .map_err(|e| ServerError::Quic(e.to_string()))?;
        info!("listening on quic {}", q.listen);
        listeners.spawn(transport::quic::serve_service(
            endpoint,
            service.clone(),
            cfg.connections,
            token.clone(),
        ));
    }
    service.set_ready(true);
    let info = engine.info();
    info!(
        model = %identity.name,
        revision = %identity.revision,
        device = %info.device,
        dtype = %info.compute_dtype,
        warm_up_batches = warm_runs,
        startup_ms = started.elapsed().as_millis() as u64,
        "ready"
    );

    shutdown.await;
    info!("stop signal: draining");
    service.set_ready(false);
    token.cancel();
    let drained = async { while listeners.join_next().await.is_some() {} };
    tokio::pin!(drained);
    if tokio::time::timeout(cfg.drain_timeout, &mut drained)
        .await
        .is_err()
    {
        warn!(
            "drain timeout of {:?} passed; answering queued requests UNAVAILABLE",
            cfg.drain_timeout
        );
        scheduler.close();
        scheduler.abort_queued();
        drained.await;
    }
    scheduler.close();
    scheduler.drained().await;
    info!("drained; exiting");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = int.recv() => info!("SIGINT"),
    }
}
