//! The Certificate controller on the real cluster (gated on BERTH_E2E_KUBECONFIG): selfSigned
//! and ca Certificates become kubernetes.io/tls Secrets whose chains verify for every dnsName;
//! a CA Secret with a wrong key gives a clear condition; renew-now issues a new serial; an ACME
//! Certificate gets its renewal CronJob on renewalSchedule; an ACME Certificate is issued by its
//! Job against a real Pebble through the HTTP-01 solver Service and Ingress.

#[path = "support/argocd.rs"]
mod argocd;
#[path = "support/berth_image.rs"]
mod berth_image;
#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/pebble.rs"]
mod pebble;
#[path = "support/tls.rs"]
mod tls;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth::api::Certificate;
use berth::cert::issue::new_ca;
use berth::cert::kube::controller::{run, run_with, Context, Metrics};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The node IP: pods reach the host (and Pebble) there.
const NODE_IP: &str = "10.88.0.1";
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn text(s: &Secret, key: &str) -> Option<String> {
    String::from_utf8(s.data.as_ref()?.get(key)?.0.clone()).ok()
}

async fn create_cert(client: &Client, ns: &str, name: &str, spec: serde_json::Value) {
    let api: Api<Certificate> = Api::namespaced(client.clone(), ns);
    let c: Certificate = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Certificate",
        "metadata": {"name": name, "namespace": ns}, "spec": spec
    }))
    .unwrap();
    api.create(&PostParams::default(), &c).await.unwrap();
}

async fn ca_secret(client: &Client, ns: &str, name: &str, cert: &str, key: &str) {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": name}, "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert, "tls.key": key}
    }))
    .unwrap();
    api.create(&PostParams::default(), &s).await.unwrap();
}

/// Waits for the Secret's certificate to have a serial other than `not` and returns it with the
/// Secret.
async fn secret_with_new_serial(
    client: &Client,
    ns: &str,
    name: &str,
    not: Option<&str>,
) -> (Secret, String) {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    cluster::wait_for(&format!("Secret {name} with a new certificate"), || {
        let api = api.clone();
        async move {
            let s = api.get_opt(name).await.ok()??;
            let crt = text(&s, "tls.crt")?;
            let serial = berth::cert::inspect::inspect(&crt).ok()?.serial_number;
            (Some(serial.as_str()) != not).then_some((s, serial))
        }
    })
    .await
}

async fn ready(client: &Client, ns: &str, name: &str, want: &str) -> Certificate {
    let api: Api<Certificate> = Api::namespaced(client.clone(), ns);
    cluster::wait_for(&format!("Certificate {name} Ready={want}"), || {
        let api = api.clone();
        async move {
            let c = api.get(name).await.ok()?;
            let st = c.status.as_ref()?;
            st.conditions
                .iter()
                .any(|x| x.type_ == "Ready" && x.status == want)
                .then_some(c)
        }
    })
    .await
}

