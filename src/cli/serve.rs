//! `serve` and `check-config`: the settings resolved, checked, and served.

use anyhow::{anyhow, bail};

use crate::engine::{DTypeChoice, DeviceChoice, Engine};
use crate::serve::{self, ServeConfig};
use crate::settings::{ServeArgs, Settings};

/// The settings and what the server runs with; errors about the file name it.
fn resolve(a: &ServeArgs) -> anyhow::Result<(Settings, ServeConfig)> {
    let s = Settings::resolve(a)?;
    let cfg = ServeConfig::from_settings(&s).map_err(|e| match &s.config {
        Some(p) => anyhow!("{}: {e}", p.display()),
        None => anyhow!("{e}"),
    })?;
    Ok((s, cfg))
}

pub(crate) fn serve(a: ServeArgs) -> anyhow::Result<i32> {
    let (s, cfg) = resolve(&a)?;
    // Before any thread of the daemon's allocates: reloads then reuse two heaps instead of
    // leaving an arena behind with every generation of engine threads.
    crate::engine::heap::few_arenas();
    if let Some(cpus) = &s.cpus {
        // Every thread started from here on inherits this mask; the engine threads then pin
        // themselves to --cpus.
        match crate::sched::hot::other_cpus(&cpus.0) {
            Some(rest) => crate::sched::hot::pin_current_thread(&rest, "I/O and tokenizer"),
            None => tracing::warn!(
                "--cpus {cpus} leaves no other CPU for the I/O and tokenizer threads; they stay unpinned"
            ),
        }
    }
    #[cfg(feature = "test-hooks")]
    if let Some(hooks) = crate::serve::config::test_hooks(&s) {
        crate::sched::hooks::arm(hooks);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("classifyd-io")
        .enable_all()
        .build()?;
    runtime.block_on(serve::run(cfg, serve::stop_signal()))?;
    Ok(0)
}

/// `classifyd check-config`: what `serve` checks before it serves (the listeners bound and
/// closed again, the model loaded on the CPU), without serving.
/// Prints `ok: ...` and the effective settings, each with where it came from.
pub(crate) fn check_config(a: &ServeArgs) -> anyhow::Result<String> {
    let (s, cfg) = resolve(a)?;
    let prefix = |e: anyhow::Error| match &s.config {
        Some(p) => anyhow!("{}: {}", p.display(), super::report::causes(&e)),
        None => anyhow!("{}", super::report::causes(&e)),
    };
    let summary = validate(&cfg).map_err(prefix)?;
    let source = match &s.config {
        Some(p) => format!("{}: ", p.display()),
        None => String::new(),
    };
    Ok(format!("ok: {source}{summary}\n{}", s.report()))
}

fn validate(cfg: &ServeConfig) -> anyhow::Result<String> {
    // The listeners as `serve` binds them before it loads anything, bound and closed again:
    // "ok" then means the socket is free, its directory there, the TLS files load and the
    // metrics port is free, as `serve` will find them (at this moment).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Quiet: the "listening on" lines are for a daemon that goes on to serve.
    let listeners = tracing::dispatcher::with_default(&tracing::Dispatch::none(), || {
        runtime.block_on(serve::check_listeners(cfg))
    })?;
    drop(runtime);
    let several = cfg.models.len() > 1;
    let mut models = Vec::new();
    for m in &cfg.models {
        // Named as `serve` names the model that fails to start.
        let field = match several {
            true => format!("model {} ({})", m.name, m.path.display()),
            false => "model".to_string(),
        };
        if !m.path.is_dir() {
            bail!("{field}: {}: not a directory", m.path.display());
        }
        // Loaded on the CPU, so the check runs where the daemon's GPU is absent or busy.
        let engine = Engine::load(&m.path, DeviceChoice::Cpu, DTypeChoice::Auto)
            .map_err(|e| anyhow!("{field}: {e}"))?;
        let info = engine.info();
        let name = match several {
            true => format!("{}: ", m.name),
            false => String::new(),
        };
        models.push(format!(
            "{name}{} ({}, {} labels)",
            m.path.display(),
            info.architecture,
            info.labels.len()
        ));
    }
    let metrics = cfg
        .metrics_addr
        .map(|m| format!(", metrics {m}"))
        .unwrap_or_default();
    let live = listeners
        .live
        .map(|note| format!("\nnote: {note}"))
        .unwrap_or_default();
    let what = if several { "models" } else { "model" };
    Ok(format!(
        "{what} {}, serving on {}{metrics}{live}",
        models.join(", "),
        listeners.serving_on,
    ))
}
