//! The daemon's life: [`run`] is start (load, warm up) → bind → serve (ready) → (signal) →
//! drain → exit, one function each.

pub mod config;
mod connection;
pub mod handler;
pub mod http;
pub mod limits;
mod load;
pub mod quic;
mod reload;
pub mod systemd;
pub mod unix;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::engine::error::LoadError;
use crate::engine::Engine;
use crate::sched::queue::SchedulerConfig;
use crate::sched::Scheduler;
use crate::service::metrics::Metrics;
use crate::service::tokenize_pool::TokenizePool;
use crate::service::{Model, ModelIdentity, Service};
pub use config::ServeConfig;
pub use limits::ConnectionLimits;
use load::load_warm;
pub use quic::QuicOptions;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Bind(#[from] unix::BindError),
    #[error("quic: {0}")]
    Quic(String),
    #[error("{0}")]
    Config(String),
    #[error("warm-up failed: {0}")]
    WarmUp(String),
    #[error("socket activation: {0}")]
    SocketActivation(std::io::Error),
    /// One of several models failed to start: which one.
    #[error("model {name} ({}): {source}", path.display())]
    InModel {
        name: String,
        path: PathBuf,
        source: Box<ServerError>,
    },
}

/// The least input bytes that may wait for a tokenizer thread at once (see
/// [`TokenizePool`]); raised to four frames when `--max-frame-bytes` is larger.
const TOKENIZE_BUDGET_BYTES: usize = 32 << 20;

/// `STATUS=` for `systemctl status`: the models, their revisions and where they serve.
fn status_line(service: &Service, serving_on: &str) -> String {
    let models = service.models();
    let info = models[0].engine.info();
    let each: Vec<String> = models
        .iter()
        .map(|m| format!("{} revision {}", m.identity.name, m.identity.revision))
        .collect();
    format!(
        "{} on {} ({}), serving on {serving_on}",
        each.join(", "),
        info.device,
        info.compute_dtype
    )
}

/// Serves until `shutdown` resolves, then drains. Returns once every accepted request has been
/// answered and every listener is closed.
pub async fn run(cfg: ServeConfig, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    // Listeners first: a socket in use, a missing directory, a TLS file that does not load or
    // a busy metrics port fail in a moment, not after a large model has loaded. Bound and
    // held, they queue what connects while the model loads (as systemd's socket does).
    let bound = bind(&cfg).await?;
    let started = match start(&cfg).await {
        Ok(s) => s,
        Err(e) => {
            bound.abandon();
            return Err(e);
        }
    };
    let serving = serve(&cfg, started, bound);
    shutdown.await;
    drain(serving, cfg.drain_timeout).await;
    Ok(())
}

/// What [`start`] leaves ready to serve.
struct Started {
    service: Arc<Service>,
    /// The scheduler settings for this device, which a reload's routes are sized by.
    sched_cfg: SchedulerConfig,
    watchdog: Option<std::time::Duration>,
    warm_runs: usize,
    /// When `run` began, for the startup time the "ready" line reports.
    at: Instant,
}

