//! Leader election over a mocked API server that keeps one Lease with resourceVersion
//! conflicts, as the real one does: only one of two candidates leads at a time, a standby
//! takes over an expired lease, a released lease is taken at once, and the controllers' client
//! writes nothing once the leader's last renewal is older than the renew deadline.
//! (tests/e2e_operator.rs shows the same with the real binary, SIGSTOP and a real API server.)

#[path = "support/kube_mock.rs"]
mod kube_mock;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth::controller::fence::{Fence, FenceLayer};
use berth::controller::leader::{Elector, LeaseConfig};
use kube_mock::{mock_api, status, Recorded};
use serde_json::{json, Value};

/// The one Lease the fake server holds, with its resourceVersion.
#[derive(Default)]
struct LeaseServer {
    lease: Mutex<Option<Value>>,
    version: Mutex<u64>,
}

impl LeaseServer {
    fn respond(&self, r: &Recorded) -> (u16, Value) {
        let mut lease = self.lease.lock().unwrap();
        let mut version = self.version.lock().unwrap();
        match r.method.as_str() {
            "GET" => match lease.as_ref() {
                Some(l) => (200, l.clone()),
                None => (404, status(404, "NotFound")),
            },
            "POST" if lease.is_none() => {
                *version += 1;
                let mut l = r.body.clone().unwrap();
                l["metadata"]["resourceVersion"] = json!(version.to_string());
                *lease = Some(l.clone());
                (201, l)
            }
            "POST" => (409, status(409, "AlreadyExists")),
            "PUT" => {
                let body = r.body.clone().unwrap();
                let current = lease.as_ref().unwrap()["metadata"]["resourceVersion"].clone();
                if body["metadata"]["resourceVersion"] != current {
                    return (409, status(409, "Conflict"));
                }
                *version += 1;
                let mut l = body;
                l["metadata"]["resourceVersion"] = json!(version.to_string());
                *lease = Some(l.clone());
                (200, l)
            }
            _ => (500, status(500, "unexpected")),
        }
    }

    fn holder(&self) -> Option<String> {
        self.lease.lock().unwrap().as_ref()?["spec"]["holderIdentity"]
            .as_str()
            .map(String::from)
    }
}

fn cfg(identity: &str) -> LeaseConfig {
    LeaseConfig {
        name: "berth-operator".into(),
        namespace: "berth-system".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(1),
        renew_deadline: Duration::from_millis(800),
        retry_period: Duration::from_millis(100),
    }
}

#[tokio::test]
async fn one_leader_at_a_time() {
    let server = Arc::new(LeaseServer::default());
    let s = server.clone();
    let api = mock_api(Arc::new(move |r: &Recorded| s.respond(r)));
    let mut a = Elector::new(api.client.clone(), cfg("pod-a"));
    let mut b = Elector::new(api.client.clone(), cfg("pod-b"));

    assert!(
        a.try_acquire_or_renew().await.unwrap(),
        "a creates the lease"
    );
    assert_eq!(server.holder().as_deref(), Some("pod-a"));
    assert!(!b.try_acquire_or_renew().await.unwrap(), "b stands by");
    assert!(a.try_acquire_or_renew().await.unwrap(), "a renews");
    assert!(!b.try_acquire_or_renew().await.unwrap());

    // a stops renewing (crashed): once the record has not changed for the lease duration,
    // b takes over.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if b.try_acquire_or_renew().await.unwrap() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b never took over the expired lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.holder().as_deref(), Some("pod-b"));
    let lease = server.lease.lock().unwrap().clone().unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    // a comes back: it must not lead while b renews.
    assert!(!a.try_acquire_or_renew().await.unwrap());

    // b shuts down and releases: a takes the lease at once.
    b.release().await.unwrap();
    assert_eq!(server.holder(), None);
    assert!(a.try_acquire_or_renew().await.unwrap());
    assert_eq!(server.holder().as_deref(), Some("pod-a"));
}

#[tokio::test]
async fn a_lost_race_is_not_leadership() {
    let server = Arc::new(LeaseServer::default());
    let s = server.clone();
    let api = mock_api(Arc::new(move |r: &Recorded| s.respond(r)));
    let mut a = Elector::new(api.client.clone(), cfg("pod-a"));
    let mut b = Elector::new(api.client.clone(), cfg("pod-b"));
    // Both read "free" at the same time; the write with the stale resourceVersion loses.
    assert!(a.try_acquire_or_renew().await.unwrap());
    a.release().await.unwrap();
    let (ra, rb) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
    let leaders = [ra.unwrap(), rb.unwrap()].iter().filter(|x| **x).count();
    assert_eq!(leaders, 1, "exactly one candidate leads");
}

#[tokio::test]
async fn a_leader_past_its_renew_deadline_writes_nothing() {
    use http::{Request, Response};
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, PostParams};
    use kube::client::Body;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::Layer;

    let server = Arc::new(LeaseServer::default());
    let s = server.clone();
    let lease_api = mock_api(Arc::new(move |r: &Recorded| s.respond(r)));
    let fence = Fence::closed();
    let mut a = Elector::new(lease_api.client.clone(), cfg("pod-a")).with_fence(fence.clone());

    // The controllers' client, through the fence; the server behind it counts what arrives.
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let arrived = Arc::new(AtomicUsize::new(0));
    let count = arrived.clone();
    tokio::spawn(async move {
        let mut handle = Box::pin(handle);
        while let Some((_req, send)) = handle.next_request().await {
            count.fetch_add(1, Ordering::SeqCst);
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
            send.send_response(
                Response::builder()
                    .status(201)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&cm).unwrap()))
                    .unwrap(),
            );
        }
    });
    let controllers = kube::Client::new(FenceLayer(fence.clone()).layer(service), "default");
    let configmaps: Api<ConfigMap> = Api::namespaced(controllers, "default");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    let pp = PostParams::default();
    let write = || configmaps.create(&pp, &cm);

    let refused = write().await.unwrap_err();
    assert!(refused.to_string().contains("refused POST"), "{refused}");
    assert_eq!(
        arrived.load(Ordering::SeqCst),
        0,
        "not leading: nothing sent"
    );

    assert!(a.try_acquire_or_renew().await.unwrap());
    write().await.expect("the fresh leader writes");
    assert_eq!(arrived.load(Ordering::SeqCst), 1);

    // No renewal for longer than the renew deadline (800 ms), as for a frozen process: the
    // deadline itself is what is waited for.
    tokio::time::sleep(cfg("pod-a").renew_deadline + Duration::from_millis(50)).await;
    let refused = write().await.unwrap_err();
    assert!(
        refused.to_string().contains("not renewed in time"),
        "{refused}"
    );
    assert_eq!(
        arrived.load(Ordering::SeqCst),
        1,
        "the stale leader sent nothing"
    );
    assert_eq!(fence.refused.get(), 2);
    assert_eq!(fence.sent.get(), 1);

    // Renewed again: writes pass; released: refused at once.
    assert!(a.try_acquire_or_renew().await.unwrap());
    write().await.unwrap();
    a.release().await.unwrap();
    assert!(write().await.is_err());
    assert_eq!(arrived.load(Ordering::SeqCst), 2);
}
