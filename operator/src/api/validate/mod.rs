//! Semantic validation: what a schema cannot say well (durations, cron schedules, time zones,
//! DNS names, image references, quantities, names unique across a stack, references that need
//! each other), plus a mirror of every CEL rule of the CRDs so `berth validate` offline agrees
//! with the API server. Every error names its field path.

mod appstack;
mod backup;
mod certificate;
mod values;
mod worker;

use std::collections::HashMap;
use std::fmt;

use super::common::{ContainerSpec, EnvVar, Resources};
use values::positive_quantity;

pub use values::{dns_label, dns_name, dns_subdomain, image_ref};

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path with list indexes, e.g. `spec.workers[1].scaling.maxReplicas`.
    pub path: String,
    /// What is wrong and, where it helps, what to do.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A field path under construction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Path(String);

impl Path {
    /// The object itself.
    pub fn root() -> Self {
        Path(String::new())
    }
    /// A named field below this one.
    pub fn field(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Path(name.to_string())
        } else {
            Path(format!("{}.{name}", self.0))
        }
    }
    /// An item of the list at this path.
    pub fn index(&self, i: usize) -> Self {
        Path(format!("{}[{i}]", self.0))
    }
    /// Whether this is the object itself.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
    /// An error at this path.
    pub fn error(&self, message: impl Into<String>) -> FieldError {
        FieldError {
            path: self.0.clone(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Collects errors while walking an object.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: &Path, message: impl Into<String>) {
        self.0.push(path.error(message));
    }
    fn check(&mut self, path: &Path, result: Result<(), String>) {
        if let Err(message) = result {
            self.push(path, message);
        }
    }
}

/// Component names berth itself uses inside a stack.
pub const RESERVED_COMPONENT_NAMES: [&str; 4] = ["api", "postgres", "redis", "proxy"];

/// Longest name of a Kubernetes object that must be a DNS label (Services, pod host names).
const MAX_LABEL: usize = 63;

/// Semantic validation of a kind.
pub trait Validate {
    /// Every semantic error in the object; empty when it is valid.
    fn validate(&self) -> Vec<FieldError>;
}

fn object_name(errs: &mut Errors, name: Option<&str>, max: usize) {
    let path = Path::root().field("metadata").field("name");
    match name {
        None => errs.push(&path, "required field is missing"),
        Some(n) => errs.check(&path, dns_label(n, max)),
    }
}

/// A container's image, env and resources; `has_pg`/`has_redis`: whether berth injects
/// `DATABASE_URL`/`REDIS_URL` into it.
fn container(errs: &mut Errors, c: &ContainerSpec, path: &Path, has_pg: bool, has_redis: bool) {
    errs.check(&path.field("image"), image_ref(&c.image));
    env_list(errs, &c.env, &path.field("env"), has_pg, has_redis);
    resources(errs, c.resources.as_ref(), &path.field("resources"));
}

fn env_list(errs: &mut Errors, env: &[EnvVar], path: &Path, has_pg: bool, has_redis: bool) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, e) in env.iter().enumerate() {
        let p = path.index(i);
        if e.value.is_some() == e.secret_key_ref.is_some() {
            errs.push(&p, "exactly one of value or secretKeyRef must be set");
        }
        if let Some(first) = seen.insert(e.name.as_str(), i) {
            errs.push(
                &p.field("name"),
                format!("duplicate variable: env[{first}] has the same name"),
            );
        }
        let injected = (e.name == "DATABASE_URL" && has_pg) || (e.name == "REDIS_URL" && has_redis);
        if injected {
            errs.push(
                &p.field("name"),
                format!(
                    "{} is set by berth from the stack's own server; remove it here",
                    e.name
                ),
            );
        }
    }
}

fn resources(errs: &mut Errors, r: Option<&Resources>, path: &Path) {
    let Some(r) = r else { return };
    if let Some(cpu) = &r.cpu {
        errs.check(&path.field("cpu"), positive_quantity(cpu));
    }
    if let Some(mem) = &r.memory {
        errs.check(&path.field("memory"), positive_quantity(mem));
    }
}
