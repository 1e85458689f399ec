//! Opening a bundle: its signatures are checked against the trust store and only
//! then is its manifest parsed and validated. Nothing of the payload is read.

use std::fs::File;
use std::path::{Path, PathBuf};

use chrono::Utc;

use crate::format::{Head, SignatureRecord, read_head};
use crate::keys::KeyId;
use crate::limits::Limits;
use crate::manifest::Manifest;
use crate::trust::TrustStore;
use crate::{BundleError, ExtractOptions};

/// One signature of a bundle, as found when it was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureInfo {
    pub key_id: KeyId,
    /// The key is trusted and the signature verified. Signatures by keys the
    /// host does not know are ignored (a bundle may be signed for several sites).
    pub trusted: bool,
}

/// A bundle whose manifest is signed by a trusted key. Its payload is only read by
/// [`Bundle::verify`] and [`Bundle::extract`], which check it against the manifest.
#[derive(Debug)]
pub struct Bundle {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    pub(crate) manifest: Manifest,
    pub(crate) manifest_bytes: Vec<u8>,
    pub(crate) signatures: Vec<SignatureInfo>,
    pub(crate) records: Vec<SignatureRecord>,
    pub(crate) payload_offset: u64,
    pub(crate) limits: Limits,
}

impl Bundle {
    /// Opens the bundle at `path` and verifies its manifest signature against `trust`,
    /// with the default [`Limits`].
    pub fn open(path: &Path, trust: &TrustStore) -> Result<Bundle, BundleError> {
        Bundle::open_with_limits(path, trust, &Limits::default())
    }

    /// Like [`Bundle::open`] with explicit limits.
    ///
    /// Every signature by a trusted key must verify, and at least one must exist;
    /// signatures by unknown keys are ignored. The manifest is parsed only after that.
    pub fn open_with_limits(
        path: &Path,
        trust: &TrustStore,
        limits: &Limits,
    ) -> Result<Bundle, BundleError> {
        if trust.is_empty() {
            return Err(BundleError::NoTrustedKeys {
                path: path.to_path_buf(),
            });
        }
        let (file, head) = open_head(path, limits)?;
        let corrupt = |head: &Head| -> Result<(), BundleError> {
            match head.layout_problem(&file, path)? {
                Some(reason) => Err(BundleError::CorruptHeader {
                    path: path.to_path_buf(),
                    reason,
                }),
                None => Ok(()),
            }
        };
        let signatures = verify_signatures(&head, path, trust, || corrupt(&head))?;
        Bundle::finish_open(path, file, head, signatures, limits)
    }

    /// Opens a bundle without looking at its signatures: only for re-signing, where
    /// the payload is then verified against the manifest before anything is signed.
    pub(crate) fn open_unverified(path: &Path, limits: &Limits) -> Result<Bundle, BundleError> {
        let (file, head) = open_head(path, limits)?;
        let signatures = head
            .signatures
            .iter()
            .map(|r| SignatureInfo {
                key_id: r.key_id,
                trusted: false,
            })
            .collect();
        Bundle::finish_open(path, file, head, signatures, limits)
    }

