//! `classifyd cert`: a development PKI for the QUIC listener.
//!
//! One self-signed CA, one server certificate for the given names, and one client certificate
//! for mTLS, all ECDSA P-256, written as PEM. Good for development and tests; production
//! deployments should issue certificates from their own CA.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// Names the server certificate carries when none are given.
pub const DEFAULT_SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

const DAY: u64 = 24 * 60 * 60;
const CA_VALIDITY_DAYS: u64 = 10 * 365;
const LEAF_VALIDITY_DAYS: u64 = 2 * 365;

/// The files [`write_dev_pki`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPki {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub server: PathBuf,
    pub server_key: PathBuf,
    pub client: PathBuf,
    pub client_key: PathBuf,
}

impl DevPki {
    fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
            server: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        }
    }

    fn all(&self) -> [&Path; 6] {
        [
            &self.ca,
            &self.ca_key,
            &self.server,
            &self.server_key,
            &self.client,
            &self.client_key,
        ]
    }
}

impl std::fmt::Display for DevPki {
    /// One line per file: what it is and where.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rows = [
            ("CA certificate", &self.ca),
            ("CA key (keep secret)", &self.ca_key),
            ("server certificate", &self.server),
            ("server key", &self.server_key),
            ("client certificate", &self.client),
            ("client key", &self.client_key),
        ];
        for (i, (what, path)) in rows.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{what:<21} {}", path.display())?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("invalid server name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error(
        "{} already exists; refusing to overwrite an existing PKI (remove it or choose another \
         directory)",
        .0.display()
    )]
    Exists(PathBuf),
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Writes a CA, a server certificate valid for `server_names` (DNS names and IP addresses;
/// [`DEFAULT_SERVER_NAMES`] when empty) and a client certificate into `dir`, creating it if
/// needed. Private keys are written with mode 0600. Refuses to overwrite any existing file.
pub fn write_dev_pki(dir: &Path, server_names: &[String]) -> Result<DevPki, CertError> {
    let sans = server_sans(server_names)?;
    let paths = DevPki::in_dir(dir);
    for path in paths.all() {
        if path.exists() {
            return Err(CertError::Exists(path.to_owned()));
        }
    }

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let validity = |params: &mut CertificateParams, days: u64| {
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        // An hour of slack for clocks that disagree a little.
        params.not_before = epoch + Duration::from_secs(now.saturating_sub(60 * 60));
        params.not_after = epoch + Duration::from_secs(now + days * DAY);
    };

    let ca_key = KeyPair::generate()?;
    // A name of its own for each CA: verifiers look issuers up by name, and with one name for
    // all dev CAs a certificate from another one fails as "bad signature", not "unknown issuer".
    let tag: String = ca_key.public_key_raw()[1..5]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params.distinguished_name.push(
        DnType::CommonName,
        format!("classifyd development CA {tag}"),
    );
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca_params, CA_VALIDITY_DAYS);
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let mut server_params = CertificateParams::default();
    server_params.distinguished_name = rcgen::DistinguishedName::new();
    server_params
        .distinguished_name
        .push(DnType::CommonName, server_names_cn(&sans));
    server_params.subject_alt_names = sans;
    server_params.is_ca = IsCa::ExplicitNoCa;
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.use_authority_key_identifier_extension = true;
    validity(&mut server_params, LEAF_VALIDITY_DAYS);
    let server_key = KeyPair::generate()?;
    let server = server_params.signed_by(&server_key, &ca)?;

    let mut client_params = CertificateParams::default();
    client_params.distinguished_name = rcgen::DistinguishedName::new();
    client_params
        .distinguished_name
        .push(DnType::CommonName, "classifyd development client");
    client_params.is_ca = IsCa::ExplicitNoCa;
    client_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client_params.use_authority_key_identifier_extension = true;
    validity(&mut client_params, LEAF_VALIDITY_DAYS);
    let client_key = KeyPair::generate()?;
    let client = client_params.signed_by(&client_key, &ca)?;

    create_dir(dir)?;
    write_file(&paths.ca, &ca.pem(), 0o644)?;
    write_file(&paths.ca_key, &ca_key_pem, 0o600)?;
    write_file(&paths.server, &server.pem(), 0o644)?;
    write_file(&paths.server_key, &server_key.serialize_pem(), 0o600)?;
    write_file(&paths.client, &client.pem(), 0o644)?;
    write_file(&paths.client_key, &client_key.serialize_pem(), 0o600)?;
    Ok(paths)
}