/// Loads and warms up every model, one after the other, and starts the one scheduler they
/// share, the tokenizer threads and the metrics.
async fn start(cfg: &ServeConfig) -> Result<Started, ServerError> {
    let at = Instant::now();
    let several = cfg.models.len() > 1;
    let mut loaded = Vec::with_capacity(cfg.models.len());
    let mut warm_runs = 0;
    for m in &cfg.models {
        let load = load_warm(
            m.path.clone(),
            cfg.device,
            m.dtype,
            cfg.load.clone(),
            cfg.scheduler.clone(),
            None,
        )
        .await;
        let (engine, runs) = match load {
            Ok(l) => l,
            // With one model the error reads as it always has.
            Err(e) if !several => return Err(e),
            Err(e) => {
                return Err(ServerError::InModel {
                    name: m.name.clone(),
                    path: m.path.clone(),
                    source: Box::new(e),
                })
            }
        };
        warm_runs += runs;
        loaded.push((m, Arc::new(engine)));
    }
    let watchdog = systemd::watchdog_interval();
    // Every model runs on the daemon's one device.
    let pads = loaded.iter().any(|(_, e)| e.pads_batches());
    let mut sched_cfg = cfg.scheduler.for_device(pads);
    if let Some(w) = watchdog {
        // An idle worker must beat several times per watchdog interval.
        sched_cfg.idle_heartbeat = sched_cfg.idle_heartbeat.min(w / 4);
    }
    let engines: Vec<&Engine> = loaded.iter().map(|(_, e)| e.as_ref()).collect();
    let scheduler = Scheduler::start(&engines, sched_cfg.clone());
    // The engines move into the service: a copy kept here would outlive a reload and keep the
    // first version's ~90 MB resident for the life of the process (found by the soak).
    let mut models = loaded.into_iter().map(|(m, engine)| {
        Arc::new(Model {
            queue: scheduler.add(engine.clone(), m.route(&sched_cfg), None),
            identity: ModelIdentity::of(&m.name, &m.path),
            files: ModelIdentity::files(&m.path),
            engine,
        })
    });
    let Some(default) = models.next() else {
        return Err(ServerError::Config("no model to serve".into()));
    };
    let others: Vec<Arc<Model>> = models.collect();
    // Texts waiting for a tokenizer: room for several of the largest requests at once.
    let budget = cfg
        .connections
        .max_frame_bytes
        .saturating_mul(4)
        .max(TOKENIZE_BUDGET_BYTES);
    // About four bytes of text a token: requests the engine will compute in its bulk lane are
    // tokenized at background priority too.
    let bulk_bytes = sched_cfg.bulk_tokens.saturating_mul(4);
    let tokenizer = TokenizePool::new(
        TokenizePool::default_threads(),
        budget,
        bulk_bytes,
        TokenizePool::INLINE_BYTES,
    )
    .map_err(|e| ServerError::Config(format!("cannot start the tokenizer threads: {e}")))?;
    let mut service = Service::new(scheduler, default, others, cfg.requests, tokenizer);
    if cfg.metrics_addr.is_some() {
        let labels = service.models().iter().map(|m| m.labels()).collect();
        let m = Arc::new(Metrics::new(labels));
        let observer = m.clone();
        service
            .scheduler()
            .observe_batches(Box::new(move |model, rows, tokens| {
                observer.record_batch(model, rows, tokens)
            }));
        service = service.with_metrics(m);
    }
    Ok(Started {
        service: Arc::new(service),
        sched_cfg,
        watchdog,
        warm_runs,
        at,
    })
}

/// The sockets [`bind`] opened, not yet served.
struct Bound {
    metrics: Option<tokio::net::TcpListener>,
    unix: Option<unix::Listener>,
    quic: Option<quinn::Endpoint>,
    /// Where the daemon serves, as `systemctl status` shows it.
    serving_on: String,
}

impl Bound {
    /// Closes what was bound when the daemon will not serve, removing a socket file it made
    /// (one from systemd stays, as ever).
    fn abandon(self) {
        if let Some(l) = self.unix.filter(|l| l.owns_path) {
            let _ = std::fs::remove_file(&l.opts.path);
        }
    }
}

/// What `check-config` found of the listeners.
pub struct ListenerCheck {
    /// Where the daemon would serve, as `systemctl status` shows it.
    pub serving_on: String,
    /// Set when a daemon serves the socket now, so nothing was bound.
    pub live: Option<String>,
}

/// What `check-config` asks of the listeners: exactly what [`run`] does before it loads the
/// model (the same binds, so the same errors in the same words), then closes them again.
///
/// When a daemon already answers on the socket (check-config before a restart, or systemd's
/// socket unit holding it), its ports are busy because they are its own: then only what binds
/// nothing is checked (the socket's directory, the TLS files, the addresses), and the answer
/// says so.
pub async fn check_listeners(cfg: &ServeConfig) -> Result<ListenerCheck, ServerError> {
    let live = cfg.unix.as_ref().filter(|u| unix::answers(&u.path));
    let Some(live) = live else {
        let bound = bind(cfg).await?;
        let serving_on = bound.serving_on.clone();
        bound.abandon();
        return Ok(ListenerCheck {
            serving_on,
            live: None,
        });
    };
    precheck(cfg)?;
    if let Some(q) = &cfg.quic {
        quic::server_config(q, &cfg.connections).map_err(|e| ServerError::Quic(e.to_string()))?;
    }
    let mut serving_on = vec![live.path.display().to_string()];
    serving_on.extend(cfg.quic.as_ref().map(|q| format!("quic {}", q.listen)));
    Ok(ListenerCheck {
        serving_on: serving_on.join(" and "),
        live: Some(format!(
            "a daemon serves {} now, so its ports were not bound; `serve` starts once it stops",
            live.path.display()
        )),
    })
}

