//! Every `serve` setting, written once: its name (the TOML key, and with `-` for `_` the flag),
//! its type, its default, its doc line and its validation all come from one row of the
//! `settings!` table below. The flags, the `--config` file's keys, the defaults, `--help`
//! and `check-config`'s report are all generated from it, so they cannot disagree.
//!
//! Flags win over the file, the file over the defaults; paths in the file are relative to the
//! file's directory. [`Settings::resolve`] does the merge and records where each value came
//! from ([`Source`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};

use crate::engine::passes;
use crate::engine::{DTypeChoice, DeviceChoice};
use crate::sched::queue::{GPU_DEFAULT_ROWS, GPU_DEFAULT_TOKENS};

mod file;
mod local;
mod models;
mod value;

pub use file::FileValues;
pub use local::{CacheArgs, EngineArgs};
pub use models::{check_name, ModelArg, ModelConfig, ModelList};
pub use value::{parse_mode, CpuList, Mode, Scalar, Shape, Value};

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Default => "default",
            Source::File => "file",
            Source::Flag => "flag",
        })
    }
}

/// One row of the table, as the flag parser, the file reader and `check-config` see it.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The TOML key; the flag is this with `-` for `_`.
    pub key: &'static str,
    pub doc: &'static str,
    /// The default as a flag would write it; `""` is unset. A function so that a row can take
    /// its default from the constant of the layer that also needs it without a `serve`.
    default: fn() -> String,
    /// What a GPU gets instead when the setting is not given, if that differs.
    gpu_default: Option<fn() -> String>,
    /// The values allowed, in words (`at least 1`), when not every value of the type is.
    range: Option<fn() -> String>,
    pub value_name: &'static str,
    pub shape: Shape,
    /// The values allowed when they are a short list, shown in `--help`.
    choices: &'static [&'static str],
    /// Checks one flag value, range included (clap calls it while parsing).
    check: fn(&str) -> Result<(), String>,
}

impl Spec {
    pub fn flag(&self) -> String {
        self.key.replace('_', "-")
    }

    /// The default as a flag would write it; `""` is unset.
    pub fn default(&self) -> String {
        (self.default)()
    }

    /// The values given for this row's flag in `m`, as written; empty when it was not given.
    fn given(&self, m: &ArgMatches) -> Vec<String> {
        match self.shape {
            Shape::Switch if m.get_flag(self.key) => vec!["true".to_string()],
            Shape::Switch => Vec::new(),
            _ => m
                .get_many::<String>(self.key)
                .map(|v| v.cloned().collect())
                .unwrap_or_default(),
        }
    }

    fn arg(&self) -> Arg {
        // Each doc line keeps the space after its `///`.
        let mut help = self.doc.trim_start().to_string();
        let default = self.default();
        if !self.choices.is_empty() {
            help.push_str(&format!(" [possible values: {}]", self.choices.join(", ")));
        }
        // A switch is off unless given: `[default: false]` says nothing.
        if !default.is_empty() && self.shape != Shape::Switch {
            help.push_str(&format!(" [default: {default}"));
            if let Some(gpu) = self.gpu_default {
                help.push_str(&format!("; {} on a GPU", gpu()));
            }
            help.push(']');
        }
        if let Some(range) = self.range {
            help.push_str(&format!(" [{}]", range()));
        }
        let check = self.check;
        let arg = Arg::new(self.key)
            .long(self.flag())
            .help(help)
            .help_heading(heading(self.key));
        // Said for the socket more often than `--uds`; without it clap suggests `--tls-cert`.
        let arg = if self.key == "uds" {
            arg.visible_alias("socket")
        } else {
            arg
        };
        match self.shape {
            Shape::Switch => arg.action(ArgAction::SetTrue),
            shape => arg
                .value_name(self.value_name)
                .action(if shape == Shape::Many {
                    ArgAction::Append
                } else {
                    ArgAction::Set
                })
                .value_parser(move |s: &str| check(s).map(|()| s.to_string())),
        }
    }
}

