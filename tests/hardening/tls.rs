//! TLS material made at test time with rcgen (a CA, a server certificate for 127.0.0.1 and
//! localhost, a client certificate signed by the CA and a self-signed one), and clients that
//! speak OTLP/HTTP (HTTP/1.1), OTLP/gRPC (HTTP/2, ALPN h2) and GET over rustls.
#![allow(dead_code)]

use crate::harness::TempDir;
use crate::otlp::{CALL_TIMEOUT, Proto, Reply, grpc_request, http_request, read_grpc, read_http};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub use crate::support::pki::{Identity, Pki};

impl Pki {
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

/// Connects with TLS to `addr`, verifying the server as 127.0.0.1.
pub async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::IpAddress(addr.ip().into());
    tokio::time::timeout(CALL_TIMEOUT, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))
}

/// OTLP/HTTP over TLS (HTTP/1.1), one request on a new connection.
pub async fn https_export(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    proto: Proto,
    body: Vec<u8>,
    token: Option<&str>,
) -> Result<Reply, String> {
    let tls = connect(addr, config).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let uri = format!("https://{addr}/v1/traces");
    let mut request = http_request(&uri, proto, None, body, token);
    request
        .headers_mut()
        .insert("host", addr.to_string().parse().unwrap());
    let response = tokio::time::timeout(CALL_TIMEOUT, sender.send_request(request))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| format!("request: {e}"))?;
    read_http(proto, response).await
}

/// OTLP/gRPC over TLS (HTTP/2 with ALPN h2), one call on a new connection.
pub async fn grpcs_export(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    payload: Vec<u8>,
    token: Option<&str>,
) -> Result<Reply, String> {
    let tls = connect(addr, config).await?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let uri = format!("https://{addr}{}", crate::otlp::EXPORT);
    let request = grpc_request(&uri, None, false, &payload, token);
    let response = tokio::time::timeout(CALL_TIMEOUT, sender.send_request(request))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| format!("request: {e}"))?;
    read_grpc(response).await
}

/// GET `path` over TLS: (status, WWW-Authenticate, body).
pub async fn https_get(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, Option<String>, String), String> {
    let tls = connect(addr, config).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request = http::Request::builder()
        .method("GET")
        .uri(format!("https://{addr}{path}"))
        .header("host", addr.to_string());
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(Full::new(Bytes::new())).unwrap();
    let response = tokio::time::timeout(CALL_TIMEOUT, sender.send_request(request))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    let www = response
        .headers()
        .get("www-authenticate")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, www, String::from_utf8_lossy(&body).into_owned()))
}