#[tokio::test]
async fn self_signed_and_ca_certificates_become_verified_tls_secrets() {
    cluster::with_namespace("cert", |client, ns| async move {
        let ca = new_ca("berth e2e CA", chrono::Duration::days(10)).unwrap();
        let other = new_ca("another CA", chrono::Duration::days(10)).unwrap();
        ca_secret(&client, &ns, "internal-ca", &ca.cert_pem, &ca.key_pem).await;
        ca_secret(&client, &ns, "broken-ca", &ca.cert_pem, &other.key_pem).await;
        let web = ["web.example.test", "www.example.test"];
        create_cert(&client, &ns, "web", json!({"secretName": "web-tls", "dnsNames": web, "issuer": {"selfSigned": {}}, "duration": "24h"})).await;
        let api_names = ["api.internal.test", "api2.internal.test"];
        create_cert(&client, &ns, "api", json!({"secretName": "api-tls", "dnsNames": api_names, "issuer": {"ca": {"secretName": "internal-ca"}}})).await;
        create_cert(&client, &ns, "broken", json!({"secretName": "broken-tls", "dnsNames": ["b.internal.test"], "issuer": {"ca": {"secretName": "broken-ca"}}})).await;
        create_cert(&client, &ns, "public", json!({"secretName": "public-tls", "dnsNames": ["public.example.test"], "issuer": {"acme": {"email": "ops@example.test", "server": "https://127.0.0.1:14000/dir"}}, "renewalSchedule": "5 4 * * *"})).await;

        let stop = CancellationToken::new();
        let metrics = Arc::new(Metrics::default());
        let controller = tokio::spawn(run(client.clone(), Some(ns.clone()), metrics, stop.clone()));

        let (s, serial) = secret_with_new_serial(&client, &ns, "web-tls", None).await;
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        assert!(s.metadata.owner_references.is_none(), "never garbage-collected under an Ingress");
        let (crt, key, ca_crt) = (text(&s, "tls.crt").unwrap(), text(&s, "tls.key").unwrap(), text(&s, "ca.crt").unwrap());
        for n in web {
            tls::verify_tls(&crt, &key, &ca_crt, n).await.unwrap_or_else(|e| panic!("{n}: {e}"));
        }
        let c = ready(&client, &ns, "web", "True").await;
        // Argo CD's view of the live Certificate (the Lua health check users paste).
        let live = serde_json::to_value(&c).unwrap();
        assert_eq!(argocd::health(&live).0, "Healthy", "{live}");
        let st = c.status.unwrap();
        assert_eq!(st.serial_number.as_deref(), Some(serial.as_str()));
        assert!(st.not_after.is_some() && st.renewal_time.is_some());

        let (s, _) = secret_with_new_serial(&client, &ns, "api-tls", None).await;
        let (crt, key) = (text(&s, "tls.crt").unwrap(), text(&s, "tls.key").unwrap());
        assert_eq!(text(&s, "ca.crt").unwrap().trim(), ca.cert_pem.trim());
        for n in api_names {
            tls::verify_tls(&crt, &key, &ca.cert_pem, n).await.unwrap_or_else(|e| panic!("{n}: {e}"));
        }
        ready(&client, &ns, "api", "True").await;

        let broken = ready(&client, &ns, "broken", "False").await;
        let (health, message) = argocd::health(&serde_json::to_value(&broken).unwrap());
        assert_eq!(health, "Degraded", "{message}");
        assert!(message.contains("wrong key for this CA"), "{message}");
        let st = broken.status.unwrap();
        let r = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(r.reason, "InvalidCA");
        assert!(r.message.contains("wrong key for this CA") && r.message.contains("broken-ca"), "{}", r.message);
        assert_eq!(st.failed_attempts, 1);

        // ACME: the renewal CronJob on renewalSchedule, running `berth cert renew`.
        let cron_jobs: Api<CronJob> = Api::namespaced(client.clone(), &ns);
        let cj = cluster::wait_for("CronJob public-renew", || {
            let api = cron_jobs.clone();
            async move { api.get_opt("public-renew").await.ok()? }
        })
        .await;
        let spec = cj.spec.unwrap();
        assert_eq!(spec.schedule, "5 4 * * *");
        let args = spec.job_template.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap();
        assert_eq!(args[..2], ["cert".to_string(), "renew".to_string()]);

        // renew-now: one new certificate with a new serial.
        let certs: Api<Certificate> = Api::namespaced(client.clone(), &ns);
        certs
            .patch("web", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"berth.dev/renew-now": "e2e-1"}}})))
            .await
            .unwrap();
        let (_, renewed) = secret_with_new_serial(&client, &ns, "web-tls", Some(&serial)).await;
        let c = cluster::wait_for("status with the new serial", || {
            let api = certs.clone();
            let renewed = renewed.clone();
            async move {
                let c = api.get("web").await.ok()?;
                (c.status.as_ref()?.serial_number.as_deref() == Some(renewed.as_str())).then_some(c)
            }
        })
        .await;
        assert_eq!(c.status.unwrap().last_renew_now.as_deref(), Some("e2e-1"));

        // The TLS Secret deleted: the controller's watch of its labelled Secrets' metadata
        // (allowed here: this client may list and watch Secrets) sees it go, and it is issued
        // again at once, not at the next resync.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        secrets.delete("web-tls", &Default::default()).await.unwrap();
        let _ = cluster::wait_for_within(Duration::from_secs(60), "web-tls issued again", || {
            let secrets = secrets.clone();
            async move { secrets.get_opt("web-tls").await.ok()? }
        })
        .await;

        stop.cancel();
        let _ = controller.await;
    })
    .await;
}

