//! The berth API (`berth.dev/v1alpha1`): the four custom resources, their defaults and their
//! semantic validation. No I/O here.

pub mod appstack;
pub mod backup;
pub mod certificate;
pub mod common;
pub mod schedule;
pub mod schema_check;
pub mod units;
pub mod validate;
pub mod worker;

pub use appstack::{AppStack, AppStackSpec, AppStackStatus};
pub use backup::{Backup, BackupSpec, BackupStatus};
pub use certificate::{Certificate, CertificateSpec, CertificateStatus};
pub use common::{API_VERSION, GROUP, VERSION};
pub use worker::{Worker, WorkerSpec, WorkerStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The CRDs of all four kinds, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        AppStack::crd(),
        Worker::crd(),
        Certificate::crd(),
        Backup::crd(),
    ]
}
