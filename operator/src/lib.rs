//! berth: one declarative manifest for a small team's application stack, reconciled on
//! Kubernetes (kube-rs controllers) and on a single Docker host (bollard).
//!
//! Data flows one way: `api` (the CRD types and their validation) → `plan` (pure decisions) →
//! a backend (`k8s`, `docker`) → `status` (the shared rules that turn what each backend observed
//! into phase and conditions). Engines shared by both backends live beside them.

pub mod api;
pub mod autoscale;
pub mod backup;
pub mod cert;
pub mod cli;
pub mod controller;
pub mod docker;
pub mod heap;
pub mod k8s;
pub mod manifest;
pub mod plan;
pub mod shared;
pub mod status;
pub mod tls;
pub mod workers;