/// What the cluster lacks, an ingress controller, reduced to the part HTTP-01 needs: it reads
/// a request's Host and path, finds the Ingress rule of `ns` with that host and Exact path, and
/// forwards the connection to the backend Service's ClusterIP (kube-proxy carries it to the
/// pod). Pebble validates here; `routed` counts the requests a rule matched.
async fn ingress_stand_in(client: Client, ns: String, routed: Arc<AtomicUsize>) -> u16 {
    let port = pebble::free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let (client, ns, routed) = (client.clone(), ns.clone(), routed.clone());
            tokio::spawn(async move {
                let _ = route(client, &ns, conn, &routed).await;
            });
        }
    });
    port
}

async fn route(
    client: Client,
    ns: &str,
    mut conn: tokio::net::TcpStream,
    routed: &AtomicUsize,
) -> Option<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let path = text.split_whitespace().nth(1)?.to_string();
    let host = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("Host: ")
                .or_else(|| l.strip_prefix("host: "))
        })?
        .split(':')
        .next()?
        .trim()
        .to_string();
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), ns);
    let backend = ingresses
        .list(&Default::default())
        .await
        .ok()?
        .items
        .into_iter()
        .find_map(|i| {
            i.spec?.rules?.into_iter().find_map(|r| {
                (r.host.as_deref() == Some(host.as_str()))
                    .then_some(r.http?)?
                    .paths
                    .into_iter()
                    .find(|p| p.path_type == "Exact" && p.path.as_deref() == Some(path.as_str()))
                    .and_then(|p| p.backend.service)
            })
        });
    let Some(backend) = backend else {
        conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        return None;
    };
    let services: Api<Service> = Api::namespaced(client, ns);
    let ip = services.get(&backend.name).await.ok()?.spec?.cluster_ip?;
    let port = backend.port?.number?;
    let mut upstream = tokio::net::TcpStream::connect((ip.as_str(), port as u16))
        .await
        .ok()?;
    routed.fetch_add(1, Ordering::SeqCst);
    upstream.write_all(&head).await.ok()?;
    tokio::io::copy_bidirectional(&mut conn, &mut upstream)
        .await
        .ok()?;
    Some(())
}

