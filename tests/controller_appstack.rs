//! The AppStack controller against a mocked API server: the exact requests of a first create,
//! an update, an unchanged reconcile (no write), a child leaving the spec, a missing Secret,
//! and a deletion; and every example converging to "no write" on its second reconcile.

#[path = "support/kube_mock.rs"]
mod kube_mock;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use berth::api::{AppStack, Backup, Certificate, Worker};
use berth::controller::child::{Child, Kept};
use berth::controller::{self, diff, Context, Metrics, Writers};
use berth::k8s::BuildOptions;
use k8s_openapi::api::apps::v1::Deployment;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube_mock::{mock_api, status, success, MockApi, Recorded};
use serde_json::{json, Value};

const NS: &str = "prod";
const UID: &str = "6d1c1f7e-0000-4000-8000-000000000001";

fn shop() -> AppStack {
    serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "AppStack",
        "metadata": {"name": "shop", "namespace": NS, "uid": UID, "generation": 1, "resourceVersion": "1"},
        "spec": {
            "domain": "shop.example.com",
            "api": {
                "image": "ghcr.io/acme/shop:1.0.0",
                "port": 3000,
                "env": [{"name": "STRIPE_KEY", "secretKeyRef": {"name": "shop-keys", "key": "stripe"}}]
            },
            "workers": [{"name": "jobs", "image": "ghcr.io/acme/shop:1.0.0", "queue": {"type": "list", "name": "jobs"}, "replicas": 1}],
            "postgres": {"version": "16"},
            "redis": {"version": "7"}
        }
    }))
    .unwrap()
}

/// A fake API server: user Secrets from `secrets`, everything else accepted.
struct Server {
    /// Secrets that exist, by name: their keys.
    secrets: Mutex<BTreeMap<String, Vec<String>>>,
    stack: Mutex<Value>,
    /// Applied children as the server holds them, by path (served to GETs).
    objects: Mutex<BTreeMap<String, Value>>,
}

/// An applied object as the server returns it (and the watch delivers it): with the fields the
/// server sets in its spec.
fn served(mut body: Value) -> Value {
    if body["kind"] == "Service" {
        body["spec"]["clusterIP"] = json!("10.0.0.9");
    }
    body
}

impl Server {
    fn new(stack: &AppStack, secrets: &[(&str, &[&str])]) -> Arc<Server> {
        Arc::new(Server {
            secrets: Mutex::new(
                secrets
                    .iter()
                    .map(|(n, keys)| (n.to_string(), keys.iter().map(|k| k.to_string()).collect()))
                    .collect(),
            ),
            stack: Mutex::new(serde_json::to_value(stack).unwrap()),
            objects: Mutex::new(BTreeMap::new()),
        })
    }

    /// Someone else's change to the object held at `path`; the object as it now is.
    fn edit(&self, path: &str, f: &dyn Fn(&mut Value)) -> Value {
        let mut objects = self.objects.lock().unwrap();
        let o = objects.get_mut(path).unwrap();
        f(o);
        o.clone()
    }

    fn respond(&self, r: &Recorded) -> (u16, Value) {
        let path = r.path();
        let last = path.rsplit('/').next().unwrap_or_default().to_string();
        match r.method.as_str() {
            "GET" if path.contains("/secrets/") => match self.secrets.lock().unwrap().get(&last) {
                Some(keys) => {
                    let data: BTreeMap<&String, &str> = keys.iter().map(|k| (k, "eA==")).collect();
                    (
                        200,
                        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": last, "namespace": NS}, "data": data}),
                    )
                }
                None => (404, status(404, "NotFound")),
            },
            "POST" => {
                let body = r.body.clone().unwrap_or(Value::Null);
                if path.ends_with("/secrets") {
                    let name = body["metadata"]["name"].as_str().unwrap_or_default();
                    let keys = body["stringData"]
                        .as_object()
                        .map(|d| d.keys().cloned().collect())
                        .unwrap_or_default();
                    self.secrets.lock().unwrap().insert(name.into(), keys);
                }
                (201, body)
            }
            "PATCH" if path.ends_with("/status") => {
                let mut s = self.stack.lock().unwrap().clone();
                s["status"] = r.body.as_ref().unwrap()["status"].clone();
                (200, s)
            }
            "PATCH" => {
                let body = served(r.body.clone().unwrap_or(Value::Null));
                self.objects
                    .lock()
                    .unwrap()
                    .insert(path.to_string(), body.clone());
                (200, body)
            }
            "GET" => match self.objects.lock().unwrap().get(path) {
                Some(o) => (200, o.clone()),
                None => (404, status(404, "NotFound")),
            },
            "DELETE" => (200, success()),
            _ => (500, status(500, "unexpected request")),
        }
    }
}

struct Harness {
    api: MockApi,
    ctx: Arc<Context>,
    writers: Writers,
    metrics: Arc<Metrics>,
    uid_counter: u32,
}

