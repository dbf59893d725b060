//! Reading manifests: files or folders of multi-document YAML into typed, validated objects.
//! Used by `berth validate`, `berth render` and the Docker host backend, so every entry point
//! accepts and rejects exactly the same documents.

use std::path::{Path as FsPath, PathBuf};
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Secret;
use kube::CustomResourceExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

use crate::api::schema_check;
use crate::api::validate::{FieldError, Path, Validate};
use crate::api::{AppStack, Backup, Certificate, Worker, API_VERSION};

/// A berth object (or a Secret that berth objects refer to) read from a manifest.
#[derive(Clone, Debug)]
pub enum Object {
    AppStack(Box<AppStack>),
    Worker(Box<Worker>),
    Certificate(Box<Certificate>),
    Backup(Box<Backup>),
    /// A core/v1 Secret, for the Docker host where there is no API server to hold it.
    Secret(Box<Secret>),
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Object::AppStack(_) => "AppStack",
            Object::Worker(_) => "Worker",
            Object::Certificate(_) => "Certificate",
            Object::Backup(_) => "Backup",
            Object::Secret(_) => "Secret",
        }
    }
}

/// One YAML document of a file, parsed or with the reasons it is not valid.
#[derive(Clone, Debug)]
pub struct Document {
    /// The file it came from.
    pub file: PathBuf,
    /// 1-based position in the file.
    pub index: usize,
    /// `kind` as written, when there is one.
    pub kind: Option<String>,
    /// `metadata.name` as written, when there is one.
    pub name: Option<String>,
    /// The object, or every error found in it.
    pub result: Result<Object, Vec<FieldError>>,
}

impl Document {
    /// `Kind/name` for messages.
    pub fn label(&self) -> String {
        format!(
            "{}/{}",
            self.kind.as_deref().unwrap_or("<no kind>"),
            self.name.as_deref().unwrap_or("<no name>")
        )
    }

    /// One line per error: `file: document N (Kind/name): field.path: message`.
    pub fn error_lines(&self) -> Vec<String> {
        match &self.result {
            Ok(_) => Vec::new(),
            Err(errors) => errors
                .iter()
                .map(|e| {
                    format!(
                        "{}: document {} ({}): {e}",
                        self.file.display(),
                        self.index,
                        self.label()
                    )
                })
                .collect(),
        }
    }
}

/// Why manifests could not be read at all (as opposed to being invalid).
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("{path}: no such file or directory")]
    NotFound { path: PathBuf },
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no .yaml or .yml files in this directory")]
    EmptyDir { path: PathBuf },
}

/// Reads every document of every path (files, or directories searched recursively for `.yaml`
/// and `.yml` files, in name order).
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<Document>, LoadError> {
    let mut docs = Vec::new();
    for path in paths {
        for file in yaml_files(path)? {
            let text = std::fs::read_to_string(&file).map_err(|source| LoadError::Io {
                path: file.clone(),
                source,
            })?;
            docs.extend(parse_documents(&file, &text));
        }
    }
    Ok(docs)
}

/// The YAML files a path names: the file itself, or those below a directory.
pub fn yaml_files(path: &FsPath) -> Result<Vec<PathBuf>, LoadError> {
    let meta = std::fs::metadata(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => LoadError::NotFound {
            path: path.to_path_buf(),
        },
        _ => LoadError::Io {
            path: path.to_path_buf(),
            source,
        },
    })?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    collect_yaml(path, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(LoadError::EmptyDir {
            path: path.to_path_buf(),
        });
    }
    Ok(files)
}

