//! What the controllers of berth's own kinds send back to the API server: Events and the
//! status subresource, written the same way for every kind.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::warn;

use super::meta::MANAGER;

/// Publishes an Event about `regarding` (notes are cut at 1,000 characters); a failure is
/// logged, never returned: an Event is worth no retry of a reconcile.
pub async fn publish(
    recorder: &Recorder,
    regarding: &ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, regarding).await {
        warn!(error = %e, reason, "could not publish an event");
    }
}

/// Writes `status` by server-side apply (field manager `berth`), only when it differs from
/// `previous` (the live object's). Returns whether it wrote.
pub async fn apply_status<K, S>(
    api: &Api<K>,
    name: &str,
    previous: Option<&S>,
    status: S,
) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: PartialEq + Serialize,
{
    if previous == Some(&status) {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(true)
}
