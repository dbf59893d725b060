//! Every example in examples/ on the real cluster (BERTH_E2E_KUBECONFIG), on real pods, converged.
//!
//! The examples name images nobody can pull here (ghcr.io/acme/..., ollama/ollama, n8nio/n8n,
//! qdrant/qdrant, and the stacks' postgres:N and redis:N). The YAML stays as written: the test
//! gives those names to local images instead (`docker tag`, imported into the node with
//! ../shared/k8s/import-image.sh, then untagged in Docker again): postgres:N and redis:N are
//! berth-demo/postgres and berth-demo/redis, every other image is berth-demo/standin, which runs
//! whatever command the example gives (node, celery, rq, bundle...) and answers HTTP 200 on every
//! path on $PORT and on the examples' ports (tests/images/standin-entrypoint.sh).
//!
//! The documents are grouped by the AppStack they name (a Worker or Backup with `appStackRef`
//! joins its stack); the rest form the group `standalone`. Each group runs in its own namespace
//! with berth's four controllers (AppStack, Worker, Backup, Certificate) in-process as the
//! chart's ServiceAccount, two groups at a time. What an example needs from outside is created
//! first: its Secrets (dummy values; S3 keys; a CA pair for `issuer.ca`), a redis-server on the
//! host for standalone Workers' queues, and a PostgreSQL and Redis pod for `external` servers.
//!
//! Only change to the examples: every `resources.cpu` is divided by CPU_DIVISOR (printed), since
//! the examples ask for production CPU (ollama 2 CPUs, 3 api replicas of 500m...) and the node
//! has 2 CPUs shared with other tests. Memory requests are kept.
//!
//! Converged means, for every object in the namespace (the examples and their children):
//! - AppStack: Ready for its generation. A stack with `tls.issuer.acme` cannot be: its
//!   Certificate needs Let's Encrypt, which nothing here may reach: its issuing Job runs the
//!   stand-in image (ACME_JOB), not berth (tests/cert_k8s.rs issues ACME against Pebble). For
//!   those, every component except the proxy is ready, and Ready=False/ReplicasNotReady names
//!   the Certificate as the only thing missing.
//! - Worker: Ready=True for its generation.
//! - Backup: its CronJob exists with the example's schedule and suspend, observed generation
//!   current, and Ready=Unknown/NoBackupYet: a Backup is Ready only after a backup ran
//!   (tests/e2e_backup.rs).
//! - Certificate: selfSigned and ca Ready=True; acme Ready=False with Issuing=True (its Job
//!   started, running the stand-in).
//!
//! examples/demo is not here: it uses `:latest` tags (pulled Always) and is run on real pods by
//! tests/e2e_k8s.rs `e2e_demo_stack_runs_ready_then_idles_without_writes`.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/operator_ns.rs"]
mod operator_ns;
#[path = "support/redis.rs"]
mod redis_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth::api::{AppStack, Backup, Certificate, Worker};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};

use operator_ns::{apply_obj, repo_root};

const STANDIN: &str = "berth-demo/standin:latest";
/// What the examples' ACME Jobs run: the stand-in, so that no pod of this test ever tries to
/// reach Let's Encrypt (the examples name the real ACME server; nothing here may leave the
/// machine). Its Job keeps running, so such a Certificate stays Issuing.
const ACME_JOB: &str = "berth-e2e/acme-job:e2e";
const POSTGRES: &str = "berth-demo/postgres:latest";
const REDIS: &str = "berth-demo/redis:latest";
/// Every `resources.cpu` of the examples is divided by this.
const CPU_DIVISOR: u64 = 10;
/// How long one group may take to converge once applied: about 40 s on a quiet node, but the
/// examples' probes run every 30 s and the node is shared with other tests.
const GROUP_DEADLINE: Duration = Duration::from_secs(300);
const EXT_PASSWORD: &str = "e2e-external-pw";

/// One YAML document of examples/, as written.
#[derive(Clone, Debug)]
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }
    fn label(&self) -> String {
        format!("{} {}/{}", self.file, self.kind(), self.name())
    }
    /// The AppStack a Worker or Backup takes its Redis or database from.
    fn stack_ref(&self) -> Option<&str> {
        let spec = &self.value["spec"];
        spec["appStackRef"]
            .as_str()
            .or(spec["database"]["appStackRef"].as_str())
    }
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
}

