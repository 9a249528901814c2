//! `classifyd`: flags → engine calls. Errors end as one line on stderr and exit code 1; inputs
//! that could not be classified print an error object in their place and exit code 2.

use clap::Parser;

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLASSIFYD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,classifyd=info")),
        )
        .compact()
        .init();
    let cli = classifyd::cli::Cli::parse();
    match classifyd::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("classifyd: error: {e:#}");
            std::process::exit(1);
        }
    }
}
