//! Services, Ingresses (ingress-nginx) and NetworkPolicies from the plan.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, NetworkPolicy, NetworkPolicyIngressRule,
    NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::plan::{names, Component, Exposure, NetworkRule, Peer, RoutePlan};

use super::meta::{Owner, STACK_LABEL};

/// ingress-nginx annotations (the one ingress controller berth targets).
pub mod nginx {
    pub const BODY_SIZE: &str = "nginx.ingress.kubernetes.io/proxy-body-size";
    pub const LIMIT_RPS: &str = "nginx.ingress.kubernetes.io/limit-rps";
    pub const LIMIT_BURST_MULTIPLIER: &str = "nginx.ingress.kubernetes.io/limit-burst-multiplier";
    pub const READ_TIMEOUT: &str = "nginx.ingress.kubernetes.io/proxy-read-timeout";
    pub const SEND_TIMEOUT: &str = "nginx.ingress.kubernetes.io/proxy-send-timeout";
}

/// Seconds an idle WebSocket connection is kept open by the proxy.
pub const WEBSOCKET_TIMEOUT_SECONDS: u32 = 3600;

/// Where the ingress controller runs, for the NetworkPolicy that lets it reach the api.
#[derive(Clone, Debug)]
pub struct IngressOptions {
    /// `ingressClassName` of every Ingress; `None` uses the cluster's default class.
    pub class_name: Option<String>,
    /// Namespace of the ingress controller's pods (matched by `kubernetes.io/metadata.name`).
    pub controller_namespace: String,
}

impl Default for IngressOptions {
    fn default() -> Self {
        IngressOptions {
            class_name: Some("nginx".into()),
            controller_namespace: "ingress-nginx".into(),
        }
    }
}

/// The ClusterIP Service of a component with a port.
pub fn service(owner: &Owner, c: &Component) -> Option<Service> {
    let port = c.port.as_ref()?;
    Some(Service {
        metadata: owner.meta(
            c.host.clone(),
            owner.component_labels(&c.name, c.kind.as_str()),
        ),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(owner.selector(&c.name)),
            ports: Some(vec![ServicePort {
                name: Some(port.name.clone()),
                port: port.number,
                target_port: Some(IntOrString::String(port.name.clone())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// One Ingress per route, because ingress-nginx takes limits and timeouts per Ingress object;
/// for one host it merges them into one server where the longest prefix wins.
pub fn ingresses(owner: &Owner, e: &Exposure, opts: &IngressOptions) -> Vec<Ingress> {
    e.routes
        .iter()
        .map(|r| ingress(owner, e, r, opts))
        .collect()
}

/// nginx's `limit_req` burst is `rps × multiplier`; the smallest multiplier covering `burst`.
pub fn burst_multiplier(requests_per_second: i32, burst: i32) -> i32 {
    let rps = requests_per_second.max(1);
    ((burst + rps - 1) / rps).max(1)
}

fn ingress(owner: &Owner, e: &Exposure, r: &RoutePlan, opts: &IngressOptions) -> Ingress {
    let mut annotations =
        BTreeMap::from([(nginx::BODY_SIZE.to_string(), e.max_body_bytes.to_string())]);
    if let Some(l) = r.rate_limit {
        annotations.insert(nginx::LIMIT_RPS.into(), l.requests_per_second.to_string());
        annotations.insert(
            nginx::LIMIT_BURST_MULTIPLIER.into(),
            burst_multiplier(l.requests_per_second, l.burst).to_string(),
        );
    }
    if r.websocket {
        annotations.insert(
            nginx::READ_TIMEOUT.into(),
            WEBSOCKET_TIMEOUT_SECONDS.to_string(),
        );
        annotations.insert(
            nginx::SEND_TIMEOUT.into(),
            WEBSOCKET_TIMEOUT_SECONDS.to_string(),
        );
    }
    let mut meta = owner.meta(
        names::route_ingress(&owner.stack, &r.slug),
        owner.component_labels("proxy", "proxy"),
    );
    meta.annotations = Some(annotations);
    Ingress {
        metadata: meta,
        spec: Some(IngressSpec {
            ingress_class_name: opts.class_name.clone(),
            tls: e.tls.as_ref().map(|t| {
                vec![IngressTLS {
                    hosts: Some(vec![e.domain.clone()]),
                    secret_name: Some(t.secret_name.clone()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(e.domain.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some(r.path.clone()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: names::component_host(&owner.stack, &e.target),
                                port: Some(ServiceBackendPort {
                                    name: Some("http".into()),
                                    number: None,
                                }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            default_backend: None,
        }),
        status: None,
    }
}

/// Deny every connection into the stack's pods, then allow what the plan allows.
pub fn network_policies(
    owner: &Owner,
    rules: &[NetworkRule],
    opts: &IngressOptions,
) -> Vec<NetworkPolicy> {
    let mut out = vec![NetworkPolicy {
        metadata: owner.meta(names::default_deny_policy(&owner.stack), owner.labels()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some([(STACK_LABEL.to_string(), owner.stack.clone())].into()),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: None,
            egress: None,
        }),
    }];
    for rule in rules {
        let from = rule.from.iter().map(|p| peer(owner, p, opts)).collect();
        out.push(NetworkPolicy {
            metadata: owner.meta(
                names::ingress_policy(&owner.stack, &rule.to),
                owner.labels(),
            ),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(owner.selector(&rule.to)),
                    match_expressions: None,
                }),
                policy_types: Some(vec!["Ingress".into()]),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(from),
                    ports: Some(vec![NetworkPolicyPort {
                        port: Some(IntOrString::Int(rule.port)),
                        protocol: Some("TCP".into()),
                        end_port: None,
                    }]),
                }]),
                egress: None,
            }),
        });
    }
    out
}

fn peer(owner: &Owner, p: &Peer, opts: &IngressOptions) -> NetworkPolicyPeer {
    match p {
        Peer::Proxy => NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(
                    [(
                        "kubernetes.io/metadata.name".to_string(),
                        opts.controller_namespace.clone(),
                    )]
                    .into(),
                ),
                match_expressions: None,
            }),
            ..NetworkPolicyPeer::default()
        },
        Peer::Kind(_) | Peer::Backup => NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(
                    [
                        (STACK_LABEL.to_string(), owner.stack.clone()),
                        (
                            "app.kubernetes.io/component".to_string(),
                            match p {
                                Peer::Kind(kind) => kind.as_str().to_string(),
                                _ => "backup".to_string(),
                            },
                        ),
                    ]
                    .into(),
                ),
                match_expressions: None,
            }),
            ..NetworkPolicyPeer::default()
        },
    }
}
