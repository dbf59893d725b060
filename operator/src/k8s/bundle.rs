//! Every Kubernetes object of one stack, built from its plan.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};

use crate::api::{Backup, Certificate, Worker};
use crate::plan::StackPlan;

use super::children::children;
use super::meta::Owner;
use super::network::{ingresses, network_policies, service, IngressOptions};
use super::workload::{deployment, stateful_set};

/// What the operator is configured with (flags), as far as builders care.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    pub ingress: IngressOptions,
}

/// The applied children of a stack, by kind. Generated Secrets are not here: they are created
/// once and never applied over (see `children::secret`).
#[derive(Clone, Debug, Default)]
pub struct Bundle {
    pub deployments: Vec<Deployment>,
    pub stateful_sets: Vec<StatefulSet>,
    pub services: Vec<Service>,
    pub ingresses: Vec<Ingress>,
    pub network_policies: Vec<NetworkPolicy>,
    pub workers: Vec<Worker>,
    pub certificates: Vec<Certificate>,
    pub backups: Vec<Backup>,
}

/// Builds the objects of a plan. Components with storage become StatefulSets, the others
/// Deployments; each component with a port gets a Service.
pub fn build(owner: &Owner, plan: &StackPlan, opts: &BuildOptions) -> Bundle {
    let mut b = Bundle::default();
    for c in &plan.components {
        if c.storage.is_some() {
            b.stateful_sets.push(stateful_set(owner, c));
        } else {
            b.deployments.push(deployment(owner, c));
        }
        b.services.extend(service(owner, c));
    }
    if let Some(e) = &plan.exposure {
        b.ingresses = ingresses(owner, e, &opts.ingress);
    }
    b.network_policies = network_policies(owner, &plan.network, &opts.ingress);
    let (workers, certificates, backups) = children(owner, &plan.children);
    b.workers = workers;
    b.certificates = certificates;
    b.backups = backups;
    b
}

impl Bundle {
    /// Every object as JSON with apiVersion and kind, in apply order (children before those
    /// that refer to them is not needed: Kubernetes converges in any order).
    pub fn to_values(&self) -> Result<Vec<serde_json::Value>, serde_json::Error> {
        // Destructured without `..` so a new kind cannot be forgotten here.
        let Bundle {
            deployments,
            stateful_sets,
            services,
            ingresses,
            network_policies,
            workers,
            certificates,
            backups,
        } = self;
        let mut out = Vec::new();
        push_all(&mut out, stateful_sets)?;
        push_all(&mut out, deployments)?;
        push_all(&mut out, services)?;
        push_all(&mut out, ingresses)?;
        push_all(&mut out, network_policies)?;
        push_all(&mut out, workers)?;
        push_all(&mut out, certificates)?;
        push_all(&mut out, backups)?;
        Ok(out)
    }
}

/// k8s-openapi types serialize apiVersion and kind; the CRD types do too.
fn push_all<T: serde::Serialize>(
    out: &mut Vec<serde_json::Value>,
    items: &[T],
) -> Result<(), serde_json::Error> {
    for i in items {
        out.push(serde_json::to_value(i)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
