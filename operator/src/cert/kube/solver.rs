//! The HTTP-01 solver on Kubernetes. The renewal Job's own pod answers the challenges
//! (`berth cert renew --http01-listen`, port [`SOLVER_PORT`]); while an order is under way the
//! Job makes a Service selecting its pod (label [`SOLVER_LABEL`]) and an Ingress with one rule
//! per challenge, `/.well-known/acme-challenge/<token>` (pathType Exact) on the domain's host,
//! with the Certificate's `acme.http01.ingressClassName` or the operator's class. Both are
//! named `<certificate>-acme-solver`, owned by the Certificate (garbage-collected with it) and
//! deleted once the order is finalised or failed. The self-check goes through the Service's
//! ClusterIP (what the Ingress controller forwards to) unless `--self-check-via` says otherwise.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use super::{owner_meta, short_name};
use crate::api::Certificate;
use crate::cert::acme::{Presenter, CHALLENGE_PREFIX};
use crate::cert::CertError;

/// The label on renewal Job pods the solver Service selects (value: the solver's name).
pub const SOLVER_LABEL: &str = "berth.dev/acme-solver";
/// Where the Job's pod answers HTTP-01 (`--http01-listen`'s default port).
pub const SOLVER_PORT: u16 = 8089;
/// The solver Service's port (what the Ingress and the self-check use).
pub const SERVICE_PORT: u16 = 80;
/// The field manager of what the Job writes.
pub const JOB_MANAGER: &str = "berth-cert-renew";

/// The name of the solver Service and Ingress.
pub fn solver_name(cert: &Certificate) -> String {
    short_name(&format!("{}-acme-solver", cert.name_any()))
}

/// The Service that selects the renewal Job's pod.
pub fn service(cert: &Certificate) -> Service {
    let name = solver_name(cert);
    Service {
        metadata: owner_meta(cert, name.clone()),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(SOLVER_LABEL.to_string(), name)])),
            ports: Some(vec![ServicePort {
                name: Some("http01".into()),
                port: SERVICE_PORT.into(),
                target_port: Some(IntOrString::Int(SOLVER_PORT.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The Ingress routing each `(domain, token)` challenge to the solver Service.
pub fn ingress(
    cert: &Certificate,
    class: Option<&str>,
    challenges: &[(String, String)],
) -> Ingress {
    let name = solver_name(cert);
    let rules = challenges
        .iter()
        .map(|(domain, token)| IngressRule {
            host: Some(domain.clone()),
            http: Some(HTTPIngressRuleValue {
                paths: vec![HTTPIngressPath {
                    path: Some(format!("{CHALLENGE_PREFIX}{token}")),
                    path_type: "Exact".into(),
                    backend: IngressBackend {
                        service: Some(IngressServiceBackend {
                            name: name.clone(),
                            port: Some(ServiceBackendPort {
                                number: Some(SERVICE_PORT.into()),
                                ..ServiceBackendPort::default()
                            }),
                        }),
                        ..IngressBackend::default()
                    },
                }],
            }),
        })
        .collect();
    Ingress {
        metadata: owner_meta(cert, name),
        spec: Some(IngressSpec {
            ingress_class_name: class.map(str::to_string),
            rules: Some(rules),
            ..IngressSpec::default()
        }),
        status: None,
    }
}

fn api_err(doing: String) -> impl FnOnce(kube::Error) -> CertError {
    move |e| CertError::Api {
        doing,
        detail: e.to_string(),
    }
}

/// The [`Presenter`] of a renewal Job: applies the Service and Ingress, deletes them after.
pub struct KubeSolver {
    cert: Certificate,
    class: Option<String>,
    services: Api<Service>,
    ingresses: Api<Ingress>,
    challenges: Mutex<Vec<(String, String)>>,
}

impl std::fmt::Debug for KubeSolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSolver")
            .field("certificate", &self.cert.name_any())
            .field("class", &self.class)
            .finish_non_exhaustive()
    }
}

impl KubeSolver {
    pub fn new(client: Client, cert: &Certificate, class: Option<String>) -> KubeSolver {
        let ns = cert.namespace().unwrap_or_else(|| "default".into());
        KubeSolver {
            cert: cert.clone(),
            class,
            services: Api::namespaced(client.clone(), &ns),
            ingresses: Api::namespaced(client, &ns),
            challenges: Mutex::default(),
        }
    }

    async fn apply(&self, domain: &str, token: &str) -> Result<Option<SocketAddr>, CertError> {
        let name = solver_name(&self.cert);
        let apply = PatchParams::apply(JOB_MANAGER).force();
        let svc = self
            .services
            .patch(&name, &apply, &Patch::Apply(&service(&self.cert)))
            .await
            .map_err(api_err(format!("applying the solver Service {name}")))?;
        let all = match self.challenges.lock() {
            Ok(mut c) => {
                c.push((domain.to_string(), token.to_string()));
                c.clone()
            }
            Err(_) => vec![(domain.to_string(), token.to_string())],
        };
        let ing = ingress(&self.cert, self.class.as_deref(), &all);
        self.ingresses
            .patch(&name, &apply, &Patch::Apply(&ing))
            .await
            .map_err(api_err(format!("applying the solver Ingress {name}")))?;
        info!(service = %name, domain, "HTTP-01 solver routed");
        let ip = svc
            .spec
            .and_then(|s| s.cluster_ip)
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        Ok(ip.map(|ip| SocketAddr::new(ip, SERVICE_PORT)))
    }

    async fn remove(&self) {
        let name = solver_name(&self.cert);
        let dp = DeleteParams::default();
        match self.ingresses.delete(&name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                warn!(ingress = %name, error = %e, "cannot delete the solver Ingress; it goes with the Certificate")
            }
        }
        match self.services.delete(&name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                warn!(service = %name, error = %e, "cannot delete the solver Service; it goes with the Certificate")
            }
        }
        if let Ok(mut c) = self.challenges.lock() {
            c.clear();
        }
    }
}

impl Presenter for KubeSolver {
    fn present<'a>(
        &'a self,
        domain: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<SocketAddr>, CertError>> {
        Box::pin(self.apply(domain, token))
    }

    fn cleanup(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.remove())
    }
}