/// The checks before any bind: a listener at all, and a loopback metrics address.
fn precheck(cfg: &ServeConfig) -> Result<(), ServerError> {
    if cfg.unix.is_none() && cfg.quic.is_none() {
        return Err(ServerError::Config(
            "no listener: give --uds PATH and/or --quic ADDR".into(),
        ));
    }
    if let Some(addr) = cfg.metrics_addr {
        http::check_addr(addr).map_err(ServerError::Config)?;
    }
    if let Some(u) = &cfg.unix {
        unix::check_dir(&u.path)?;
    }
    Ok(())
}

/// Binds the metrics endpoint, the Unix socket (or takes the one systemd passed) and the QUIC
/// endpoint, in that order, after the checks that need no socket.
async fn bind(cfg: &ServeConfig) -> Result<Bound, ServerError> {
    precheck(cfg)?;
    let metrics = match cfg.metrics_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| ServerError::Config(format!("--metrics-addr {addr}: {e}")))?,
        ),
        None => None,
    };
    let mut serving_on = Vec::new();
    let unix = match &cfg.unix {
        Some(opts) => {
            serving_on.push(opts.path.display().to_string());
            Some(bind_unix(opts)?)
        }
        None => None,
    };
    let mut bound = Bound {
        metrics,
        unix,
        quic: None,
        serving_on: String::new(),
    };
    if let Some(q) = &cfg.quic {
        match quic::listen(q, &cfg.connections) {
            Ok(endpoint) => bound.quic = Some(endpoint),
            Err(e) => {
                // Not left behind as a stale socket file.
                bound.abandon();
                return Err(ServerError::Quic(e.to_string()));
            }
        }
        info!("listening on quic {}", q.listen);
        serving_on.push(format!("quic {}", q.listen));
    }
    bound.serving_on = serving_on.join(" and ");
    Ok(bound)
}

/// The Unix socket systemd passed, or one bound at `--uds`.
fn bind_unix(opts: &unix::UnixOptions) -> Result<unix::Listener, ServerError> {
    // With socket activation systemd bound the socket, set its mode and owner and removes it;
    // --uds then only names it.
    let inherited = systemd::inherited_unix_listener().map_err(ServerError::SocketActivation)?;
    let (socket, owns_path) = match inherited {
        Some(l) => {
            if let Some(addr) = l
                .local_addr()
                .ok()
                .filter(|a| a.as_pathname() != Some(&opts.path))
            {
                warn!(
                    "the socket from systemd is {addr:?}, not --uds {}",
                    opts.path.display()
                );
            }
            let l = tokio::net::UnixListener::from_std(l).map_err(ServerError::SocketActivation)?;
            info!(
                "listening on unix socket {} (from systemd)",
                opts.path.display()
            );
            (l, false)
        }
        None => {
            let l = unix::bind(opts)?;
            info!("listening on unix socket {}", opts.path.display());
            (l, true)
        }
    };
    Ok(unix::Listener {
        socket,
        opts: opts.clone(),
        owns_path,
    })
}

/// What [`serve`] runs until the drain.
struct Serving {
    service: Arc<Service>,
    /// Cancelled to stop the listeners.
    token: CancellationToken,
    listeners: tokio::task::JoinSet<()>,
    /// The watchdog, the status line and the reload handler: stopped first at the drain.
    notifiers: Vec<tokio::task::JoinHandle<()>>,
}

