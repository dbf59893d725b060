//! A set of objects read together (a folder of manifests, the desired state of a Docker host):
//! resolves the references between them the way the API server would in a cluster.

use crate::api::{AppStack, Certificate, Worker};
use crate::manifest::{Document, Object};

use super::component::Observed;

/// The valid berth objects of some documents, by kind.
#[derive(Clone, Debug, Default)]
pub struct ManifestSet {
    pub stacks: Vec<AppStack>,
    pub workers: Vec<Worker>,
    pub certificates: Vec<Certificate>,
}

impl ManifestSet {
    /// Keeps the valid AppStacks, Workers and Certificates (invalid documents are reported by
    /// validation, not here).
    pub fn from_documents(docs: &[Document]) -> Self {
        let mut set = ManifestSet::default();
        for d in docs {
            match &d.result {
                Ok(Object::AppStack(s)) => set.stacks.push((**s).clone()),
                Ok(Object::Worker(w)) => set.workers.push((**w).clone()),
                Ok(Object::Certificate(c)) => set.certificates.push((**c).clone()),
                _ => {}
            }
        }
        set
    }

    /// The AppStack of this name.
    pub fn stack(&self, name: &str) -> Option<&AppStack> {
        self.stacks
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
    }

    /// What a stack may observe in this set: the Certificates of its namespace.
    pub fn observed_for(&self, stack: &AppStack) -> Observed {
        let ns = stack.metadata.namespace.as_deref();
        Observed {
            certificate_secrets: self
                .certificates
                .iter()
                .filter(|c| c.metadata.namespace.as_deref() == ns)
                .filter_map(|c| Some((c.metadata.name.clone()?, c.spec.secret_name.clone())))
                .collect(),
        }
    }
}
