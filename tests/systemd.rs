//! systemd's own checks on the shipped units in `systemd/`: `systemd-analyze verify` must have
//! nothing to say about them (with and without the GPU drop-in, and the template unit
//! `classifyd@.service`, which it instantiates), `systemd-analyze security` must rate the CPU
//! unit and the template at an exposure of 2.0 or less, the template must carry the service's
//! hardening line for line, and `systemd-sysusers` must accept the account definition. Each check that needs a systemd tool skips (prints why, passes) where the
//! tool is absent.
//!
//! The units are checked from copies in a temporary directory: `verify` insists that the
//! programs of `Exec*=` exist, so `/usr/bin/classifyd` (and any other program this host lacks)
//! is pointed at a stand-in executable there. Nothing outside the temporary directory is read
//! but systemd's own unit files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The highest overall exposure `systemd-analyze security` may give the CPU unit.
const MAX_EXPOSURE: f64 = 2.0;

fn units() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd")
}

fn read_unit(name: &str) -> String {
    let path = units().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `systemd-analyze` with `args`, or `None` (after saying why) when it cannot be run here.
fn analyze(args: &[&str], cwd: &Path) -> Option<Output> {
    let out = Command::new("systemd-analyze")
        .args(args)
        .current_dir(cwd)
        // Plain output: no colours, no pager.
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "")
        .output();
    match out {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: systemd-analyze is not installed");
            None
        }
        Err(e) => panic!("running systemd-analyze: {e}"),
    }
}

