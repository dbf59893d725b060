//! The AppStack status on Kubernetes: the shared rules of [`crate::status`] (the same as on a
//! Docker host), fed with what [`super::observe`] read from the caches.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::api::appstack::AppStackStatus;
pub use crate::status::{Facts, Problem, READY};

/// The new status; `lastTransitionTime` of a condition is kept when its status did not change.
pub use crate::status::appstack as compute;

/// The condition of a type, if present.
pub fn condition<'a>(status: Option<&'a AppStackStatus>, type_: &str) -> Option<&'a Condition> {
    crate::status::condition(&status?.conditions, type_)
}
