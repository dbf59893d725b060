//! `berth cert renew --kube` (what the ACME renewal Job's pod runs) over a mocked API and a real
//! Pebble: the exact requests of one issuance — the Certificate, its Secret and the ACME
//! account Secret read by name, the solver Service and Ingress (one Exact rule for the token on
//! the domain's host, the Certificate's class) applied before the self-check and deleted after
//! the order is finalised, the account and TLS Secrets written, the status through the status
//! subresource, an Event — and the same solver removed when the CA fails the challenge, with the
//! failure in the status, a Warning Event and no Secret written.

#[path = "support/kube_mock.rs"]
mod kube_mock;
#[path = "support/pebble.rs"]
mod pebble;
#[path = "support/tls.rs"]
mod tls;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::cert::acme::{http01_router, Http01Tokens, SelfCheck};
use berth::cert::kube::renew::{renew, KubeRenew};
use berth::cert::run::RunOptions;
use kube_mock::{mock_api, status, success, MockApi, Recorded};
use pebble::{free_port, Pebble};
use serde_json::{json, Value};

fn certificate(server: &str, class: Option<&str>) -> Value {
    let http01 = match class {
        Some(c) => json!({"ingressClassName": c}),
        None => json!({}),
    };
    json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Certificate",
        "metadata": {"name": "web", "namespace": "prod", "uid": "u-1", "generation": 2},
        "spec": {"secretName": "web-tls", "dnsNames": ["web.berth.test"],
                 "issuer": {"acme": {"server": server, "email": "ops@berth.test",
                                     "http01": http01}}}
    })
}

/// The API: the Certificate, Secrets kept in memory, apply answers echoing the body.
fn api(cert: Value) -> (MockApi, Arc<Mutex<Option<Value>>>) {
    let tls = Arc::new(Mutex::new(None::<Value>));
    let t = tls.clone();
    let api = mock_api(Arc::new(move |r: &Recorded| {
        let echo = || r.body.clone().unwrap_or(json!({}));
        match (r.method.as_str(), r.path()) {
            ("GET", "/apis/berth.dev/v1alpha1/namespaces/prod/certificates/web") => {
                (200, cert.clone())
            }
            ("GET", "/api/v1/namespaces/prod/secrets/web-tls") => match &*t.lock().unwrap() {
                Some(s) => (200, s.clone()),
                None => (404, status(404, "NotFound")),
            },
            ("PATCH", "/api/v1/namespaces/prod/secrets/web-tls") => {
                *t.lock().unwrap() = r.body.clone();
                (200, echo())
            }
            ("GET", p) if p.starts_with("/api/v1/namespaces/prod/secrets/berth-acme-account-") => {
                (404, status(404, "NotFound"))
            }
            ("PATCH", "/api/v1/namespaces/prod/services/web-acme-solver") => {
                let mut b = echo();
                b["spec"]["clusterIP"] = json!("10.0.0.99");
                (200, b)
            }
            ("DELETE", _) => (200, success()),
            ("PATCH", p) if p.ends_with("/status") => {
                let mut b = echo();
                b["metadata"] = json!({"name": "web", "namespace": "prod"});
                b["spec"] = cert["spec"].clone();
                (200, b)
            }
            ("PATCH", _) => (200, echo()),
            ("POST", "/apis/events.k8s.io/v1/namespaces/prod/events") => (201, echo()),
            _ => (500, status(500, "unexpected")),
        }
    }));
    (api, tls)
}

fn lines(reqs: &[Recorded]) -> Vec<String> {
    reqs.iter()
        .map(|r| {
            // The account Secret's name is a hash of server and contact: shown by its prefix.
            let l = r.line();
            match l.find("berth-acme-account-") {
                Some(i) => format!("{}berth-acme-account-*{}", &l[..i], &l[i + 29..]),
                None => l,
            }
        })
        .collect()
}