/// Every document of examples/ except examples/demo (see the module docs).
fn example_docs() -> Vec<Doc> {
    let root = repo_root().join("examples");
    let mut files = Vec::new();
    yaml_files(&root, &mut files);
    let mut docs = Vec::new();
    for f in files {
        let rel = f.strip_prefix(repo_root()).unwrap().display().to_string();
        if rel.starts_with("examples/demo/") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for d in serde_norway::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{rel}: not YAML: {e}"));
            if value.is_null() {
                continue;
            }
            docs.push(Doc {
                file: rel.clone(),
                value,
            });
        }
    }
    docs
}

/// The documents by group: each AppStack with the Workers and Backups that name it, then the
/// rest as `standalone`.
fn groups(docs: &[Doc]) -> Vec<(String, Vec<Doc>)> {
    let stacks: BTreeSet<&str> = docs
        .iter()
        .filter(|d| d.kind() == "AppStack")
        .map(Doc::name)
        .collect();
    let mut out: BTreeMap<String, Vec<Doc>> = BTreeMap::new();
    for d in docs {
        let group = match (d.kind(), d.stack_ref()) {
            ("AppStack", _) => d.name().to_string(),
            (_, Some(stack)) => {
                assert!(
                    stacks.contains(stack),
                    "{} names the AppStack {stack}, which no example defines",
                    d.label()
                );
                stack.to_string()
            }
            _ => "standalone".to_string(),
        };
        out.entry(group).or_default().push(d.clone());
    }
    out.into_iter().collect()
}

/// Every image the examples' pods run, with the local image that stands in for it.
fn stand_ins(docs: &[Doc]) -> BTreeMap<String, &'static str> {
    let mut images = BTreeSet::new();
    for d in docs {
        if let Some(i) = d.value["spec"]["image"].as_str() {
            images.insert(i.to_string());
        }
        if d.kind() != "AppStack" {
            continue;
        }
        let stack: AppStack = serde_json::from_value(d.value.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", d.label()));
        let mut observed = berth::plan::Observed::default();
        if let Some(r) = stack
            .spec
            .tls
            .as_ref()
            .and_then(|t| t.certificate_ref.clone())
        {
            observed.certificate_secrets.insert(r.clone(), r);
        }
        let plan = berth::plan::plan_stack(&stack, &observed)
            .unwrap_or_else(|e| panic!("{}: {e:?}", d.label()));
        for c in &plan.components {
            images.insert(c.image.clone());
            images.extend(c.depends_on.iter().map(|dep| dep.image.clone()));
        }
        images.extend(plan.children.workers.iter().map(|(_, w)| w.image.clone()));
    }
    // Workers of a stack or standalone read their queue's depth with no image of their own; a
    // stack with an external server still waits for it with the default tool images.
    images.insert(format!(
        "postgres:{}",
        berth::plan::wiring::DEFAULT_POSTGRES_VERSION
    ));
    images.insert(format!(
        "redis:{}",
        berth::plan::wiring::DEFAULT_REDIS_VERSION
    ));
    images.insert(ACME_JOB.to_string());
    images
        .into_iter()
        .map(|i| {
            let local = if i.starts_with("postgres:") {
                POSTGRES
            } else if i.starts_with("redis:") {
                REDIS
            } else {
                STANDIN
            };
            (i, local)
        })
        .collect()
}

