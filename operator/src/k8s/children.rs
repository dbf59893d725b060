//! Child berth objects (Worker, Certificate, Backup) and generated Secrets.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

use crate::api::{Backup, Certificate, Worker};
use crate::plan::{Children, GeneratedSecret, SecretData};

use super::meta::Owner;

/// Annotation on generated Secrets: berth created it and will never overwrite it.
pub const GENERATED_ANNOTATION: &str = "berth.dev/generated";

/// The child Workers, Certificate and Backup.
pub fn children(owner: &Owner, c: &Children) -> (Vec<Worker>, Vec<Certificate>, Vec<Backup>) {
    let workers = c
        .workers
        .iter()
        .map(|(name, spec)| {
            let mut w = Worker::new(name, spec.clone());
            let mut labels = owner.component_labels(name, "worker");
            labels.insert("berth.dev/worker".into(), name.clone());
            w.metadata = owner.meta(name.clone(), labels);
            w
        })
        .collect();
    let certificates = c
        .certificate
        .iter()
        .map(|(name, spec)| {
            let mut cert = Certificate::new(name, spec.clone());
            cert.metadata = owner.meta(name.clone(), owner.component_labels("tls", "certificate"));
            cert
        })
        .collect();
    let backups = c
        .backup
        .iter()
        .map(|(name, spec)| {
            let mut b = Backup::new(name, spec.clone());
            b.metadata = owner.meta(name.clone(), owner.component_labels("backup", "backup"));
            b
        })
        .collect();
    (workers, certificates, backups)
}

/// A generated Secret with its values. Created once (only when absent), never applied over.
pub fn secret(owner: &Owner, g: &GeneratedSecret, data: SecretData) -> Secret {
    let mut meta = owner.meta(
        g.name.clone(),
        owner.component_labels(&g.component, &g.component),
    );
    meta.annotations = Some(BTreeMap::from([(
        GENERATED_ANNOTATION.to_string(),
        "true".to_string(),
    )]));
    Secret {
        metadata: meta,
        type_: Some("Opaque".into()),
        string_data: Some(data),
        ..Secret::default()
    }
}