#[tokio::test]
async fn one_issuance_applies_the_solver_then_removes_it_and_writes_secret_and_status() {
    berth::tls::install_default_provider();
    let tokens = Http01Tokens::default();
    let port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let served = tokens.clone();
    tokio::spawn(async move { axum::serve(listener, http01_router(served)).await });
    let pebble = Pebble::start(port);
    let (api, tls_secret) = api(certificate(&pebble.directory(), None));
    let how = KubeRenew {
        opts: RunOptions {
            acme_server_root: Some(pebble.https_ca_path()),
            tokens: tokens.clone(),
            // The Service's ClusterIP does not exist here: check through the responder.
            self_check: SelfCheck::Via(SocketAddr::from(([127, 0, 0, 1], port))),
            acme_timeout: Some(Duration::from_secs(60)),
            ..RunOptions::default()
        },
        ingress_class: Some("nginx".into()),
    };
    let r = renew(api.client.clone(), "prod", "web", &how)
        .await
        .unwrap();
    assert!(r.stored_new, "{:?}\n{}", r.status, pebble.log());
    let reqs = api.take();
    let apply = "?&force=true&fieldManager=berth-cert-renew";
    assert_eq!(
        lines(&reqs),
        [
            "GET /apis/berth.dev/v1alpha1/namespaces/prod/certificates/web".to_string(),
            "GET /api/v1/namespaces/prod/secrets/web-tls".into(),
            "GET /api/v1/namespaces/prod/secrets/berth-acme-account-*".into(),
            format!("PATCH /api/v1/namespaces/prod/services/web-acme-solver{apply}"),
            format!("PATCH /apis/networking.k8s.io/v1/namespaces/prod/ingresses/web-acme-solver{apply}"),
            "DELETE /apis/networking.k8s.io/v1/namespaces/prod/ingresses/web-acme-solver?".into(),
            "DELETE /api/v1/namespaces/prod/services/web-acme-solver?".into(),
            format!("PATCH /api/v1/namespaces/prod/secrets/berth-acme-account-*{apply}"),
            format!("PATCH /api/v1/namespaces/prod/secrets/web-tls{apply}"),
            "GET /api/v1/namespaces/prod/secrets/web-tls".into(),
            "PATCH /apis/berth.dev/v1alpha1/namespaces/prod/certificates/web/status?&force=true&fieldManager=berth".into(),
            "POST /apis/events.k8s.io/v1/namespaces/prod/events?".into(),
        ]
    );
    let ev = reqs[11].body.as_ref().unwrap();
    assert_eq!(
        (ev["type"].as_str(), ev["reason"].as_str()),
        (Some("Normal"), Some("Issued"))
    );
    assert_eq!(ev["regarding"]["kind"], "Certificate");
    // The Service selects the Job's pod and forwards to its HTTP-01 port.
    let svc = reqs[3].body.as_ref().unwrap();
    assert_eq!(
        svc["spec"]["selector"],
        json!({"berth.dev/acme-solver": "web-acme-solver"})
    );
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8089);
    assert_eq!(svc["metadata"]["ownerReferences"][0]["kind"], "Certificate");
    // The Ingress: the Certificate's class, one Exact rule for the token on the domain.
    let ing = reqs[4].body.as_ref().unwrap();
    assert_eq!(
        ing["spec"]["ingressClassName"], "nginx",
        "the Job's --ingress-class, as the Certificate names none"
    );
    let rules = ing["spec"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["host"], "web.berth.test");
    let path = &rules[0]["http"]["paths"][0];
    assert_eq!(path["pathType"], "Exact");
    let p = path["path"].as_str().unwrap();
    assert!(
        p.starts_with("/.well-known/acme-challenge/") && p.len() > 40,
        "{p}"
    );
    assert_eq!(
        path["backend"]["service"],
        json!({"name": "web-acme-solver", "port": {"number": 80}})
    );
    assert_eq!(ing["metadata"]["ownerReferences"][0]["kind"], "Certificate");
    // The account key is kept in a Secret; the TLS Secret verifies against Pebble's root.
    let account = reqs[7].body.as_ref().unwrap();
    assert!(account["data"]["account.json"].is_string());
    let s = tls_secret.lock().unwrap().clone().unwrap();
    assert_eq!(s["type"], "kubernetes.io/tls");
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(s.clone()).unwrap();
    let text = |k: &str| String::from_utf8(secret.data.as_ref().unwrap()[k].0.clone()).unwrap();
    let root = pebble.root_pem().await;
    tls::verify_tls(&text("tls.crt"), &text("tls.key"), &root, "web.berth.test")
        .await
        .unwrap();
    let st = &reqs[10].body.as_ref().unwrap()["status"];
    let ready = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "True", "{st}");
    assert_eq!(st["failedAttempts"], 0);
    assert!(st["serialNumber"].is_string() && st["renewalTime"].is_string());
    assert!(tokens.is_empty());
}