/// The `--help` section a setting is listed under, so that `serve`'s flags read in groups.
fn heading(key: &str) -> &'static str {
    match key {
        "model" | "default_model" | "device" | "dtype" | "cache_dir" | "no_weights_cache" => {
            "Model"
        }
        "uds" | "uds_mode" | "uds_group" | "allow_uid" | "allow_gid" | "quic" | "metrics_addr" => {
            "Listeners"
        }
        "tls_cert" | "tls_key" | "client_ca" | "allow_anonymous_loopback" => "QUIC TLS",
        "queue_capacity" | "max_batch_tokens" | "max_batch_size" | "max_attention_mib" => {
            "Queue and batches"
        }
        "max_frame_bytes" | "max_inputs" | "max_text_bytes" | "max_in_flight"
        | "max_connections" | "max_receive_bytes" => "Request limits",
        "idle_timeout_secs"
        | "handshake_timeout_secs"
        | "frame_timeout_secs"
        | "drain_timeout_secs" => "Timeouts",
        "threads" | "spin_us" | "busy_poll" | "cpus" => "Engine threads",
        _ => "Other",
    }
}

/// Why the settings could not be worked out.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a bad value in the file; `message` has the line.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// A bad value from a flag or a default.
    #[error("{key}: {message}")]
    Value { key: &'static str, message: String },
    /// A value from a flag or a default outside its row's range; the message names the key.
    #[error("{0}")]
    Range(String),
    #[error("no model: give --model DIR or --config FILE")]
    NoModel,
    /// The models given do not go together (a name twice, an unnamed one among several, a
    /// default that is not served).
    #[error("{0}")]
    Models(String),
    #[error("{}: no model: give --model DIR or `model = \"DIR\"` in the file", .0.display())]
    NoModelInFile(PathBuf),
}

/// `Some` of a function giving the text, or `None` when the row leaves it out.
macro_rules! text_fn {
    () => {
        None
    };
    ($text:expr) => {
        Some((|| $text) as fn() -> String)
    };
}

/// Declares the settings: one row each, `key: Type = default, "VALUE_NAME"` under its doc
/// comment, then optionally the range of values allowed and, after `gpu`, the default a GPU
/// gets instead. The default is written as a flag would write it (or as a constant that prints
/// so) and parsed like one.
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])+
        $key:ident : $ty:ty = $default:expr, $value_name:literal
            $(, $range:expr $(, gpu $gpu:expr)?)?;
    )*) => {
        /// The effective `serve` settings: flags over file over defaults.
        #[derive(Debug, Clone)]
        pub struct Settings {
            /// The config file these came from, if any.
            pub config: Option<PathBuf>,
            /// The models to serve, the default first: from `model` or the file's
            /// `[models.NAME]` tables (see [`models`]). Empty until [`Settings::resolve`].
            pub models: Vec<ModelConfig>,
            /// Where each value came from, by key.
            pub sources: BTreeMap<&'static str, Source>,
            $(
                $(#[doc = $doc])+
                pub $key: $ty,
            )*
            /// The hidden test-only flags, as given.
            #[cfg(feature = "test-hooks")]
            pub hooks: HookArgs,
        }

        /// Every setting, in the order `--help` and `check-config` list them.
        pub const SPECS: &[Spec] = &[$(
            Spec {
                key: stringify!($key),
                doc: concat!($($doc),+),
                default: || ToString::to_string(&$default),
                gpu_default: text_fn!($($(ToString::to_string(&$gpu))?)?),
                range: text_fn!($(value::describe(&$range))?),
                value_name: $value_name,
                shape: <$ty as Value>::SHAPE,
                choices: <$ty as Value>::CHOICES,
                check: |s| {
                    #[allow(unused_variables)]
                    let v = <$ty as Value>::parse(&[s.to_string()])?;
                    $(value::within(stringify!($key), &v, &$range)?;)?
                    Ok(())
                },
            },
        )*];

        impl Settings {
            fn merge(flags: &ServeArgs, file: &FileValues) -> Result<Settings, SettingsError> {
                let mut sources = BTreeMap::new();
                $(
                    let $key: $ty = {
                        let key = stringify!($key);
                        let value = |text: &[String]| {
                            <$ty as Value>::parse(text).map_err(|message| {
                                SettingsError::Value { key, message }
                            })
                        };
                        let (v, source) = if let Some(given) = flags.given(key) {
                            (value(given)?, Source::Flag)
                        } else if let Some(v) = file.get::<$ty>(key) {
                            (v?, Source::File)
                        } else {
                            (value(&[ToString::to_string(&$default)])?, Source::Default)
                        };
                        $(
                            if let Err(message) = value::within(key, &v, &$range) {
                                return Err(match source {
                                    Source::File => file.error_at(key, message),
                                    _ => SettingsError::Range(message),
                                });
                            }
                        )?
                        sources.insert(key, source);
                        v
                    };
                )*
                Ok(Settings {
                    config: file.path.clone(),
                    models: Vec::new(),
                    sources,
                    $($key,)*
                    #[cfg(feature = "test-hooks")]
                    hooks: flags.hooks.clone(),
                })
            }

            /// Each setting as `(key, value as TOML or None when unset)`, in table order.
            pub fn values(&self) -> Vec<(&'static str, Option<toml::Value>)> {
                vec![$((stringify!($key), Value::to_toml(&self.$key)),)*]
            }
        }
    };
}