impl Harness {
    fn new(server: Arc<Server>) -> Harness {
        let api = mock_api(Arc::new(move |r: &Recorded| server.respond(r)));
        let (stores, writers) = controller::stores();
        let metrics = Arc::new(Metrics::default());
        let ctx = Arc::new(Context::new(
            api.client.clone(),
            stores,
            BuildOptions::default(),
            Some("berth-test".into()),
            metrics.clone(),
        ));
        Harness {
            api,
            ctx,
            writers,
            metrics,
            uid_counter: 0,
        }
    }

    async fn reconcile(&self, stack: &AppStack) -> Result<Action, controller::Error> {
        controller::reconcile(
            Arc::new(DeserializeGuard(Ok(stack.clone()))),
            self.ctx.clone(),
        )
        .await
    }

    /// Feeds what the API server now holds into the caches, as the watches would: every
    /// applied or created object, with a uid and the fields the server adds.
    fn observe(&mut self, requests: &[Recorded]) {
        for r in requests {
            let Some(body) = r.body.clone() else {
                continue;
            };
            let mut body = served(body);
            if r.path().ends_with("/status") || r.path().contains("/events") {
                continue;
            }
            if !(r.method == "PATCH" || r.method == "POST") {
                continue;
            }
            self.uid_counter += 1;
            body["metadata"]["uid"] = json!(format!("child-uid-{}", self.uid_counter));
            body["metadata"]["resourceVersion"] = json!("7");
            body["metadata"]["generation"] = json!(1);
            body["metadata"]["creationTimestamp"] = json!("2026-11-28T16:00:00Z");
            let kind = body["kind"].as_str().unwrap_or_default().to_string();
            // As the operator's watches cache them: labels replaced by their digest.
            fn guard<K: serde::de::DeserializeOwned + kube::Resource + serde::Serialize>(
                v: Value,
            ) -> watcher::Event<DeserializeGuard<K>> {
                let mut o = DeserializeGuard(Ok(serde_json::from_value(v).unwrap()));
                controller::trim::lean_generated(&mut o);
                watcher::Event::Apply(o)
            }
            let w = &mut self.writers;
            match kind.as_str() {
                "Deployment" => w.deployments.apply_watcher_event(&ev(body)),
                "StatefulSet" => w.stateful_sets.apply_watcher_event(&ev(body)),
                "Service" => w.services.apply_watcher_event(&ev(body)),
                "Ingress" => w.ingresses.apply_watcher_event(&ev(body)),
                "NetworkPolicy" => w.network_policies.apply_watcher_event(&ev(body)),
                // Generated Secrets are not cached (no list/watch on Secrets): the controller
                // remembers the ones it created or found.
                "Secret" => {}
                "Worker" => w.workers.apply_watcher_event(&guard::<Worker>(body)),
                "Certificate" => w
                    .certificates
                    .apply_watcher_event(&guard::<Certificate>(body)),
                "Backup" => w.backups.apply_watcher_event(&guard::<Backup>(body)),
                other => panic!("unexpected kind {other} in {}", r.line()),
            }
        }
    }
}

/// A watch event of a child, as the operator's watches deliver it: a compact [`Child`].
fn ev<K: Kept>(v: Value) -> watcher::Event<Child<K>> {
    watcher::Event::Apply(serde_json::from_value(v).unwrap())
}

/// The stack with the status the server now holds.
fn with_status(stack: &AppStack, requests: &[Recorded]) -> AppStack {
    let mut s = stack.clone();
    if let Some(r) = requests
        .iter()
        .rev()
        .find(|r| r.path().ends_with("/status"))
    {
        s.status =
            Some(serde_json::from_value(r.body.as_ref().unwrap()["status"].clone()).unwrap());
    }
    s
}

fn lines(reqs: &[Recorded]) -> Vec<String> {
    reqs.iter().map(Recorded::line).collect()
}

const APPLY: &str = "?&force=true&fieldManager=berth";

fn apply(group_path: &str, kind_plural: &str, name: &str) -> String {
    format!("PATCH {group_path}/namespaces/{NS}/{kind_plural}/{name}{APPLY}")
}

fn first_create_lines() -> Vec<String> {
    vec![
        format!("GET /api/v1/namespaces/{NS}/secrets/shop-keys"),
        format!("GET /api/v1/namespaces/{NS}/secrets/shop-postgres-credentials"),
        format!("POST /api/v1/namespaces/{NS}/secrets?&fieldManager=berth"),
        format!("GET /api/v1/namespaces/{NS}/secrets/shop-redis-credentials"),
        format!("POST /api/v1/namespaces/{NS}/secrets?&fieldManager=berth"),
        apply("/apis/apps/v1", "statefulsets", "shop-postgres"),
        apply("/api/v1", "services", "shop-api"),
        apply("/api/v1", "services", "shop-postgres"),
        apply("/api/v1", "services", "shop-redis"),
        apply("/apis/apps/v1", "deployments", "shop-api"),
        apply("/apis/apps/v1", "deployments", "shop-redis"),
        apply(
            "/apis/networking.k8s.io/v1",
            "networkpolicies",
            "shop-default-deny",
        ),
        apply(
            "/apis/networking.k8s.io/v1",
            "networkpolicies",
            "shop-api-ingress",
        ),
        apply(
            "/apis/networking.k8s.io/v1",
            "networkpolicies",
            "shop-postgres-ingress",
        ),
        apply(
            "/apis/networking.k8s.io/v1",
            "networkpolicies",
            "shop-redis-ingress",
        ),
        apply("/apis/networking.k8s.io/v1", "ingresses", "shop-root"),
        apply("/apis/berth.dev/v1alpha1", "workers", "shop-jobs"),
        format!("POST /apis/events.k8s.io/v1/namespaces/{NS}/events?"),
        format!("POST /apis/events.k8s.io/v1/namespaces/{NS}/events?"),
        apply("/apis/berth.dev/v1alpha1", "appstacks", "shop/status"),
    ]
}

