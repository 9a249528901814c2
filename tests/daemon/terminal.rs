//! What a person at a terminal sees, and what a pipe or a log file gets instead (issue #34):
//! `classify`'s progress bar on stderr, coloured logs only on a terminal. The terminal is a real
//! pseudo-terminal from util-linux's `script`.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use super::common::default_model;
use super::harness::Daemon;

/// Runs `shell` (a `sh -c` command line) with a pseudo-terminal as its stdin, stdout and
/// stderr, and returns what the terminal showed.
fn on_a_terminal(shell: &str, env: &[(&str, &str)]) -> String {
    // The weights cache of every load in here stays in a temporary directory.
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new("script")
        .args(["--quiet", "--return", "--command", shell, "/dev/null"])
        .env("TERM", "xterm-256color")
        .env("CACHE_DIRECTORY", cache.path())
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("util-linux `script` runs");
    assert!(
        out.status.success(),
        "{shell}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn quoted(p: &Path) -> String {
    format!("'{}'", p.display())
}

/// 400 reviews, one a line: long enough for the bar to be drawn more than once.
fn texts(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("texts.txt");
    let lines: Vec<String> = (0..400)
        .map(|i| format!("review {i}: the film was not as good as I had hoped"))
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn classify_stdin(input: &Path) -> String {
    format!(
        "{} classify --model {} < {}",
        env!("CARGO_BIN_EXE_classifyd"),
        quoted(&default_model()),
        quoted(input)
    )
}

/// On a terminal, `classify` from a file on stdin shows texts done, their rate, the share
/// read and an ETA, then leaves one summary line; the answers still come one JSON line each.
#[test]
fn classify_from_stdin_shows_progress_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let input = texts(dir.path());
    let screen = on_a_terminal(&classify_stdin(&input), &[]);
    assert!(screen.contains(" texts, "), "no progress line: {screen}");
    assert!(screen.contains("% ETA "), "no share read or ETA: {screen}");
    assert!(screen.contains("400 texts in "), "no summary: {screen}");
    let answers = screen
        .lines()
        .filter(|l| l.contains("\"label\":\"NEGATIVE\"") || l.contains("\"label\":\"POSITIVE\""))
        .count();
    assert_eq!(answers, 400, "{screen}");
    // --quiet draws nothing.
    let quiet = on_a_terminal(&format!("{} --quiet", classify_stdin(&input)), &[]);
    assert!(
        !quiet.contains(" texts, ") && !quiet.contains("texts in"),
        "{quiet}"
    );
}

/// Off a terminal the same run writes nothing to stderr: no bar, no summary, no escape codes.
#[test]
fn classify_from_stdin_is_silent_on_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let input = texts(dir.path());
    let out: Output = Command::new(env!("CARGO_BIN_EXE_classifyd"))
        .arg("classify")
        .arg("--model")
        .arg(default_model())
        .env("CACHE_DIRECTORY", dir.path())
        .stdin(std::fs::File::open(&input).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 400);
}

/// Logs into a file or a pipe are plain text; on a terminal they are coloured unless
/// `NO_COLOR` is set.
#[test]
fn logs_are_coloured_only_on_a_terminal() {
    let daemon = Daemon::start(&default_model(), &[]);
    let log = daemon.stderr();
    assert!(log.contains("ready"), "{log}");
    assert!(!log.contains('\x1b'), "escape codes in a log file: {log:?}");
    drop(daemon);
    // A daemon that starts, answers once and stops on SIGINT, all on the terminal.
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_classifyd");
    let shell = format!(
        "{bin} serve --model {model} --uds {sock} & \
         {bin} classify --wait 60 --uds {sock} fine >/dev/null; kill -INT $!; wait $!",
        model = quoted(&default_model()),
        sock = quoted(&dir.path().join("s.sock")),
    );
    let logged = |env: &[(&str, &str)]| {
        let screen = on_a_terminal(&shell, &[&[("CLASSIFYD_LOG", "info")], env].concat());
        assert!(screen.contains("ready"), "{screen}");
        screen
    };
    let coloured = logged(&[]);
    assert!(
        coloured.contains("\x1b["),
        "no colour on a terminal: {coloured:?}"
    );
    let plain = logged(&[("NO_COLOR", "1")]);
    assert!(!plain.contains("\x1b["), "colour with NO_COLOR: {plain:?}");
}
