//! Labels, names and owner references shared by every child of an AppStack.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::api::AppStack;

/// Label with the owning stack's name; every child carries it (prune selects on it).
pub const STACK_LABEL: &str = "berth.dev/stack";
/// Label with the component's name inside the stack; part of every selector.
pub const COMPONENT_NAME_LABEL: &str = "berth.dev/component";
/// Annotation with the plan's spec hash of a workload.
pub const SPEC_HASH_ANNOTATION: &str = "berth.dev/spec-hash";
/// The field manager of every server-side apply, and `managed-by`.
pub const MANAGER: &str = "berth";

/// What identifies a stack's children: enough to build metadata without the whole AppStack.
#[derive(Clone, Debug)]
pub struct Owner {
    pub stack: String,
    pub namespace: Option<String>,
    /// `None` offline (`berth render`): the stack has no uid yet, so no ownerReference.
    pub owner_ref: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
}

impl Owner {
    /// The owner of an AppStack's children.
    pub fn of(stack: &AppStack) -> Self {
        Owner {
            stack: stack.name_any(),
            namespace: stack.namespace(),
            owner_ref: stack.controller_owner_ref(&()),
        }
    }

    /// Labels of everything the stack owns.
    pub fn labels(&self) -> BTreeMap<String, String> {
        [
            ("app.kubernetes.io/instance", self.stack.as_str()),
            ("app.kubernetes.io/part-of", "berth"),
            ("app.kubernetes.io/managed-by", MANAGER),
            (STACK_LABEL, self.stack.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Labels of one component's objects and pods.
    pub fn component_labels(&self, name: &str, kind: &str) -> BTreeMap<String, String> {
        let mut l = self.labels();
        l.insert("app.kubernetes.io/name".into(), name.into());
        l.insert("app.kubernetes.io/component".into(), kind.into());
        l.insert(COMPONENT_NAME_LABEL.into(), name.into());
        l
    }

    /// The labels a component's selector matches (immutable once created: keep it small).
    pub fn selector(&self, name: &str) -> BTreeMap<String, String> {
        [
            (STACK_LABEL.to_string(), self.stack.clone()),
            (COMPONENT_NAME_LABEL.to_string(), name.to_string()),
        ]
        .into()
    }

    /// Metadata of a child: name, namespace, labels, controller owner reference.
    pub fn meta(&self, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: self.namespace.clone(),
            labels: Some(labels),
            owner_references: self.owner_ref.clone().map(|o| vec![o]),
            ..ObjectMeta::default()
        }
    }

    /// `app.kubernetes.io/managed-by=berth,berth.dev/stack=<stack>`: selects every child.
    pub fn children_selector(&self) -> String {
        format!(
            "app.kubernetes.io/managed-by={MANAGER},{STACK_LABEL}={}",
            self.stack
        )
    }
}
