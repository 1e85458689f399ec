//! Signing an existing bundle, for builds that sign on another machine than the
//! one that assembled the bundle.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::bundle::Bundle;
use crate::format::{SignatureRecord, write_bundle};
use crate::keys::{KeyId, SigningKey};
use crate::limits::Limits;
use crate::writer::write_file_atomically;
use crate::{BuildError, ExtractOptions};

/// Adds signatures by `keys` to the bundle at `path`, writing the result to `out`
/// (which may be `path` itself; the file is replaced atomically).
///
/// A signer vouches for what it signs, so the whole payload is first verified
/// against the manifest. An existing signature by one of `keys` is replaced.
pub fn sign_bundle(path: &Path, out: &Path, keys: &[SigningKey]) -> Result<Vec<KeyId>, BuildError> {
    let bundle = Bundle::open_unverified(path, &Limits::default())?;
    bundle.verify(ExtractOptions::default())?;

    let mut records: Vec<SignatureRecord> = bundle
        .records
        .iter()
        .filter(|r| keys.iter().all(|k| k.id() != r.key_id))
        .cloned()
        .collect();
    records.extend(keys.iter().map(|key| SignatureRecord {
        key_id: key.id(),
        signature: key.sign(&bundle.manifest_bytes),
    }));

    let mut payload = bundle
        .file
        .try_clone()
        .map_err(|source| BuildError::Write {
            path: out.to_path_buf(),
            source,
        })?;
    payload
        .seek(SeekFrom::Start(bundle.payload_offset))
        .map_err(|source| BuildError::Write {
            path: out.to_path_buf(),
            source,
        })?;
    let mut payload = payload.take(bundle.manifest.payload.size);
    write_file_atomically(out, |w| {
        write_bundle(w, &bundle.manifest_bytes, &records, &mut payload).map(drop)
    })?;
    Ok(keys.iter().map(SigningKey::id).collect())
}