/// `systemd-analyze --help`, to see which options this version has; `None` (after saying why)
/// when it cannot be run here.
fn analyze_help() -> Option<String> {
    let out = analyze(&["--help"], Path::new("/"))?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A directory holding copies of the units, ready for `systemd-analyze`.
struct Staged {
    dir: tempfile::TempDir,
}

impl Staged {
    /// Copies classifyd.service, classifyd.socket and the template classifyd@.service, and with
    /// `gpu` classifyd-gpu.conf as the drop-in `classifyd.service.d/classifyd-gpu.conf`.
    fn new(gpu: bool) -> Staged {
        let dir = tempfile::Builder::new()
            .prefix("classifyd-units.")
            .tempdir()
            .expect("temporary directory");
        let stand_in = dir.path().join("bin");
        std::fs::create_dir(&stand_in).unwrap();
        let service = rewrite_exec_paths(&read_unit("classifyd.service"), &stand_in);
        std::fs::write(dir.path().join("classifyd.service"), service).unwrap();
        std::fs::write(
            dir.path().join("classifyd.socket"),
            read_unit("classifyd.socket"),
        )
        .unwrap();
        let template = rewrite_exec_paths(&read_unit("classifyd@.service"), &stand_in);
        std::fs::write(dir.path().join("classifyd@.service"), template).unwrap();
        if gpu {
            let dropins = dir.path().join("classifyd.service.d");
            std::fs::create_dir(&dropins).unwrap();
            let conf = rewrite_exec_paths(&read_unit("classifyd-gpu.conf"), &stand_in);
            std::fs::write(dropins.join("classifyd-gpu.conf"), conf).unwrap();
        }
        Staged { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn service(&self) -> String {
        self.path().join("classifyd.service").display().to_string()
    }

    fn socket(&self) -> String {
        self.path().join("classifyd.socket").display().to_string()
    }

    fn template(&self) -> String {
        self.path().join("classifyd@.service").display().to_string()
    }
}

/// Points the program of every `Exec*=` line at an executable stand-in in `stand_in` when it is
/// classifyd itself (not installed here) or a program this host lacks (`/bin/kill` in a
/// minimal image). Prefixes such as `-`, `@`, `+`, `!` are kept.
fn rewrite_exec_paths(unit: &str, stand_in: &Path) -> String {
    let mut out = String::new();
    for line in unit.lines() {
        let rewritten = line.split_once('=').and_then(|(key, value)| {
            if !key.trim_start().starts_with("Exec") {
                return None;
            }
            let value = value.trim_start();
            let start = value.find('/')?;
            let (prefix, rest) = value.split_at(start);
            if !prefix.chars().all(|c| "-@:+!".contains(c)) {
                return None;
            }
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let (program, args) = rest.split_at(end);
            if program != "/usr/bin/classifyd" && Path::new(program).exists() {
                return None;
            }
            let name = Path::new(program)
                .file_name()?
                .to_string_lossy()
                .into_owned();
            let fake = stand_in.join(name);
            std::fs::write(&fake, "#!/bin/sh\nexit 0\n").unwrap();
            std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
            Some(format!("{key}={prefix}{}{args}", fake.display()))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// `systemd-analyze verify` on the staged units: success and not one line of output.
fn verify(staged: &Staged) {
    let Some(help) = analyze_help() else {
        return;
    };
    let mut args = vec!["--no-pager", "verify"];
    if help.contains("--man") {
        args.push("--man=no");
    }
    if help.contains("--generators") {
        args.push("--generators=no");
    }
    let (service, socket, template) = (staged.service(), staged.socket(), staged.template());
    args.extend([service.as_str(), socket.as_str(), template.as_str()]);
    let Some(out) = analyze(&args, staged.path()) else {
        return;
    };
    let said = text(&out);
    eprintln!("systemd-analyze {}: {}", args.join(" "), out.status);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify found problems ({}):\n{said}",
        out.status
    );
}

/// `systemd-analyze security --offline=true` on the staged service: its table (printed for the
/// log) and the overall exposure level.
fn security(staged: &Staged) -> Option<(String, f64)> {
    security_of(staged, &staged.service())
}

/// `systemd-analyze security --offline=true` on one staged unit (a template is instantiated).
fn security_of(staged: &Staged, unit: &str) -> Option<(String, f64)> {
    if !analyze_help()?.contains("--offline") {
        eprintln!("skipped: this systemd-analyze has no --offline (systemd < 250)");
        return None;
    }
    let out = analyze(
        &["--no-pager", "security", "--offline=true", unit],
        staged.path(),
    )?;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{table}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "systemd-analyze security failed ({}):\n{}",
        out.status,
        text(&out)
    );
    let exposure = overall_exposure(&table)
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{table}"));
    Some((table, exposure))
}

/// The number in `→ Overall exposure level for classifyd.service: 0.9 SAFE 😀`.
fn overall_exposure(table: &str) -> Option<f64> {
    let line = table
        .lines()
        .find(|l| l.contains("Overall exposure level for"))?;
    let (_, after) = line.rsplit_once(": ")?;
    after.split_whitespace().next()?.parse().ok()
}

/// The value of the first `key=` line of a unit (comments and other sections alike ignored).
fn setting<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .next()
        .map(str::trim)
}

#[test]
fn units_verify_without_findings() {
    verify(&Staged::new(false));
}

#[test]
fn gpu_dropin_verifies_without_findings() {
    let staged = Staged::new(true);
    verify(&staged);
    // The drop-in must really have been read: the device ACL names the NVIDIA majors.
    if let Some((table, exposure)) = security(&staged) {
        assert!(
            table.contains("char-nvidia"),
            "classifyd-gpu.conf was not applied; the DeviceAllow= row does not name it:\n{table}"
        );
        eprintln!("overall exposure with classifyd-gpu.conf: {exposure}");
    }
}

#[test]
fn cpu_unit_exposure_is_at_most_two() {
    let staged = Staged::new(false);
    let Some((_, exposure)) = security(&staged) else {
        return;
    };
    eprintln!("overall exposure of classifyd.service: {exposure}");
    assert!(
        exposure <= MAX_EXPOSURE,
        "systemd-analyze security rates classifyd.service {exposure}, above {MAX_EXPOSURE}"
    );
}

#[test]
fn template_unit_exposure_is_at_most_two() {
    let staged = Staged::new(false);
    let Some((_, exposure)) = security_of(&staged, &staged.template()) else {
        return;
    };
    eprintln!("overall exposure of classifyd@.service: {exposure}");
    assert!(
        exposure <= MAX_EXPOSURE,
        "systemd-analyze security rates classifyd@.service {exposure}, above {MAX_EXPOSURE}"
    );
}

/// classifyd@.service is classifyd.service for one model: the same hardening and service
/// settings line for line, its own config file, socket, cache and state directory per instance.
#[test]
fn template_unit_is_the_service_per_instance() {
    let service = read_unit("classifyd.service");
    let template = read_unit("classifyd@.service");
    let sandbox = |unit: &str| {
        unit.split_once("# --- Sandboxing")
            .expect("a `# --- Sandboxing` section")
            .1
            .to_owned()
    };
    assert_eq!(
        sandbox(&template),
        sandbox(&service),
        "the sandboxing sections of classifyd@.service and classifyd.service differ"
    );
    for key in [
        "Type",
        "NotifyAccess",
        "WatchdogSec",
        "ExecReload",
        "Restart",
        "RestartSec",
        "TimeoutStartSec",
        "TimeoutStopSec",
        "User",
        "Group",
        "RuntimeDirectory",
        "RuntimeDirectoryMode",
        "RuntimeDirectoryPreserve",
        "StateDirectoryMode",
        "CacheDirectoryMode",
        "ConfigurationDirectory",
        "UMask",
    ] {
        assert_eq!(setting(&template, key), setting(&service, key), "{key}=");
    }
    assert_eq!(
        setting(&template, "ExecStart"),
        Some(
            "/usr/bin/classifyd serve --config /etc/classifyd/%i.toml --uds /run/classifyd/%i.sock"
        )
    );
    assert_eq!(setting(&template, "CacheDirectory"), Some("classifyd/%i"));
    assert_eq!(setting(&template, "StateDirectory"), Some("classifyd/%i"));
}

#[test]
fn sysusers_creates_the_service_account() {
    let root = tempfile::tempdir().expect("temporary directory");
    std::fs::create_dir(root.path().join("etc")).unwrap();
    let root_arg = format!("--root={}", root.path().display());
    let conf = units().join("classifyd.sysusers");
    let out = match Command::new("systemd-sysusers")
        .arg(&root_arg)
        .arg(&conf)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: systemd-sysusers is not installed");
            return;
        }
        Err(e) => panic!("running systemd-sysusers: {e}"),
    };
    assert!(
        out.status.success(),
        "systemd-sysusers {root_arg} {}: {}\n{}",
        conf.display(),
        out.status,
        text(&out)
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    let user: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("classifyd:"))
        .unwrap_or_else(|| panic!("no classifyd user in /etc/passwd:\n{passwd}"))
        .split(':')
        .collect();
    assert!(
        group.lines().any(|l| l.starts_with("classifyd:")),
        "no classifyd group in /etc/group:\n{group}"
    );
    assert_eq!(user[5], "/var/lib/classifyd", "home directory");
    assert!(user[6].ends_with("nologin"), "login shell {}", user[6]);
}

/// The package's tmpfiles entry (classifyd.tmpfile) makes the state directory as the unit's
/// StateDirectory= does, and links the model the shipped config serves to the packaged
/// default model, without replacing a model an operator put there.
#[test]
fn tmpfiles_link_the_default_model_and_keep_the_operators() {
    let root = tempfile::tempdir().expect("temporary directory");
    std::fs::create_dir(root.path().join("etc")).unwrap();
    // The account must exist in the root for the directory's owner.
    std::fs::write(
        root.path().join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nclassifyd:x:990:990::/var/lib/classifyd:/usr/sbin/nologin\n",
    )
    .unwrap();
    std::fs::write(
        root.path().join("etc/group"),
        "root:x:0:\nclassifyd:x:990:\n",
    )
    .unwrap();
    let conf = units().join("classifyd.tmpfile");
    let run = || {
        Command::new("systemd-tmpfiles")
            .arg(format!("--root={}", root.path().display()))
            .arg("--create")
            .arg(&conf)
            .output()
    };
    let out = match run() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: systemd-tmpfiles is not installed");
            return;
        }
        Err(e) => panic!("running systemd-tmpfiles: {e}"),
    };
    assert!(out.status.success(), "systemd-tmpfiles: {}", text(&out));
    let state = root.path().join("var/lib/classifyd");
    let meta = std::fs::metadata(&state).expect("/var/lib/classifyd");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (990, 990, 0o750),
        "owner and mode of /var/lib/classifyd"
    );
    let model = state.join("model");
    assert_eq!(
        std::fs::read_link(&model).expect("/var/lib/classifyd/model is a link"),
        Path::new("/usr/share/classifyd/models/sentiment-minilm")
    );
    let service_config = read_unit("classifyd.toml");
    assert!(
        service_config.contains("model = \"/var/lib/classifyd/model\""),
        "the shipped config serves another path than the link"
    );
    // An operator's own model directory in its place survives the next run (boot, upgrade).
    std::fs::remove_file(&model).unwrap();
    std::fs::create_dir(&model).unwrap();
    let out = run().expect("systemd-tmpfiles");
    assert!(out.status.success(), "systemd-tmpfiles: {}", text(&out));
    assert!(
        std::fs::symlink_metadata(&model).unwrap().is_dir(),
        "the operator's model directory was replaced"
    );
}