    fn finish_open(
        path: &Path,
        file: File,
        head: Head,
        signatures: Vec<SignatureInfo>,
        limits: &Limits,
    ) -> Result<Bundle, BundleError> {
        let manifest = Manifest::parse(&head.manifest_bytes, path, limits)?;
        let file_len = file
            .metadata()
            .map_err(|source| BundleError::Read {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        let expected = head.payload_offset.saturating_add(manifest.payload.size);
        if file_len != expected
            && let Some(reason) = head.layout_problem(&file, path)?
        {
            // A wrong signature count moves the payload: not a truncated file.
            return Err(BundleError::CorruptHeader {
                path: path.to_path_buf(),
                reason,
            });
        }
        if file_len < expected {
            return Err(BundleError::Truncated {
                path: path.to_path_buf(),
            });
        }
        if file_len > expected {
            return Err(BundleError::TrailingBytes {
                path: path.to_path_buf(),
                extra: file_len - expected,
            });
        }
        Ok(Bundle {
            path: path.to_path_buf(),
            file,
            manifest,
            manifest_bytes: head.manifest_bytes,
            signatures,
            records: head.signatures,
            payload_offset: head.payload_offset,
            limits: limits.clone(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The exact signed bytes of the manifest.
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    pub fn signatures(&self) -> &[SignatureInfo] {
        &self.signatures
    }

    /// Ids of the trusted keys whose signatures verified.
    pub fn trusted_signers(&self) -> Vec<KeyId> {
        self.signatures
            .iter()
            .filter(|s| s.trusted)
            .map(|s| s.key_id)
            .collect()
    }

    /// Checks the operator's policy: no downgrade unless allowed, no expired bundle
    /// unless the unsafe override is set, and the expected platform if one is given.
    pub fn check_policy(&self, options: &ExtractOptions<'_>) -> Result<(), BundleError> {
        check_policy(&self.manifest, &self.path, options)
    }
}

/// Every signature by a trusted key must verify, and at least one must exist;
/// signatures by unknown keys are ignored. `corrupt` explains a head whose
/// signatures make no sense by its layout, when it can.
pub(crate) fn verify_signatures(
    head: &Head,
    path: &Path,
    trust: &TrustStore,
    corrupt: impl Fn() -> Result<(), BundleError>,
) -> Result<Vec<SignatureInfo>, BundleError> {
    if head.signatures.is_empty() {
        corrupt()?;
        return Err(BundleError::Unsigned {
            path: path.to_path_buf(),
        });
    }
    let mut signatures = Vec::with_capacity(head.signatures.len());
    for record in &head.signatures {
        let trusted = match trust.get(&record.key_id) {
            Some(key) if key.key.verifies(&head.manifest_bytes, &record.signature) => true,
            Some(_) => {
                return Err(BundleError::BadSignature {
                    path: path.to_path_buf(),
                    key_id: record.key_id.to_string(),
                });
            }
            None => false,
        };
        signatures.push(SignatureInfo {
            key_id: record.key_id,
            trusted,
        });
    }
    if !signatures.iter().any(|s| s.trusted) {
        corrupt()?;
        let key_ids: Vec<String> = signatures.iter().map(|s| s.key_id.to_string()).collect();
        return Err(BundleError::UntrustedSigners {
            path: path.to_path_buf(),
            key_ids: key_ids.join(", "),
        });
    }
    Ok(signatures)
}

/// The operator's policy on a verified manifest (see [`Bundle::check_policy`]).
pub(crate) fn check_policy(
    m: &Manifest,
    path: &Path,
    options: &ExtractOptions<'_>,
) -> Result<(), BundleError> {
    if let Some(installed) = &options.installed_version
        && m.version.cmp_precedence(installed).is_lt()
        && !options.allow_downgrade
    {
        return Err(BundleError::Downgrade {
            path: path.to_path_buf(),
            version: m.version.to_string(),
            installed: installed.to_string(),
        });
    }
    if let Some(expires) = m.expires
        && expires <= Utc::now()
        && !options.danger_allow_expired
    {
        return Err(BundleError::Expired {
            path: path.to_path_buf(),
            expires: expires.to_rfc3339(),
        });
    }
    if let Some(expected) = &options.platform
        && m.platform != "any"
        && &m.platform != expected
    {
        return Err(BundleError::WrongPlatform {
            path: path.to_path_buf(),
            platform: m.platform.clone(),
            expected: expected.clone(),
        });
    }
    Ok(())
}

fn open_head(path: &Path, limits: &Limits) -> Result<(File, Head), BundleError> {
    let file = File::open(path).map_err(|source| BundleError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let head = read_head(&file, path, limits)?;
    Ok((file, head))
}

/// The platform of this host, as bundles name it (`linux-x86_64`).
pub fn host_platform() -> String {
    format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}