/// Creates the shop stack and feeds the results into the caches, as the watches would; the
/// second reconcile (which the watch events trigger) records that the children now exist.
async fn created(h: &mut Harness) -> (AppStack, Vec<Recorded>) {
    let stack = shop();
    h.reconcile(&stack).await.unwrap();
    let reqs = h.api.take();
    h.observe(&reqs);
    let stack = with_status(&stack, &reqs);
    h.reconcile(&stack).await.unwrap();
    let second = h.api.take();
    assert!(
        second
            .iter()
            .filter(|r| r.is_write())
            .all(|r| r.path().ends_with("/status")),
        "only the status changes once the children are seen: {:?}",
        lines(&second)
    );
    (with_status(&stack, &second), reqs)
}

#[tokio::test]
async fn first_reconcile_creates_everything_with_server_side_apply() {
    let server = Server::new(&shop(), &[("shop-keys", &["stripe"])]);
    let h = Harness::new(server);
    let action = h.reconcile(&shop()).await.unwrap();
    assert_eq!(action, Action::requeue(controller::RESYNC));
    let reqs = h.api.take();
    assert_eq!(lines(&reqs), first_create_lines());

    // Every applied object: full object with apiVersion/kind, owned by the stack as its
    // controller (garbage collection deletes it with the stack), labelled for pruning, stamped.
    for r in reqs
        .iter()
        .filter(|r| r.uri.ends_with(APPLY) && !r.path().ends_with("/status"))
    {
        let b = r.body.as_ref().unwrap();
        assert!(
            b["apiVersion"].is_string() && b["kind"].is_string(),
            "{}",
            r.line()
        );
        let owner = &b["metadata"]["ownerReferences"][0];
        assert_eq!(owner["uid"], UID, "{}", r.line());
        assert_eq!(owner["kind"], "AppStack");
        assert_eq!(owner["controller"], true);
        // No blockOwnerDeletion: it would need update on appstacks/finalizers, and background
        // deletion (kubectl's default) does not use it.
        assert!(owner["blockOwnerDeletion"].is_null());
        assert_eq!(b["metadata"]["labels"]["berth.dev/stack"], "shop");
        assert!(diff::applied_hash(b).is_some(), "{}", r.line());
    }
    // Generated secrets: created (not applied), 64 hex characters of password, owned.
    let created: Vec<&Value> = reqs
        .iter()
        .filter(|r| r.method == "POST" && r.path().ends_with("/secrets"))
        .map(|r| r.body.as_ref().unwrap())
        .collect();
    assert_eq!(created[0]["metadata"]["name"], "shop-postgres-credentials");
    let pw = created[0]["stringData"]["password"].as_str().unwrap();
    assert_eq!(pw.len(), 64);
    assert_eq!(created[0]["metadata"]["ownerReferences"][0]["uid"], UID);
    assert_eq!(created[1]["metadata"]["name"], "shop-redis-credentials");
    let redis_pw = created[1]["stringData"]["password"]
        .as_str()
        .unwrap()
        .to_string();
    // No secret value in any other request (events, status, objects).
    for r in reqs.iter().filter(|r| !r.path().ends_with("/secrets")) {
        let text = r.body.as_ref().map(|b| b.to_string()).unwrap_or_default();
        assert!(
            !text.contains(pw) && !text.contains(&redis_pw),
            "{} leaks a password",
            r.line()
        );
    }
    // Events: what was applied, and that secrets were generated (names only).
    let events: Vec<&Value> = reqs
        .iter()
        .filter(|r| r.path().contains("/events"))
        .map(|r| r.body.as_ref().unwrap())
        .collect();
    assert_eq!(events[0]["reason"], "Applied");
    assert_eq!(events[0]["reportingController"], "berth");
    assert_eq!(events[0]["regarding"]["uid"], UID);
    assert!(events[0]["note"]
        .as_str()
        .unwrap()
        .contains("Deployment shop-api"));
    assert_eq!(events[1]["reason"], "SecretGenerated");
    // The status: Progressing, every component listed, conditions with observedGeneration.
    let st = &reqs.last().unwrap().body.as_ref().unwrap()["status"];
    assert_eq!(
        reqs.last().unwrap().body.as_ref().unwrap()["kind"],
        "AppStack"
    );
    assert_eq!(st["phase"], "Progressing");
    assert_eq!(st["observedGeneration"], 1);
    assert_eq!(st["url"], "http://shop.example.com");
    let names: Vec<&str> = st["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api", "postgres", "redis", "shop-jobs", "proxy"]);
    let conds: BTreeMap<&str, (&str, i64)> = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap(),
                (
                    c["status"].as_str().unwrap(),
                    c["observedGeneration"].as_i64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(conds["Ready"], ("False", 1));
    assert_eq!(conds["Progressing"], ("True", 1));
    assert_eq!(conds["Degraded"], ("False", 1));
}

