//! TLS on the gRPC port (`CACHE_TLS_CERT_FILE`, `CACHE_TLS_KEY_FILE`, and `CACHE_TLS_CLIENT_CA_FILE` for mutual
//! TLS): rustls, TLS 1.2 and 1.3, ALPN `h2`.
//!
//! The files are watched: before a handshake, at most once per [`RECHECK`], their modification times are
//! compared with those of the files in use, and a change loads them again (certificate rotation). Connections
//! already open keep the configuration they were made with; a set of files that fails to load is logged and
//! the configuration in use stays. A configuration that fails to load at start is a configuration error.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// How often, at most, the files are checked for a change.
pub const RECHECK: Duration = Duration::from_secs(1);

/// The files TLS is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain of the server.
    pub cert: PathBuf,
    /// PEM private key of the server.
    pub key: PathBuf,
    /// PEM certificates of the CAs client certificates must chain to; `None`: no client certificates.
    pub client_ca: Option<PathBuf>,
    /// The protocol offered by ALPN (`h2` for gRPC, `http/1.1` for the Prometheus endpoint).
    pub alpn: &'static [u8],
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }

    fn modified(&self) -> Vec<Option<SystemTime>> {
        self.paths()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    /// Reads the files into a server configuration.
    ///
    /// # Errors
    /// A file that cannot be read or holds no usable certificate or key, naming it.
    pub fn load(&self) -> Result<Arc<ServerConfig>, String> {
        let certs = read_certs(&self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| format!("no usable private key in {}: {e}", self.key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls setup failed: {e}"))?;
        let builder = match &self.client_ca {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs(path)? {
                    roots.add(cert).map_err(|e| {
                        format!("unusable CA certificate in {}: {e}", path.display())
                    })?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| format!("client CA {}: {e}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            format!(
                "certificate {} and key {} do not make a server identity: {e}",
                self.cert.display(),
                self.key.display()
            )
        })?;
        config.alpn_protocols = vec![self.alpn.to_vec()];
        Ok(Arc::new(config))
    }
}

/// The subject of a client certificate, normalised as the tokens file's `client_cert_subject`
/// (`CN=exporter, O=Arxos`); `None` when the certificate cannot be parsed.
pub fn subject_of(cert: &CertificateDer<'_>) -> Option<Arc<str>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = crate::auth::tokens::normalize_subject(&parsed.subject().to_string());
    Some(subject.into())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid certificate in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

/// The configuration in use, reloaded when its files change.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    config: Arc<ServerConfig>,
    modified: Vec<Option<SystemTime>>,
    checked: Instant,
}

impl Tls {
    /// Loads `files`.
    ///
    /// # Errors
    /// See [`TlsFiles::load`].
    pub fn new(files: TlsFiles) -> Result<Self, String> {
        let config = files.load()?;
        let modified = files.modified();
        Ok(Self {
            files,
            state: Mutex::new(State {
                config,
                modified,
                checked: Instant::now(),
            }),
        })
    }

    /// The configuration for the next handshake: the files loaded again if they changed since they were last
    /// read (checked at most once per [`RECHECK`]).
    pub fn config(&self) -> Arc<ServerConfig> {
        let mut state = self.state.lock();
        if state.checked.elapsed() >= RECHECK {
            state.checked = Instant::now();
            let modified = self.files.modified();
            if modified != state.modified {
                match self.files.load() {
                    Ok(config) => {
                        // Recorded only once loaded: a rotation caught half-written is tried again.
                        state.modified = modified;
                        state.config = config;
                        tracing::info!(cert = %self.files.cert.display(), "TLS files changed: loaded them again");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "TLS files changed but do not load: the previous ones stay in use");
                    }
                }
            }
        }
        state.config.clone()
    }
}
