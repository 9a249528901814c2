//! [`ServeConfig`]: the [`Settings`] turned into what each part of the server runs with. The one
//! place that reads the settings for them: the listeners, the request limits, the scheduler and
//! its threads (and, in test builds, the test hooks) get plain structs from here, and their
//! `Default`s are what `serve` runs with when nothing is set, so no part keeps a copy of a
//! default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::engine::{DTypeChoice, DeviceChoice, LoadOptions};
use crate::sched::hot::ThreadsConfig;
use crate::sched::queue::SchedulerConfig;
use crate::sched::route::{Class, RouteOptions};
use crate::serve::limits::ConnectionLimits;
use crate::serve::quic::QuicOptions;
use crate::serve::unix::{self, UnixOptions};
use crate::settings::{ModelConfig, Settings, Source};
use crate::wire::protocol::RequestLimits;

/// One model `serve` serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedModel {
    /// As requests, responses and metrics name it.
    pub name: String,
    pub path: PathBuf,
    pub dtype: DTypeChoice,
    pub class: Class,
    pub weight: u32,
    /// `None`: the daemon's.
    pub queue_capacity: Option<usize>,
    /// `None`: the daemon's (sized for the device).
    pub max_batch_tokens: Option<usize>,
}

impl ServedModel {
    /// `dir` served alone, as a bare `--model DIR` serves it.
    pub fn single(dir: &std::path::Path, dtype: DTypeChoice) -> ServedModel {
        ServedModel {
            name: crate::service::ModelIdentity::dir_name(dir),
            path: dir.to_path_buf(),
            dtype,
            class: Class::Normal,
            weight: 1,
            queue_capacity: None,
            max_batch_tokens: None,
        }
    }

    fn of(m: &ModelConfig, dtype: DTypeChoice) -> ServedModel {
        ServedModel {
            name: m
                .name
                .clone()
                .unwrap_or_else(|| crate::service::ModelIdentity::dir_name(&m.path)),
            path: m.path.clone(),
            dtype: m.dtype.unwrap_or(dtype),
            class: m.priority,
            weight: m.weight,
            queue_capacity: m.queue_capacity,
            max_batch_tokens: m.max_batch_tokens,
        }
    }

    /// How the scheduler serves it, under the daemon's limits for its device.
    pub fn route(&self, sched: &SchedulerConfig) -> RouteOptions {
        RouteOptions {
            name: self.name.clone(),
            class: self.class,
            weight: self.weight,
            queue_capacity: self.queue_capacity.unwrap_or(sched.queue_capacity),
            max_batch_tokens: self.max_batch_tokens.unwrap_or(sched.max_batch_tokens),
        }
    }
}

/// The models of `s`, named, in order (the default first).
pub fn served_models(models: &[ModelConfig], dtype: DTypeChoice) -> Vec<ServedModel> {
    models.iter().map(|m| ServedModel::of(m, dtype)).collect()
}

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Never empty; the default model first.
    pub models: Vec<ServedModel>,
    /// The config file the models were read from (no `--model` flag given); a reload reads
    /// their paths from it again.
    pub model_from_file: Option<PathBuf>,
    pub device: DeviceChoice,
    /// The daemon's dtype, for models that set none.
    pub dtype: DTypeChoice,
    /// How loads (at start and on reload) use the weights cache.
    pub load: LoadOptions,
    pub unix: Option<UnixOptions>,
    pub quic: Option<QuicOptions>,
    pub connections: ConnectionLimits,
    pub requests: RequestLimits,
    pub scheduler: SchedulerConfig,
    /// How long in-flight requests may take to finish after a stop signal before they are
    /// answered UNAVAILABLE.
    pub drain_timeout: Duration,
    /// Loopback HTTP listener for Prometheus metrics and health probes; off when `None`.
    pub metrics_addr: Option<SocketAddr>,
}

impl ServeConfig {
    /// Checks the settings that only make sense together and derives each part's limits.
    pub fn from_settings(s: &Settings) -> Result<ServeConfig, String> {
        let unix = match &s.uds {
            None => None,
            Some(path) => Some(UnixOptions {
                path: path.clone(),
                mode: s.uds_mode.0,
                group: match &s.uds_group {
                    None => None,
                    Some(g) => Some(
                        unix::group_id(g)
                            .ok_or_else(|| format!("--uds-group: no group named {g:?}"))?,
                    ),
                },
                allow_uids: s.allow_uid.clone(),
                allow_gids: s.allow_gid.clone(),
            }),
        };
        let quic = match (s.quic, &s.tls_cert, &s.tls_key) {
            (Some(listen), Some(cert), Some(key)) => {
                if s.client_ca.is_none() && !s.allow_anonymous_loopback {
                    return Err(
                        "--quic needs --client-ca (mTLS) or --allow-anonymous-loopback".into(),
                    );
                }
                Some(QuicOptions {
                    listen,
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: s.client_ca.clone(),
                    allow_anonymous_loopback: s.allow_anonymous_loopback,
                })
            }
            (Some(_), _, _) => return Err("--quic needs --tls-cert and --tls-key".into()),
            (None, _, _) => None,
        };
        if let Some(cpus) = &s.cpus {
            let allowed = crate::sched::hot::allowed_cpus();
            if let Some(c) = cpus.0.iter().find(|c| !allowed.contains(c)) {
                return Err(format!(
                    "--cpus: CPU {c} is not one this process may run on ({})",
                    crate::settings::CpuList(allowed)
                ));
            }
        }
        Ok(ServeConfig {
            models: served_models(&s.models, s.dtype),
            model_from_file: s.model_from_file(),
            device: s.device,
            dtype: s.dtype,
            load: LoadOptions {
                max_attention_bytes: Some(s.max_attention_mib.saturating_mul(1 << 20)),
                ..LoadOptions::from_settings(s.cache_dir.as_deref(), s.no_weights_cache)
            },
            unix,
            quic,
            connections: connection_limits(s),
            requests: request_limits(s),
            scheduler: scheduler_config(s),
            drain_timeout: Duration::from_secs(s.drain_timeout_secs),
            metrics_addr: s.metrics_addr,
        })
    }
}