#[tokio::test]
async fn unchanged_stack_sends_no_write() {
    let server = Server::new(&shop(), &[("shop-keys", &["stripe"])]);
    let mut h = Harness::new(server);
    let (stack, _) = created(&mut h).await;
    let writes_before = h.metrics.writes.get();
    for _ in 0..3 {
        h.reconcile(&stack).await.unwrap();
        // The user's Secret was found for this version of the stack: the re-check of the
        // unchanged stack sends nothing at all.
        assert_eq!(lines(&h.api.take()), Vec::<String>::new());
    }
    assert_eq!(h.metrics.writes.get(), writes_before);
}

/// The operator's caches keep each child as a compact record (controller::cache) with the
/// digest of the object. Once berth has applied a child, the digest of the object its apply
/// returned is what the watch then delivers: a periodic reconcile sends nothing.
#[tokio::test]
async fn trimmed_caches_send_nothing_for_an_unchanged_stack() {
    let server = Server::new(&shop(), &[("shop-keys", &["stripe"])]);
    let mut h = Harness::new(server);
    let (stack, _) = created(&mut h).await;
    let cached = h.ctx.stores.deployments.all();
    assert!(!cached.is_empty());
    assert!(cached
        .iter()
        .all(|(ns, d)| &**ns == NS && d.stack.as_deref() == Some("shop")));
    for _ in 0..3 {
        h.reconcile(&stack).await.unwrap();
        assert_eq!(lines(&h.api.take()), Vec::<String>::new());
    }
}

/// After a restart the caches hold trimmed children whose digests the new process has not
/// seen: it reads each child once (a GET, no write), and sends nothing after that. Generated
/// Workers, Certificates and Backups are cached with the digest of their labels
/// (`trim::lean_generated`) and read once the same way.
#[tokio::test]
async fn a_restart_with_trimmed_caches_reads_each_child_once_and_writes_nothing() {
    let server = Server::new(&shop(), &[("shop-keys", &["stripe"])]);
    let mut first = Harness::new(server.clone());
    let (stack, reqs) = created(&mut first).await;
    let mut h = Harness::new(server);
    h.observe(&reqs);
    h.reconcile(&stack).await.unwrap();
    let after_restart = h.api.take();
    let children: Vec<String> = reqs
        .iter()
        .filter(|r| {
            r.method == "PATCH"
                && [
                    "/deployments/",
                    "/statefulsets/",
                    "/services/",
                    "/ingresses/",
                    "/networkpolicies/",
                    "/workers/",
                ]
                .iter()
                .any(|k| r.path().contains(k))
        })
        .map(|r| format!("GET {}", r.path()))
        .collect();
    assert_eq!(children.len(), 12);
    let reads: Vec<String> = lines(&after_restart)
        .into_iter()
        .filter(|l| !l.contains("/secrets/"))
        .collect();
    assert_eq!(reads, children, "one read of each child, nothing written");
    assert!(after_restart.iter().all(|r| r.method == "GET"));
    h.reconcile(&stack).await.unwrap();
    assert_eq!(lines(&h.api.take()), Vec::<String>::new());
}