settings! {
    /// Hugging Face model directory (config.json, model.safetensors, tokenizer.json); required
    /// unless the config file names it. Repeatable as NAME=DIR to serve several models, each
    /// under its name (a-z, 0-9, _ and -); a bare DIR is named after its directory.
    model: ModelList = "", "[NAME=]DIR";
    /// The model a request that names none gets, when several are served; unset: the first.
    default_model: Option<String> = "", "NAME";
    /// Where the model runs: auto is CUDA when built with it and a GPU is present, else the
    /// CPU; cuda:N picks a GPU.
    device: DeviceChoice = "auto", "DEVICE";
    /// Compute precision: auto is F32 on the CPU; on CUDA the checkpoint's torch_dtype when
    /// it is F16 or BF16, else BF16 for decoders and F16 for encoders; int8 (CPU) runs the
    /// transformer layers' matmuls in int8.
    dtype: DTypeChoice = "auto", "DTYPE";
    /// Directory of the weights cache (CPU F32): the packed weights written once, then mapped
    /// read-only and shared. Unset: $CACHE_DIRECTORY (systemd's CacheDirectory=), else
    /// $XDG_CACHE_HOME/classifyd, else ~/.cache/classifyd.
    cache_dir: Option<PathBuf> = "", "DIR";
    /// No weights cache: every weight is copied into private memory at load.
    no_weights_cache: bool = "false", "";
    /// Unix socket path to listen on.
    uds: Option<PathBuf> = "", "PATH";
    /// Permission bits of the socket file, in octal.
    uds_mode: Mode = "660", "MODE";
    /// Group (name or gid) to give the socket file.
    uds_group: Option<String> = "", "GROUP";
    /// Only peers with this uid may connect (repeatable; with --allow-gid, either matches).
    allow_uid: Vec<u32> = "", "UID";
    /// Only peers whose own gid is this may connect (repeatable; SO_PEERCRED's effective gid:
    /// supplementary groups are not seen, see SECURITY.md).
    allow_gid: Vec<u32> = "", "GID";
    /// QUIC address to listen on, e.g. 127.0.0.1:4433 or localhost:4433 (a name resolves to
    /// its first address at start; needs --tls-cert and --tls-key).
    quic: Option<SocketAddr> = "", "HOST:PORT";
    /// PEM certificate chain for QUIC.
    tls_cert: Option<PathBuf> = "", "FILE";
    /// PEM private key for QUIC.
    tls_key: Option<PathBuf> = "", "FILE";
    /// CA (PEM) that QUIC client certificates must chain to.
    client_ca: Option<PathBuf> = "", "FILE";
    /// Accept QUIC clients without a certificate; only on a loopback address.
    allow_anonymous_loopback: bool = "false", "";
    /// Requests waiting for the engine before new ones are answered OVERLOADED.
    queue_capacity: usize = "256", "N", 1..;
    /// Padded tokens (rows × longest row) one forward pass may take.
    max_batch_tokens: usize = passes::DEFAULT_MAX_TOKENS, "N", 1.., gpu GPU_DEFAULT_TOKENS;
    /// Rows one forward pass may take.
    max_batch_size: usize = passes::DEFAULT_MAX_ROWS, "N", 1.., gpu GPU_DEFAULT_ROWS;
    /// Attention working set one forward pass may take, in MiB: batches are cut into passes
    /// under it, and a single input over it is refused.
    max_attention_mib: usize = passes::DEFAULT_MAX_ATTENTION_BYTES >> 20, "MIB", 1..;
    /// Largest request frame accepted, in bytes.
    max_frame_bytes: usize = "1048576", "BYTES";
    /// Inputs one request may carry.
    max_inputs: usize = "64", "N", 1..;
    /// Bytes of text one input may carry.
    max_text_bytes: usize = "65536", "BYTES";
    /// Requests in flight per connection; past it the connection is not read.
    max_in_flight: usize = "64", "N", 1..;
    /// Connections open at once, per listener.
    max_connections: usize = "256", "N", 1..;
    /// Request bytes a QUIC listener receives at once over all its streams; a request that
    /// would go over is answered OVERLOADED without being read.
    max_receive_bytes: usize = "134217728", "BYTES";
    /// Seconds before an idle connection is closed.
    idle_timeout_secs: u64 = "60", "SECS", 1..;
    /// Seconds a QUIC handshake may take once the client's address is validated; past it the
    /// handshake is dropped and its place among the pending handshakes freed.
    handshake_timeout_secs: u64 = "10", "SECS", 1..;
    /// Seconds a request frame may take to arrive once its first byte has, and a response to be
    /// taken by the peer; past it the connection (Unix socket) or stream (QUIC) is closed.
    frame_timeout_secs: u64 = "10", "SECS", 1..;
    /// Seconds in-flight requests get to finish after SIGTERM before they are answered
    /// UNAVAILABLE.
    drain_timeout_secs: u64 = "10", "SECS";
    /// Serve Prometheus metrics, /healthz and /readyz over HTTP on this (loopback) address.
    metrics_addr: Option<SocketAddr> = "", "HOST:PORT";
    /// Engine threads per lane, the engine thread itself included; 0 is one per CPU this
    /// process may run on (or per CPU of --cpus).
    threads: usize = "0", "N";
    /// Microseconds the engine threads keep spinning after a forward pass, and after a request
    /// arrives, before they sleep: the next request finds them awake. 0 sleeps at once.
    spin_us: u64 = "1000", "MICROS";
    /// Keep the engine threads and the engine's queue spinning for good, for cores given to
    /// the daemon alone (with --cpus): the lowest latency, and those cores always at 100 %.
    busy_poll: bool = "false", "";
    /// Pin the engine threads to these CPUs (a list like 2-3 or 0,2-5) and keep the I/O and
    /// tokenizer threads off them.
    cpus: Option<CpuList> = "", "LIST";
}

