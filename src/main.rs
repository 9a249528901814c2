//! `classifyd`: flags → engine calls. Errors end as one line on stderr and exit code 1; inputs
//! that could not be classified print an error object in their place and exit code 2.

use clap::{Parser, ValueEnum};
use classifyd::cli::{Cli, LogFormat};

/// Logs to stderr: compact text, coloured on a terminal only; without timestamps and colours
/// when stderr is the journal (`JOURNAL_STREAM`, systemd stamps lines itself); JSON lines with `json`.
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
        LogFormat::Text => builder.compact().with_ansi(colour()).init(),
    }
}

/// Colour only for a person at a terminal: not into a file or a pipe, and never with
/// `NO_COLOR` set to anything (no-color.org).
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Fixes the CPU thread count for candle and rayon before any thread exists. Without it candle
/// works the count out again inside every matmul, and on Linux that means opening and parsing
/// /proc/cpuinfo (seen as ~12 opens per forward pass). `RAYON_NUM_THREADS` set by the user wins.
fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Still single-threaded here, so changing the environment races with nothing.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

fn main() {
    pin_thread_count();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match classifyd::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("{}", classifyd::cli::error_line(&e));
            std::process::exit(1);
        }
    }
}
