//! One attempt to deliver a request to an endpoint over OTLP/gRPC or OTLP/HTTP, and what the
//! answer means: delivered, worth retrying (and when), or refused for good.

use crate::config::forward::{Compression, EndpointConfig, ForwardProtocol};
use crate::otlp::grpc::{EXPORT_PATH, frame};
use crate::otlp::status::{Code, RpcStatus};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::sync::Arc;
use std::time::Duration;

/// Largest answer body read from an endpoint.
pub(super) const MAX_ANSWER_BYTES: usize = 1 << 20;

/// How one attempt ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// Accepted; `rejected` spans were refused by the endpoint (partial success).
    Delivered { rejected: u64 },
    /// Try again, after `after` if the endpoint said so.
    Retry {
        after: Option<Duration>,
        why: String,
    },
    /// The endpoint will never take this request.
    Permanent(String),
}

pub(crate) struct Sender {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    protocol: ForwardProtocol,
    headers: HeaderMap,
    timeout: Duration,
}

impl Sender {
    pub(crate) fn new(endpoint: &EndpointConfig) -> Result<Sender, String> {
        let url = endpoint.url.trim_end_matches('/');
        let uri = match endpoint.protocol {
            ForwardProtocol::Grpc => format!("{url}{EXPORT_PATH}"),
            ForwardProtocol::Http => match url.split_once("://") {
                Some((_, rest)) if rest.contains('/') => url.to_string(),
                _ => format!("{url}/v1/traces"),
            },
        };
        let uri: Uri = uri
            .parse()
            .map_err(|e| format!("endpoint {}: bad url: {e}", endpoint.label()))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &endpoint.headers {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) else {
                return Err(format!("endpoint {}: bad header {name}", endpoint.label()));
            };
            headers.insert(name, value);
        }
        let mut builder = Client::builder(TokioExecutor::new());
        // A connection the network dropped silently is found by an unanswered PING rather
        // than by every request timing out on it until the kernel gives up.
        builder
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_timeout(Duration::from_secs(10))
            .http2_keep_alive_while_idle(true);
        if endpoint.protocol == ForwardProtocol::Grpc {
            builder.http2_only(true);
        }
        let connector = connector(endpoint, uri.scheme_str() == Some("https"))?;
        Ok(Sender {
            client: builder.build(connector),
            uri,
            protocol: endpoint.protocol,
            headers,
            timeout: endpoint.timeout.get(),
        })
    }

    /// Sends `body`, compressed with `compression`, once.
    pub(crate) async fn attempt(&self, body: &Bytes, compression: Compression) -> Attempt {
        let request = match self.protocol {
            ForwardProtocol::Grpc => self.grpc_request(body, compression),
            ForwardProtocol::Http => self.http_request(body, compression),
        };
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    why = format!("{why}: {s}");
                    source = s.source();
                }
                why
            })?;
            let (parts, body) = response.into_parts();
            // An export answer is small; a backend answering megabytes is not read whole.
            let collected = http_body_util::Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            let trailers = collected.trailers().cloned().unwrap_or_default();
            Ok::<_, String>((parts.status, parts.headers, trailers, collected.to_bytes()))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Attempt::Retry {
                after: None,
                why: format!("no answer within {:?}", self.timeout),
            },
            Ok(Err(why)) => Attempt::Retry { after: None, why },
            Ok(Ok((status, headers, trailers, body))) => match self.protocol {
                ForwardProtocol::Grpc => grpc_outcome(status, &headers, &trailers, &body),
                ForwardProtocol::Http => http_outcome(status, &headers, &body),
            },
        }
    }

    fn grpc_request(&self, body: &Bytes, compression: Compression) -> Request<Full<Bytes>> {
        let framed = frame(compression != Compression::None, body);
        let mut request = self.request(framed, "application/grpc");
        let headers = request.headers_mut();
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        if let Some(encoding) = encoding_name(compression) {
            headers.insert("grpc-encoding", HeaderValue::from_static(encoding));
        }
        let millis = self.timeout.as_millis().min(99_999_999);
        if let Ok(timeout) = HeaderValue::from_str(&format!("{millis}m")) {
            headers.insert("grpc-timeout", timeout);
        }
        request
    }

    fn http_request(&self, body: &Bytes, compression: Compression) -> Request<Full<Bytes>> {
        let mut request = self.request(body.clone(), "application/x-protobuf");
        if let Some(encoding) = encoding_name(compression) {
            request
                .headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
        }
        request
    }

    fn request(&self, body: Bytes, content_type: &'static str) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.clone_from(&self.headers);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("spanlens/", env!("CARGO_PKG_VERSION"))),
        );
        request
    }
}

fn encoding_name(compression: Compression) -> Option<&'static str> {
    match compression {
        Compression::None => None,
        Compression::Gzip => Some("gzip"),
        Compression::Zstd => Some("zstd"),
    }
}

/// TLS with the endpoint's CA file, the system's roots for other https urls.
fn connector(
    endpoint: &EndpointConfig,
    https: bool,
) -> Result<HttpsConnector<HttpConnector>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let fail = |e: &dyn std::fmt::Display| format!("endpoint {}: TLS: {e}", endpoint.label());
    let mut roots = rustls::RootCertStore::empty();
    match &endpoint.tls {
        Some(tls) => {
            let certs = CertificateDer::pem_file_iter(&tls.ca_file)
                .map_err(|e| fail(&format!("cannot read {}: {e}", tls.ca_file.display())))?;
            for cert in certs {
                let cert = cert.map_err(|e| fail(&format!("{}: {e}", tls.ca_file.display())))?;
                roots.add(cert).map_err(|e| fail(&e))?;
            }
        }
        None if https => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(fail(
                    &"no system CA certificates found; set tls.ca_file for this endpoint",
                ));
            }
        }
        None => {}
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build())
}

