//! Keys and certificates made by berth itself (`selfSigned`, `ca`), and CSRs for ACME.

use chrono::{DateTime, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};

use super::{inspect, CertError};
use crate::api::certificate::{KeyAlgorithm, RotationPolicy};
use crate::api::units::parse_duration;
use crate::api::CertificateSpec;

/// How the private key is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyChoice {
    pub algorithm: KeyAlgorithm,
    pub rotation: RotationPolicy,
}

impl KeyChoice {
    pub fn of(spec: &CertificateSpec) -> KeyChoice {
        let p = spec.private_key.clone().unwrap_or_default();
        KeyChoice {
            algorithm: p.algorithm,
            rotation: p.rotation_policy,
        }
    }

    /// The key for the next certificate: the stored one when rotation is `Never` and it is of
    /// the right algorithm, a new one otherwise.
    pub fn key(&self, stored: Option<&str>) -> Result<KeyPair, CertError> {
        if self.rotation == RotationPolicy::Never {
            if let Some(k) = stored.and_then(|pem| KeyPair::from_pem(pem).ok()) {
                if algorithm_of(&k) == self.algorithm {
                    return Ok(k);
                }
            }
        }
        new_key(self.algorithm)
    }
}

fn algorithm_of(k: &KeyPair) -> KeyAlgorithm {
    if k.algorithm() == &rcgen::PKCS_ECDSA_P256_SHA256 {
        KeyAlgorithm::Ecdsa
    } else {
        KeyAlgorithm::Rsa
    }
}

/// A new private key: ECDSA P-256, or RSA 2048.
pub fn new_key(algorithm: KeyAlgorithm) -> Result<KeyPair, CertError> {
    let (name, r) = match algorithm {
        KeyAlgorithm::Ecdsa => (
            "ECDSA P-256",
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        ),
        KeyAlgorithm::Rsa => (
            "RSA 2048",
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048),
        ),
    };
    r.map_err(|e| CertError::KeyGeneration {
        algorithm: name.into(),
        detail: e.to_string(),
    })
}

/// A certificate with its key, as stored: `cert_pem` is the chain served (leaf first),
/// `ca_pem` the CA that signed it when berth knows it.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .field("ca_pem", &self.ca_pem)
            .finish()
    }
}

/// The spec's lifetime.
pub fn lifetime(spec: &CertificateSpec) -> Result<chrono::Duration, CertError> {
    let d =
        parse_duration(&spec.duration).map_err(|e| CertError::Spec(format!("duration: {e}")))?;
    chrono::Duration::from_std(d).map_err(|e| CertError::Spec(format!("duration: {e}")))
}

fn to_offset(t: DateTime<Utc>) -> Result<time::OffsetDateTime, CertError> {
    time::OffsetDateTime::from_unix_timestamp(t.timestamp())
        .map_err(|e| CertError::Spec(format!("time out of range: {e}")))
}

/// Leaf parameters: the names, the lifetime from `now`, a random serial, server auth.
fn leaf_params(spec: &CertificateSpec, now: DateTime<Utc>) -> Result<CertificateParams, CertError> {
    if spec.dns_names.is_empty() {
        return Err(CertError::Spec("dnsNames is empty".into()));
    }
    let mut p = CertificateParams::new(spec.dns_names.clone())
        .map_err(|e| CertError::Spec(format!("dnsNames: {e}")))?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, spec.dns_names[0].clone());
    p.not_before = to_offset(now)?;
    p.not_after = to_offset(now + lifetime(spec)?)?;
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f; // positive
    serial[0] |= 0x01; // no leading zero byte, so the hex form keeps its length
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// A certificate signed by its own key. Its `ca.crt` is itself (that is what a client trusts).
pub fn self_signed(
    spec: &CertificateSpec,
    key: &KeyPair,
    now: DateTime<Utc>,
) -> Result<Issued, CertError> {
    let mut params = leaf_params(spec, now)?;
    params.use_authority_key_identifier_extension = false;
    let cert = params
        .self_signed(key)
        .map_err(|e| CertError::Sign(e.to_string()))?;
    let pem = cert.pem();
    Ok(Issued {
        cert_pem: pem.clone(),
        key_pem: key.serialize_pem(),
        ca_pem: Some(pem),
    })
}

