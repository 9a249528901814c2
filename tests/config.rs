//! `classifyd serve --config` and `classifyd check-config`, run as the real binary on real
//! files in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use classifyd::settings::FileValues;

fn bert() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert")
}

fn classifyd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_classifyd"))
        .args(args)
        .env_remove("CLASSIFYD_LOG_FORMAT")
        .output()
        .expect("running classifyd")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A temporary directory holding `classifyd.toml` with a valid model and socket, plus `extra`.
fn config_with(extra: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("classifyd.toml");
    let text = format!(
        "model = {:?}\nuds = \"classifyd.sock\"\n{extra}",
        bert().display().to_string()
    );
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn check(path: &Path, flags: &[&str]) -> Output {
    let mut args = vec!["check-config", "--config", path.to_str().unwrap()];
    args.extend(flags);
    classifyd(&args)
}

/// Exit code 1 and exactly one `classifyd: error: FILE: ...` line containing every `needles`.
fn assert_fails(out: &Output, path: &Path, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one error line expected: {err}");
    let prefix = format!("classifyd: error: {}: ", path.display());
    assert!(lines[0].starts_with(&prefix), "{err}");
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} not in {err}");
    }
}

#[test]
fn valid_file_is_ok_and_relative_paths_follow_the_file() {
    let (dir, path) = config_with("queue_capacity = 7\nuds_mode = 640\n");
    let out = check(&path, &[]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("ok: "), "{text}");
    assert!(text.contains("BertForSequenceClassification"), "{text}");
    assert!(text.contains("queue_capacity = 7  # file\n"), "{text}");
    assert!(text.contains("uds_mode = \"640\"  # file\n"), "{text}");
    let sock = dir.path().join("classifyd.sock");
    assert!(
        text.contains(&format!("uds = {:?}", sock.display().to_string())),
        "{text}"
    );
}

#[test]
fn flags_win_over_the_file() {
    let (_dir, path) = config_with("queue_capacity = 1\nmax_batch_size = 4\n");
    let out = check(
        &path,
        &["--queue-capacity", "64", "--uds", "/tmp/flag.sock"],
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("queue_capacity = 64  # flag\n"), "{text}");
    assert!(text.contains("max_batch_size = 4  # file\n"), "{text}");
    assert!(
        text.contains("uds = \"/tmp/flag.sock\"  # flag\n"),
        "{text}"
    );
    // Untouched settings say so.
    assert!(text.contains("max_inputs = 64  # default\n"), "{text}");
}

#[test]
fn unknown_key_is_an_error_naming_it() {
    let (_dir, path) = config_with("queue_capacty = 5\n");
    assert_fails(&check(&path, &[]), &path, &["queue_capacty", "line 3"]);
}

#[test]
fn serve_refuses_an_unknown_key_too() {
    let (_dir, path) = config_with("bogus_key = true\n");
    let out = classifyd(&["serve", "--config", path.to_str().unwrap()]);
    assert_fails(&out, &path, &["bogus_key"]);
}

#[test]
fn missing_model_dir_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "model = \"no-such-model\"\nuds = \"s.sock\"\n").unwrap();
    let missing = dir.path().join("no-such-model");
    assert_fails(&check(&path, &[]), &path, &[&missing.display().to_string()]);
}

#[test]
fn bad_toml_syntax_names_the_file() {
    let (_dir, path) = config_with("max_inputs = [\n");
    assert_fails(&check(&path, &[]), &path, &["line"]);
}

#[test]
fn missing_quic_certificate_is_named() {
    let (dir, path) = config_with(
        "quic = \"127.0.0.1:4433\"\ntls_cert = \"server.pem\"\ntls_key = \"server-key.pem\"\n\
         allow_anonymous_loopback = true\n",
    );
    let cert = dir.path().join("server.pem");
    assert_fails(&check(&path, &[]), &path, &[&cert.display().to_string()]);
}