/// What each listener allows a connection. The ranges (at least 1 connection, request and
/// second) are the settings table's; only the tie between two settings is made here.
fn connection_limits(s: &Settings) -> ConnectionLimits {
    ConnectionLimits {
        max_connections: s.max_connections,
        max_in_flight: s.max_in_flight,
        max_frame_bytes: s.max_frame_bytes,
        // At least one frame of the largest size must fit, or no request of that size could
        // ever be read.
        max_receive_bytes: s.max_receive_bytes.max(s.max_frame_bytes),
        idle_timeout: Duration::from_secs(s.idle_timeout_secs),
        handshake_timeout: Duration::from_secs(s.handshake_timeout_secs),
        frame_timeout: Duration::from_secs(s.frame_timeout_secs),
    }
}

fn request_limits(s: &Settings) -> RequestLimits {
    RequestLimits {
        max_inputs: s.max_inputs,
        max_text_bytes: s.max_text_bytes,
    }
}

fn scheduler_config(s: &Settings) -> SchedulerConfig {
    let unset = |key| !matches!(s.sources.get(key), Some(Source::Flag | Source::File));
    SchedulerConfig {
        queue_capacity: s.queue_capacity,
        max_batch_tokens: s.max_batch_tokens,
        bulk_tokens: SchedulerConfig::bulk_tokens_for(s.max_batch_tokens),
        max_batch_size: s.max_batch_size,
        max_attention_bytes: s.max_attention_mib.saturating_mul(1 << 20),
        idle_heartbeat: Duration::from_secs(1),
        threads: threads_config(s),
        default_limits: (unset("max_batch_tokens"), unset("max_batch_size")),
    }
}

fn threads_config(s: &Settings) -> ThreadsConfig {
    ThreadsConfig {
        threads: s.threads,
        spin: Duration::from_micros(s.spin_us),
        busy_poll: s.busy_poll,
        cpus: s.cpus.as_ref().map(|c| c.0.clone()),
    }
}

/// The test hooks the hidden `serve --test-*` flags ask for; `None` when none was given.
#[cfg(feature = "test-hooks")]
pub fn test_hooks(s: &Settings) -> Option<crate::sched::hooks::TestHooks> {
    let h = &s.hooks;
    let stall_after = h
        .test_stall_worker_after_secs
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok());
    let any = h.test_fail_batches.is_some()
        || h.test_fail_probes.is_some()
        || h.test_hold_batches_while.is_some()
        || h.test_hold_bulk_while.is_some()
        || stall_after.is_some();
    any.then(|| crate::sched::hooks::TestHooks {
        fail_batches: h.test_fail_batches.unwrap_or(0).into(),
        fail_probes: h.test_fail_probes.unwrap_or(0).into(),
        hold_while: h.test_hold_batches_while.clone(),
        hold_bulk_while: h.test_hold_bulk_while.clone(),
        stall_after,
    })
}

/// The limits at the default settings.
impl Default for ConnectionLimits {
    fn default() -> Self {
        connection_limits(&Settings::defaults())
    }
}

/// The limits at the default settings.
impl Default for RequestLimits {
    fn default() -> Self {
        request_limits(&Settings::defaults())
    }
}

/// The limits at the default settings, sized for a CPU: larger batches only add latency once
/// the cores are saturated.
impl Default for SchedulerConfig {
    fn default() -> Self {
        scheduler_config(&Settings::defaults())
    }
}

