//! The certificate engine shared by both backends: what `berth cert renew|status` runs.
//!
//! - `timing`: pure decisions — when a certificate is due (renewBefore, default one third of the
//!   lifetime), the failure backoff (1h·2^(n−1), capped at 32h, like cert-manager), and the
//!   `berth.dev/renew-now` annotation that skips the wait for one attempt.
//! - `issue`: keys (ECDSA P-256 by default, RSA 2048 on request) and certificates signed by
//!   themselves (`selfSigned`) or by a CA key pair (`ca`), with rcgen.
//! - `inspect`: what a stored PEM certificate says (validity, serial, names, chain).
//! - `status`: the Certificate status (conditions Ready and Issuing) after each outcome.
//! - `files`: the state-dir store of the Docker host and of `berth cert renew --dir`.
//! - `acme`: ACME issuance with HTTP-01 (instant-acme), behind a challenge responder.
//!
//! The old certificate stays in place until a new one is stored: a failed attempt never
//! touches what is served.

pub mod acme;
pub mod files;
pub mod inspect;
pub mod issue;
pub mod kube;
pub mod round;
pub mod run;
pub mod status;
pub mod timing;

pub use inspect::CertInfo;
pub use issue::{Issued, KeyChoice};
pub use timing::{Decision, DueReason};

/// The annotation whose new value asks for one issuance attempt now, whatever the backoff.
pub const RENEW_NOW_ANNOTATION: &str = "berth.dev/renew-now";

/// Everything that can go wrong while issuing or reading a certificate. No message holds a
/// private key.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("invalid Certificate spec: {0}")]
    Spec(String),
    #[error("cannot generate a {algorithm} key: {detail}")]
    KeyGeneration { algorithm: String, detail: String },
    #[error("cannot sign the certificate: {0}")]
    Sign(String),
    #[error("the CA in {source_name} is unusable: {detail}; put a CA certificate (tls.crt) and its own private key (tls.key) there")]
    BadCa { source_name: String, detail: String },
    #[error("the stored certificate cannot be read: {0}")]
    Parse(String),
    #[error("the HTTP-01 self-check failed: {url} did not answer the challenge token ({detail}); make sure the domain resolves to this proxy/ingress and port 80 is reachable")]
    ChallengeUnreachable { url: String, detail: String },
    #[error("the ACME server at {server} failed: {detail}")]
    Acme { server: String, detail: String },
    #[error("the ACME server rejected the order: {0}")]
    AcmeRejected(String),
    #[error("the Kubernetes API failed {doing}: {detail}; check that the pod reaches the API server and the ServiceAccount of the renewal Job (berth makes `<certificate>-renew` with a Role for exactly this)")]
    Api { doing: String, detail: String },
    #[error("I/O error while {doing}: {source}")]
    Io {
        doing: String,
        source: std::io::Error,
    },
}

impl CertError {
    /// A CamelCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            CertError::Spec(_) => "InvalidSpec",
            CertError::KeyGeneration { .. } | CertError::Sign(_) => "SigningFailed",
            CertError::BadCa { .. } => "InvalidCA",
            CertError::Parse(_) => "InvalidCertificate",
            CertError::ChallengeUnreachable { .. } => "ChallengeUnreachable",
            CertError::Acme { .. } => "AcmeUnavailable",
            CertError::AcmeRejected(_) => "AcmeRejected",
            CertError::Api { .. } => "APIError",
            CertError::Io { .. } => "IOError",
        }
    }

    pub(crate) fn io(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> CertError {
        let doing = doing.into();
        move |source| CertError::Io { doing, source }
    }
}
