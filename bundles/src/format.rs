//! The byte layout of a bundle file (see FORMAT.md):
//!
//! ```text
//! magic "HNGRBNDL" | u32 format | u32 manifest length | u32 signature count   (20 bytes, little endian)
//! manifest (JSON)
//! signature records: 8-byte key id + 64-byte Ed25519 signature of the manifest bytes
//! payload: one zstd frame holding a tar archive, exactly `manifest.payload.size` bytes
//! ```

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::BundleError;
use crate::keys::{KEY_ID_LEN, KeyId, SIGNATURE_LEN};
use crate::limits::{Limits, MAX_SIGNATURES};
use crate::manifest::FORMAT_VERSION;

pub const MAGIC: [u8; 8] = *b"HNGRBNDL";
pub const HEADER_LEN: u64 = 20;
pub const SIGNATURE_RECORD_LEN: u64 = (KEY_ID_LEN + SIGNATURE_LEN) as u64;

/// One signature of the manifest.
#[derive(Clone, PartialEq, Eq)]
pub struct SignatureRecord {
    pub key_id: KeyId,
    pub signature: [u8; SIGNATURE_LEN],
}

impl std::fmt::Debug for SignatureRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SignatureRecord({})", self.key_id)
    }
}

/// Everything before the payload, unverified.
#[derive(Debug)]
pub(crate) struct Head {
    pub manifest_bytes: Vec<u8>,
    pub signatures: Vec<SignatureRecord>,
    pub payload_offset: u64,
}

/// Reads the header, manifest bytes and signature records from the start of
/// a stream (a bundle arriving over the network): the same checks as
/// [`read_head`], with the file's length unknown until it ends.
pub(crate) fn read_head_from(
    r: &mut impl Read,
    path: &Path,
    limits: &Limits,
) -> Result<Head, BundleError> {
    let mut header = [0u8; HEADER_LEN as usize];
    read_exact_from(r, &mut header, path)?;
    let (manifest_len, signature_count) = check_header(&header, path, limits)?;
    let mut manifest_bytes = vec![0u8; manifest_len as usize];
    read_exact_from(r, &mut manifest_bytes, path)?;
    let mut records = vec![0u8; signature_count as usize * SIGNATURE_RECORD_LEN as usize];
    read_exact_from(r, &mut records, path)?;
    Ok(Head {
        manifest_bytes,
        signatures: parse_records(&records),
        payload_offset: HEADER_LEN
            + u64::from(manifest_len)
            + u64::from(signature_count) * SIGNATURE_RECORD_LEN,
    })
}