/// A certificate signed by the CA pair `ca_cert_pem`/`ca_key_pem` (from `source_name`, named in
/// errors). The CA must be a CA certificate whose public key is the given key's.
pub fn ca_signed(
    spec: &CertificateSpec,
    key: &KeyPair,
    ca_cert_pem: &str,
    ca_key_pem: &str,
    source_name: &str,
    now: DateTime<Utc>,
) -> Result<Issued, CertError> {
    let bad = |detail: String| CertError::BadCa {
        source_name: source_name.into(),
        detail,
    };
    let ca_info = inspect::inspect(ca_cert_pem).map_err(|e| bad(format!("tls.crt: {e}")))?;
    let ca_key = KeyPair::from_pem(ca_key_pem)
        .map_err(|e| bad(format!("tls.key is not a PEM private key ({e})")))?;
    let ca_public = inspect::public_key_of(ca_cert_pem).map_err(|e| bad(e.to_string()))?;
    if ca_public != ca_key.public_key_raw() {
        return Err(bad(
            "tls.key is not the private key of tls.crt (wrong key for this CA)".into(),
        ));
    }
    if now >= ca_info.not_after {
        return Err(bad(format!(
            "the CA certificate expired at {}",
            ca_info.not_after
        )));
    }
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, &ca_key)
        .map_err(|e| bad(format!("tls.crt is not a usable CA certificate ({e})")))?;
    let mut params = leaf_params(spec, now)?;
    // Never outlive the CA: a client would reject the chain from then on.
    let ca_end = to_offset(ca_info.not_after)?;
    if params.not_after > ca_end {
        params.not_after = ca_end;
    }
    let cert = params
        .signed_by(key, &issuer)
        .map_err(|e| CertError::Sign(e.to_string()))?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_pem: Some(ca_cert_pem.trim_end().to_string() + "\n"),
    })
}

/// A CA certificate and key (for `ca.secretName` in tests and for users who want one).
pub fn new_ca(common_name: &str, lifetime: chrono::Duration) -> Result<Issued, CertError> {
    let key = new_key(KeyAlgorithm::Ecdsa)?;
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = Utc::now();
    p.not_before = to_offset(now - chrono::Duration::minutes(5))?;
    p.not_after = to_offset(now + lifetime)?;
    let cert = p
        .self_signed(&key)
        .map_err(|e| CertError::Sign(e.to_string()))?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_pem: None,
    })
}

/// A DER CSR for ACME with the spec's names.
pub fn csr_der(dns_names: &[String], key: &KeyPair) -> Result<Vec<u8>, CertError> {
    let mut p = CertificateParams::new(dns_names.to_vec())
        .map_err(|e| CertError::Spec(format!("dnsNames: {e}")))?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    let csr = p
        .serialize_request(key)
        .map_err(|e| CertError::Sign(e.to_string()))?;
    Ok(csr.der().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(issuer: serde_json::Value) -> CertificateSpec {
        serde_json::from_value(serde_json::json!({
            "secretName": "s", "dnsNames": ["a.example", "b.example"], "issuer": issuer, "duration": "48h"
        }))
        .unwrap()
    }

    #[test]
    fn self_signed_has_names_lifetime_and_its_key() {
        let s = spec(serde_json::json!({"selfSigned": {}}));
        let key = new_key(KeyAlgorithm::Ecdsa).unwrap();
        let now = Utc::now();
        let out = self_signed(&s, &key, now).unwrap();
        let info = inspect::inspect_pair(&out.cert_pem, &out.key_pem).unwrap();
        assert_eq!(info.dns_names, vec!["a.example", "b.example"]);
        assert_eq!(
            info.not_after - info.not_before,
            chrono::Duration::hours(48)
        );
        assert_eq!(info.serial_number.len(), 32);
    }

    #[test]
    fn ca_with_a_wrong_key_is_a_clear_error() {
        let ca = new_ca("test CA", chrono::Duration::days(10)).unwrap();
        let other = new_key(KeyAlgorithm::Ecdsa).unwrap().serialize_pem();
        let s = spec(serde_json::json!({"ca": {"secretName": "ca"}}));
        let key = new_key(KeyAlgorithm::Ecdsa).unwrap();
        let e = ca_signed(&s, &key, &ca.cert_pem, &other, "Secret ns/ca", Utc::now()).unwrap_err();
        assert_eq!(e.reason(), "InvalidCA");
        assert!(e.to_string().contains("wrong key"), "{e}");
        assert!(e.to_string().contains("Secret ns/ca"), "{e}");
    }

    #[test]
    fn ca_signed_is_capped_at_the_ca_expiry() {
        let ca = new_ca("test CA", chrono::Duration::hours(24)).unwrap();
        let s = spec(serde_json::json!({"ca": {"secretName": "ca"}}));
        let key = new_key(KeyAlgorithm::Ecdsa).unwrap();
        let out = ca_signed(&s, &key, &ca.cert_pem, &ca.key_pem, "ca", Utc::now()).unwrap();
        let leaf = inspect::inspect(&out.cert_pem).unwrap();
        let root = inspect::inspect(&ca.cert_pem).unwrap();
        assert!(leaf.not_after <= root.not_after);
        assert_eq!(leaf.issuer, root.subject);
    }

    #[test]
    fn rotation_never_keeps_the_key_and_always_replaces_it() {
        let stored = new_key(KeyAlgorithm::Ecdsa).unwrap().serialize_pem();
        let never = KeyChoice {
            algorithm: KeyAlgorithm::Ecdsa,
            rotation: RotationPolicy::Never,
        };
        assert_eq!(never.key(Some(&stored)).unwrap().serialize_pem(), stored);
        let always = KeyChoice::default();
        assert_ne!(always.key(Some(&stored)).unwrap().serialize_pem(), stored);
    }

    #[test]
    fn rsa_on_request() {
        let k = new_key(KeyAlgorithm::Rsa).unwrap();
        assert_eq!(k.algorithm(), &rcgen::PKCS_RSA_SHA256);
    }
}
