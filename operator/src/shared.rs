//! One watch and one cache per berth kind for the controllers of one process, as `berth
//! operator` runs them: the AppStack controller drives the AppStack watch and reads the
//! Worker, Backup and Certificate caches; the Worker and Backup controllers read its
//! AppStacks; each controller drives the watch of its own kind. Each object is kept once.

use kube::core::DeserializeGuard;
use kube::{Api, Client};

use crate::api::Certificate;
use crate::controller::synced::{watch_config, MainWatch};
use crate::controller::trim::lean_generated;
use crate::controller::{SharedCache, SharedCaches};

/// What each controller of one process gets (pass each part to its `run_shared`).
pub struct SharedWatches {
    pub appstack: SharedCaches,
    pub workers: crate::workers::SharedCaches,
    pub backups: crate::backup::kube::controller::SharedCaches,
    /// The Certificate controller's watch; `None` without one (the AppStack controller then
    /// watches Certificates itself).
    pub certificates: Option<MainWatch<DeserializeGuard<Certificate>>>,
}

impl SharedWatches {
    /// The watches of `namespace` (all namespaces: `None`); `certificate_controller`: whether
    /// a Certificate controller runs and drives the Certificate watch.
    pub fn new(client: &Client, namespace: Option<&str>, certificate_controller: bool) -> Self {
        fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
        where
            K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
        {
            match namespace {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            }
        }
        let config = || watch_config().any_semantic();
        let stacks = MainWatch::new(api(client, namespace), config());
        // The kinds an AppStack generates, cached with the digest of their labels
        // (`trim::lean_generated`).
        let workers = MainWatch::new(api(client, namespace), config()).prepared_by(lean_generated);
        let backups = MainWatch::new(api(client, namespace), config()).prepared_by(lean_generated);
        let certificates = certificate_controller
            .then(|| MainWatch::new(api(client, namespace), config()).prepared_by(lean_generated));
        // Every subscription before any watch runs.
        let for_workers = SharedCache::of(&stacks);
        let stack_store = stacks.store();
        let appstack = SharedCaches {
            workers: SharedCache::of(&workers),
            backups: SharedCache::of(&backups),
            certificates: certificates.as_ref().map(SharedCache::of),
            stacks,
        };
        SharedWatches {
            appstack,
            workers: crate::workers::SharedCaches {
                workers,
                stacks: for_workers,
            },
            backups: crate::backup::kube::controller::SharedCaches {
                backups,
                stacks: stack_store,
            },
            certificates,
        }
    }
}
