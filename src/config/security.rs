//! TLS and bearer-token settings of the listeners, and how they are checked.

use super::Problems;
use serde::Deserialize;
use std::path::PathBuf;

/// TLS on a listener; with `client_ca_file`, clients must present a certificate it signed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsServerConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM certificate authorities of client certificates (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
}

/// A bearer token every request must carry (`Authorization: Bearer <token>`); exactly one
/// source. The token never appears in logs or in `check-config` output.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// A file holding the token (surrounding whitespace ignored).
    pub bearer_token_file: Option<PathBuf>,
    /// An environment variable holding the token.
    pub bearer_token_env: Option<String>,
}

pub(super) fn check_tls(tls: &TlsServerConfig, path: &str, problems: &mut Problems) {
    let files = [
        (Some(&tls.cert_file), "cert_file"),
        (Some(&tls.key_file), "key_file"),
        (tls.client_ca_file.as_ref(), "client_ca_file"),
    ];
    for (file, field) in files {
        if let Some(file) = file
            && file.as_os_str().is_empty()
        {
            problems.add(format!("{path}.{field}"), "must name a PEM file");
        }
    }
}

pub(super) fn check_auth(auth: &AuthConfig, path: &str, problems: &mut Problems) {
    match (&auth.bearer_token_file, &auth.bearer_token_env) {
        (Some(_), None) | (None, Some(_)) => {}
        _ => problems.add(
            path,
            "set exactly one of bearer_token_file and bearer_token_env",
        ),
    }
}