/// A trimmed cache still sees drift: a change by someone else changes the digest, one read
/// of the object tells whether berth's fields still hold. A change that keeps them (another
/// controller's annotation) costs that one read; a change to berth's fields is applied back.
#[tokio::test]
async fn drift_behind_a_trimmed_cache_is_read_once_and_corrected() {
    let server = Server::new(&shop(), &[("shop-keys", &["stripe"])]);
    let mut h = Harness::new(server.clone());
    let (stack, _) = created(&mut h).await;
    let path = format!("/apis/apps/v1/namespaces/{NS}/deployments/shop-api");
    let edit = |h: &mut Harness, f: &dyn Fn(&mut Value)| {
        let mut o = server.edit(&path, f);
        o["metadata"]["uid"] = json!("d");
        h.writers
            .deployments
            .apply_watcher_event(&ev::<Deployment>(o));
    };
    edit(&mut h, &|o| {
        o["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = json!("1")
    });
    h.reconcile(&stack).await.unwrap();
    assert_eq!(lines(&h.api.take()), [format!("GET {path}")]);
    h.reconcile(&stack).await.unwrap();
    assert_eq!(lines(&h.api.take()), Vec::<String>::new());

    edit(&mut h, &|o| o["spec"]["replicas"] = json!(7));
    h.reconcile(&stack).await.unwrap();
    let reqs = h.api.take();
    assert_eq!(
        lines(&reqs),
        [
            format!("GET {path}"),
            apply("/apis/apps/v1", "deployments", "shop-api"),
            format!("POST /apis/events.k8s.io/v1/namespaces/{NS}/events?"),
        ]
    );
    assert_eq!(reqs[1].body.as_ref().unwrap()["spec"]["replicas"], 1);
    // The apply's response is what the watch delivers next: nothing more to send.
    h.observe(&reqs);
    h.reconcile(&stack).await.unwrap();
    assert_eq!(lines(&h.api.take()), Vec::<String>::new());
}

/// A generated Worker is cached with the digest of the object, not its labels: a label
/// changed by someone else changes the digest, one read tells that berth's label is gone, and
/// the apply puts it back; a label added beside berth's costs that one read only.
#[tokio::test]
async fn drift_of_a_generated_workers_labels_is_read_once_and_corrected() {
    let server = Server::new(&shop(), &[("shop-keys", &["stripe"])]);
    let mut h = Harness::new(server.clone());
    let (stack, _) = created(&mut h).await;
    let path = format!("/apis/berth.dev/v1alpha1/namespaces/{NS}/workers/shop-jobs");
    let cached = h
        .ctx
        .stores
        .workers
        .get(&ObjectRef::new("shop-jobs").within(NS))
        .unwrap();
    let meta = &cached.0.as_ref().unwrap().metadata;
    assert_eq!(meta.labels, None, "cached without its labels");
    let (digest, owner) = meta.annotations.as_ref().unwrap()["berth.dev/cached"]
        .split_once('/')
        .unwrap();
    assert_eq!((digest.len(), owner), (16, "shop"));
    let edit = |h: &mut Harness, f: &dyn Fn(&mut Value)| {
        let mut o = served(server.edit(&path, f));
        o["metadata"]["uid"] = json!("w");
        let mut g = DeserializeGuard::<Worker>(Ok(serde_json::from_value(o).unwrap()));
        controller::trim::lean_generated(&mut g);
        h.writers
            .workers
            .apply_watcher_event(&watcher::Event::Apply(g));
    };
    edit(&mut h, &|o| {
        o["metadata"]["labels"]["team"] = json!("video");
    });
    h.reconcile(&stack).await.unwrap();
    assert_eq!(lines(&h.api.take()), [format!("GET {path}")]);
    h.reconcile(&stack).await.unwrap();
    assert_eq!(lines(&h.api.take()), Vec::<String>::new());

    edit(&mut h, &|o| {
        o["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove("app.kubernetes.io/part-of");
    });
    h.reconcile(&stack).await.unwrap();
    let reqs = h.api.take();
    assert_eq!(
        lines(&reqs)[..2],
        [
            format!("GET {path}"),
            apply("/apis/berth.dev/v1alpha1", "workers", "shop-jobs"),
        ]
    );
    assert_eq!(
        reqs[1].body.as_ref().unwrap()["metadata"]["labels"]["app.kubernetes.io/part-of"],
        "berth"
    );
    h.observe(&reqs);
    h.reconcile(&stack).await.unwrap();
    assert_eq!(lines(&h.api.take()), Vec::<String>::new());
}

#[tokio::test]
async fn spec_change_applies_only_what_changed() {
    let server = Server::new(&shop(), &[("shop-keys", &["stripe"])]);
    let mut h = Harness::new(server);
    let (mut stack, _) = created(&mut h).await;
    stack.spec.api.image = "ghcr.io/acme/shop:1.1.0".into();
    stack.metadata.generation = Some(2);
    h.reconcile(&stack).await.unwrap();
    let reqs = h.api.take();
    assert_eq!(
        lines(&reqs),
        [
            format!("GET /api/v1/namespaces/{NS}/secrets/shop-keys"),
            apply("/apis/apps/v1", "deployments", "shop-api"),
            format!("POST /apis/events.k8s.io/v1/namespaces/{NS}/events?"),
            apply("/apis/berth.dev/v1alpha1", "appstacks", "shop/status"),
        ]
    );
    let d = reqs[1].body.as_ref().unwrap();
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/acme/shop:1.1.0"
    );
    let st = &reqs[3].body.as_ref().unwrap()["status"];
    assert_eq!(st["observedGeneration"], 2);
    assert_eq!(st["components"][0]["image"], "ghcr.io/acme/shop:1.1.0");
}

#[tokio::test]
async fn children_that_left_the_spec_are_deleted() {
    let server = Server::new(&shop(), &[("shop-keys", &["stripe"])]);
    let mut h = Harness::new(server);
    let (mut stack, reqs) = created(&mut h).await;
    // A same-named object of someone else (another owner uid) is never touched.
    let mut foreign = reqs
        .iter()
        .find(|r| r.path().ends_with("/services/shop-redis"))
        .unwrap()
        .body
        .clone()
        .unwrap();
    foreign["metadata"]["name"] = json!("shop-other");
    foreign["metadata"]["uid"] = json!("x");
    foreign["metadata"]["ownerReferences"][0]["uid"] = json!("someone-else");
    h.writers
        .services
        .apply_watcher_event(&watcher::Event::Apply(
            serde_json::from_value(foreign).unwrap(),
        ));

    stack.spec.workers.clear();
    stack.spec.redis = None;
    stack.metadata.generation = Some(2);
    h.reconcile(&stack).await.unwrap();
    let reqs = h.api.take();
    let got = lines(&reqs);
    let deletes: Vec<&String> = got.iter().filter(|l| l.starts_with("DELETE")).collect();
    assert_eq!(
        deletes,
        [
            &format!("DELETE /apis/berth.dev/v1alpha1/namespaces/{NS}/workers/shop-jobs?"),
            &format!("DELETE /apis/apps/v1/namespaces/{NS}/deployments/shop-redis?"),
            &format!("DELETE /api/v1/namespaces/{NS}/services/shop-redis?"),
            &format!("DELETE /apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/shop-redis-ingress?"),
        ]
    );
    // Each delete is pinned to the uid the cache saw, in the background (GC removes pods).
    for r in reqs.iter().filter(|r| r.method == "DELETE") {
        let b = r.body.as_ref().unwrap();
        assert_eq!(b["propagationPolicy"], "Background");
        assert!(b["preconditions"]["uid"]
            .as_str()
            .unwrap()
            .starts_with("child-uid-"));
    }
    // Credentials are kept (data on a volume may still need them); nothing else deleted.
    assert!(!got
        .iter()
        .any(|l| l.contains("/secrets/shop-redis-credentials") && l.starts_with("DELETE")));
    // The api lost REDIS_URL and its wait for redis: re-applied.
    assert!(got.contains(&apply("/apis/apps/v1", "deployments", "shop-api")));
    let pruned = reqs
        .iter()
        .filter(|r| r.path().contains("/events"))
        .find(|r| r.body.as_ref().unwrap()["reason"] == "Pruned")
        .expect("a Pruned event");
    assert!(pruned.body.as_ref().unwrap()["note"]
        .as_str()
        .unwrap()
        .contains("Worker shop-jobs"));
}

#[tokio::test]
async fn missing_secret_sets_ready_false_with_an_event() {
    let server = Server::new(&shop(), &[]);
    let mut h = Harness::new(server);
    let stack = shop();
    let action = h.reconcile(&stack).await.unwrap();
    assert_eq!(action, Action::requeue(controller::MISSING_SECRET_RECHECK));
    let reqs = h.api.take();
    // Applied anyway: pods wait for the Secret and start once it exists.
    assert!(lines(&reqs).contains(&apply("/apis/apps/v1", "deployments", "shop-api")));
    let status_req = reqs.iter().find(|r| r.path().ends_with("/status")).unwrap();
    let st = &status_req.body.as_ref().unwrap()["status"];
    assert_eq!(st["phase"], "Failed");
    let ready = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "SecretNotFound");
    let msg = ready["message"].as_str().unwrap();
    assert!(
        msg.contains("\"shop-keys\"") && msg.contains("stripe") && msg.contains("create it"),
        "{msg}"
    );
    // The last request: a Warning event saying the same.
    let last = reqs.last().unwrap();
    assert!(last.path().contains("/events"), "{}", last.line());
    let ev = last.body.as_ref().unwrap();
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["reason"], "SecretNotFound");
    assert!(ev["note"].as_str().unwrap().contains("shop-keys"));

    // The children are seen (status records it, but no new event: same problem), then the
    // same problem again: no status write, no event.
    h.observe(&reqs);
    let again = with_status(&stack, &reqs);
    h.reconcile(&again).await.unwrap();
    let second = h.api.take();
    assert_eq!(
        lines(&second),
        [
            format!("GET /api/v1/namespaces/{NS}/secrets/shop-keys"),
            apply("/apis/berth.dev/v1alpha1", "appstacks", "shop/status"),
        ]
    );
    let again = with_status(&again, &second);
    h.reconcile(&again).await.unwrap();
    assert_eq!(
        lines(&h.api.take()),
        [format!("GET /api/v1/namespaces/{NS}/secrets/shop-keys")]
    );
}