/// The service and socket agree on where the socket is and who owns it, whatever systemd says.
#[test]
fn service_and_socket_agree() {
    let service = read_unit("classifyd.service");
    let socket = read_unit("classifyd.socket");
    let listen = setting(&socket, "ListenStream").expect("ListenStream= in classifyd.socket");
    let exec = setting(&service, "ExecStart").expect("ExecStart= in classifyd.service");
    let words: Vec<&str> = exec.split_whitespace().collect();
    let uds = words
        .windows(2)
        .find(|w| w[0] == "--uds")
        .map(|w| w[1])
        .expect("--uds in ExecStart=");
    assert_eq!(uds, listen, "--uds in ExecStart= and ListenStream= differ");
    let runtime = setting(&service, "RuntimeDirectory").expect("RuntimeDirectory=");
    assert_eq!(
        Path::new(listen).parent(),
        Some(Path::new("/run").join(runtime).as_path()),
        "the socket is not in the service's RuntimeDirectory="
    );
    assert_eq!(
        setting(&socket, "Service"),
        Some("classifyd.service"),
        "Service= in classifyd.socket"
    );
    let user = setting(&service, "User").expect("User=");
    assert_eq!(setting(&socket, "SocketUser"), Some(user), "SocketUser=");
    let sysusers = read_unit("classifyd.sysusers");
    assert!(
        sysusers
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["u", user])),
        "classifyd.sysusers does not create User={user}"
    );
}
