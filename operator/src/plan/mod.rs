//! The plan: pure, backend-neutral decisions about what should exist for a spec.
//!
//! `plan_stack` turns an AppStack (plus a few observed facts, [`Observed`]) into a
//! [`StackPlan`]: components with image, command, env, port, health, replicas, storage,
//! dependencies; the credentials to generate; the exposure (domain, TLS, routes); the network
//! rules; and the child berth objects. `plan_worker` does the same for a Worker.
//!
//! Both backends consume the same plan: `k8s/` maps it to Kubernetes objects, the Docker host
//! backend to containers, networks and volumes. Nothing here knows about either: no labels, no
//! object kinds, no container names beyond the host names of [`names`].
//!
//! Contract for backends:
//! - [`EnvValue::Generated`] refers to a key of one of [`StackPlan::secrets`]; create those
//!   secrets once with [`wiring::materialize`] and never overwrite an existing key.
//! - [`Component::host`] is the name other components connect to.
//! - [`Component::depends_on`]: run each check (in the dependency's `image`, with its `env`)
//!   until it exits 0 before starting the component.
//! - [`Component::spec_hash`] changes exactly when the component must be redeployed.
//! - [`NetworkRule`]s are the only connections allowed into a stack's components; a worker is
//!   matched by its kind (`worker`) and its stack, whoever runs it. A backend that places
//!   processes on networks reads them through [`network::placement`].

pub mod component;
pub mod exposure;
pub mod names;
pub mod network;
pub mod set;
pub mod stack;
pub mod types;
pub mod wiring;
pub mod worker;

pub use component::{spec_hash, Observed};
pub use stack::{plan_spec, plan_stack};
pub use types::*;
pub use worker::plan_worker;

/// Why a spec could not be planned. Every variant is something a person must fix in a spec or
/// in the cluster; the message says what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{kind} has no metadata.name")]
    MissingName { kind: &'static str },
    #[error("tls.certificateRef names the Certificate {name:?}, which does not exist in this namespace: create it or use tls.issuer")]
    CertificateNotFound { name: String },
    #[error("appStackRef names the AppStack {name:?}, which does not exist in this namespace: create it or fix the reference")]
    StackNotFound { name: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("internal planning error: {0}")]
    Internal(String),
}

impl PlanError {
    /// `Invalid` naming the first field error, the others appended; `None` when there are none.
    pub fn from_field_errors(errors: Vec<crate::api::validate::FieldError>) -> Option<PlanError> {
        let mut it = errors.into_iter();
        let first = it.next()?;
        let mut message = first.message;
        for e in it {
            message.push_str("; ");
            message.push_str(&e.to_string());
        }
        Some(PlanError::Invalid {
            field: first.path,
            message,
        })
    }

    /// A CamelCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            PlanError::MissingName { .. } => "InvalidSpec",
            PlanError::CertificateNotFound { .. } => "CertificateNotFound",
            PlanError::StackNotFound { .. } => "AppStackNotFound",
            PlanError::Invalid { .. } => "InvalidSpec",
            PlanError::Internal(_) => "InternalError",
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