/// An ACME Certificate on the real cluster against a real Pebble: the controller makes the
/// renewer account and starts a Job running `berth cert renew --kube` in the berth image; the
/// Job's pod answers HTTP-01 behind the solver Service and Ingress (Pebble, on the node IP
/// 10.88.0.1 with its HTTPS CA handed to the pod by a ConfigMap, validates through the Ingress
/// rule to the Service's ClusterIP to the pod); the Secret appears and verifies against
/// Pebble's root, the solver Service and Ingress are gone, the Certificate is Ready.
#[tokio::test]
async fn acme_certificate_is_issued_by_its_job_against_pebble() {
    cluster::with_namespace("certacme", |client, ns| async move {
        let started = std::time::Instant::now();
        berth_image::ensure_in_cluster(&[], &[]);
        berth::tls::install_default_provider();
        let routed = Arc::new(AtomicUsize::new(0));
        let http_port = ingress_stand_in(client.clone(), ns.clone(), routed.clone()).await;
        let pebble = pebble::Pebble::start_at(NODE_IP, http_port);
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "pebble-ca"}, "data": {"ca.crt": pebble.https_ca_pem}
        }))
        .unwrap();
        config_maps.create(&PostParams::default(), &cm).await.unwrap();
        let domain = "web.berth.test";
        create_cert(&client, &ns, "web", json!({
            "secretName": "web-tls", "dnsNames": [domain],
            "issuer": {"acme": {"server": pebble.directory(), "email": "ops@berth.test", "http01": {"ingressClassName": "e2e"}}}
        }))
        .await;

        let stop = CancellationToken::new();
        let mut ctx = Context::new(client.clone(), Arc::new(Metrics::default()));
        ctx.jobs.image = berth_image::image();
        ctx.jobs.acme_ca_config_map = Some("pebble-ca".into());
        let controller = tokio::spawn(run_with(ctx, Some(ns.clone()), stop.clone()));

        // The Job finishes; when it failed, its pod's log says why.
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        let job = cluster::wait_for_within(Duration::from_secs(120), "the issuance Job to finish", || {
            let jobs = jobs.clone();
            async move {
                let list = jobs.list(&ListParams::default().labels("berth.dev/certificate=web")).await.ok()?;
                list.items.into_iter().find(|j| {
                    j.status.as_ref().is_some_and(|s| s.succeeded.unwrap_or(0) + s.failed.unwrap_or(0) > 0)
                })
            }
        })
        .await;
        if job.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) != 1 {
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let mut logs = String::new();
            for p in pods.list(&ListParams::default().labels("berth.dev/certificate=web")).await.unwrap().items {
                logs += &pods.logs(&p.name_any(), &Default::default()).await.unwrap_or_default();
            }
            let hint = if logs.contains("client error (Connect)") {
                "\nthe pod did not reach the API server at 10.0.0.1:443: the DNAT rule of ../shared/k8s/start.sh is missing (iptables -t nat -S PREROUTING); start.sh --node restores it\n"
            } else {
                ""
            };
            panic!("the Job failed:\n{logs}{hint}\npebble:\n{}", pebble.log());
        }
        assert!(job.metadata.name.unwrap().starts_with("web-issue-"));
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("web-renew"));

        let (s, serial) = secret_with_new_serial(&client, &ns, "web-tls", None).await;
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        let root = pebble.root_pem().await;
        tls::verify_tls(&text(&s, "tls.crt").unwrap(), &text(&s, "tls.key").unwrap(), &root, domain)
            .await
            .unwrap_or_else(|e| panic!("{domain}: {e}"));
        assert!(routed.load(Ordering::SeqCst) >= 1, "Pebble validated through the solver Ingress");
        let c = ready(&client, &ns, "web", "True").await;
        let st = c.status.unwrap();
        assert_eq!(st.serial_number.as_deref(), Some(serial.as_str()));
        assert_eq!(st.failed_attempts, 0);
        // The solver is gone; the account key stays in its Secret.
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
        assert!(services.get_opt("web-acme-solver").await.unwrap().is_none());
        assert!(ingresses.get_opt("web-acme-solver").await.unwrap().is_none());
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let account = berth::cert::kube::account_secret_name(&pebble.directory(), "ops@berth.test");
        assert!(secrets.get_opt(&account).await.unwrap().is_some());
        // The Job reported its attempt on the Certificate (its Role allows Events).
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
        cluster::wait_for("the Job's Issued Event", || {
            let events = events.clone();
            async move {
                events.list(&ListParams::default()).await.ok()?.items.into_iter().find(|e| {
                    e.reason.as_deref() == Some("Issued")
                        && e.reporting_controller.as_deref() == Some("berth-cert-renew")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web")
                })
            }
        })
        .await;
        eprintln!("figure: ACME Certificate to Ready on the cluster in {:?}", started.elapsed());

        stop.cancel();
        let _ = controller.await;
    })
    .await;
}
