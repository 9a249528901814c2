//! SIGHUP: each model whose files changed (or whose engine is unhealthy) loaded and warmed up
//! again beside the serving one, one model at a time, swapped in for new requests, and the
//! replaced one freed once its last request is answered. When nothing changed, every model is
//! reloaded: a SIGHUP always re-reads what it names.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::config::ServedModel;
use super::{load_warm, status_line, systemd, ServeConfig};
use crate::sched::queue::SchedulerConfig;
use crate::service::{Model, ModelIdentity, Service};

/// The models a reload loads from: read again from the config file when they came from there
/// (a model's path may have changed), else those given at start. Models added to or removed
/// from the file take a restart; other settings (listeners, limits) too.
fn reload_models(cfg: &ServeConfig) -> Result<Vec<ServedModel>, String> {
    let Some(file) = &cfg.model_from_file else {
        return Ok(cfg.models.clone());
    };
    let now = crate::settings::FileValues::from_path(file)
        .and_then(|f| f.models())
        .map_err(|e| e.to_string())?;
    if now.is_empty() {
        return Err(format!("{}: no model", file.display()));
    }
    let mut now = super::config::served_models(&now, cfg.dtype);
    // One unnamed model (`model = "DIR"`): the file may point it at another directory, and it
    // stays the same model, under the name it started with.
    if let ([old], [new]) = (cfg.models.as_slice(), now.as_mut_slice()) {
        new.name.clone_from(&old.name);
    }
    let mut models = Vec::with_capacity(cfg.models.len());
    for m in &cfg.models {
        match now.iter().find(|n| n.name == m.name) {
            // Only the path is taken from the file: the rest was set up with the queue.
            Some(n) => models.push(ServedModel {
                path: n.path.clone(),
                ..m.clone()
            }),
            None => {
                warn!(
                    model = %m.name,
                    "{} no longer names this model; it keeps serving until a restart",
                    file.display()
                );
                models.push(m.clone());
            }
        }
    }
    for n in now
        .iter()
        .filter(|n| !cfg.models.iter().any(|m| m.name == n.name))
    {
        warn!(model = %n.name, "{} names a new model; it is served after a restart", file.display());
    }
    Ok(models)
}

/// Reloads the models that changed, one at a time, swapping each in as it is ready. A model
/// that fails to load keeps its old version serving; the others are not touched. Either way
/// systemd hears `READY=1` again.
pub(super) async fn reload(
    service: &Service,
    cfg: &ServeConfig,
    sched_cfg: SchedulerConfig,
    serving_on: &str,
) {
    systemd::reloading();
    let models = match reload_models(cfg) {
        Ok(m) => m,
        Err(e) => {
            for old in service.models() {
                failed(service, &old, &e);
            }
            systemd::ready(&status_line(service, serving_on));
            return;
        }
    };
    let current = service.models();
    let changed = |m: &ServedModel| {
        current
            .iter()
            .find(|c| c.identity.name == m.name)
            // The fingerprint covers every file's path, size and time: the weights' (all a
            // revision is made of) among them, and a new directory.
            .is_none_or(|c| {
                ModelIdentity::files(&m.path) != c.files || c.queue.unhealthy().is_some()
            })
    };
    let due: Vec<&ServedModel> = match models.iter().filter(|m| changed(m)).collect::<Vec<_>>() {
        none if none.is_empty() => models.iter().collect(),
        some => some,
    };
    drop(current);
    for m in due {
        reload_one(service, cfg, &sched_cfg, m).await;
    }
    systemd::ready(&status_line(service, serving_on));
}

/// Loads `m` beside its serving version and swaps it in, or leaves the old one serving.
async fn reload_one(
    service: &Service,
    cfg: &ServeConfig,
    sched_cfg: &SchedulerConfig,
    m: &ServedModel,
) {
    let started = Instant::now();
    let Some(old) = service
        .models()
        .into_iter()
        .find(|o| o.identity.name == m.name)
    else {
        return;
    };
    let path: PathBuf = m.path.clone();
    info!(
        model = %m.name,
        revision = %old.identity.revision,
        "SIGHUP: reloading {}",
        path.display()
    );
    let loaded = load_warm(
        path.clone(),
        cfg.device,
        m.dtype,
        cfg.load.clone(),
        sched_cfg.clone(),
        Some(old.engine.clone()),
    )
    .await;
    let (engine, warm_runs) = match loaded {
        Ok(l) => l,
        Err(e) => return failed(service, &old, e),
    };
    let engine = Arc::new(engine);
    let queue = service.scheduler().add(
        engine.clone(),
        m.route(sched_cfg),
        // Its counts go on from the old version's.
        Some(old.queue.counters()),
    );
    let new = Arc::new(Model {
        engine,
        queue,
        identity: ModelIdentity::of(&m.name, &path),
        files: ModelIdentity::files(&path),
    });
    let revision = new.identity.revision.clone();
    let old_revision = old.identity.revision.clone();
    drop(old);
    // The old version's queue goes once the requests still holding it finish; then what it
    // held goes back to the kernel.
    let Some(retired) = service.swap_model(new) else {
        return;
    };
    tokio::spawn(retire(retired));
    if let Some(metrics) = service.metrics() {
        metrics.record_reload(&m.name, true);
    }
    info!(
        model = %m.name,
        old_revision = %old_revision,
        revision = %revision,
        warm_up_batches = warm_runs,
        reload_ms = started.elapsed().as_millis() as u64,
        "reloaded"
    );
}

/// A reload of `old`'s model that failed: said in the log and the metrics; the old version
/// keeps serving.
fn failed(service: &Service, old: &Model, e: impl std::fmt::Display) {
    error!(
        model = %old.identity.name,
        "reload failed, still serving revision {}: {e}",
        old.identity.revision
    );
    if let Some(metrics) = service.metrics() {
        metrics.record_reload(&old.identity.name, false);
    }
}

/// How long a retired model waits for the requests still holding it before it is let go
/// without the trim (they then free it whenever they finish).
const RETIRE_WAIT: Duration = Duration::from_secs(60);

/// Waits until the requests that still hold the replaced model have finished, then frees it
/// and trims the heap. The trim after the load ran while the old model was alive, so what the
/// old one freed (its scratch buffers, its queue, its allocations) would otherwise stay in
/// malloc's free lists and in RSS until some later reload: the soak's RSS wandered by a few
/// MiB from one reload to the next.
async fn retire(model: Arc<Model>) {
    let started = Instant::now();
    while Arc::strong_count(&model) > 1 && started.elapsed() < RETIRE_WAIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = Arc::strong_count(&model) == 1;
    let revision = model.identity.revision.clone();
    // Dropping the last reference may unmap the old engine's weights: not on an I/O thread.
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
