//! The `serve --config` TOML file: parsed alone (its errors must stay one line), then read
//! from disk and merged as `classifyd check-config --config FILE` does, turned into the
//! server's configuration, and printed back as TOML.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use clap::Parser;
use classifyd::cli::{Cli, Command};
use classifyd::config::{FileConfig, Settings};
use classifyd_fuzz::scratch_dir;
use libfuzzer_sys::fuzz_target;

fn file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| scratch_dir("toml").join("classifyd.toml"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = FileConfig::parse(text) {
        let e = format!("{e:#}");
        assert!(!e.contains('\n'), "multi-line error: {e}");
        return;
    }
    let path = file();
    std::fs::write(path, data).expect("write the config file");
    let cli = Cli::try_parse_from([
        "classifyd".as_ref(),
        "check-config".as_ref(),
        "--config".as_ref(),
        path.as_os_str(),
    ])
    .expect("check-config --config FILE parses");
    let Command::CheckConfig(args) = cli.command else {
        panic!("check-config parsed as another command");
    };
    if let Ok(settings) = Settings::resolve(&args) {
        let _ = settings.serve_config();
        let _ = toml::to_string(&settings);
    }
});