impl Default for ThreadsConfig {
    fn default() -> Self {
        threads_config(&Settings::defaults())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::queue::{GPU_DEFAULT_ROWS, GPU_DEFAULT_TOKENS};
    use crate::settings::ServeArgs;
    use clap::{Args, Command, FromArgMatches};

    fn settings(argv: &[&str]) -> Settings {
        let cmd = ServeArgs::augment_args(Command::new("serve").no_binary_name(true));
        let m = cmd.try_get_matches_from(argv).unwrap();
        Settings::resolve(&ServeArgs::from_arg_matches(&m).unwrap()).unwrap()
    }

    /// The configuration of `serve --model m` plus `flags`.
    fn config(flags: &[&str]) -> Result<ServeConfig, String> {
        let argv: Vec<&str> = ["--model", "m"].iter().chain(flags).copied().collect();
        ServeConfig::from_settings(&settings(&argv))
    }

    #[test]
    fn pass_sizes_left_at_their_defaults_grow_on_a_gpu_and_set_ones_stay() {
        let sched = |flags: &[&str]| config(flags).unwrap().scheduler;
        let cpu = sched(&[]).for_device(false);
        assert_eq!((cpu.max_batch_size, cpu.max_batch_tokens), (32, 8192));
        let gpu = sched(&[]).for_device(true);
        assert_eq!((gpu.max_batch_size, gpu.max_batch_tokens), (128, 65_536));
        assert_eq!(gpu.bulk_tokens, 65_536 / 4);
        let set = sched(&["--max-batch-size", "8"]).for_device(true);
        assert_eq!((set.max_batch_size, set.max_batch_tokens), (8, 65_536));
    }

    /// The TOML inside the shipped ConfigMap (its `classifyd.toml: |` block, unindented).
    fn configmap_toml() -> String {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/kubernetes/configmap.yaml"
        );
        let yaml = std::fs::read_to_string(path).unwrap();
        let block = &yaml[yaml.find("classifyd.toml: |").unwrap()..];
        block
            .lines()
            .skip(1)
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .map(|l| l.get(4..).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The shipped configs leave pass sizes to the device: the GPU DaemonSet, which runs the
    /// same ConfigMap with `--device cuda`, gets the GPU's batches, not the CPU's.
    #[test]
    fn shipped_configs_give_a_gpu_its_own_batch_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let configmap = dir.path().join("classifyd.toml");
        std::fs::write(&configmap, configmap_toml()).unwrap();
        let systemd = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/classifyd.toml");
        for file in [configmap.to_str().unwrap(), systemd] {
            // As daemonset-gpu.yaml runs it (the model path need not exist to resolve).
            let gpu =
                ServeConfig::from_settings(&settings(&["--config", file, "--device", "cuda"]))
                    .unwrap()
                    .scheduler
                    .for_device(true);
            assert_eq!(
                (gpu.max_batch_size, gpu.max_batch_tokens),
                (GPU_DEFAULT_ROWS, GPU_DEFAULT_TOKENS),
                "{file}"
            );
            let cpu = ServeConfig::from_settings(&settings(&["--config", file]))
                .unwrap()
                .scheduler
                .for_device(false);
            assert_eq!(
                (cpu.max_batch_size, cpu.max_batch_tokens),
                (32, 8192),
                "{file}"
            );
        }
    }

    #[test]
    fn limits_follow_the_settings() {
        let limits = |flags: &[&str]| config(flags).unwrap().connections;
        assert_eq!(limits(&[]).max_receive_bytes, 128 << 20);
        assert_eq!(limits(&[]), ConnectionLimits::default());
        // Never below one largest frame, or no request of that size could ever be read.
        let tight = limits(&["--max-receive-bytes", "10", "--max-frame-bytes", "4096"]);
        assert_eq!(tight.max_receive_bytes, 4096);
        let flagged = limits(&["--frame-timeout-secs", "7"]);
        assert_eq!(flagged.frame_timeout, Duration::from_secs(7));
        // Unrelated to the idle timeout, which keeps its default.
        assert_eq!(flagged.idle_timeout, Duration::from_secs(60));
        assert_eq!(flagged.handshake_timeout, Duration::from_secs(10));
        let handshake = limits(&["--handshake-timeout-secs", "3"]).handshake_timeout;
        assert_eq!(handshake, Duration::from_secs(3));
    }

    #[test]
    fn engine_threads_follow_the_settings_and_cpus_must_be_ours() {
        let threads = |flags: &[&str]| config(flags).map(|c| c.scheduler.threads);
        let d = threads(&[]).unwrap();
        assert_eq!(
            (d.threads, d.spin, d.busy_poll, d.cpus),
            (0, Duration::from_millis(1), false, None)
        );
        let mine = crate::sched::hot::allowed_cpus();
        let first = mine[0].to_string();
        let t = threads(&[
            "--threads",
            "3",
            "--spin-us",
            "0",
            "--busy-poll",
            "--cpus",
            &first,
        ])
        .unwrap();
        assert_eq!((t.threads, t.spin, t.busy_poll), (3, Duration::ZERO, true));
        assert_eq!(t.cpus, Some(vec![mine[0]]));
        let e = threads(&["--cpus", "1023"]).unwrap_err();
        assert!(
            e.contains("--cpus: CPU 1023 is not one this process may run on"),
            "{e}"
        );
    }

    #[test]
    fn quic_needs_its_certificate_and_client_authentication() {
        let e = ServeConfig::from_settings(&settings(&["--model", "m", "--quic", "127.0.0.1:1"]));
        assert!(e.unwrap_err().contains("--tls-cert"));
        let e = ServeConfig::from_settings(&settings(&[
            "--model",
            "m",
            "--quic",
            "127.0.0.1:1",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
        ]));
        assert!(e.unwrap_err().contains("--client-ca"));
    }
}
