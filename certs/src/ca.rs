//! The certificate authority: creation, persistence, leaf issuance and CSR signing.

use std::fmt;
use std::fs;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::files::{check_private_file, write_private_file, write_public_file};
use crate::{CertError, fingerprint_sha256};

/// File names inside a PKI directory.
pub(crate) const CA_CERT: &str = "ca.crt";
pub(crate) const CA_KEY: &str = "ca.key";

/// Clock skew tolerated between the appliance and its peers.
const BACKDATE: Duration = Duration::minutes(5);

/// How a CA is created.
#[derive(Debug, Clone)]
pub struct CaOptions {
    pub common_name: String,
    pub organization: String,
    pub validity: Duration,
}

impl Default for CaOptions {
    fn default() -> Self {
        CaOptions {
            common_name: "Hangar appliance CA".into(),
            organization: "Hangar".into(),
            validity: Duration::days(3650),
        }
    }
}

/// What a leaf certificate may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    ServerAndClient,
}

impl Usage {
    fn ekus(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        }
    }
}

/// A leaf certificate the CA issues together with a fresh key (appliance services).
#[derive(Debug, Clone)]
pub struct LeafRequest {
    pub common_name: String,
    /// DNS names and IP addresses; strings that parse as IPs become IP SANs.
    pub names: Vec<String>,
    pub organization: Option<String>,
    pub usage: Usage,
    pub validity: Duration,
}

impl LeafRequest {
    /// A server certificate for `names`, valid for a year.
    pub fn server(common_name: &str, names: &[&str]) -> Self {
        LeafRequest {
            common_name: common_name.into(),
            names: names.iter().map(|s| s.to_string()).collect(),
            organization: None,
            usage: Usage::Server,
            validity: Duration::days(365),
        }
    }
}

/// What the CA puts into a certificate signed from a CSR. Everything here is the
/// CA's choice; the CSR contributes its public key and nothing else.
#[derive(Debug, Clone)]
pub struct CsrPolicy {
    pub common_name: String,
    /// Becomes the Subject O. The MQTT broker scopes a client's topics by it.
    pub organization: Option<String>,
    pub names: Vec<String>,
    pub usage: Usage,
    pub validity: Duration,
}