#[tokio::test]
async fn missing_key_names_the_key() {
    let server = Server::new(&shop(), &[("shop-keys", &["other"])]);
    let h = Harness::new(server);
    h.reconcile(&shop()).await.unwrap();
    let reqs = h.api.take();
    let st = &reqs
        .iter()
        .find(|r| r.path().ends_with("/status"))
        .unwrap()
        .body
        .as_ref()
        .unwrap()["status"];
    let ready = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["reason"], "SecretKeyNotFound");
    assert!(ready["message"]
        .as_str()
        .unwrap()
        .contains("no key \"stripe\""));
}

#[tokio::test]
async fn invalid_reference_awaits_a_change() {
    let mut stack = shop();
    stack.spec.tls = Some(berth::api::appstack::StackTls {
        certificate_ref: Some("missing-cert".into()),
        issuer: None,
    });
    let server = Server::new(&stack, &[("shop-keys", &["stripe"])]);
    let h = Harness::new(server);
    let err = h.reconcile(&stack).await.unwrap_err();
    assert_eq!(err.reason(), "CertificateNotFound");
    assert!(err.awaits_change());
    let action = controller::error_policy(
        Arc::new(DeserializeGuard(Ok(stack.clone()))),
        &err,
        h.ctx.clone(),
    );
    assert_eq!(action, Action::await_change());
    let reqs = h.api.take();
    // Nothing applied; the status says why; one Warning event.
    assert_eq!(
        lines(&reqs),
        [
            apply("/apis/berth.dev/v1alpha1", "appstacks", "shop/status"),
            format!("POST /apis/events.k8s.io/v1/namespaces/{NS}/events?"),
        ]
    );
    let st = &reqs[0].body.as_ref().unwrap()["status"];
    assert_eq!(st["phase"], "Failed");
    assert_eq!(
        reqs[1].body.as_ref().unwrap()["reason"],
        "CertificateNotFound"
    );
    assert!(reqs[1].body.as_ref().unwrap()["note"]
        .as_str()
        .unwrap()
        .contains("missing-cert"));
}