fn run(what: &str, cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn docker_has(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", image])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Builds the local images, gives each example image name to its stand-in in the node's
/// containerd, and removes the names from Docker again (other tests see Docker unchanged).
fn import_stand_ins(images: &BTreeMap<String, &'static str>) {
    run(
        "tests/images/build.sh postgres redis standin",
        Command::new("bash")
            .arg(repo_root().join("tests/images/build.sh"))
            .args(["postgres", "redis", "standin"]),
    );
    let mut tagged = Vec::new();
    for (name, local) in images {
        if docker_has(name) {
            eprintln!("{name} exists in Docker: imported as it is");
            continue;
        }
        run(
            &format!("docker tag {local} {name}"),
            Command::new("docker").args(["tag", local, name]),
        );
        tagged.push(name.clone());
    }
    let dir = std::env::var("BERTH_K8S_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("../shared/k8s"));
    let script = dir.join("import-image.sh");
    let names: Vec<&String> = images.keys().collect();
    let imported = if script.exists() {
        Some(Command::new("bash").arg(&script).args(&names).output())
    } else {
        eprintln!(
            "{} not found: assuming the cluster has these images: {names:?}",
            script.display()
        );
        None
    };
    for name in &tagged {
        let _ = Command::new("docker").args(["rmi", name]).output();
    }
    if let Some(out) = imported {
        let out = out.expect("running import-image.sh");
        assert!(
            out.status.success(),
            "import-image.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (name, local) in images {
        println!("image {name} -> {local}");
    }
}

/// `cpu` divided by CPU_DIVISOR (at least 10m).
fn scaled_cpu(cpu: &str) -> String {
    let milli = match cpu.strip_suffix('m') {
        Some(m) => m.parse::<f64>().expect("a CPU quantity"),
        None => cpu.parse::<f64>().expect("a CPU quantity") * 1000.0,
    };
    format!("{}m", ((milli as u64) / CPU_DIVISOR).max(10))
}

fn scale_cpu(v: &mut Value, label: &str) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(cpu)) = map.get_mut("cpu") {
                let new = scaled_cpu(cpu);
                println!("{label}: resources.cpu {cpu} -> {new}");
                *cpu = new;
            }
            for (_, child) in map.iter_mut() {
                scale_cpu(child, label);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| scale_cpu(i, label)),
        _ => {}
    }
}

/// Where the Secrets the examples name point to.
struct Urls {
    host_redis: String,
    ext_postgres: String,
    ext_redis: String,
}

/// The Secrets a document names, with every key, by what the reference is for.
fn secrets_of(
    v: &Value,
    path: &mut Vec<String>,
    urls: &Urls,
    out: &mut BTreeMap<String, BTreeMap<String, String>>,
) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let name = child["name"].as_str().map(str::to_string);
                match (k.as_str(), name) {
                    ("secretKeyRef", Some(n)) => {
                        let key = child["key"].as_str().unwrap_or("value").to_string();
                        out.entry(n).or_default().insert(key, "e2e-value".into());
                    }
                    ("urlSecretRef", Some(n)) => {
                        let at = path.join(".");
                        let url = if at.ends_with("postgres.external") {
                            urls.ext_postgres.clone()
                        } else if at.ends_with("redis.external") {
                            urls.ext_redis.clone()
                        } else if at.ends_with("queue.redis") {
                            urls.host_redis.clone()
                        } else {
                            // A Backup's database: read only when a backup runs.
                            "postgresql://e2e:e2e@db.invalid:5432/e2e".into()
                        };
                        let key = child["key"].as_str().unwrap_or("url").to_string();
                        out.entry(n).or_default().insert(key, url);
                    }
                    ("credentialsSecretRef", Some(n)) => {
                        let keys = out.entry(n).or_default();
                        keys.insert("AWS_ACCESS_KEY_ID".into(), "e2e-access-key".into());
                        keys.insert("AWS_SECRET_ACCESS_KEY".into(), "e2e-secret-key".into());
                    }
                    _ => {}
                }
                path.push(k.clone());
                secrets_of(child, path, urls, out);
                path.pop();
            }
        }
        Value::Array(items) => items.iter().for_each(|i| secrets_of(i, path, urls, out)),
        _ => {}
    }
}

/// A CA certificate and key (PEM) made by openssl, for `issuer.ca`.
fn ca_pair() -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
    run(
        "openssl req (a CA for issuer.ca)",
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "30"])
            .args(["-subj", "/CN=berth e2e CA", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
    );
    (
        std::fs::read_to_string(crt).unwrap(),
        std::fs::read_to_string(key).unwrap(),
    )
}

async fn apply_secret(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    data: &BTreeMap<String, String>,
) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name}, "type": type_, "stringData": data,
    }))
    .unwrap();
    apply_obj(client, ns, &secret).await;
}