/// A certificate the CA issued. The key is present when the CA generated it.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: Option<String>,
    pub serial_hex: String,
    pub not_after: OffsetDateTime,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("serial_hex", &self.serial_hex)
            .field("not_after", &self.not_after)
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// The appliance CA: its certificate and its signing key.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a new CA with an ECDSA P-256 key.
    pub fn generate(opts: &CaOptions) -> Result<Ca, CertError> {
        let key = KeyPair::generate().map_err(CertError::generate("CA key"))?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(CertError::generate("CA"))?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, opts.common_name.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationName, opts.organization.as_str());
        // Path length 0: the CA signs leaves only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + opts.validity;
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(CertError::generate("CA certificate"))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads the CA from `dir/ca.crt` and `dir/ca.key`, refusing a key file that
    /// group or others can read, a certificate that is not a CA, and a key that
    /// does not belong to the certificate.
    pub fn load(dir: &Path) -> Result<Ca, CertError> {
        Self::load_files(&dir.join(CA_CERT), &dir.join(CA_KEY))
    }

    /// [`Ca::load`] for a certificate and key kept under other names (the
    /// server's configuration names both files).
    pub fn load_files(cert_path: &Path, key_path: &Path) -> Result<Ca, CertError> {
        let (cert_path, key_path) = (cert_path.to_path_buf(), key_path.to_path_buf());
        check_private_file(&key_path)?;
        let cert_pem = fs::read_to_string(&cert_path).map_err(CertError::read(&cert_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(CertError::read(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|_| CertError::BadPem {
            path: key_path.clone(),
            what: "private key",
        })?;
        let der = pem_to_der(&cert_pem).ok_or_else(|| CertError::BadPem {
            path: cert_path.clone(),
            what: "certificate",
        })?;
        let bad = |reason: &str| CertError::BadCa {
            path: cert_path.clone(),
            reason: reason.into(),
        };
        let (_, x509) =
            X509Certificate::from_der(&der).map_err(|_| bad("not an X.509 certificate"))?;
        let is_ca = x509
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(bad("certificate is not a CA (basicConstraints CA:FALSE)"));
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(bad("the CA key does not match the CA certificate"));
        }
        let issuer = Issuer::from_ca_cert_der(&der.into(), key)
            .map_err(|_| bad("cannot use certificate as issuer"))?;
        Ok(Ca { cert_pem, issuer })
    }

    /// Writes `dir/ca.key` (0600) and `dir/ca.crt` (0644), creating `dir` if needed.
    pub fn save(&self, dir: &Path) -> Result<(), CertError> {
        fs::create_dir_all(dir).map_err(CertError::write(dir))?;
        write_private_file(
            &dir.join(CA_KEY),
            self.issuer.key().serialize_pem().as_bytes(),
        )?;
        write_public_file(&dir.join(CA_CERT), self.cert_pem.as_bytes())
    }

    /// The CA certificate in PEM, as clients must trust it.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 fingerprint of the CA certificate, `AB:CD:...`, as operators compare it.
    pub fn fingerprint(&self) -> String {
        fingerprint_sha256(&self.cert_pem).unwrap_or_default()
    }

    /// Issues a leaf certificate with a freshly generated ECDSA P-256 key.
    pub fn issue(&self, req: &LeafRequest) -> Result<Issued, CertError> {
        let key = KeyPair::generate().map_err(CertError::generate("leaf key"))?;
        let params = leaf_params(
            &req.common_name,
            req.organization.as_deref(),
            &req.names,
            req.usage,
            req.validity,
        )?;
        let not_after = params.not_after;
        let serial_hex = serial_hex(&params);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(CertError::generate("leaf certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: Some(key.serialize_pem()),
            serial_hex,
            not_after,
        })
    }

    /// Signs a CSR under `policy`. The CSR's signature must verify; of its contents
    /// only the public key is used. Whatever else it asks for (CA status, key usages,
    /// names, validity, serial, subject) is replaced by the CA's own choice.
    pub fn sign_csr(&self, csr_pem: &str, policy: &CsrPolicy) -> Result<Issued, CertError> {
        if csr_pem.len() > 64 * 1024 {
            return Err(CertError::CsrRefused {
                reason: format!("request is {} bytes, more than 64 KiB", csr_pem.len()),
            });
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            CertError::CsrRefused {
                reason: match e {
                    rcgen::Error::InvalidCertificationRequestSignature => {
                        "its signature does not verify".into()
                    }
                    rcgen::Error::UnsupportedExtension => {
                        "it carries an extension the CA does not accept".into()
                    }
                    other => format!("it cannot be parsed ({other})"),
                },
            }
        })?;
        let params = leaf_params(
            &policy.common_name,
            policy.organization.as_deref(),
            &policy.names,
            policy.usage,
            policy.validity,
        )?;
        let not_after = params.not_after;
        let serial_hex = serial_hex(&params);
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        let cert = signed
            .signed_by(&self.issuer)
            .map_err(CertError::generate("certificate from CSR"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: None,
            serial_hex,
            not_after,
        })
    }
}

fn leaf_params(
    common_name: &str,
    organization: Option<&str>,
    names: &[String],
    usage: Usage,
    validity: Duration,
) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(names.to_vec()).map_err(|_| CertError::BadName {
        name: names.join(","),
    })?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    if let Some(o) = organization {
        params.distinguished_name.push(DnType::OrganizationName, o);
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usage.ekus();
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    params.serial_number = Some(random_serial());
    Ok(params)
}

/// 16 random bytes, positive, never starting with a zero byte (so it keeps its length).
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source is available");
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn serial_hex(params: &CertificateParams) -> String {
    params
        .serial_number
        .as_ref()
        .map(|s| hex::encode(s.to_bytes()))
        .unwrap_or_default()
}

pub(crate) fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}
