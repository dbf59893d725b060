//! `Certificate`: a TLS certificate in a Secret, issued and renewed by berth.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Let's Encrypt's production directory, the default ACME server.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// The desired certificate.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "Certificate",
    plural = "certificates",
    namespaced,
    status = "CertificateStatus",
    shortname = "bcert",
    category = "berth",
    printcolumn(name = "Secret", type_ = "string", json_path = ".spec.secretName"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Expires", type_ = "date", json_path = ".status.notAfter"),
    printcolumn(name = "Renewal", type_ = "date", json_path = ".status.renewalTime"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSpec {
    /// The `kubernetes.io/tls` Secret written (`tls.crt`, `tls.key`, and `ca.crt` when known).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub secret_name: String,
    /// DNS names the certificate is valid for; the first is the subject's common name.
    #[schemars(
        length(min = 1, max = 100),
        inner(regex(pattern = crate::api::patterns::DNS_NAME_OR_WILDCARD)),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub dns_names: Vec<String>,
    /// Who signs it.
    pub issuer: CertIssuer,
    /// Lifetime for `selfSigned` and `ca` (ACME servers choose their own), a duration.
    #[serde(default = "default_duration")]
    #[schemars(regex(pattern = crate::api::patterns::DURATION))]
    pub duration: String,
    /// How long before expiry to renew, a duration; default one third of the lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::api::patterns::DURATION))]
    pub renew_before: Option<String>,
    /// When the renewal job checks the certificate, a 5-field cron schedule (UTC).
    #[serde(default = "default_renewal_schedule")]
    #[schemars(regex(pattern = crate::api::patterns::CRON))]
    pub renewal_schedule: String,
    /// The private key: its algorithm and whether a renewal makes a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PrivateKeySpec>,
}

/// How the certificate's private key is made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrivateKeySpec {
    /// `ECDSA` (P-256, the default) or `RSA` (2048 bits).
    #[serde(default)]
    pub algorithm: KeyAlgorithm,
    /// `Always` (default): every renewal makes a new key; `Never`: the key in the Secret is kept.
    #[serde(default)]
    pub rotation_policy: RotationPolicy,
}

/// The private key algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum KeyAlgorithm {
    /// ECDSA on the P-256 curve.
    #[default]
    #[serde(rename = "ECDSA")]
    Ecdsa,
    /// RSA, 2048 bits.
    #[serde(rename = "RSA")]
    Rsa,
}

/// Whether a renewal makes a new private key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RotationPolicy {
    /// A new key on every issuance.
    #[default]
    Always,
    /// Reuse the key already stored.
    Never,
}

fn default_duration() -> String {
    "2160h".into()
}
fn default_renewal_schedule() -> String {
    "17 3 * * *".into()
}

/// Exactly one of `acme`, `selfSigned` or `ca`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.acme), has(self.selfSigned), has(self.ca)].filter(x, x).size() == 1").message("exactly one of acme, selfSigned or ca must be set"))]
pub struct CertIssuer {
    /// An ACME CA such as Let's Encrypt, with the HTTP-01 challenge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeIssuer>,
    /// A certificate signed by its own key (for tests and internal names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_signed: Option<SelfSignedIssuer>,
    /// Signed by a CA whose `tls.crt`/`tls.key` are in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaIssuer>,
}

/// ACME issuance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcmeIssuer {
    /// ACME directory URL.
    #[serde(default = "default_acme_server")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub server: String,
    /// Contact address registered with the ACME account (expiry notices).
    #[schemars(length(min = 3, max = 254), regex(pattern = r"^[^@\s]+@[^@\s]+$"))]
    pub email: String,
    /// Solve HTTP-01 challenges through the stack's ingress or proxy (the only solver today).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http01: Option<Http01Solver>,
}

fn default_acme_server() -> String {
    LETS_ENCRYPT.into()
}

/// The HTTP-01 solver.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Http01Solver {
    /// Ingress class of the temporary challenge Ingress; default: the operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class_name: Option<String>,
}

/// A self-signed certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SelfSignedIssuer {}

/// A certificate signed by an internal CA.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaIssuer {
    /// The Secret holding the CA's `tls.crt` and `tls.key`.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// The observed state of a Certificate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// Start of validity of the certificate in the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Time>,
    /// End of validity of the certificate in the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// When berth renews it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,
    /// Serial number, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// Issuance attempts failed in a row since the last success.
    #[serde(default)]
    pub failed_attempts: i32,
    /// When the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Time>,
    /// The value of the `berth.dev/renew-now` annotation last acted on (a new value means one
    /// attempt now, whatever the backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_renew_now: Option<String>,
    /// Ready and Issuing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
