//! What a stored PEM certificate says: validity, serial, names, and whether a key belongs to it.

use chrono::{DateTime, TimeZone, Utc};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::CertError;

/// The facts about the leaf certificate of a chain that the engine decides on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// Hex, lower case, without separators.
    pub serial_number: String,
    pub dns_names: Vec<String>,
    pub issuer: String,
    pub subject: String,
}

impl CertInfo {
    /// Whether every wanted name is among the certificate's DNS names.
    pub fn covers(&self, wanted: &[String]) -> bool {
        wanted
            .iter()
            .all(|w| self.dns_names.iter().any(|d| d.eq_ignore_ascii_case(w)))
    }
}

/// The DER blocks of every `CERTIFICATE` in a PEM text, in order.
pub fn pem_certificates(pem: &str) -> Result<Vec<Vec<u8>>, CertError> {
    let mut out = Vec::new();
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| CertError::Parse(format!("bad PEM: {e}")))?;
        if block.label == "CERTIFICATE" {
            out.push(block.contents);
        }
    }
    if out.is_empty() {
        return Err(CertError::Parse("no CERTIFICATE block in the PEM".into()));
    }
    Ok(out)
}

fn time(t: x509_parser::time::ASN1Time) -> Result<DateTime<Utc>, CertError> {
    Utc.timestamp_opt(t.timestamp(), 0)
        .single()
        .ok_or_else(|| CertError::Parse("validity time out of range".into()))
}

/// Reads the first (leaf) certificate of a PEM chain.
pub fn inspect(pem: &str) -> Result<CertInfo, CertError> {
    let ders = pem_certificates(pem)?;
    inspect_der(&ders[0])
}

/// Reads one DER certificate.
pub fn inspect_der(der: &[u8]) -> Result<CertInfo, CertError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| CertError::Parse(format!("bad certificate: {e}")))?;
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                dns_names.push(d.to_string());
            }
        }
    }
    Ok(CertInfo {
        not_before: time(cert.validity().not_before)?,
        not_after: time(cert.validity().not_after)?,
        serial_number: cert.tbs_certificate.raw_serial_as_string().replace(':', ""),
        dns_names,
        issuer: cert.issuer().to_string(),
        subject: cert.subject().to_string(),
    })
}

/// The raw public key of the first certificate of a PEM text.
pub fn public_key_of(pem: &str) -> Result<Vec<u8>, CertError> {
    let ders = pem_certificates(pem)?;
    let (_, cert) = X509Certificate::from_der(&ders[0])
        .map_err(|e| CertError::Parse(format!("bad certificate: {e}")))?;
    Ok(cert
        .tbs_certificate
        .subject_pki
        .subject_public_key
        .data
        .to_vec())
}

/// Whether `key_pem` is the private key of the first certificate in `cert_pem`.
pub fn key_matches(cert_pem: &str, key_pem: &str) -> Result<bool, CertError> {
    let key = rcgen::KeyPair::from_pem(key_pem)
        .map_err(|e| CertError::Parse(format!("bad private key: {e}")))?;
    Ok(public_key_of(cert_pem)? == key.public_key_raw())
}

/// Reads a stored pair: the leaf's facts, provided the key belongs to the certificate.
pub fn inspect_pair(cert_pem: &str, key_pem: &str) -> Result<CertInfo, CertError> {
    let info = inspect(cert_pem)?;
    if !key_matches(cert_pem, key_pem)? {
        return Err(CertError::Parse(
            "tls.key is not the private key of tls.crt".into(),
        ));
    }
    Ok(info)
}
