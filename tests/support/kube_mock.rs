//! A `kube::Client` over `tower_test::mock` that records every request (method, path with
//! query, JSON body) and answers with a function of it, so a test can assert the exact
//! requests a controller sends.
//!
//! Include with `#[path = "support/kube_mock.rs"] mod kube_mock;`.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

/// One request as the API server saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query, e.g. `/apis/apps/v1/namespaces/prod/deployments/x?fieldManager=berth&force=true`.
    pub uri: String,
    pub body: Option<Value>,
}

impl Recorded {
    /// `METHOD uri`, the form tests compare lists of.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.uri)
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }

    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }
}

pub type Responder = dyn Fn(&Recorded) -> (u16, Value) + Send + Sync;

pub struct MockApi {
    pub client: Client,
    log: Arc<Mutex<Vec<Recorded>>>,
}

impl MockApi {
    /// Every request since the last `take`.
    pub fn take(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// A Kubernetes `Status` error body.
pub fn status(code: u16, reason: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": reason, "reason": reason, "code": code,
    })
}

/// A success `Status` (what DELETE may answer).
pub fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200})
}

/// Starts the mock server task; must be called inside a tokio runtime.
pub fn mock_api(respond: Arc<Responder>) -> MockApi {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log = Arc::new(Mutex::new(Vec::new()));
    let task_log = log.clone();
    tokio::spawn(async move {
        let mut handle = Box::pin(handle);
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().to_string();
            let uri = req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
            let body = if bytes.is_empty() {
                None
            } else {
                serde_json::from_slice(&bytes).ok()
            };
            let rec = Recorded { method, uri, body };
            let (code, answer) = respond(&rec);
            task_log.lock().unwrap().push(rec);
            let resp = Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap();
            send.send_response(resp);
        }
    });
    MockApi {
        client: Client::new(service, "default"),
        log,
    }
}
