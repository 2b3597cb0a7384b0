//! TLS for the HTTP face, and for fetching an authorization server's keys: rustls on
//! ring (it builds with a C compiler alone), its provider installed once for the
//! process.

use std::path::PathBuf;

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// TLS files that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the TLS certificate {cert} with the key {key}: {source}; give PEM files of a certificate chain and its private key")]
pub struct TlsError {
    /// The certificate file.
    pub cert: String,
    /// The key file.
    pub key: String,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Installs ring as the process's rustls provider, unless one is installed already.
pub(crate) fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The server's TLS configuration from `files`.
pub(crate) async fn server_config(
    files: &TlsFiles,
) -> Result<axum_server::tls_rustls::RustlsConfig, TlsError> {
    install_provider();
    axum_server::tls_rustls::RustlsConfig::from_pem_file(&files.cert, &files.key)
        .await
        .map_err(|source| TlsError {
            cert: files.cert.display().to_string(),
            key: files.key.display().to_string(),
            source,
        })
}