/// Serves on every bound socket, then says so: the "ready" line, `READY=1`, and the watchdog,
/// status and SIGHUP (reload) tasks.
fn serve(cfg: &ServeConfig, started: Started, bound: Bound) -> Serving {
    let Started {
        service,
        sched_cfg,
        watchdog,
        warm_runs,
        at,
    } = started;
    let token = CancellationToken::new();
    let mut listeners = tokio::task::JoinSet::new();
    if let Some(listener) = bound.unix {
        listeners.spawn(unix::serve(
            listener,
            service.clone(),
            cfg.connections,
            token.clone(),
        ));
    }
    if let Some(endpoint) = bound.quic {
        listeners.spawn(quic::serve(
            endpoint,
            service.clone(),
            cfg.connections.into(),
            token.clone(),
        ));
    }
    if let (Some(listener), Some(m)) = (bound.metrics, service.metrics().cloned()) {
        if let Ok(addr) = listener.local_addr() {
            info!("serving metrics on http://{addr}/metrics");
        }
        listeners.spawn(http::serve(listener, m, service.clone(), token.clone()));
    }
    service.set_ready(true);
    for model in service.models() {
        let info = model.engine.info();
        info!(
            model = %model.identity.name,
            revision = %model.identity.revision,
            device = %info.device,
            dtype = %info.compute_dtype,
            "serving"
        );
    }
    // (Not held past here, for the same reason as the engines in `start`.)
    let default = service.model();
    let info = default.engine.info();
    info!(
        model = %default.identity.name,
        revision = %default.identity.revision,
        models = service.models().len(),
        device = %info.device,
        dtype = %info.compute_dtype,
        warm_up_batches = warm_runs,
        startup_ms = at.elapsed().as_millis() as u64,
        "ready"
    );
    drop(default);
    let serving_on = bound.serving_on;
    systemd::ready(&status_line(&service, &serving_on));
    let mut notifiers = Vec::new();
    if let Some(interval) = watchdog {
        info!("feeding the systemd watchdog ({interval:?}) from the engine heartbeat");
        let service = service.clone();
        notifiers.push(systemd::spawn_watchdog(
            move || watchdog_state(&service),
            interval,
        ));
    }
    {
        let (service, serving_on) = (service.clone(), serving_on.clone());
        notifiers.extend(systemd::spawn_status(move || {
            let stats: Vec<_> = service.models().iter().map(|m| m.queue.stats()).collect();
            systemd::StatusNow {
                base: status_line(&service, &serving_on),
                computed: stats.iter().map(|s| s.computed).sum(),
                queued: stats.iter().map(|s| s.queued).sum(),
                unhealthy: Service::unhealthy_line(&service.unhealthy()),
            }
        }));
    }
    // Reloads run one at a time in this task; SIGHUPs arriving meanwhile coalesce into one more.
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            let (service, cfg) = (service.clone(), cfg.clone());
            notifiers.push(tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    reload::reload(&service, &cfg, sched_cfg.clone(), &serving_on).await;
                }
            }));
        }
        Err(e) => warn!("cannot install a SIGHUP handler; reload is off: {e}"),
    }
    Serving {
        service,
        token,
        listeners,
        notifiers,
    }
}

/// Stops accepting, answers every request already read (within `timeout`; past it, those
/// still queued are answered UNAVAILABLE), and waits for the engine to finish.
async fn drain(serving: Serving, timeout: std::time::Duration) {
    let Serving {
        service,
        token,
        mut listeners,
        notifiers,
    } = serving;
    // No reload may swap in a model after this point.
    for n in &notifiers {
        n.abort();
    }
    info!("stop signal: draining");
    let scheduler = service.scheduler();
    systemd::stopping();
    service.set_ready(false);
    token.cancel();
    let drained = async { while listeners.join_next().await.is_some() {} };
    tokio::pin!(drained);
    if tokio::time::timeout(timeout, &mut drained).await.is_err() {
        warn!("drain timeout of {timeout:?} passed; answering queued requests UNAVAILABLE");
        scheduler.close();
        scheduler.abort_queued();
        drained.await;
    }
    scheduler.close();
    scheduler.drained().await;
    info!("drained; exiting");
}

/// What the watchdog goes by: why it is to be withheld when every model is unhealthy (one
/// model's fault leaves the others serving, and a SIGHUP reloads it), and the engine threads'
/// heartbeat age.
fn watchdog_state(service: &Service) -> (Option<String>, std::time::Duration) {
    let unhealthy = service.unhealthy();
    let all = unhealthy.len() == service.models().len();
    let why = all.then(|| Service::unhealthy_line(&unhealthy)).flatten();
    (why, service.scheduler().heartbeat_age())
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