fn collect_yaml(dir: &FsPath, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let io = |source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(io)?;
        if file_type.is_dir() {
            collect_yaml(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml") | Some("yml")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// Parses and validates every document of one file's text.
pub fn parse_documents(file: &FsPath, text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let value = match Value::deserialize(de) {
            Ok(Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                docs.push(Document {
                    file: file.to_path_buf(),
                    index,
                    kind: None,
                    name: None,
                    result: Err(vec![Path::root().error(format!("not valid YAML: {e}"))]),
                });
                // After a syntax error the rest of the stream cannot be trusted.
                break;
            }
        };
        docs.push(parse_value(file, index, value));
    }
    docs
}

/// Validates one document already parsed from YAML or JSON.
pub fn parse_value(file: &FsPath, index: usize, value: Value) -> Document {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .map(str::to_string);
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_string);
    let result = typed(&value, kind.as_deref());
    Document {
        file: file.to_path_buf(),
        index,
        kind,
        name,
        result,
    }
}

fn typed(value: &Value, kind: Option<&str>) -> Result<Object, Vec<FieldError>> {
    let root = Path::root();
    if !value.is_object() {
        return Err(vec![root.error(
            "a manifest document must be a mapping with apiVersion, kind, metadata and spec",
        )]);
    }
    let api_version = value.get("apiVersion").and_then(Value::as_str);
    let Some(kind) = kind else {
        return Err(vec![root.field("kind").error(
            "required field is missing (one of AppStack, Worker, Certificate, Backup)",
        )]);
    };
    if api_version == Some("v1") && kind == "Secret" {
        return parse_secret(value);
    }
    match api_version {
        Some(API_VERSION) => {}
        None => {
            return Err(vec![root.field("apiVersion").error(format!(
                "required field is missing (berth kinds use {API_VERSION})"
            ))])
        }
        Some(other) => {
            return Err(vec![root
                .field("apiVersion")
                .error(format!("must be {API_VERSION} (got {other:?})"))])
        }
    }
    match kind {
        "AppStack" => checked::<AppStack>(value, schema_of(0)).map(|o| Object::AppStack(Box::new(o))),
        "Worker" => checked::<Worker>(value, schema_of(1)).map(|o| Object::Worker(Box::new(o))),
        "Certificate" => {
            checked::<Certificate>(value, schema_of(2)).map(|o| Object::Certificate(Box::new(o)))
        }
        "Backup" => checked::<Backup>(value, schema_of(3)).map(|o| Object::Backup(Box::new(o))),
        other => Err(vec![root.field("kind").error(format!(
            "unknown kind {other:?}: berth knows AppStack, Worker, Certificate and Backup (and v1 Secret)"
        ))]),
    }
}

/// The openAPIV3Schema of each kind, in the order of `api::crds()`.
fn schema_of(i: usize) -> &'static Value {
    static SCHEMAS: OnceLock<Vec<Value>> = OnceLock::new();
    let all = SCHEMAS.get_or_init(|| {
        [
            AppStack::crd(),
            Worker::crd(),
            Certificate::crd(),
            Backup::crd(),
        ]
        .into_iter()
        .map(|crd| {
            crd.spec
                .versions
                .first()
                .and_then(|v| v.schema.as_ref())
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .and_then(|s| serde_json::to_value(s).ok())
                .unwrap_or(Value::Null)
        })
        .collect()
    });
    &all[i]
}

fn checked<T>(value: &Value, schema: &Value) -> Result<T, Vec<FieldError>>
where
    T: DeserializeOwned + Validate,
{
    let mut errors = schema_check::check(schema, value);
    if errors.is_empty() {
        let object: T = deserialize(value)?;
        let errors = object.validate();
        return if errors.is_empty() {
            Ok(object)
        } else {
            Err(errors)
        };
    }
    // Every error in one run: without the fields the schema rejected, the rest of the
    // document still gets its semantic checks (when it can be read at all without them).
    let mut pruned = value.clone();
    for e in &errors {
        repair(&mut pruned, schema, &e.path);
    }
    if let Ok(object) = deserialize::<T>(&pruned) {
        let schema_paths: Vec<String> = errors.iter().map(|e| e.path.clone()).collect();
        errors.extend(
            object
                .validate()
                .into_iter()
                .filter(|e| !schema_paths.iter().any(|p| overlaps(p, &e.path))),
        );
    }
    Err(errors)
}

/// One path is the other or lies below it.
fn overlaps(a: &str, b: &str) -> bool {
    let below = |x: &str, y: &str| {
        x == y || (x.starts_with(y) && matches!(x.as_bytes().get(y.len()), Some(b'.' | b'[')))
    };
    below(a, b) || below(b, a)
}

/// Makes the field at `path` readable for the typed checks: a value outside an enum becomes
/// the enum's first value; a value of the right JSON type (a pattern or a bound missed) stays;
/// anything else (an unknown field, a wrong type) is removed. List items and the root stay
/// (removing them would shift or lose the rest). What the typed checks then say about the
/// same field is dropped by the caller.
fn repair(value: &mut Value, schema: &Value, path: &str) {
    let steps = steps(path);
    let Some((Ok(last), parents)) = steps.split_last() else {
        return;
    };
    let mut sub = Some(schema);
    for step in &steps {
        sub = sub.and_then(|s| match step {
            Ok(key) => s.pointer(&format!("/properties/{key}")),
            Err(_) => s.get("items"),
        });
    }
    let mut at = value;
    for step in parents {
        let next = match step {
            Ok(key) => at.get_mut(*key),
            Err(i) => at.get_mut(*i),
        };
        match next {
            Some(v) => at = v,
            None => return,
        }
    }
    let Some(map) = at.as_object_mut() else {
        return;
    };
    let current = map.get(*last);
    let fixed = match (sub, current) {
        (Some(s), Some(_)) if s.get("enum").is_some() => {
            s.pointer("/enum/0").filter(|v| !v.is_null()).cloned()
        }
        (Some(s), Some(v)) if json_type_matches(s, v) => Some(v.clone()),
        _ => None,
    };
    match fixed {
        Some(v) => {
            map.insert((*last).to_string(), v);
        }
        None => {
            map.remove(*last);
        }
    }
}