impl Settings {
    /// Merges the flags in `a` over `--config` (when given) over the built-in defaults.
    pub fn resolve(a: &ServeArgs) -> Result<Settings, SettingsError> {
        let file = match &a.config {
            Some(path) => FileValues::from_path(path)?,
            None => FileValues::default(),
        };
        let mut s = Settings::merge(a, &file)?;
        let from = |source| (s.sources.get("model") == Some(&source)).then_some(&s.model);
        let mut models = models::resolve(
            from(Source::Flag),
            from(Source::File),
            file.model_tables(),
            file.path.as_deref(),
        )
        .map_err(SettingsError::Models)?;
        if models.is_empty() {
            return Err(match &a.config {
                Some(p) => SettingsError::NoModelInFile(p.clone()),
                None => SettingsError::NoModel,
            });
        }
        if let Some(name) = &s.default_model {
            let Some(at) = models.iter().position(|m| m.name.as_ref() == Some(name)) else {
                let served: Vec<String> = models
                    .iter()
                    .map(|m| {
                        m.name
                            .clone()
                            .unwrap_or_else(|| m.path.display().to_string())
                    })
                    .collect();
                return Err(SettingsError::Models(format!(
                    "default_model {name:?} is not a model served here ({})",
                    served.join(", ")
                )));
            };
            let default = models.remove(at);
            models.insert(0, default);
        }
        s.models = models;
        Ok(s)
    }

