//! `berth render`: the Kubernetes objects the operator would create for some manifests, offline.
//! Same plan and builders as the controller; generated secrets show placeholders, never values.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::exit;
use crate::k8s::network::IngressOptions;
use crate::k8s::{build, children, BuildOptions, Owner};
use crate::manifest;
use crate::plan::set::ManifestSet;
use crate::plan::{plan_stack, wiring, PlanError};

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// A manifest file or a directory of them (searched recursively for .yaml/.yml); repeatable.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
    /// `ingressClassName` of the Ingresses (as `berth operator --ingress-class`).
    #[arg(long, default_value = "nginx")]
    pub ingress_class: String,
    /// Namespace of the ingress controller, allowed to reach the api by the NetworkPolicies.
    #[arg(long, default_value = "ingress-nginx")]
    pub ingress_namespace: String,
}

pub fn run(args: RenderArgs) -> u8 {
    let docs = match manifest::load_paths(&args.paths) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("berth render: {e}");
            return exit::USAGE;
        }
    };
    let mut code = exit::OK;
    for doc in &docs {
        for line in doc.error_lines() {
            eprintln!("{line}");
            code = exit::INVALID;
        }
    }
    let opts = BuildOptions {
        ingress: IngressOptions {
            class_name: Some(args.ingress_class),
            controller_namespace: args.ingress_namespace,
        },
    };
    let set = ManifestSet::from_documents(&docs);
    let mut out = std::io::stdout().lock();
    for stack in &set.stacks {
        match render_stack(stack, &set, &opts) {
            Ok(text) => {
                if out.write_all(text.as_bytes()).is_err() {
                    return exit::USAGE;
                }
            }
            Err(e) => {
                eprintln!(
                    "berth render: AppStack {}: {e}",
                    stack.metadata.name.as_deref().unwrap_or("?")
                );
                code = exit::INVALID;
            }
        }
    }
    code
}

/// Why a stack could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Secret(#[from] wiring::MaterializeError),
    #[error("cannot print YAML: {0}")]
    Yaml(#[from] serde_norway::Error),
    #[error("cannot serialize: {0}")]
    Json(#[from] serde_json::Error),
}

/// The multi-document YAML of one stack: generated Secrets (placeholders), then its objects.
pub fn render_stack(
    stack: &crate::api::AppStack,
    set: &ManifestSet,
    opts: &BuildOptions,
) -> Result<String, RenderError> {
    let mut observed = set.observed_for(stack);
    let plan = match plan_stack(stack, &observed) {
        Err(PlanError::CertificateNotFound { name }) => {
            // Offline the Certificate may simply live in the cluster: assume its Secret has
            // its name, and say so.
            eprintln!(
                "berth render: Certificate {name:?} is not among the manifests; assuming its secretName is {name:?}"
            );
            observed.certificate_secrets.insert(name.clone(), name);
            plan_stack(stack, &observed)?
        }
        other => other?,
    };
    let owner = Owner::of(stack);
    let mut values = Vec::new();
    for g in &plan.secrets {
        let data = wiring::materialize(g, &Default::default(), wiring::placeholder)?;
        values.push(serde_json::to_value(children::secret(&owner, g, data))?);
    }
    values.extend(build(&owner, &plan, opts).to_values()?);
    let mut text = String::new();
    for v in values {
        text.push_str("---\n");
        text.push_str(&serde_norway::to_string(&v)?);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::vidgen;

    #[test]
    fn renders_placeholders_not_secrets() {
        let set = ManifestSet::default();
        let text = render_stack(&vidgen(), &set, &BuildOptions::default()).unwrap();
        assert!(text.contains("<generated: 32 random bytes, hex>"));
        assert!(text.contains("kind: Deployment"));
        assert!(text.contains("kind: StatefulSet"));
        assert!(text.contains("kind: NetworkPolicy"));
        assert!(text.contains("kind: Worker"));
        let docs: Vec<serde_json::Value> = serde_norway::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 2 + 19);
    }

    #[test]
    fn missing_certificate_is_assumed_offline() {
        let mut s = vidgen();
        s.spec.tls = Some(crate::api::appstack::StackTls {
            certificate_ref: Some("wild".into()),
            issuer: None,
        });
        let text = render_stack(&s, &ManifestSet::default(), &BuildOptions::default()).unwrap();
        assert!(text.contains("secretName: wild"));
    }
}
