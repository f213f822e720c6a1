//! Issue 25, item 4 — gRPC deadlines: a request still waiting when the deadline its caller
//! set (`grpc-timeout`) passes is answered DEADLINE_EXCEEDED at that deadline, and nothing of
//! it is counted (only the refusal, reason deadline_exceeded); one processed within its
//! deadline is answered as any other; a malformed grpc-timeout is ignored, as if not sent.

use crate::otlp::*;
use crate::support::bounded;
use crate::support::process::Setup;
use std::time::{Duration, Instant};

const DEADLINE_REFUSALS: &[(&str, &str)] = &[("protocol", "grpc"), ("reason", "deadline_exceeded")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_request_waiting_at_its_deadline_is_refused_and_not_counted() {
    // The body's wait is bounded by body_read_timeout (30 s) and the caller's deadline.
    let mut app = Setup::new()
        .set("receivers.body_read_timeout", "30s")
        .start();
    let deadline = Duration::from_millis(300);

    // A request admitted (it holds its place) with half of its message sent, waiting for the
    // rest past its deadline.
    let mut client = h2_connect(app.grpc()).await;
    let message = framed(&Proto::Grpc.body(&request(SERVICE, claims(10))));
    // Before the headers leave: the server's deadline starts later, so no answer comes
    // sooner than `deadline` after this.
    let sent = Instant::now();
    let (response, mut stream) = client
        .send_request(h2_head(app.grpc(), &[("grpc-timeout", "300m")]), false)
        .unwrap();
    stream
        .send_data(message.slice(..message.len() / 2), false)
        .unwrap();
    let code = h2_status(response).await;
    let waited = sent.elapsed();
    eprintln!("grpc-timeout 300m, half a message: {code:?} after {waited:?}");
    assert_eq!(code, Ok(DEADLINE_EXCEEDED));
    assert!(
        waited >= deadline && waited < Duration::from_secs(10),
        "answered after {waited:?}: at the deadline ({deadline:?}), not at body_read_timeout (30 s)"
    );
    // The rest arrives late: it is not processed.
    let _ = stream.send_data(message.slice(message.len() / 2..), true);

    // A deadline passed on arrival (0 is a valid value).
    let (response, mut stream) = client
        .send_request(h2_head(app.grpc(), &[("grpc-timeout", "0m")]), false)
        .unwrap();
    let late = framed(&Proto::Grpc.body(&request(SERVICE, claims(4))));
    stream.send_data(late, true).unwrap();
    assert_eq!(h2_status(response).await, Ok(DEADLINE_EXCEEDED), "0m");

    // The real gRPC client with a deadline it meets: answered as always.
    let mut grpc = grpc_client(app.grpc()).await;
    let mut call = tonic::Request::new(request(SERVICE, claims(7)));
    call.set_timeout(Duration::from_secs(10));
    bounded("an export within its deadline", grpc.export(call))
        .await
        .expect("OK within the deadline");
    let mut accepted = 7;

    // Malformed values are ignored: each request is processed as one without a deadline.
    for value in ["123456789S", "5s", "-1S", "S", "1.5S"] {
        let (response, mut stream) = client
            .send_request(h2_head(app.grpc(), &[("grpc-timeout", value)]), false)
            .unwrap();
        let message = framed(&Proto::Grpc.body(&request(SERVICE, claims(3))));
        stream.send_data(message, true).unwrap();
        assert_eq!(h2_status(response).await, Ok(OK), "grpc-timeout {value}");
        accepted += 3;
    }

    let scraped = app.scrape().await;
    assert_accepted_and_observed(&scraped, accepted);
    assert_eq!(
        scraped.sum(RECEIVED, &[]),
        accepted as f64,
        "spans received"
    );
    assert_eq!(scraped.sum(REQUESTS_REFUSED, DEADLINE_REFUSALS), 2.0);
    let status = app.terminate();
    assert!(status.success(), "exit status {status}");
}
