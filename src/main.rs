//! `classifyd`: flags → engine calls. Errors end as one line on stderr and exit code 1; inputs
//! that could not be classified print an error object in their place and exit code 2.

use clap::{Parser, ValueEnum};
use classifyd::cli::{Cli, LogFormat};

/// Logs to stderr: compact text on a terminal; without timestamps and colours when stderr is
/// the journal (`JOURNAL_STREAM`, systemd stamps lines itself); JSON lines with `json`.
/// The filter is `CLASSIFYD_LOG`, `warn,classifyd=info` by default.
fn init_logging(format: Option<LogFormat>) {
    let format = format
        .or_else(|| {
            std::env::var("CLASSIFYD_LOG_FORMAT")
                .ok()
                .and_then(|v| LogFormat::from_str(v.trim(), true).ok())
        })
        .unwrap_or(LogFormat::Text);
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLASSIFYD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,classifyd=info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text if std::env::var_os("JOURNAL_STREAM").is_some() => {
            builder.compact().without_time().with_ansi(false).init()
        }
        LogFormat::Text => builder.compact().init(),
    }
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match classifyd::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("classifyd: error: {e:#}");
            std::process::exit(1);
        }
    }
}