/// A PostgreSQL or Redis pod and its Service, for an AppStack's `external` server.
async fn external_server(client: &Client, ns: &str, name: &str, image: &str, port: i32) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"e2e-external": name}},
        "spec": {
            "containers": [{
                "name": "server", "image": image, "imagePullPolicy": "IfNotPresent",
                "env": [
                    {"name": "POSTGRES_USER", "value": "app"},
                    {"name": "POSTGRES_PASSWORD", "value": EXT_PASSWORD},
                    {"name": "POSTGRES_DB", "value": "app"},
                ],
                "ports": [{"containerPort": port}],
                "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
            }],
        }
    }))
    .unwrap();
    apply_obj(client, ns, &pod).await;
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"selector": {"e2e-external": name}, "ports": [{"port": port, "targetPort": port}]},
    }))
    .unwrap();
    apply_obj(client, ns, &svc).await;
}

fn api_resource(kind: &str) -> ApiResource {
    match kind {
        "AppStack" => ApiResource::erase::<AppStack>(&()),
        "Worker" => ApiResource::erase::<Worker>(&()),
        "Backup" => ApiResource::erase::<Backup>(&()),
        "Certificate" => ApiResource::erase::<Certificate>(&()),
        other => panic!("an example of kind {other}: add it to tests/e2e_examples.rs"),
    }
}

/// Everything the group needs, then its documents as written (CPU scaled), by server-side apply.
async fn apply_group(client: &Client, ns: &str, docs: &[Doc], host_redis: &str) {
    let urls = Urls {
        host_redis: host_redis.to_string(),
        ext_postgres: format!("postgresql://app:{EXT_PASSWORD}@ext-postgres:5432/app"),
        ext_redis: "redis://ext-redis:6379/0".into(),
    };
    let mut secrets = BTreeMap::new();
    for d in docs {
        secrets_of(&d.value, &mut Vec::new(), &urls, &mut secrets);
        if let Some(ca) = d.value["spec"]["issuer"]["ca"]["secretName"].as_str() {
            let (crt, key) = ca_pair();
            let data = BTreeMap::from([("tls.crt".to_string(), crt), ("tls.key".to_string(), key)]);
            apply_secret(client, ns, ca, "kubernetes.io/tls", &data).await;
        }
    }
    for (name, data) in &secrets {
        apply_secret(client, ns, name, "Opaque", data).await;
    }
    let needs = |what: &str| {
        docs.iter()
            .any(|d| !d.value["spec"][what]["external"].is_null())
    };
    if needs("postgres") {
        let image = format!("postgres:{}", berth::plan::wiring::DEFAULT_POSTGRES_VERSION);
        external_server(client, ns, "ext-postgres", &image, 5432).await;
    }
    if needs("redis") {
        let image = format!("redis:{}", berth::plan::wiring::DEFAULT_REDIS_VERSION);
        external_server(client, ns, "ext-redis", &image, 6379).await;
    }
    // Stacks first, so the Workers and Backups that name them find them.
    let mut ordered: Vec<&Doc> = docs.iter().collect();
    ordered.sort_by_key(|d| d.kind() != "AppStack");
    for d in ordered {
        let mut v = d.value.clone();
        scale_cpu(&mut v, &d.label());
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &api_resource(d.kind()));
        api.patch(
            d.name(),
            &PatchParams::apply(cluster::MANAGER).force(),
            &Patch::Apply(&v),
        )
        .await
        .unwrap_or_else(|e| panic!("the apiserver refused {}: {e}", d.label()));
    }
}

fn condition<'a>(
    conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn describe(c: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>) -> String {
    c.map_or("no condition".into(), |c| {
        format!("{}/{}: {}", c.status, c.reason, c.message)
    })
}

type Verdicts = Vec<(String, Result<String, String>)>;

