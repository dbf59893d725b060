//! Reads that a controller answers from its watch cache first.

use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

/// The object `namespace/name` from `store`, else (not listed yet, or really missing) from
/// the API server: a periodic reconcile of an object whose reference is cached sends nothing.
pub async fn cached_or_get<K>(
    store: &Store<K>,
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<Arc<K>>, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + 'static,
{
    if let Some(cached) = store.get(&ObjectRef::new(name).within(namespace)) {
        return Ok(Some(cached));
    }
    Ok(Api::<K>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
        .map(Arc::new))
}
