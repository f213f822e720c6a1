//! TLS material made at test time with rcgen: a CA, a server certificate for 127.0.0.1 and
//! localhost, a client certificate signed by the CA and a self-signed one.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::CertificateDer;

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

fn leaf(names: &[&str], common_name: &str) -> CertificateParams {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("certificate params");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
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
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = leaf(&[], "spanlens hardening test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, &ca_key);

        let server_key = KeyPair::generate().unwrap();
        let mut server_params = leaf(&["127.0.0.1", "localhost"], "spanlens");
        server_params
            .extended_key_usages
            .push(rcgen::ExtendedKeyUsagePurpose::ServerAuth);
        let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();

        let client_key = KeyPair::generate().unwrap();
        let mut client_params = leaf(&["tasker-rust-worker"], "tasker-rust-worker");
        client_params
            .extended_key_usages
            .push(rcgen::ExtendedKeyUsagePurpose::ClientAuth);
        let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();

        let rogue_key = KeyPair::generate().unwrap();
        let mut rogue_params = leaf(&["tasker-rust-worker"], "tasker-rust-worker");
        rogue_params
            .extended_key_usages
            .push(rcgen::ExtendedKeyUsagePurpose::ClientAuth);
        let rogue_cert = rogue_params.self_signed(&rogue_key).unwrap();

        Pki {
            ca: identity(ca_cert, &ca_key),
            server: identity(server_cert, &server_key),
            client: identity(client_cert, &client_key),
            rogue: identity(rogue_cert, &rogue_key),
        }
    }
}