fn json_type_matches(schema: &Value, v: &Value) -> bool {
    match schema.get("type").and_then(Value::as_str) {
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        Some("array") => v.is_array(),
        Some("object") => v.is_object(),
        _ => false,
    }
}

/// The steps of a field path: keys, and list indexes.
fn steps(path: &str) -> Vec<Result<&str, usize>> {
    let mut steps: Vec<Result<&str, usize>> = Vec::new();
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        let mut parts = seg.split('[');
        if let Some(key) = parts.next().filter(|k| !k.is_empty()) {
            steps.push(Ok(key));
        }
        for idx in parts {
            match idx.trim_end_matches(']').parse() {
                Ok(i) => steps.push(Err(i)),
                Err(_) => return Vec::new(),
            }
        }
    }
    steps
}

fn deserialize<T: DeserializeOwned>(value: &Value) -> Result<T, Vec<FieldError>> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        vec![FieldError {
            path,
            message: e.into_inner().to_string(),
        }]
    })
}

fn parse_secret(value: &Value) -> Result<Object, Vec<FieldError>> {
    let secret: Secret = deserialize(value)?;
    if secret.metadata.name.is_none() {
        return Err(vec![Path::root()
            .field("metadata")
            .field("name")
            .error("required field is missing")]);
    }
    Ok(Object::Secret(Box::new(secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        parse_documents(FsPath::new("t.yaml"), text)
            .iter()
            .flat_map(Document::error_lines)
            .collect()
    }

    const STACK: &str = "apiVersion: berth.dev/v1alpha1\nkind: AppStack\nmetadata: {name: shop}\nspec:\n  api: {image: ghcr.io/acme/shop:1.0}\n";

    #[test]
    fn a_minimal_stack_is_valid() {
        assert_eq!(errors(STACK), Vec::<String>::new());
    }

    #[test]
    fn typo_is_an_unknown_field_with_a_suggestion() {
        let text = STACK.replace("{image:", "{replcas: 2, image:");
        assert_eq!(
            errors(&text),
            vec!["t.yaml: document 1 (AppStack/shop): spec.api.replcas: unknown field (did you mean replicas?)"]
        );
    }

    #[test]
    fn documents_are_numbered() {
        let text = format!("{STACK}---\n{}", STACK.replace("shop:1.0", "Shop:1.0"));
        let errs = errors(&text);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with(
                "t.yaml: document 2 (AppStack/shop): spec.api.image: must be an image reference"
            ),
            "{errs:?}"
        );
    }

    #[test]
    fn scaling_bounds_name_the_path() {
        let text = "apiVersion: berth.dev/v1alpha1\nkind: AppStack\nmetadata: {name: shop}\nspec:\n  api: {image: shop:1}\n  redis: {}\n  workers:\n  - {name: a, image: w:1, queue: {type: list, name: q}}\n  - {name: b, image: w:1, queue: {type: list, name: q}, scaling: {minReplicas: 5, maxReplicas: 2}}\n";
        assert_eq!(
            errors(text),
            vec!["t.yaml: document 1 (AppStack/shop): spec.workers[1].scaling.maxReplicas: must be >= minReplicas (2 < 5)"]
        );
    }

    #[test]
    fn quantities_may_be_numbers_like_in_kubernetes() {
        let text = STACK.replace("{image:", "{resources: {cpu: 2, memory: 512Mi}, image:");
        assert_eq!(errors(&text), Vec::<String>::new());
        let docs = parse_documents(FsPath::new("t.yaml"), &text);
        let Ok(Object::AppStack(stack)) = &docs[0].result else {
            panic!("valid")
        };
        let r = stack.spec.api.resources.as_ref().unwrap();
        assert_eq!(r.cpu.as_deref(), Some("2"));
        let bad = STACK.replace("{image:", "{resources: {cpu: true}, image:");
        assert_eq!(
            errors(&bad),
            vec!["t.yaml: document 1 (AppStack/shop): spec.api.resources.cpu: must be an integer or a string (got boolean true)"]
        );
    }

    #[test]
    fn secrets_are_accepted_for_the_host() {
        let text =
            "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData: {url: postgres://x}\n";
        let docs = parse_documents(FsPath::new("s.yaml"), text);
        assert!(matches!(docs[0].result, Ok(Object::Secret(_))));
    }
}
