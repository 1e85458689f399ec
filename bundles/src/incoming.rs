//! A bundle read once, in order, from a stream: an upload verified while it
//! arrives. The same rules as [`crate::Bundle`], in the same order: the
//! header and the signatures first (nothing else is looked at before a
//! trusted signature verified the manifest), then the manifest and the
//! policy, then every byte of the payload against the signed hashes, and
//! nothing may follow it. Nothing is written anywhere.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::bundle::{SignatureInfo, check_policy, verify_signatures};
use crate::extract::{NullSink, Pipeline};
use crate::format::{Head, ZSTD_MAGIC, read_head_from};
use crate::keys::KeyId;
use crate::limits::Limits;
use crate::manifest::Manifest;
use crate::trust::TrustStore;
use crate::{BundleError, ExtractOptions, Summary};

/// A bundle whose head (header, signed manifest, signatures) was read from a
/// stream and verified; [`Incoming::finish`] reads and verifies the rest.
#[derive(Debug)]
pub struct Incoming<R> {
    path: PathBuf,
    reader: R,
    head: Head,
    manifest: Manifest,
    signatures: Vec<SignatureInfo>,
    limits: Limits,
    /// The payload's first bytes, read to see where the payload starts.
    peeked: Vec<u8>,
}

impl<R: Read> Incoming<R> {
    /// Reads the head from `reader` and verifies the signatures against
    /// `trust`, then parses and validates the manifest. `name` stands for the
    /// bundle in messages (an upload's name).
    pub fn begin(
        mut reader: R,
        name: &Path,
        trust: &TrustStore,
        limits: &Limits,
    ) -> Result<Incoming<R>, BundleError> {
        if trust.is_empty() {
            return Err(BundleError::NoTrustedKeys {
                path: name.to_path_buf(),
            });
        }
        let head = read_head_from(&mut reader, name, limits)?;
        let mut peeked = Vec::with_capacity(ZSTD_MAGIC.len());
        (&mut reader)
            .take(ZSTD_MAGIC.len() as u64)
            .read_to_end(&mut peeked)
            .map_err(|source| BundleError::Read {
                path: name.to_path_buf(),
                source,
            })?;
        let corrupt = || {
            let reason = head.manifest_shape_problem().or_else(|| {
                (peeked != ZSTD_MAGIC).then_some(
                    "the payload does not start where the manifest length and signature count place it",
                )
            });
            match reason {
                Some(reason) => Err(BundleError::CorruptHeader {
                    path: name.to_path_buf(),
                    reason,
                }),
                None => Ok(()),
            }
        };
        let signatures = verify_signatures(&head, name, trust, corrupt)?;
        let manifest = Manifest::parse(&head.manifest_bytes, name, limits)?;
        Ok(Incoming {
            path: name.to_path_buf(),
            reader,
            head,
            manifest,
            signatures,
            limits: limits.clone(),
            peeked,
        })
    }

    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The exact signed bytes of the manifest.
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.head.manifest_bytes
    }

    /// Ids of the trusted keys whose signatures verified.
    pub fn trusted_signers(&self) -> Vec<KeyId> {
        self.signatures
            .iter()
            .filter(|s| s.trusted)
            .map(|s| s.key_id)
            .collect()
    }

    /// The length the whole bundle has: head and payload.
    pub fn total_size(&self) -> u64 {
        self.head
            .payload_offset
            .saturating_add(self.manifest.payload.size)
    }

    /// The operator's policy (downgrade, expiry, platform), as for a file.
    pub fn check_policy(&self, options: &ExtractOptions<'_>) -> Result<(), BundleError> {
        check_policy(&self.manifest, &self.path, options)
    }

    /// Reads the payload to its end, verifying every entry and the payload's
    /// hash, and checks that the stream ends with it.
    pub fn finish(mut self, mut options: ExtractOptions<'_>) -> Result<Summary, BundleError> {
        self.check_policy(&options)?;
        let pipeline = Pipeline {
            path: self.path.clone(),
            manifest: &self.manifest,
            limits: &self.limits,
        };
        let size = self.manifest.payload.size;
        let mut stream = io::Cursor::new(std::mem::take(&mut self.peeked)).chain(&mut self.reader);
        let (summary, _) = pipeline.run(
            (&mut stream).take(size),
            NullSink,
            options.progress.take(),
            options.interrupt,
        )?;
        let mut extra = [0u8; 1];
        let more = loop {
            match stream.read(&mut extra) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(BundleError::Read {
                        path: self.path.clone(),
                        source,
                    });
                }
            }
        };
        if more > 0 {
            return Err(BundleError::TrailingBytes {
                path: self.path.clone(),
                extra: more as u64,
            });
        }
        Ok(summary)
    }
}
