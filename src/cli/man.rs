//! `classifyd manpages --out DIR`: the man pages the Debian package installs, rendered by
//! clap_mangen from the same definition that parses the flags, so they cannot drift from
//! `--help`. Hidden from `--help` itself: it is a packaging step, not a user's command.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;

use super::Cli;

/// Writes `classifyd.1` and `classifyd-SUBCOMMAND.1` for each visible subcommand into `out`,
/// and returns their paths.
pub fn write_pages(out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut cmd = Cli::command();
    // Subcommands' pages are named after the whole command line (classifyd-serve), as
    // git's and cargo's are; build() fills in the names and the global flags.
    cmd.build();
    let mut written = vec![write_page(out, "classifyd", cmd.clone())?];
    // clap's own `help` subcommand has nothing a page would add.
    let visible = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help");
    for sub in visible {
        let name = format!("classifyd-{}", sub.get_name());
        let page = sub.clone().name(name.clone()).display_name(name.clone());
        written.push(write_page(out, &name, page)?);
    }
    Ok(written)
}

fn write_page(out: &Path, name: &str, cmd: clap::Command) -> anyhow::Result<PathBuf> {
    let path = out.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut page)
        .with_context(|| format!("rendering {name}.1"))?;
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
