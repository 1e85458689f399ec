//! Reading what a certificate says: names, validity, usage, fingerprint.

use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::CertError;
use crate::ca::pem_to_der;

/// What the appliance needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub common_name: Option<String>,
    pub organization: Option<String>,
    /// DNS names and IP addresses, as text.
    pub names: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub serial_hex: String,
    pub is_ca: bool,
    pub server_auth: bool,
    pub client_auth: bool,
    /// The issuer's distinguished name, as text.
    pub issuer: String,
}

/// Parses a PEM certificate.
pub fn inspect_pem(cert_pem: &str) -> Result<CertInfo, CertError> {
    let der = pem_to_der(cert_pem).ok_or_else(|| CertError::BadCertificate {
        reason: "no PEM certificate found".into(),
    })?;
    let (_, x509) = X509Certificate::from_der(&der).map_err(|e| CertError::BadCertificate {
        reason: e.to_string(),
    })?;
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        it.next().and_then(|a| a.as_str().ok()).map(str::to_owned)
    };
    let subject = x509.subject();
    let mut names = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_string()),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => names.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*bytes).unwrap_or_default())
                            .to_string(),
                    ),
                    16 => names.push(
                        std::net::Ipv6Addr::from(
                            <[u8; 16]>::try_from(*bytes).unwrap_or_default(),
                        )
                        .to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let (server_auth, client_auth) = match x509.extended_key_usage() {
        Ok(Some(eku)) => (eku.value.server_auth, eku.value.client_auth),
        _ => (false, false),
    };
    Ok(CertInfo {
        common_name: first(&mut subject.iter_common_name()),
        organization: first(&mut subject.iter_organization()),
        names,
        not_before: x509.validity().not_before.to_datetime(),
        not_after: x509.validity().not_after.to_datetime(),
        serial_hex: hex::encode(x509.raw_serial()),
        is_ca: x509
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca),
        server_auth,
        client_auth,
        issuer: x509.issuer().to_string(),
    })
}

/// True when `cert_pem`'s signature verifies under the key of `issuer_cert_pem`.
pub(crate) fn verify_issued_by(cert_pem: &str, issuer_cert_pem: &str) -> bool {
    let (Some(der), Some(issuer_der)) = (pem_to_der(cert_pem), pem_to_der(issuer_cert_pem)) else {
        return false;
    };
    let (Ok((_, cert)), Ok((_, issuer))) = (
        X509Certificate::from_der(&der),
        X509Certificate::from_der(&issuer_der),
    ) else {
        return false;
    };
    cert.verify_signature(Some(issuer.public_key())).is_ok()
}

/// SHA-256 fingerprint of a PEM certificate's DER bytes, as `AB:CD:...`.
pub fn fingerprint_sha256(cert_pem: &str) -> Result<String, CertError> {
    let der = pem_to_der(cert_pem).ok_or_else(|| CertError::BadCertificate {
        reason: "no PEM certificate found".into(),
    })?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &der);
    Ok(digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// True when `now` is still before `not_after - renew_before`.
pub(crate) fn fresh_enough(info: &CertInfo, now: OffsetDateTime, renew_before: time::Duration) -> bool {
    info.not_after - renew_before > now
}