#[tokio::test]
async fn transient_errors_back_off() {
    let stack = shop();
    let server = Server::new(&stack, &[("shop-keys", &["stripe"])]);
    let h = Harness::new(server);
    let err = controller::Error::Status(kube::Error::Api(Box::new(
        kube::core::Status::failure("boom", "InternalError").with_code(500),
    )));
    assert!(!err.awaits_change());
    let obj = Arc::new(DeserializeGuard(Ok(stack)));
    let delays: Vec<Action> = (0..8)
        .map(|_| controller::error_policy(obj.clone(), &err, h.ctx.clone()))
        .collect();
    assert_eq!(
        delays[0],
        Action::requeue(std::time::Duration::from_secs(5))
    );
    assert_eq!(
        delays[1],
        Action::requeue(std::time::Duration::from_secs(10))
    );
    assert_eq!(delays[7], Action::requeue(controller::BACKOFF_MAX));
}

#[tokio::test]
async fn deletion_sends_nothing_children_go_by_owner_references() {
    let server = Server::new(&shop(), &[("shop-keys", &["stripe"])]);
    let mut h = Harness::new(server);
    let (mut stack, reqs) = created(&mut h).await;
    // What deletion relies on: every child names the stack as its controller owner with
    // blockOwnerDeletion, so `kubectl delete appstack` (background or foreground) removes them.
    let owned = reqs
        .iter()
        .filter(|r| r.is_write() && !r.path().contains("/events") && !r.path().ends_with("/status"))
        .count();
    assert_eq!(owned, 2 + 12);
    // No finalizer was ever added.
    assert!(reqs.iter().all(|r| r
        .body
        .as_ref()
        .is_none_or(|b| b["metadata"]["finalizers"].is_null())));
    // A stack being deleted (foreground: it stays until children are gone) is left alone.
    stack.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let action = h.reconcile(&stack).await.unwrap();
    assert_eq!(action, Action::await_change());
    assert!(
        h.api.take().is_empty(),
        "no request at all while GC deletes"
    );
}

#[tokio::test]
async fn invalid_object_does_not_stop_the_controller() {
    let server = Server::new(&shop(), &[]);
    let h = Harness::new(server);
    let bad: DeserializeGuard<AppStack> = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "AppStack",
        "metadata": {"name": "broken", "namespace": NS, "uid": "u2"},
        "spec": {"api": {"image": 42}}
    }))
    .unwrap();
    assert!(bad.0.is_err());
    let err = controller::reconcile(Arc::new(bad), h.ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "InvalidObject");
    assert!(err.awaits_change());
    let reqs = h.api.take();
    assert_eq!(
        lines(&reqs),
        [format!(
            "POST /apis/events.k8s.io/v1/namespaces/{NS}/events?"
        )]
    );
    assert_eq!(
        reqs[0].body.as_ref().unwrap()["regarding"]["name"],
        "broken"
    );
    // The good stack next to it still reconciles.
    assert!(h.reconcile(&shop()).await.is_ok());
}