/// Whether every berth object in the namespace has converged (Ok) or not yet (Err), and why.
async fn verdicts(client: &Client, ns: &str) -> Verdicts {
    let mut out = Vec::new();
    let certs: Vec<Certificate> = list(client, ns).await;
    for s in list::<AppStack>(client, ns).await {
        out.push((format!("AppStack/{}", s.name_any()), stack_verdict(&s)));
    }
    for w in list::<Worker>(client, ns).await {
        let st = w.status.clone().unwrap_or_default();
        let ready = condition(&st.conditions, "Ready");
        let v = if st.observed_generation == w.metadata.generation
            && ready.is_some_and(|c| c.status == "True")
        {
            Ok(describe(ready))
        } else {
            Err(describe(ready))
        };
        out.push((format!("Worker/{}", w.name_any()), v));
    }
    let cron_jobs: Vec<CronJob> = list(client, ns).await;
    for b in list::<Backup>(client, ns).await {
        let st = b.status.clone().unwrap_or_default();
        let ready = condition(&st.conditions, "Ready");
        let cron = cron_jobs.iter().find(|c| {
            c.owner_references()
                .iter()
                .any(|o| o.kind == "Backup" && o.name == b.name_any())
        });
        let v = match cron.and_then(|c| c.spec.as_ref()) {
            None => Err(format!("no CronJob yet; {}", describe(ready))),
            Some(c) if c.schedule != b.spec.schedule => Err(format!(
                "CronJob schedule {} != {}",
                c.schedule, b.spec.schedule
            )),
            Some(c) if c.suspend.unwrap_or(false) != b.spec.suspend => Err(format!(
                "CronJob suspend {:?} != {}",
                c.suspend, b.spec.suspend
            )),
            Some(_) if st.observed_generation != b.metadata.generation => {
                Err("generation not observed yet".into())
            }
            Some(_) => match ready {
                Some(c) if c.status == "Unknown" && c.reason == "NoBackupYet" => {
                    Ok(format!("CronJob ok; {}", describe(ready)))
                }
                _ => Err(describe(ready)),
            },
        };
        out.push((format!("Backup/{}", b.name_any()), v));
    }
    for c in &certs {
        let st = c.status.clone().unwrap_or_default();
        let ready = condition(&st.conditions, "Ready");
        let issuing = condition(&st.conditions, "Issuing");
        let v = if c.spec.issuer.acme.is_some() {
            // Let's Encrypt is out of reach: the issuing Job runs the stand-in (ACME_JOB) and never ends.
            match (ready, issuing) {
                (Some(r), Some(i))
                    if st.observed_generation == c.metadata.generation
                        && r.status == "False"
                        && i.status == "True" =>
                {
                    Ok(format!(
                        "Ready {}; Issuing {}",
                        describe(ready),
                        describe(issuing)
                    ))
                }
                _ => Err(format!(
                    "Ready {}; Issuing {}",
                    describe(ready),
                    describe(issuing)
                )),
            }
        } else if ready.is_some_and(|r| r.status == "True") {
            Ok(describe(ready))
        } else {
            Err(describe(ready))
        };
        out.push((format!("Certificate/{}", c.name_any()), v));
    }
    out
}

fn stack_verdict(s: &AppStack) -> Result<String, String> {
    let Some(st) = s.status.as_ref() else {
        return Err("no status yet".into());
    };
    if st.observed_generation != s.metadata.generation {
        return Err("generation not observed yet".into());
    }
    let ready = condition(&st.conditions, "Ready");
    let acme = s
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.issuer.as_ref())
        .is_some_and(|i| i.acme.is_some());
    if !acme {
        return match st.phase {
            Some(berth::api::appstack::Phase::Ready) => Ok(describe(ready)),
            _ => Err(describe(ready)),
        };
    }
    let not_ready: Vec<String> = st
        .components
        .iter()
        .filter(|c| c.kind != "proxy" && c.ready_replicas < c.desired_replicas)
        .map(|c| format!("{} {}/{}", c.name, c.ready_replicas, c.desired_replicas))
        .collect();
    let cert = format!("Certificate {}-tls not", s.name_any());
    let proxy_waits = st
        .components
        .iter()
        .any(|c| c.kind == "proxy" && c.message.starts_with(&cert));
    match ready {
        Some(r)
            if not_ready.is_empty()
                && proxy_waits
                && r.status == "False"
                && r.reason == berth::status::reason::NOT_READY =>
        {
            Ok(format!(
                "all components ready but the proxy; {}",
                describe(ready)
            ))
        }
        _ => Err(format!("not ready: {not_ready:?}; {}", describe(ready))),
    }
}

