//! SIGHUP: the model directory loaded and warmed up again beside the serving one, swapped in
//! for new requests, and the replaced one freed once its last request is answered.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::{count_batches, load_warm, status_line, systemd, ServeConfig};
use crate::sched::queue::SchedulerConfig;
use crate::sched::Scheduler;
use crate::service::{Model, ModelIdentity, Service};

/// The model directory a reload loads: read again from the config file when the model path
/// came from there, else the one given at start. Other settings (listeners, limits) are bound
/// at start and change only with a restart.
fn reload_model_path(cfg: &ServeConfig) -> Result<PathBuf, String> {
    match &cfg.model_from_file {
        None => Ok(cfg.model.clone()),
        Some(file) => crate::settings::FileValues::from_path(file)
            .and_then(|f| f.model())
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{}: no model", file.display())),
    }
}

/// Reloads the model directory and swaps the new model in. On failure the old model keeps
/// serving. Either way systemd hears `READY=1` again.
pub(super) async fn reload(
    service: &Service,
    cfg: &ServeConfig,
    sched_cfg: SchedulerConfig,
    serving_on: &str,
) {
    systemd::reloading();
    let started = Instant::now();
    let old = service.model();
    let path = match reload_model_path(cfg) {
        Ok(p) => p,
        Err(e) => return failed(service, &old, serving_on, e),
    };
    info!(revision = %old.identity.revision, "SIGHUP: reloading {}", path.display());
    match load_warm(
        path.clone(),
        cfg.device,
        cfg.dtype,
        cfg.load.clone(),
        sched_cfg.clone(),
        Some(old.engine.clone()),
    )
    .await
    {
        Ok((engine, warm_runs)) => {
            let engine = Arc::new(engine);
            let identity = ModelIdentity::of(&path);
            let scheduler = Scheduler::start(engine.clone(), sched_cfg.clone());
            if let Some(m) = service.metrics() {
                count_batches(&scheduler, m);
            }
            let new = Arc::new(Model {
                engine,
                scheduler,
                identity,
            });
            let status = status_line(&new, serving_on);
            let revision = new.identity.revision.clone();
            // The old model's scheduler closes once the requests still holding it finish;
            // then what it held goes back to the kernel.
            let old_revision = old.identity.revision.clone();
            let retired = service.swap_model(new);
            drop(old);
            tokio::spawn(retire(retired));
            if let Some(m) = service.metrics() {
                m.record_reload(true);
            }
            info!(
                old_revision = %old_revision,
                revision = %revision,
                warm_up_batches = warm_runs,
                reload_ms = started.elapsed().as_millis() as u64,
                "reloaded"
            );
            systemd::ready(&status);
        }
        Err(e) => failed(service, &old, serving_on, e),
    }
}

/// A reload that failed: said in the log and the metrics, and systemd hears `READY=1` again
/// with the old model, which keeps serving.
fn failed(service: &Service, old: &Model, serving_on: &str, e: impl std::fmt::Display) {
    error!(
        "reload failed, still serving revision {}: {e}",
        old.identity.revision
    );
    if let Some(m) = service.metrics() {
        m.record_reload(false);
    }
    systemd::ready(&status_line(old, serving_on));
}

/// How long a retired model waits for the requests still holding it before it is let go
/// without the trim (they then free it whenever they finish).
const RETIRE_WAIT: Duration = Duration::from_secs(60);

/// Waits until the requests that still hold the replaced model have finished, then frees it
/// and trims the heap. The trim after the load ran while the old model was alive, so what the
/// old one freed (its scratch buffers, its queue, its threads' allocations) would otherwise
/// stay in malloc's free lists and in RSS until some later reload: the soak's RSS wandered by
/// a few MiB from one reload to the next.
async fn retire(model: Arc<Model>) {
    let started = Instant::now();
    while Arc::strong_count(&model) > 1 && started.elapsed() < RETIRE_WAIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = Arc::strong_count(&model) == 1;
    let revision = model.identity.revision.clone();
    // Dropping the last reference joins the old engine threads: not on an I/O thread.
    let _ = tokio::task::spawn_blocking(move || {
        drop(model);
        if last {
            crate::engine::heap::trim();
        }
    })
    .await;
    if last {
        info!(%revision, "freed the replaced model");
    } else {
        warn!(
            %revision,
            "the replaced model is still held by requests after {RETIRE_WAIT:?}; freed when they end"
        );
    }
}
