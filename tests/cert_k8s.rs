//! The Certificate controller on the real cluster (gated on BERTH_E2E_KUBECONFIG): selfSigned
//! and ca Certificates become kubernetes.io/tls Secrets whose chains verify for every dnsName;
//! a CA Secret with a wrong key gives a clear condition; renew-now issues a new serial; an ACME
//! Certificate gets its renewal CronJob on renewalSchedule.

#[path = "support/argocd.rs"]
mod argocd;
#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/tls.rs"]
mod tls;

use std::sync::Arc;

use berth::api::Certificate;
use berth::cert::issue::new_ca;
use berth::cert::kube::controller::{run, Metrics};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
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

        stop.cancel();
        let _ = controller.await;
    })
    .await;
}
