//! TLS for the QUIC transport: rustls configurations built from PEM files.
//!
//! Both sides speak TLS 1.3 only (QUIC requires it), negotiate the ALPN protocol [`ALPN`] and
//! nothing else, and never use 0-RTT: a replayed classify request is harmless but a replayed
//! request is still a request the operator did not send, and the handshake is one round trip on
//! the networks this daemon serves.
//!
//! The server authenticates clients by mTLS against a configured CA. Anonymous clients are
//! accepted only when the operator asks for it *and* the listen address is loopback, where the
//! peer is a process on the same host.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::wire::quic::QuicLimits;

/// The one ALPN protocol identifier both sides offer.
pub const ALPN: &[u8] = b"classifyd/1";

/// Why a TLS configuration could not be built. Every file-related variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {what} {} as PEM: {source}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("no certificate (PEM \"CERTIFICATE\" section) in {what} {}", path.display())]
    NoCertificates { what: &'static str, path: PathBuf },
    #[error(
        "no private key (PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" section) \
         in {}",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("private key {} is not usable: {source}", path.display())]
    BadKey {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("private key {} does not match the certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("certificate in CA file {} is not a usable trust anchor: {source}", path.display())]
    BadCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("client certificate {} given without its private key", .0.display())]
    CertWithoutKey(PathBuf),
    #[error("client private key {} given without its certificate", .0.display())]
    KeyWithoutCert(PathBuf),
    #[error("cannot build the client certificate verifier from {}: {source}", path.display())]
    ClientVerifier {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error(
        "anonymous QUIC clients are allowed only on a loopback listen address, and {listen} is \
         not loopback; configure a client CA for mTLS or listen on 127.0.0.1 / ::1"
    )]
    AnonymousNotLoopback { listen: SocketAddr },
    #[error(
        "QUIC on {listen} has no client CA configured: clients must be authenticated by mTLS \
         (allowing anonymous clients is possible only on a loopback listen address)"
    )]
    NoClientAuth { listen: SocketAddr },
    #[error("QUIC idle timeout {0:?} is out of range")]
    IdleTimeout(std::time::Duration),
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("tls configuration is unusable for QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

/// The crypto provider used everywhere: *ring*, independent of any process-wide default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file, leaf first; at least one is required.
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read("private key", path)?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => Ok(key),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => Err(TlsError::NoKey {
            path: path.to_owned(),
        }),
        Err(source) => Err(TlsError::Pem {
            what: "private key",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Reads a CA bundle into a root store; every certificate in it must be a usable anchor.
pub fn load_roots(what: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(what, path)? {
        roots.add(cert).map_err(|source| TlsError::BadCa {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Maps the error rustls gives for a certificate chain and key into one naming both files.
fn key_error(err: rustls::Error, cert: &Path, key: &Path) -> TlsError {
    match err {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
        },
        source => TlsError::BadKey {
            path: key.to_owned(),
            source,
        },
    }
}

/// Builds the QUIC server configuration.
///
/// - `cert`, `key`: the server's certificate chain (leaf first) and private key, PEM.
/// - `client_ca`: clients must present a certificate issued by a CA in this PEM bundle.
/// - `allow_anonymous_loopback`: also accept clients without a certificate; refused unless
///   `listen` is a loopback address. With `client_ca` also set, clients that do present a
///   certificate must still present a valid one.
///
/// Transport parameters (idle timeout, concurrent streams per connection) come from `limits`.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    allow_anonymous_loopback: bool,
    listen: SocketAddr,
    limits: &QuicLimits,
) -> Result<quinn::ServerConfig, TlsError> {
    let loopback = listen.ip().to_canonical().is_loopback();
    if allow_anonymous_loopback && !loopback {
        return Err(TlsError::AnonymousNotLoopback { listen });
    }
    let chain = load_certs("server certificate", cert)?;
    let key_der = load_key(key)?;
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match client_ca {
        Some(ca) => {
            let roots = Arc::new(load_roots("client CA", ca)?);
            let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            if allow_anonymous_loopback {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|source| TlsError::ClientVerifier {
                    path: ca.to_owned(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None if allow_anonymous_loopback => builder.with_no_client_auth(),
        None => return Err(TlsError::NoClientAuth { listen }),
    };
    let mut tls = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| key_error(e, cert, key))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No 0-RTT: QUIC allows only 0 or u32::MAX here, and 0 turns early data off.
    tls.max_early_data_size = 0;
    tls.send_half_rtt_data = false;

    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(server_transport(limits)?));
    Ok(config)
}

fn server_transport(limits: &QuicLimits) -> Result<quinn::TransportConfig, TlsError> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(limits.max_streams_per_connection));
    // Requests travel only on client-initiated bidirectional streams.
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    transport.datagram_receive_buffer_size(None);
    // What QUIC itself buffers for a peer before the streams' tasks read it: one largest frame
    // per stream, two per connection. Left at quinn's defaults (1.25 MB a stream, no limit per
    // connection) a connection could park max_in_flight × 1.25 MB in the server.
    let frame = u64::try_from(
        limits
            .max_frame_bytes
            .saturating_add(crate::wire::frame::PREFIX_LEN),
    )
    .unwrap_or(u64::MAX);
    let window = |bytes: u64| quinn::VarInt::from_u64(bytes).unwrap_or(quinn::VarInt::MAX);
    transport.stream_receive_window(window(frame));
    transport.receive_window(window(frame.saturating_mul(2)));
    // QUIC's idle timeout only forgets a peer that has vanished; the application's idle close
    // (code 2, in `quic::connection`) decides when a live but unused connection ends. So the
    // transport's timeout sits above the application's, and the server pings well inside it:
    // a request that computes for longer than `idle_timeout` keeps its connection.
    let (idle, ping) = transport_idle(limits.idle_timeout);
    let idle = quinn::IdleTimeout::try_from(idle).map_err(|_| TlsError::IdleTimeout(idle))?;
    transport.max_idle_timeout(Some(idle));
    transport.keep_alive_interval(Some(ping));
    Ok(transport)
}

/// The QUIC idle timeout and keep-alive interval for an application idle timeout `app`: twice
/// `app`, at least `app` + 10 s, and a PING every quarter of that, so a few lost PINGs still
/// leave the connection standing.
pub fn transport_idle(app: Duration) -> (Duration, Duration) {
    let idle = app
        .saturating_mul(2)
        .max(app.saturating_add(Duration::from_secs(10)));
    (idle, idle / 4)
}

/// The client's own keep-alive: the negotiated idle timeout is the smaller of both ends', so a
/// client that pings every few seconds keeps a connection open through a long request even
/// against a server that does not ping.
pub const CLIENT_KEEP_ALIVE: Duration = Duration::from_secs(2);
/// What the client asks for as QUIC's idle timeout (the server's, if smaller, wins).
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds the QUIC client configuration: the server must present a certificate issued by a CA
/// in `ca`; `cert` and `key` (both or neither) are the client's own certificate for mTLS.
pub fn client_config(
    ca: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<quinn::ClientConfig, TlsError> {
    let roots = load_roots("server CA", ca)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut tls = match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = load_certs("client certificate", cert)?;
            let key_der = load_key(key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| key_error(e, cert, key))?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), None) => return Err(TlsError::CertWithoutKey(cert.to_owned())),
        (None, Some(key)) => return Err(TlsError::KeyWithoutCert(key.to_owned())),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = false;

    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // The server never opens streams towards the client.
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(0));
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    transport.datagram_receive_buffer_size(None);
    transport.keep_alive_interval(Some(CLIENT_KEEP_ALIVE));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(CLIENT_IDLE_TIMEOUT)
            .map_err(|_| TlsError::IdleTimeout(CLIENT_IDLE_TIMEOUT))?,
    ));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::cert::write_dev_pki;

    fn limits() -> QuicLimits {
        QuicLimits::from(crate::serve::ConnectionLimits::default())
    }

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    #[test]
    fn tls_server_config_from_dev_pki() {
        let dir = tempfile::tempdir().unwrap();
        let pki = write_dev_pki(dir.path(), &[]).unwrap();
        server_config(
            &pki.server,
            &pki.server_key,
            Some(&pki.ca),
            false,
            loopback(),
            &limits(),
        )
        .unwrap();
        client_config(&pki.ca, Some(&pki.client), Some(&pki.client_key)).unwrap();
        client_config(&pki.ca, None, None).unwrap();
    }

    #[test]
    fn tls_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let pki = write_dev_pki(dir.path(), &[]).unwrap();
        let missing = dir.path().join("nope.pem");
        let err = server_config(
            &missing,
            &pki.server_key,
            Some(&pki.ca),
            false,
            loopback(),
            &limits(),
        )
        .unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        assert!(err.to_string().contains("nope.pem"), "{err}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not pem at all\n").unwrap();
        let err = server_config(
            &garbage,
            &pki.server_key,
            Some(&pki.ca),
            false,
            loopback(),
            &limits(),
        )
        .unwrap_err();
        assert!(matches!(err, TlsError::NoCertificates { .. }), "{err}");
        assert!(err.to_string().contains("garbage.pem"), "{err}");

        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = server_config(
            &broken,
            &pki.server_key,
            Some(&pki.ca),
            false,
            loopback(),
            &limits(),
        )
        .unwrap_err();
        assert!(matches!(err, TlsError::Pem { .. }), "{err}");
        assert!(err.to_string().contains("broken.pem"), "{err}");

        // A certificate file where the key should be: no key in it.
        let err = server_config(
            &pki.server,
            &pki.server,
            Some(&pki.ca),
            false,
            loopback(),
            &limits(),
        )
        .unwrap_err();
        assert!(matches!(err, TlsError::NoKey { .. }), "{err}");
        assert!(err.to_string().contains("server.pem"), "{err}");

        // The client's key with the server's certificate.
        let err = server_config(
            &pki.server,
            &pki.client_key,
            Some(&pki.ca),
            false,
            loopback(),
            &limits(),
        )
        .unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("client-key.pem"), "{err}");

        let err = client_config(&pki.ca, Some(&pki.client), None).unwrap_err();
        assert!(matches!(err, TlsError::CertWithoutKey(_)), "{err}");
        let err = client_config(&pki.ca, Some(&pki.client), Some(&pki.server_key)).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn tls_anonymous_only_on_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let pki = write_dev_pki(dir.path(), &[]).unwrap();
        let any: SocketAddr = "0.0.0.0:4433".parse().unwrap();
        let any6: SocketAddr = "[::]:4433".parse().unwrap();
        let lo6: SocketAddr = "[::1]:4433".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:4433".parse().unwrap();

        for listen in [loopback(), lo6, mapped] {
            server_config(&pki.server, &pki.server_key, None, true, listen, &limits()).unwrap();
            server_config(
                &pki.server,
                &pki.server_key,
                Some(&pki.ca),
                true,
                listen,
                &limits(),
            )
            .unwrap();
        }
        for listen in [any, any6] {
            let err = server_config(&pki.server, &pki.server_key, None, true, listen, &limits())
                .unwrap_err();
            assert!(
                matches!(err, TlsError::AnonymousNotLoopback { .. }),
                "{err}"
            );
            let err = server_config(
                &pki.server,
                &pki.server_key,
                Some(&pki.ca),
                true,
                listen,
                &limits(),
            )
            .unwrap_err();
            assert!(
                matches!(err, TlsError::AnonymousNotLoopback { .. }),
                "{err}"
            );
        }
        // Neither a client CA nor the anonymous opt-in: refused even on loopback.
        let err = server_config(
            &pki.server,
            &pki.server_key,
            None,
            false,
            loopback(),
            &limits(),
        )
        .unwrap_err();
        assert!(matches!(err, TlsError::NoClientAuth { .. }), "{err}");
    }

    #[test]
    fn quic_transport_outlives_the_application_idle_timeout_and_pings_inside_it() {
        for app in [1, 2, 30, 60, 3600].map(Duration::from_secs) {
            let (idle, ping) = transport_idle(app);
            assert!(idle >= app + Duration::from_secs(10), "{app:?}: {idle:?}");
            assert!(ping * 3 < idle, "{app:?}: ping {ping:?} idle {idle:?}");
            assert!(quinn::IdleTimeout::try_from(idle).is_ok());
        }
        assert!(CLIENT_KEEP_ALIVE * 4 < transport_idle(Duration::from_secs(1)).0);
    }
}
