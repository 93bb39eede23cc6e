//! A scripted mock Kubernetes API server (kube-rs' `ApiServerVerifier` pattern): a
//! `kube::Client` over `tower_test::mock::pair`, and a handle on which a test takes each
//! request in turn, asserts its method, path, query and body, and sends the response.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle, SendResponse};

/// Longest wait for the code under test to send its next request. A bound, not a delay:
/// requests normally arrive within milliseconds; this only turns a hang into a failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The server side of a mock client.
pub(crate) struct ApiServer {
    handle: Handle<Request<Body>, Response<Body>>,
}

/// One request received by the mock server.
pub(crate) struct Call {
    /// HTTP method.
    pub(crate) method: Method,
    /// URL path, e.g. `/api/v1/namespaces/trading/pods`.
    pub(crate) path: String,
    /// Decoded query parameters.
    pub(crate) query: BTreeMap<String, String>,
    /// `Content-Type` header, if any.
    pub(crate) content_type: Option<String>,
    /// JSON body (`Null` when empty).
    pub(crate) body: Value,
    respond: SendResponse<Response<Body>>,
}

/// `registry` in the OpenMetrics text format, as `/metrics` serves it.
pub(crate) fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("writing to a String cannot fail");
    text
}

/// A client whose requests go to the returned [`ApiServer`]; default namespace `default`.
pub(crate) fn mock_client() -> (Client, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServer { handle })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

impl ApiServer {
    /// The next request. Panics if none comes within [`REQUEST_TIMEOUT`].
    pub(crate) async fn next(&mut self) -> Call {
        tokio::time::timeout(REQUEST_TIMEOUT, self.try_next())
            .await
            .expect("no request from the code under test within 10 s")
            .expect("the client was dropped while a request was expected")
    }

    /// The next request, or `None` once every client clone is dropped. No time limit: for
    /// use in a `select!` with the code under test.
    pub(crate) async fn try_next(&mut self) -> Option<Call> {
        let (request, respond) = self.handle.next_request().await?;
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query = request
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        let content_type = request.headers().get(http::header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_owned());
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        Some(Call { method, path, query, content_type, body, respond })
    }

    /// The next request, asserted to be `method path`.
    pub(crate) async fn expect(&mut self, method: Method, path: &str) -> Call {
        let call = self.next().await;
        assert_eq!((&call.method, call.path.as_str()), (&method, path), "unexpected request; body: {}", call.body);
        call
    }

    /// Waits for the code under test (`run`) to finish, failing on any request it sends
    /// meanwhile (unanswered, it would otherwise wait for ever) and after
    /// [`REQUEST_TIMEOUT`].
    pub(crate) async fn settle<T>(&mut self, run: tokio::task::JoinHandle<T>) -> T {
        let mut run = run;
        let wait = async {
            tokio::select! {
                done = &mut run => done.expect("the code under test panicked"),
                call = self.try_next() => match call {
                    Some(c) => panic!("unexpected request: {} {} {}", c.method, c.path, c.body),
                    None => run.await.expect("the code under test panicked"),
                },
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, wait).await.expect("the code under test did not finish within 10 s")
    }

    /// Asserts that no further request comes: every client clone has been dropped and
    /// nothing is pending.
    pub(crate) async fn assert_no_more_requests(mut self) {
        let next = tokio::time::timeout(REQUEST_TIMEOUT, self.handle.next_request())
            .await
            .expect("a client clone is still alive; drop every holder of the client first");
        if let Some((request, _)) = next {
            panic!("unexpected extra request: {} {}", request.method(), request.uri());
        }
    }
}

impl Call {
    /// Asserts a server-side apply by `manager` (forced, apply-patch content type).
    pub(crate) fn assert_server_side_apply(&self, manager: &str) {
        assert_eq!(self.method, Method::PATCH, "{}", self.path);
        assert_eq!(self.query.get("fieldManager").map(String::as_str), Some(manager), "{}", self.path);
        assert_eq!(self.query.get("force").map(String::as_str), Some("true"), "{}", self.path);
        assert_eq!(self.content_type.as_deref(), Some("application/apply-patch+yaml"), "{}", self.path);
    }

    /// Responds 200 with `body`.
    pub(crate) fn ok(self, body: Value) {
        self.respond_json(StatusCode::OK, body);
    }

    /// Responds 200 with the request's own body (what an apply returns, near enough).
    pub(crate) fn echo(self) {
        let body = self.body.clone();
        self.ok(body);
    }

    /// Responds with a Kubernetes `Status` error.
    pub(crate) fn error(self, code: u16, reason: &str, message: &str) {
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code,
        });
        self.respond_json(StatusCode::from_u16(code).unwrap(), body);
    }

    /// Responds 200 with raw bytes (e.g. a watch response: one JSON event per line).
    pub(crate) fn respond_json_bytes(self, body: Vec<u8>) {
        let response = Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap();
        self.respond.send_response(response);
    }

    /// Responds with `status` and a JSON body.
    pub(crate) fn respond_json(self, status: StatusCode, body: Value) {
        let response = Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        self.respond.send_response(response);
    }
}
