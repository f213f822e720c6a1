//! TLS material made at test time with rcgen: a CA, a server certificate for 127.0.0.1 and
//! localhost, a client certificate signed by the CA and a self-signed one; the files a
//! spanlens config names, and rustls client configs that trust the CA.

use super::process::TempDir;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::PathBuf;
use std::sync::Arc;

/// A certificate with its private key, PEM and DER.
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub key_der: Vec<u8>,
}

pub struct Pki {
    pub ca: Identity,
    pub server: Identity,
    /// Signed by the CA.
    pub client: Identity,
    /// Self-signed, unknown to the server.
    pub rogue: Identity,
}

/// Certificate parameters for `names` with `common_name`, and a fresh key.
fn params(names: &[&str], common_name: &str) -> (CertificateParams, KeyPair) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("certificate params");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    (params, KeyPair::generate().unwrap())
}

/// A leaf certificate for `purpose`, signed by `issuer` or (None) by itself.
fn leaf(
    names: &[&str],
    common_name: &str,
    purpose: ExtendedKeyUsagePurpose,
    issuer: Option<&Issuer<'_, &KeyPair>>,
) -> Identity {
    let (mut params, key) = params(names, common_name);
    params.extended_key_usages.push(purpose);
    let cert = match issuer {
        Some(issuer) => params.signed_by(&key, issuer),
        None => params.self_signed(&key),
    };
    identity(cert.unwrap(), &key)
}

fn identity(cert: rcgen::Certificate, key: &KeyPair) -> Identity {
    Identity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().clone(),
        key_der: key.serialize_der(),
    }
}

impl Pki {
    pub fn new() -> Pki {
        let (mut ca_params, ca_key) = params(&[], "spanlens hardening test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca = identity(ca_cert, &ca_key);
        let issuer = Issuer::new(ca_params, &ca_key);
        let worker = ["tasker-rust-worker"];
        Pki {
            server: leaf(
                &["127.0.0.1", "localhost"],
                "spanlens",
                ExtendedKeyUsagePurpose::ServerAuth,
                Some(&issuer),
            ),
            client: leaf(
                &worker,
                worker[0],
                ExtendedKeyUsagePurpose::ClientAuth,
                Some(&issuer),
            ),
            rogue: leaf(
                &worker,
                worker[0],
                ExtendedKeyUsagePurpose::ClientAuth,
                None,
            ),
            ca,
        }
    }

    /// Writes ca.pem, server.pem and server.key into `dir`: (ca, cert, key).
    pub fn write(&self, dir: &TempDir) -> (PathBuf, PathBuf, PathBuf) {
        (
            dir.write("ca.pem", &self.ca.cert_pem),
            dir.write("server.pem", &self.server.cert_pem),
            dir.write("server.key", &self.server.key_pem),
        )
    }

    /// A rustls client trusting the CA, presenting `client` if given, offering `alpn`.
    pub fn client_config(
        &self,
        client: Option<&Identity>,
        alpn: &[&[u8]],
    ) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.cert_der.clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match client {
            Some(id) => builder
                .with_client_auth_cert(
                    vec![id.cert_der.clone()],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_der.clone())),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}