    /// Every setting at its default (no flags, no file).
    pub fn defaults() -> Settings {
        // The defaults are literals checked by `every_default_parses`; a bad one is a bug.
        Settings::merge(&ServeArgs::default(), &FileValues::default())
            .unwrap_or_else(|e| panic!("a built-in default does not parse: {e}"))
    }

    /// The config file to read the models' paths from again on reload: set when they came
    /// from the file (no `--model` flag).
    pub fn model_from_file(&self) -> Option<PathBuf> {
        match self.models.first().map(|m| m.source) {
            Some(Source::File) => self.config.clone(),
            _ => None,
        }
    }

    /// The effective settings as TOML, each line ending with where its value came from; unset
    /// ones are comments.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for (key, value) in self.values() {
            let source = self.sources.get(key).copied().unwrap_or(Source::Default);
            match value {
                Some(v) => out.push_str(&format!("{key} = {v}  # {source}\n")),
                None => out.push_str(&format!("# {key} unset  # {source}\n")),
            }
        }
        // The tables last: in TOML, keys after a table would belong to it.
        for m in self.models.iter().filter(|m| m.source == Source::File) {
            if let (Some(name), Some(Source::Default)) = (&m.name, self.sources.get("model")) {
                out.push_str(&m.report(name));
            }
        }
        out
    }
}

/// The `serve` and `check-config` flags: `--config` and one per setting, generated from
/// [`SPECS`]. Values are kept as given and parsed by [`Settings::resolve`].
#[derive(Debug, Clone, Default)]
pub struct ServeArgs {
    pub config: Option<PathBuf>,
    given: BTreeMap<&'static str, Vec<String>>,
    #[cfg(feature = "test-hooks")]
    pub hooks: HookArgs,
}

impl ServeArgs {
    /// The values given for `key` on the command line, if any.
    fn given(&self, key: &str) -> Option<&[String]> {
        self.given.get(key).map(Vec::as_slice)
    }
}