/// HTTP statuses worth retrying (OTLP/HTTP), and the gRPC status they stand for.
fn retryable_http(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

fn grpc_outcome(
    status: StatusCode,
    headers: &HeaderMap,
    trailers: &HeaderMap,
    body: &Bytes,
) -> Attempt {
    if status != StatusCode::OK {
        let why = format!("HTTP status {status} to a gRPC call");
        return match retryable_http(status) {
            true => Attempt::Retry { after: None, why },
            false => Attempt::Permanent(why),
        };
    }
    let field = |name: &str| trailers.get(name).or_else(|| headers.get(name));
    let Some(code) = field("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return Attempt::Retry {
            after: None,
            why: "the answer carried no grpc-status".to_string(),
        };
    };
    if code == Code::Ok as i32 {
        let message = body.get(5..).unwrap_or_default();
        return Attempt::Delivered {
            rejected: rejected_spans(message),
        };
    }
    let message = field("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let delay = field("grpc-status-details-bin")
        .and_then(|v| RpcStatus::from_header(v.as_bytes()))
        .and_then(|s| s.retry_delay());
    let why = format!("gRPC status {code}: {message}");
    let retryable = [
        Code::Cancelled,
        Code::DeadlineExceeded,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unavailable,
        Code::DataLoss,
    ]
    .iter()
    .any(|c| *c as i32 == code)
        || (code == Code::ResourceExhausted as i32 && delay.is_some());
    match retryable {
        true => Attempt::Retry { after: delay, why },
        false => Attempt::Permanent(why),
    }
}

fn http_outcome(status: StatusCode, headers: &HeaderMap, body: &Bytes) -> Attempt {
    if status.is_success() {
        return Attempt::Delivered {
            rejected: rejected_spans(body),
        };
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    let why = format!("HTTP status {status}: {}", text.trim());
    if retryable_http(status) {
        let after = headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        return Attempt::Retry { after, why };
    }
    Attempt::Permanent(why)
}

/// partial_success.rejected_spans of an export response (0 when absent or undecodable).
fn rejected_spans(message: &[u8]) -> u64 {
    ExportTraceServiceResponse::decode(message)
        .ok()
        .and_then(|r| r.partial_success)
        .map_or(0, |p| p.rejected_spans.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trailers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    fn grpc(pairs: &[(&'static str, &str)]) -> Attempt {
        grpc_outcome(
            StatusCode::OK,
            &HeaderMap::new(),
            &trailers(pairs),
            &Bytes::new(),
        )
    }

    #[test]
    fn grpc_codes_are_retryable_as_the_otlp_specification_says() {
        assert_eq!(
            grpc(&[("grpc-status", "0")]),
            Attempt::Delivered { rejected: 0 }
        );
        for code in ["1", "4", "10", "11", "14", "15"] {
            assert!(
                matches!(
                    grpc(&[("grpc-status", code)]),
                    Attempt::Retry { after: None, .. }
                ),
                "{code}"
            );
        }
        for code in ["2", "3", "5", "7", "8", "12", "13", "16"] {
            assert!(
                matches!(grpc(&[("grpc-status", code)]), Attempt::Permanent(_)),
                "{code}"
            );
        }
        assert!(matches!(grpc(&[]), Attempt::Retry { .. }));
    }

    #[test]
    fn resource_exhausted_with_retry_info_is_retried_after_its_delay() {
        let details = RpcStatus::new(Code::ResourceExhausted, "slow down")
            .retry_after(Duration::from_millis(250))
            .to_header();
        assert_eq!(
            grpc(&[("grpc-status", "8"), ("grpc-status-details-bin", &details)]),
            Attempt::Retry {
                after: Some(Duration::from_millis(250)),
                why: "gRPC status 8: ".to_string()
            }
        );
    }

    #[test]
    fn http_statuses_and_retry_after() {
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
        let busy = http_outcome(StatusCode::SERVICE_UNAVAILABLE, &headers, &Bytes::new());
        assert!(
            matches!(busy, Attempt::Retry { after: Some(d), .. } if d == Duration::from_secs(3))
        );
        for code in [429, 502, 504] {
            let status = StatusCode::from_u16(code).expect("status");
            assert!(matches!(
                http_outcome(status, &HeaderMap::new(), &Bytes::new()),
                Attempt::Retry { after: None, .. }
            ));
        }
        for code in [400, 401, 404, 413, 500] {
            let status = StatusCode::from_u16(code).expect("status");
            assert!(
                matches!(
                    http_outcome(status, &HeaderMap::new(), &Bytes::new()),
                    Attempt::Permanent(_)
                ),
                "{code}"
            );
        }
    }

    #[test]
    fn partial_success_is_read_from_the_answer() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
        let answer = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "bad".into(),
            }),
        }
        .encode_to_vec();
        let ok = http_outcome(StatusCode::OK, &HeaderMap::new(), &Bytes::from(answer));
        assert_eq!(ok, Attempt::Delivered { rejected: 3 });
    }
}
