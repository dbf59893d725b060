//! The Kubernetes backend: maps a plan onto Kubernetes objects (pure builders) and reconciles
//! them (the controller). Nothing here decides policy; that is `plan/`.
//!
//! Assumptions, documented in docs/kubernetes.md: ingress-nginx is the ingress controller (rate
//! limits, body size and WebSocket timeouts are its annotations), and the api waits for its
//! database and cache with init containers running `pg_isready` / `redis-cli ping`.

pub mod bundle;
pub mod cached;
pub mod children;
pub mod meta;
pub mod network;
pub mod report;
pub mod workload;

pub use bundle::{build, BuildOptions, Bundle};
pub use meta::Owner;