#[tokio::test]
async fn a_failed_challenge_still_removes_the_solver_and_writes_no_secret() {
    berth::tls::install_default_provider();
    // Pebble validates on a port where nothing answers; the self-check is off.
    let pebble = Pebble::start(free_port());
    let (api, tls_secret) = api(certificate(&pebble.directory(), Some("traefik")));
    let how = KubeRenew {
        opts: RunOptions {
            acme_server_root: Some(pebble.https_ca_path()),
            self_check: SelfCheck::Off,
            acme_timeout: Some(Duration::from_secs(30)),
            ..RunOptions::default()
        },
        ingress_class: Some("nginx".into()),
    };
    let r = renew(api.client.clone(), "prod", "web", &how)
        .await
        .unwrap();
    assert!(!r.stored_new);
    let reqs = api.take();
    let ls = lines(&reqs);
    let at = |want: &str| {
        ls.iter()
            .position(|l| l.starts_with(want))
            .unwrap_or_else(|| panic!("no {want} in {ls:#?}"))
    };
    let ing = reqs
        [at("PATCH /apis/networking.k8s.io/v1/namespaces/prod/ingresses/web-acme-solver")]
    .body
    .clone()
    .unwrap();
    assert_eq!(
        ing["spec"]["ingressClassName"], "traefik",
        "the Certificate's acme.http01 class wins"
    );
    assert!(
        at("DELETE /apis/networking.k8s.io/v1/namespaces/prod/ingresses/web-acme-solver")
            > at("PATCH /apis/networking.k8s.io")
    );
    assert!(
        at("DELETE /api/v1/namespaces/prod/services/web-acme-solver")
            > at("PATCH /api/v1/namespaces/prod/services")
    );
    assert!(
        !ls.iter()
            .any(|l| l.starts_with("PATCH /api/v1/namespaces/prod/secrets/web-tls")),
        "{ls:#?}"
    );
    assert!(tls_secret.lock().unwrap().is_none());
    // The status, then a Warning Event with the reason and the message of the Issuing condition.
    let st = &reqs[at("PATCH /apis/berth.dev/v1alpha1/namespaces/prod/certificates/web/status")]
        .body
        .as_ref()
        .unwrap()["status"];
    let ev = reqs.last().unwrap().body.clone().unwrap();
    assert_eq!(
        ls.last().unwrap(),
        "POST /apis/events.k8s.io/v1/namespaces/prod/events?"
    );
    assert_eq!(
        (ev["type"].as_str(), ev["reason"].as_str()),
        (Some("Warning"), Some("AcmeRejected")),
        "{ev}"
    );
    assert!(ev["note"].as_str().unwrap().contains("attempt 1"), "{ev}");
    assert_eq!(st["failedAttempts"], 1, "{st}");
    assert!(st["lastFailureTime"].is_string());
    let issuing = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Issuing")
        .unwrap();
    assert_eq!(issuing["status"], "False");
    assert_eq!(issuing["reason"], "AcmeRejected", "{issuing}");
    assert!(issuing["message"]
        .as_str()
        .unwrap()
        .contains("berth.dev/renew-now"));
}
