//! The AppStack status on Kubernetes: the shared rules of [`crate::status`] (the same as on a
//! Docker host), fed with what [`super::observe`] read from the caches.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;

use crate::api::appstack::AppStackStatus;
pub use crate::status::{Facts, Problem, READY};

/// The new status; `lastTransitionTime` of a condition is kept when its status did not change.
pub fn compute(
    generation: Option<i64>,
    old: Option<&AppStackStatus>,
    url: Option<String>,
    components: Vec<Facts>,
    problem: Option<&Problem>,
    now: Timestamp,
) -> AppStackStatus {
    crate::status::appstack(generation, old, url, components, problem, now)
}

/// The condition of a type, if present.
pub fn condition<'a>(status: Option<&'a AppStackStatus>, type_: &str) -> Option<&'a Condition> {
    crate::status::condition(&status?.conditions, type_)
}