/// Every AppStack of examples/: a first reconcile applies, a second one writes nothing.
#[tokio::test]
async fn every_example_converges_to_no_writes() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let docs = berth::manifest::load_paths(&[examples]).unwrap();
    let set = berth::plan::set::ManifestSet::from_documents(&docs);
    assert!(!set.stacks.is_empty());
    for (i, mut stack) in set.stacks.clone().into_iter().enumerate() {
        stack.metadata.namespace = Some(NS.into());
        stack.metadata.uid = Some(format!("uid-{i}"));
        stack.metadata.generation = Some(1);
        let name = stack.metadata.name.clone().unwrap();
        // Every Secret the example names exists with every key it uses.
        let plan = berth::plan::plan_stack(&stack, &set.observed_for(&stack))
            .or_else(|_| {
                let mut o = set.observed_for(&stack);
                if let Some(r) = stack
                    .spec
                    .tls
                    .as_ref()
                    .and_then(|t| t.certificate_ref.clone())
                {
                    o.certificate_secrets.insert(r.clone(), r);
                }
                berth::plan::plan_stack(&stack, &o)
            })
            .unwrap();
        let refs = controller::user_secret_refs(&plan);
        let owned: Vec<(String, Vec<String>)> = refs
            .iter()
            .map(|(n, keys)| (n.clone(), keys.keys().cloned().collect()))
            .collect();
        let server = Arc::new(Server {
            secrets: Mutex::new(owned.into_iter().collect()),
            stack: Mutex::new(serde_json::to_value(&stack).unwrap()),
            objects: Mutex::new(BTreeMap::new()),
        });
        let mut h = Harness::new(server);
        // Certificates a stack refers to, as the cluster would hold them.
        for c in &set.certificates {
            let mut c = c.clone();
            c.metadata.namespace = Some(NS.into());
            h.writers
                .certificates
                .apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(c))));
        }
        if let Some(r) = stack
            .spec
            .tls
            .as_ref()
            .and_then(|t| t.certificate_ref.clone())
        {
            if !set
                .certificates
                .iter()
                .any(|c| c.metadata.name.as_deref() == Some(&r))
            {
                let c: Certificate = serde_json::from_value(json!({
                    "apiVersion": "berth.dev/v1alpha1", "kind": "Certificate",
                    "metadata": {"name": r, "namespace": NS},
                    "spec": {"secretName": r, "dnsNames": ["x.example.com"], "issuer": {"selfSigned": {}}}
                }))
                .unwrap();
                h.writers
                    .certificates
                    .apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(c))));
            }
        }
        h.reconcile(&stack)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let reqs = h.api.take();
        let applies: BTreeSet<String> = reqs
            .iter()
            .filter(|r| r.method == "PATCH")
            .map(|r| r.uri.clone())
            .collect();
        assert!(
            applies.iter().all(|u| u.ends_with(APPLY)),
            "{name}: {applies:?}"
        );
        assert!(
            applies.iter().any(|u| u.contains("/deployments/")),
            "{name}"
        );
        h.observe(&reqs);
        let again = with_status(&stack, &reqs);
        h.reconcile(&again).await.unwrap();
        let second = h.api.take();
        let again = with_status(&again, &second);
        h.reconcile(&again).await.unwrap();
        let writes: Vec<String> = h
            .api
            .take()
            .iter()
            .filter(|r| r.is_write())
            .map(Recorded::line)
            .collect();
        assert!(
            writes.is_empty(),
            "{name}: second reconcile wrote {writes:?}"
        );
    }
}

/// Worker pods (labels `berth.dev/stack` and `app.kubernetes.io/component=worker`, whoever runs
/// them) may reach the stack's PostgreSQL and Redis; the default deny covers ingress only, so
/// their own connections out are not blocked.
#[test]
fn network_policies_admit_worker_pods_to_postgres_and_redis() {
    let stack = shop();
    let plan = berth::plan::plan_stack(&stack, &Default::default()).unwrap();
    let owner = berth::k8s::Owner::of(&stack);
    let bundle = berth::k8s::build(&owner, &plan, &BuildOptions::default());
    let worker_pod: BTreeMap<String, String> = [
        ("berth.dev/stack", "shop"),
        ("app.kubernetes.io/component", "worker"),
        ("berth.dev/worker", "shop-jobs"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let admits = |policy: &str, port: i32| {
        let np = bundle
            .network_policies
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(policy))
            .unwrap_or_else(|| panic!("{policy}"));
        let spec = np.spec.as_ref().unwrap();
        spec.ingress.iter().flatten().any(|rule| {
            let port_ok = rule.ports.iter().flatten().any(|p| {
                p.port == Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port))
            });
            let peer_ok = rule.from.iter().flatten().any(|peer| {
                peer.namespace_selector.is_none()
                    && peer.pod_selector.as_ref().is_some_and(|sel| {
                        sel.match_labels
                            .iter()
                            .flatten()
                            .all(|(k, v)| worker_pod.get(k) == Some(v))
                    })
            });
            port_ok && peer_ok
        })
    };
    assert!(admits("shop-postgres-ingress", 5432));
    assert!(admits("shop-redis-ingress", 6379));
    assert!(
        !admits("shop-api-ingress", 3000),
        "only the ingress controller reaches the api"
    );
    let deny = bundle
        .network_policies
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some("shop-default-deny"))
        .unwrap();
    assert_eq!(
        deny.spec.as_ref().unwrap().policy_types,
        Some(vec!["Ingress".to_string()])
    );
}
