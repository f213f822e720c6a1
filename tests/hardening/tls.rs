//! Clients that speak OTLP/HTTP (HTTP/1.1), OTLP/gRPC (HTTP/2, ALPN h2) and GET over rustls,
//! to a spanlens whose TLS material `support::pki` made at test time.

use crate::otlp::{
    CALL_TIMEOUT, EXPORT, Proto, Reply, grpc_request, http_request, read_grpc, read_http,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub use crate::support::pki::Pki;

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

/// An HTTP/1.1 connection over TLS to `addr`, driven on a task of its own.
async fn http1_over_tls(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<SendRequest<Full<Bytes>>, String> {
    let tls = connect(addr, config).await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// OTLP/HTTP over TLS (HTTP/1.1), one request on a new connection.
pub async fn https_export(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    proto: Proto,
    body: Vec<u8>,
    token: Option<&str>,
) -> Result<Reply, String> {
    let mut sender = http1_over_tls(addr, config).await?;
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
    let uri = format!("https://{addr}{EXPORT}");
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
    let mut sender = http1_over_tls(addr, config).await?;
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