impl FromArgMatches for ServeArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut a = ServeArgs {
            config: m.get_one::<PathBuf>("config").cloned(),
            ..ServeArgs::default()
        };
        for spec in SPECS {
            let values = spec.given(m);
            if !values.is_empty() {
                a.given.insert(spec.key, values);
            }
        }
        #[cfg(feature = "test-hooks")]
        {
            a.hooks = HookArgs::from_arg_matches(m)?;
        }
        Ok(a)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for ServeArgs {
    fn augment_args(cmd: Command) -> Command {
        let cmd = cmd.arg(
            Arg::new("config")
                .long("config")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help(
                    "TOML file whose keys are these flags' long names with `_` for `-`; flags \
                     win over it, and relative paths in it are relative to its directory",
                ),
        );
        let cmd = SPECS.iter().fold(cmd, |cmd, s| cmd.arg(s.arg()));
        let cmd = cmd.mut_arg("client_ca", |a| {
            a.conflicts_with("allow_anonymous_loopback")
        });
        #[cfg(feature = "test-hooks")]
        let cmd = HookArgs::augment_args(cmd);
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

/// The hidden `serve` flags that arm the hooks.
#[cfg(feature = "test-hooks")]
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HookArgs {
    /// Test-only hook for the systemd watchdog tests (tests/daemon/systemd.rs): the engine
    /// thread stops beating for good this many seconds after start, like a hung device.
    #[arg(long, value_name = "SECS", hide = true)]
    pub test_stall_worker_after_secs: Option<f64>,
    /// Test-only hook for the fault tests (tests/daemon/faults.rs): the next N forward passes
    /// panic in the engine call.
    #[arg(long, value_name = "N", hide = true)]
    pub test_fail_batches: Option<u64>,
    /// Test-only hook for the device-health tests: the next N health probes (the pass after a
    /// failed one) panic too, as on a device with a sticky fault.
    #[arg(long, value_name = "N", hide = true)]
    pub test_fail_probes: Option<u64>,
    /// Test-only hook for the fault tests: the engine thread holds each batch it has picked
    /// while this file exists.
    #[arg(long, value_name = "PATH", hide = true)]
    pub test_hold_batches_while: Option<PathBuf>,
    /// Test-only hook: the bulk lane's engine thread holds each batch it has picked while this
    /// file exists (the fast lane goes on).
    #[arg(long, value_name = "PATH", hide = true)]
    pub test_hold_bulk_while: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(argv: &[&str]) -> ServeArgs {
        let cmd = ServeArgs::augment_args(Command::new("serve").no_binary_name(true));
        let m = cmd.try_get_matches_from(argv).unwrap();
        ServeArgs::from_arg_matches(&m).unwrap()
    }

    #[test]
    fn unknown_key_is_named() {
        let e = FileValues::parse("model = \"m\"\nqueue_capacty = 3\n").unwrap_err();
        assert!(e.contains("queue_capacty") && e.contains("line 2"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    /// The rows that read their default from a lower layer's constant print it as the flag
    /// would take it, with the GPU's default and the range beside it in `--help`.
    #[test]
    fn defaults_from_constants_print_as_flags() {
        let spec = |key: &str| SPECS.iter().find(|s| s.key == key).unwrap();
        assert_eq!(spec("max_batch_tokens").default(), "8192");
        assert_eq!(spec("max_attention_mib").default(), "512");
        let help = spec("max_batch_size").arg().get_help().unwrap().to_string();
        assert!(
            help.ends_with(" [default: 32; 128 on a GPU] [at least 1]"),
            "{help}"
        );
    }

    /// Every setting is listed under a heading of its own group in `--help`; switches show no
    /// `[default: false]`; the enumerations show their values.
    #[test]
    fn help_groups_every_flag_and_shows_values_not_false() {
        for spec in SPECS {
            assert_ne!(
                heading(spec.key),
                "Other",
                "{} has no --help heading",
                spec.key
            );
            let help = spec.arg().get_help().unwrap().to_string();
            assert!(!help.contains("[default: false]"), "{}: {help}", spec.key);
        }
        let dtype = SPECS.iter().find(|s| s.key == "dtype").unwrap();
        let help = dtype.arg().get_help().unwrap().to_string();
        assert!(
            help.contains("[possible values: auto, f32, f16, bf16, int8]"),
            "{help}"
        );
    }

    #[test]
    fn every_default_parses() {
        for spec in SPECS {
            let default = spec.default();
            if !default.is_empty() {
                (spec.check)(&default).unwrap_or_else(|e| panic!("{}: {e}", spec.key));
            }
        }
        let d = Settings::defaults();
        assert!(d.sources.values().all(|s| *s == Source::Default));
    }

    /// For every setting: the default, the same text as a flag and the same value in a file
    /// resolve alike, and each records its source. A flag or key that did not match the table
    /// would fail to parse here.
    #[test]
    fn flag_key_and_default_agree_for_every_setting() {
        let dir = tempfile::tempdir().unwrap();
        let defaults = Settings::defaults();
        let values: BTreeMap<_, _> = defaults.values().into_iter().collect();
        // `default_model` must name a model served: the daemon test of several models sets it.
        for spec in SPECS.iter().filter(|s| s.key != "default_model") {
            let default = spec.default();
            // An example value for the unset ones, of the right type.
            let example = match spec.key {
                "model" | "uds" | "tls_cert" | "tls_key" | "client_ca" | "cache_dir" => "/x/y",
                "uds_group" => "wheel",
                "allow_uid" | "allow_gid" => "7",
                "quic" | "metrics_addr" => "127.0.0.1:9",
                "cpus" => "0",
                _ if spec.shape == Shape::Switch => "true",
                _ => default.as_str(),
            };
            let argv: Vec<&str> = match spec.shape {
                Shape::Switch => vec!["--model", "/m", "--x"],
                _ => vec!["--model", "/m", "--x", example],
            };
            let flag = format!("--{}", spec.flag());
            let skip = if spec.key == "model" { 2 } else { 0 };
            let argv: Vec<&str> = argv
                .into_iter()
                .skip(skip)
                .map(|a| if a == "--x" { flag.as_str() } else { a })
                .collect();
            let by_flag =
                Settings::resolve(&parse(&argv)).unwrap_or_else(|e| panic!("{}: {e}", spec.key));
            assert_eq!(by_flag.sources[spec.key], Source::Flag, "{}", spec.key);
            let v = by_flag.values().into_iter().find(|(k, _)| *k == spec.key);
            let v = v.and_then(|(_, v)| v).expect("set by the flag");
            let path = dir.path().join(format!("{}.toml", spec.key));
            let mut text = format!("{} = {v}\n", spec.key);
            if spec.key != "model" {
                text.push_str("model = \"/m\"\n");
            }
            std::fs::write(&path, text).unwrap();
            let file_path = path.display().to_string();
            let by_file = Settings::resolve(&parse(&["--config", &file_path]))
                .unwrap_or_else(|e| panic!("{}: {e}", spec.key));
            assert_eq!(by_file.sources[spec.key], Source::File, "{}", spec.key);
            let fv = by_file.values().into_iter().find(|(k, _)| *k == spec.key);
            assert_eq!(fv.and_then(|(_, v)| v), Some(v.clone()), "{}", spec.key);
            if example == default {
                // The default's text as a flag gives the default's value.
                assert_eq!(values[spec.key].as_ref(), Some(&v), "{}", spec.key);
            }
        }
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "model = \"m\"\nframe_timeout_secs = 3\nuds_mode = 640\n",
        )
        .unwrap();
        let p = path.display().to_string();
        let s = Settings::resolve(&parse(&["--config", &p])).unwrap();
        assert_eq!(s.frame_timeout_secs, 3);
        assert_eq!(s.uds_mode, Mode(0o640));
        assert_eq!(s.models[0].path, dir.path().join("m"));
        assert_eq!(s.model_from_file(), Some(path.clone()));
        assert_eq!(s.idle_timeout_secs, 60);
        assert_eq!(s.sources["idle_timeout_secs"], Source::Default);
        let s = Settings::resolve(&parse(&["--config", &p, "--frame-timeout-secs", "7"])).unwrap();
        assert_eq!(s.frame_timeout_secs, 7);
        assert_eq!(s.sources["frame_timeout_secs"], Source::Flag);
        let s = Settings::resolve(&parse(&["--config", &p, "--model", "/n"])).unwrap();
        assert_eq!(s.model_from_file(), None);
        let report = s.report();
        assert!(
            report.contains("frame_timeout_secs = 3  # file\n"),
            "{report}"
        );
        assert!(report.contains("model = \"/n\"  # flag\n"), "{report}");
        assert!(
            report.contains("queue_capacity = 256  # default\n"),
            "{report}"
        );
        assert!(report.contains("# quic unset  # default\n"), "{report}");
    }

    #[test]
    fn bad_values_name_the_key_and_line() {
        let e = FileValues::parse("queue_capacity = \"many\"\n");
        let file = e.unwrap();
        let Some(Err(e)) = file.get::<usize>("queue_capacity") else {
            panic!("a string is not a count");
        };
        let e = e.to_string();
        assert!(
            e.contains("line 1: queue_capacity: expected a whole number"),
            "{e}"
        );
        assert!(FileValues::parse("uds_mode = 999\n")
            .unwrap()
            .get::<Mode>("uds_mode")
            .unwrap()
            .is_err());
    }

    /// A value out of its row's range is refused, from a flag or from the file, naming the key
    /// (and the file's line): none is raised to the nearest one allowed.
    #[test]
    fn out_of_range_values_are_refused_naming_the_key() {
        let cmd = ServeArgs::augment_args(Command::new("serve").no_binary_name(true));
        let e = cmd
            .try_get_matches_from(["--model", "m", "--queue-capacity", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--queue-capacity"), "{e}");
        assert!(
            e.contains("queue_capacity must be at least 1, got 0"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "model = \"m\"\nidle_timeout_secs = 0\n").unwrap();
        let p = path.display().to_string();
        let e = Settings::resolve(&parse(&["--config", &p]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!("{p}: line 2: idle_timeout_secs must be at least 1, got 0")
        );
        // The flag wins over the file's bad value, and the lowest value allowed is kept as is.
        let s = Settings::resolve(&parse(&["--config", &p, "--idle-timeout-secs", "1"])).unwrap();
        assert_eq!(s.idle_timeout_secs, 1);
    }

    #[test]
    fn shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/classifyd.toml");
        let f = FileValues::from_path(&path).unwrap();
        assert_eq!(
            f.model().unwrap().as_deref(),
            Some(Path::new("/var/lib/classifyd/model"))
        );
    }
}