/// Parses server names into subject alternative names, deduplicated, in order.
fn server_sans(names: &[String]) -> Result<Vec<SanType>, CertError> {
    let names: Vec<&str> = if names.is_empty() {
        DEFAULT_SERVER_NAMES.to_vec()
    } else {
        names.iter().map(String::as_str).collect()
    };
    let mut sans = Vec::with_capacity(names.len());
    for name in names {
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        let san = if let Ok(ip) = bare.parse::<IpAddr>() {
            SanType::IpAddress(ip)
        } else {
            check_dns_name(name)?;
            let ia5 = name
                .to_ascii_lowercase()
                .try_into()
                .map_err(|_| CertError::InvalidName {
                    name: name.to_owned(),
                    reason: "not ASCII",
                })?;
            SanType::DnsName(ia5)
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

fn check_dns_name(name: &str) -> Result<(), CertError> {
    let invalid = |reason| CertError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() || name.len() > 253 {
        return Err(invalid("a DNS name has 1 to 253 characters"));
    }
    for (i, label) in name.trim_end_matches('.').split('.').enumerate() {
        if label.is_empty() || label.len() > 63 {
            return Err(invalid("each DNS label has 1 to 63 characters"));
        }
        if label == "*" && i == 0 {
            continue;
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(invalid(
                "neither an IP address nor a DNS name (letters, digits and inner hyphens)",
            ));
        }
    }
    Ok(())
}

fn server_names_cn(sans: &[SanType]) -> String {
    match sans.first() {
        Some(SanType::DnsName(n)) => n.as_str().to_owned(),
        Some(SanType::IpAddress(ip)) => ip.to_string(),
        _ => "classifyd".to_owned(),
    }
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o755);
    builder.create(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        source,
    })
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tls::{load_certs, load_roots, provider};
    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::server::WebPkiClientVerifier;
    use rustls_pki_types::{ServerName, UnixTime};
    use std::sync::Arc;

    fn server_ok(pki: &DevPki, name: &str) -> bool {
        let roots = Arc::new(load_roots("ca", &pki.ca).unwrap());
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .unwrap();
        let cert = load_certs("server", &pki.server).unwrap();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        verifier
            .verify_server_cert(&cert[0], &[], &name, &[], UnixTime::now())
            .is_ok()
    }

    fn client_ok(ca: &Path, cert: &Path) -> bool {
        let roots = Arc::new(load_roots("ca", ca).unwrap());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
            .build()
            .unwrap();
        let cert = load_certs("client", cert).unwrap();
        verifier
            .verify_client_cert(&cert[0], &[], UnixTime::now())
            .is_ok()
    }

    #[test]
    fn cert_dev_pki_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        let pki = write_dev_pki(&out, &[]).unwrap();
        for path in pki.all() {
            assert!(path.is_file(), "{}", path.display());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in [&pki.ca_key, &pki.server_key, &pki.client_key] {
                let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", key.display());
            }
        }
        for name in ["localhost", "127.0.0.1", "::1"] {
            assert!(server_ok(&pki, name), "{name}");
        }
        assert!(!server_ok(&pki, "example.com"));
        assert!(client_ok(&pki.ca, &pki.client));
        // EKUs keep the roles apart.
        assert!(!client_ok(&pki.ca, &pki.server));
        // The CA is a CA: it can act as its own trust anchor but is no client.
        assert!(!client_ok(&pki.ca, &pki.ca));
    }

    #[test]
    fn cert_dev_pki_custom_names_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec![
            "classifyd.internal".to_owned(),
            "10.1.2.3".to_owned(),
            "[fd00::1]".to_owned(),
            "classifyd.internal".to_owned(),
        ];
        let pki = write_dev_pki(dir.path(), &names).unwrap();
        assert!(server_ok(&pki, "classifyd.internal"));
        assert!(server_ok(&pki, "10.1.2.3"));
        assert!(server_ok(&pki, "fd00::1"));
        assert!(!server_ok(&pki, "localhost"));

        let err = write_dev_pki(dir.path(), &[]).unwrap_err();
        assert!(matches!(err, CertError::Exists(_)), "{err}");

        let other = tempfile::tempdir().unwrap();
        for bad in ["", "bad name", "-x.example", "a..b", "é.example"] {
            let err = write_dev_pki(other.path(), &[bad.to_owned()]).unwrap_err();
            assert!(
                matches!(err, CertError::InvalidName { .. }),
                "{bad:?}: {err}"
            );
        }
        // Nothing was written by the refused attempts.
        assert_eq!(std::fs::read_dir(other.path()).unwrap().count(), 0);
    }
}