fn read_exact_from(r: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<(), BundleError> {
    r.read_exact(buf).map_err(|source| {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            BundleError::Truncated {
                path: path.to_path_buf(),
            }
        } else {
            BundleError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// The header's magic, format and limits; its manifest length and signature count.
fn check_header(
    header: &[u8; HEADER_LEN as usize],
    path: &Path,
    limits: &Limits,
) -> Result<(u32, u32), BundleError> {
    if header[..8] != MAGIC {
        return Err(BundleError::NotABundle {
            path: path.to_path_buf(),
        });
    }
    let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().expect("4 bytes"));
    let (version, manifest_len, signature_count) = (word(8), word(12), word(16));
    if version != FORMAT_VERSION {
        return Err(BundleError::UnsupportedFormat {
            path: path.to_path_buf(),
            version,
        });
    }
    if u64::from(manifest_len) > limits.max_manifest_bytes {
        return Err(BundleError::ManifestTooLarge {
            path: path.to_path_buf(),
            size: manifest_len.into(),
            max: limits.max_manifest_bytes,
        });
    }
    if signature_count > MAX_SIGNATURES {
        return Err(BundleError::TooManySignatures {
            path: path.to_path_buf(),
            count: signature_count,
            max: MAX_SIGNATURES,
        });
    }
    Ok((manifest_len, signature_count))
}

fn parse_records(records: &[u8]) -> Vec<SignatureRecord> {
    records
        .chunks_exact(SIGNATURE_RECORD_LEN as usize)
        .map(|r| {
            let mut key_id = [0u8; KEY_ID_LEN];
            key_id.copy_from_slice(&r[..KEY_ID_LEN]);
            let mut signature = [0u8; SIGNATURE_LEN];
            signature.copy_from_slice(&r[KEY_ID_LEN..]);
            SignatureRecord {
                key_id: KeyId(key_id),
                signature,
            }
        })
        .collect()
}

/// Reads the header, manifest bytes and signature records of `file`.
pub(crate) fn read_head(file: &File, path: &Path, limits: &Limits) -> Result<Head, BundleError> {
    let read_err = |source| BundleError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut header = [0u8; HEADER_LEN as usize];
    read_exact_at(file, &mut header, 0, path)?;
    let (manifest_len, signature_count) = check_header(&header, path, limits)?;
    // Check the length before allocating for the manifest.
    let file_len = file.metadata().map_err(read_err)?.len();
    let signatures_at = HEADER_LEN + u64::from(manifest_len);
    let payload_offset = signatures_at + u64::from(signature_count) * SIGNATURE_RECORD_LEN;
    if file_len < payload_offset {
        return Err(BundleError::Truncated {
            path: path.to_path_buf(),
        });
    }
    let mut manifest_bytes = vec![0u8; manifest_len as usize];
    read_exact_at(file, &mut manifest_bytes, HEADER_LEN, path)?;
    let mut records = vec![0u8; (payload_offset - signatures_at) as usize];
    read_exact_at(file, &mut records, signatures_at, path)?;
    let signatures = parse_records(&records);
    Ok(Head {
        manifest_bytes,
        signatures,
        payload_offset,
    })
}

/// The first bytes of a zstd frame (RFC 8878).
pub(crate) const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

impl Head {
    /// Why the header's manifest length or signature count cannot be right,
    /// when they cannot: the bytes they delimit as the manifest are not one JSON
    /// object, or no zstd frame starts where they place the payload. Used to
    /// explain a bundle whose signatures make no sense, so that its "key ids"
    /// (then bytes of JSON or of the payload) are not reported as signers.
    pub(crate) fn layout_problem(
        &self,
        file: &File,
        path: &Path,
    ) -> Result<Option<&'static str>, BundleError> {
        if let Some(problem) = self.manifest_shape_problem() {
            return Ok(Some(problem));
        }
        let mut magic = [0u8; 4];
        let starts_with_zstd = match read_exact_at(file, &mut magic, self.payload_offset, path) {
            Ok(()) => magic == ZSTD_MAGIC,
            Err(BundleError::Truncated { .. }) => false,
            Err(e) => return Err(e),
        };
        if !starts_with_zstd {
            return Ok(Some(
                "the payload does not start where the manifest length and signature count place it",
            ));
        }
        Ok(None)
    }

    /// Why the bytes the header delimits as the manifest cannot be one (they
    /// are not one JSON object), when they cannot.
    pub(crate) fn manifest_shape_problem(&self) -> Option<&'static str> {
        let json_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        let trimmed: &[u8] = {
            let m = &self.manifest_bytes;
            let start = m.iter().position(|b| !json_space(b)).unwrap_or(m.len());
            let end = m
                .iter()
                .rposition(|b| !json_space(b))
                .map_or(start, |i| i + 1);
            &m[start..end]
        };
        if trimmed.first() != Some(&b'{') || trimmed.last() != Some(&b'}') {
            return Some(
                "the manifest length does not match the manifest (the bytes it delimits are not a JSON object)",
            );
        }
        None
    }
}

/// Reads exactly `buf.len()` bytes at `offset`; a file that ends first is truncated.
pub(crate) fn read_exact_at(
    file: &File,
    buf: &mut [u8],
    offset: u64,
    path: &Path,
) -> Result<(), BundleError> {
    file.read_exact_at(buf, offset).map_err(|source| {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            BundleError::Truncated {
                path: path.to_path_buf(),
            }
        } else {
            BundleError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Writes a whole bundle: header, manifest, signatures, then the payload copied
/// from `payload`. Returns the number of payload bytes copied.
pub fn write_bundle(
    out: &mut impl Write,
    manifest_bytes: &[u8],
    signatures: &[SignatureRecord],
    payload: &mut impl Read,
) -> io::Result<u64> {
    let too_big = |what| io::Error::new(io::ErrorKind::InvalidInput, what);
    let manifest_len =
        u32::try_from(manifest_bytes.len()).map_err(|_| too_big("manifest larger than 4 GiB"))?;
    let count = u32::try_from(signatures.len())
        .ok()
        .filter(|n| *n <= MAX_SIGNATURES)
        .ok_or_else(|| too_big("more than 16 signatures"))?;
    out.write_all(&MAGIC)?;
    out.write_all(&FORMAT_VERSION.to_le_bytes())?;
    out.write_all(&manifest_len.to_le_bytes())?;
    out.write_all(&count.to_le_bytes())?;
    out.write_all(manifest_bytes)?;
    for record in signatures {
        out.write_all(&record.key_id.0)?;
        out.write_all(&record.signature)?;
    }
    io::copy(payload, out)
}