async fn list<K>(client: &Client, ns: &str) -> Vec<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// Each pod's phase and why its containers wait, for a failure message.
async fn pods_waiting(client: &Client, ns: &str) -> Vec<String> {
    list::<Pod>(client, ns)
        .await
        .iter()
        .map(|p| {
            let st = p.status.clone().unwrap_or_default();
            let waiting: Vec<String> = st
                .init_container_statuses
                .iter()
                .flatten()
                .chain(st.container_statuses.iter().flatten())
                .filter_map(|c| {
                    let w = c.state.as_ref()?.waiting.as_ref()?;
                    Some(format!(
                        "{}: {}",
                        c.name,
                        w.reason.clone().unwrap_or_default()
                    ))
                })
                .collect();
            format!(
                "  {} {} {waiting:?}",
                p.name_any(),
                st.phase.unwrap_or_default()
            )
        })
        .collect()
}

/// One group in its own namespace: applied, then converged within GROUP_DEADLINE.
async fn run_group(group: String, docs: Vec<Doc>) {
    let test = format!("ex-{group}");
    operator_ns::in_namespace_running(&test, Some(ACME_JOB), |client, ns, _| async move {
        // Pods (a Worker waits for its queue's Redis) and the in-process Worker controller
        // both reach it at the node IP.
        let node_ip = std::env::var("BERTH_E2E_NODE_IP").unwrap_or_else(|_| "10.88.0.1".into());
        let redis = redis_support::RedisServer::start_with(redis_support::Options {
            also_bind: vec![node_ip.clone()],
            ..Default::default()
        });
        let start = Instant::now();
        let redis_url = format!("redis://{node_ip}:{}/0", redis.port);
        apply_group(&client, &ns, &docs, &redis_url).await;
        let mut last = Vec::new();
        let converged = loop {
            let v = verdicts(&client, &ns).await;
            if !v.is_empty() && v.iter().all(|(_, r)| r.is_ok()) {
                break Some(v);
            }
            last = v;
            if start.elapsed() > GROUP_DEADLINE {
                break None;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let files: BTreeSet<&str> = docs.iter().map(|d| d.file.as_str()).collect();
        let Some(v) = converged else {
            let pending: Vec<String> = last
                .iter()
                .map(|(o, r)| match r {
                    Ok(m) => format!("  ok      {o}: {m}"),
                    Err(m) => format!("  PENDING {o}: {m}"),
                })
                .collect();
            panic!(
                "group {group} ({files:?}) did not converge within {GROUP_DEADLINE:?}:\n{}\npods:\n{}",
                pending.join("\n"),
                pods_waiting(&client, &ns).await.join("\n")
            );
        };
        println!(
            "group {group} ({}) converged in {:.1} s:",
            files.into_iter().collect::<Vec<_>>().join(", "),
            start.elapsed().as_secs_f64()
        );
        for (o, r) in v {
            println!("  {o}: {}", r.unwrap_or_default());
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn e2e_every_example_converges_on_real_pods() {
    if cluster::kubeconfig_path().is_none() {
        return;
    }
    let start = Instant::now();
    let docs = example_docs();
    assert!(docs.len() >= 17, "examples/ holds {} documents", docs.len());
    import_stand_ins(&stand_ins(&docs));
    let mut groups = groups(&docs);
    // BERTH_E2E_EXAMPLES=vidgen,standalone runs only those groups (to look into one).
    if let Ok(only) = std::env::var("BERTH_E2E_EXAMPLES") {
        groups.retain(|(g, _)| only.split(',').any(|o| o == g));
    }
    let count = groups.len();
    // Two namespaces at a time: the node has 2 CPUs shared with the other tests.
    let results: Vec<(String, Result<(), tokio::task::JoinError>)> = futures::stream::iter(groups)
        .map(|(name, docs)| async move {
            let r = tokio::spawn(run_group(name.clone(), docs)).await;
            (name, r)
        })
        .buffer_unordered(2)
        .collect()
        .await;
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|(name, r)| r.err().map(|e| format!("{name}: {e}")))
        .collect();
    println!(
        "{} documents in {count} groups, {} failed, in {:.1} s",
        docs.len(),
        failed.len(),
        start.elapsed().as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "groups that did not converge:\n{}",
        failed.join("\n")
    );
}
