//! The ServiceAccount, Role and RoleBinding an ACME Certificate's renewal Jobs run as, named
//! `<certificate>-renew` and owned by the Certificate (garbage-collected with it). The Role holds
//! exactly what `berth cert renew --kube` does in its namespace, by name wherever RBAC allows
//! (it cannot restrict `create` by name):
//! - the Certificate: get; its status: get, patch;
//! - Secrets: get, patch the TLS Secret and the ACME account Secret; create (first issuance);
//! - the solver Service and Ingress: get, patch, delete by name; create;
//! - Events (`events.k8s.io`): create (the attempt's outcome on the Certificate).
//!
//! The operator's ClusterRole holds all of these verbs too (RBAC only lets it grant what it has).

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::ResourceExt;

use super::{account_secret_name, owner_meta, short_name, solver};
use crate::api::Certificate;

/// The name of the account, Role and RoleBinding.
pub fn account_name(cert: &Certificate) -> String {
    short_name(&format!("{}-renew", cert.name_any()))
}

pub fn service_account(cert: &Certificate) -> ServiceAccount {
    ServiceAccount {
        metadata: owner_meta(cert, account_name(cert)),
        ..ServiceAccount::default()
    }
}

fn rule(group: &str, resource: &str, verbs: &[&str], names: &[String]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.into()]),
        resources: Some(vec![resource.into()]),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        resource_names: (!names.is_empty()).then(|| names.to_vec()),
        ..PolicyRule::default()
    }
}

/// The rules of the Role.
pub fn rules(cert: &Certificate) -> Vec<PolicyRule> {
    let name = vec![cert.name_any()];
    let mut secrets = vec![cert.spec.secret_name.clone()];
    if let Some(a) = &cert.spec.issuer.acme {
        secrets.push(account_secret_name(&a.server, &a.email));
    }
    let solver = vec![solver::solver_name(cert)];
    vec![
        rule("berth.dev", "certificates", &["get"], &name),
        rule("berth.dev", "certificates/status", &["get", "patch"], &name),
        rule("", "secrets", &["get", "patch"], &secrets),
        rule("", "secrets", &["create"], &[]),
        rule("", "services", &["get", "patch", "delete"], &solver),
        rule("", "services", &["create"], &[]),
        rule(
            "networking.k8s.io",
            "ingresses",
            &["get", "patch", "delete"],
            &solver,
        ),
        rule("networking.k8s.io", "ingresses", &["create"], &[]),
        rule("events.k8s.io", "events", &["create"], &[]),
    ]
}

pub fn role(cert: &Certificate) -> Role {
    Role {
        metadata: owner_meta(cert, account_name(cert)),
        rules: Some(rules(cert)),
    }
}

pub fn role_binding(cert: &Certificate) -> RoleBinding {
    let name = account_name(cert);
    RoleBinding {
        metadata: owner_meta(cert, name.clone()),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: cert.namespace(),
            ..Subject::default()
        }]),
    }
}