#[test]
fn quic_with_real_certificates_is_ok() {
    let (dir, path) = config_with(
        "quic = \"127.0.0.1:4433\"\ntls_cert = \"pki/server.pem\"\n\
         tls_key = \"pki/server-key.pem\"\nclient_ca = \"pki/ca.pem\"\n",
    );
    let pki = dir.path().join("pki");
    let out = classifyd(&["cert", "--out", pki.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = check(&path, &[]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(
        stdout(&out).contains("quic 127.0.0.1:4433"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn no_listener_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let text = format!("model = {:?}\n", bert().display().to_string());
    std::fs::write(&path, text).unwrap();
    assert_fails(&check(&path, &[]), &path, &["no listener"]);
}

#[test]
fn bad_address_is_named() {
    let (_dir, path) = config_with("metrics_addr = \"localhost\"\n");
    assert_fails(&check(&path, &[]), &path, &["metrics_addr", "localhost"]);
}

/// Out-of-range values in the file are refused with the key, the bound and the line, never
/// raised to the nearest value allowed; the same for `serve`.
#[test]
fn out_of_range_keys_in_the_file_are_refused() {
    for (key, line) in [
        ("queue_capacity", "queue_capacity = 0"),
        ("max_inputs", "max_inputs = 0"),
        ("max_batch_size", "max_batch_size = 0"),
        ("frame_timeout_secs", "frame_timeout_secs = 0"),
    ] {
        let (_dir, path) = config_with(&format!("{line}\n"));
        let message = format!("line 3: {key} must be at least 1, got 0");
        assert_fails(&check(&path, &[]), &path, &[&message]);
        let out = classifyd(&["serve", "--config", path.to_str().unwrap()]);
        assert_fails(&out, &path, &[&message]);
    }
}

/// Out-of-range flags are refused by the flag parser (usage error, exit 2), naming the flag and
/// the key; a flag that puts the file's bad value right wins over it.
#[test]
fn out_of_range_flags_are_refused() {
    let (_dir, path) = config_with("max_connections = 0\n");
    for (flag, key) in [
        ("--queue-capacity", "queue_capacity"),
        ("--max-in-flight", "max_in_flight"),
        ("--max-attention-mib", "max_attention_mib"),
        ("--idle-timeout-secs", "idle_timeout_secs"),
    ] {
        let out = check(&path, &[flag, "0"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{flag}: {err}");
        assert!(err.contains(flag), "{err}");
        assert!(
            err.contains(&format!("{key} must be at least 1, got 0")),
            "{err}"
        );
    }
    let out = check(&path, &["--max-connections", "1"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(stdout(&out).contains("max_connections = 1  # flag\n"));
}

#[test]
fn shipped_example_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/classifyd.toml");
    let file = FileValues::from_path(&path).expect("systemd/classifyd.toml");
    assert_eq!(
        file.model().unwrap().as_deref(),
        Some(Path::new("/var/lib/classifyd/model"))
    );
    // The example and the unit agree on the socket.
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/classifyd.service"),
    )
    .unwrap();
    let uds: PathBuf = file
        .get::<Option<PathBuf>>("uds")
        .expect("uds in the example")
        .unwrap()
        .expect("a path");
    assert!(
        unit.contains(&format!("--uds {}", uds.display())),
        "classifyd.service does not pass --uds {}",
        uds.display()
    );
    assert!(unit.contains("--config /etc/classifyd/classifyd.toml"));
}

/// A file with `[models.NAME]` tables: check-config loads every model and prints each table
/// with its keys' sources; a table's bad directory, a bad name and a duplicate name on the
/// command line each fail naming the model.
#[test]
fn model_tables_are_checked_and_reported_with_their_sources() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let tok = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tok-bert");
    let text = format!(
        "uds = \"s.sock\"\ndefault_model = \"pii\"\n\
         [models.seq]\npath = {:?}\nweight = 3\n\
         [models.pii]\npath = {:?}\npriority = \"high\"\nqueue_capacity = 16\n",
        bert().display().to_string(),
        tok.display().to_string()
    );
    std::fs::write(&path, &text).unwrap();
    let out = check(&path, &[]);
    let report = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        report.starts_with("ok: ") && report.contains("models pii: "),
        "{report}"
    );
    for line in [
        "[models.seq]  # file",
        "weight = 3  # file",
        "priority = \"normal\"  # default",
        "[models.pii]  # file",
        "priority = \"high\"  # file",
        "queue_capacity = 16  # file",
        "default_model = \"pii\"  # file",
    ] {
        assert!(report.contains(line), "{line:?} not in {report}");
    }

    let missing = dir.path().join("gone");
    std::fs::write(
        &path,
        text.replace(&tok.display().to_string(), &missing.display().to_string()),
    )
    .unwrap();
    assert_fails(&check(&path, &[]), &path, &["model pii", "not a directory"]);

    std::fs::write(&path, "uds = \"s.sock\"\n[models.Pii]\npath = \"x\"\n").unwrap();
    assert_fails(&check(&path, &[]), &path, &["models.Pii", "a-z"]);

    let bert = format!("a={}", bert().display());
    let out = classifyd(&[
        "check-config",
        "--uds",
        "s.sock",
        "--model",
        &bert,
        "--model",
        &bert,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("\"a\" is given twice"),
        "{}",
        stderr(&out)
    );
}
