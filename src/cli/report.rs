//! The one line a failed command prints: the error's causes, each said once, and for the
//! mistakes people make first (no daemon yet, a stale socket, a socket they may not open, a
//! QUIC endpoint that does not answer or wants a certificate) what to do about it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::client::ClientError;

/// `classifyd: error: CAUSES[; HINT]`.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = format!("classifyd: error: {}", causes(e));
    if let Some(hint) = e
        .chain()
        .find_map(|c| c.downcast_ref::<ClientError>().and_then(hint))
    {
        line.push_str("; ");
        line.push_str(&hint);
    }
    line
}

/// The chain joined by ": ", leaving out a cause its parent's message already quotes
/// (`connecting to X: {source}` with `source` as the error's source too).
pub(crate) fn causes(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn hint(e: &ClientError) -> Option<String> {
    use std::io::ErrorKind;
    match e {
        ClientError::GaveUp { source, .. } => match &**source {
            ClientError::Connect { source: io, .. } if io.kind() == ErrorKind::NotFound => Some(
                "nothing bound that socket in time: is `classifyd serve` starting (a large model \
                 takes a while to load; raise --wait), and on this path?"
                    .to_string(),
            ),
            other => hint(other),
        },
        ClientError::Connect { target, source } => match source.kind() {
            ErrorKind::NotFound => Some(format!(
                "no socket there: start `classifyd serve --uds {target}`, or add --wait SECS to wait for it"
            )),
            ErrorKind::ConnectionRefused => Some(
                "no daemon listens on that socket (the file is left from one that exited): \
                 start `classifyd serve` again, which replaces it"
                    .to_string(),
            ),
            ErrorKind::PermissionDenied => Some(permission_hint(Path::new(target))),
            _ => None,
        },
        ClientError::Timeout { .. } => Some(
            "is `classifyd serve --quic` listening at that address, and does the network let \
             UDP through? --connect-timeout SECS waits longer, --wait SECS retries"
                .to_string(),
        ),
        ClientError::Quic(m) if m.contains("peer sent no certificates") => Some(
            "the daemon admits clients with a certificate from its --client-ca: give --cert FILE \
             --key FILE"
                .to_string(),
        ),
        ClientError::Quic(m) if m.contains("UnknownIssuer") || m.contains("invalid peer certificate") => {
            Some(
                "the daemon's certificate does not chain to --ca, or does not name --server-name"
                    .to_string(),
            )
        }
        _ => None,
    }
}

/// Who may open the socket, from what this user can see of it or of its directory.
fn permission_hint(socket: &Path) -> String {
    let owner = |uid| {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or_else(|| uid.to_string(), |u| u.name)
    };
    let group = |gid| {
        nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
            .ok()
            .flatten()
            .map_or_else(|| gid.to_string(), |g| g.name)
    };
    if let Ok(m) = std::fs::metadata(socket) {
        let g = group(m.gid());
        return format!(
            "the socket is mode {:04o}, owner {}, group {g}: join group {g} \
             (`sudo usermod -aG {g} $USER`, then log in again) or run as its owner",
            m.mode() & 0o7777,
            owner(m.uid())
        );
    }
    match socket.parent().map(|d| (d, std::fs::metadata(d))) {
        Some((dir, Ok(m))) => format!(
            "its directory {} is mode {:04o}, owner {}, group {}: this user cannot enter it; \
             ask for access, or serve the socket from a directory clients can reach",
            dir.display(),
            m.mode() & 0o7777,
            owner(m.uid()),
            group(m.gid())
        ),
        _ => "this user may not open the socket or enter its directory".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_quoted_by_its_parent_is_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = anyhow::Error::new(ClientError::Connect {
            target: "/tmp/x.sock".into(),
            source: io,
        });
        let line = error_line(&e);
        assert_eq!(
            line.matches("entity not found").count(),
            1,
            "the OS error twice: {line}"
        );
        assert!(line.contains("--wait SECS"), "{line}");
    }

    #[test]
    fn causes_that_add_something_are_kept_in_order() {
        let e = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(causes(&e), "outer: middle: inner");
    }
}
