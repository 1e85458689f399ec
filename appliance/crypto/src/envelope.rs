//! Envelope encryption for secrets at rest. Each secret is sealed with a data key
//! (AES-256-GCM, random 96-bit nonce, the caller's context as associated data, so
//! a ciphertext moved to another row does not open). Data keys are stored wrapped
//! by the master key; rotating the master key re-wraps data keys only.

use std::fmt;
use std::path::{Path, PathBuf};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// Format version byte leading every sealed value.
const V1: u8 = 1;
const WRAP_CONTEXT: &[u8] = b"hangar data key v1";

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("master key file {path}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: hangar_certs::CertError,
    },
    #[error("master key file {path} must hold 64 hexadecimal characters (32 bytes)")]
    KeyFormat { path: PathBuf },
    #[error("cannot open sealed value: wrong key, wrong context or tampered data")]
    Open,
    #[error("sealed value is malformed")]
    Malformed,
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).expect("system random source");
    b
}

fn seal(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte key"));
    let nonce: [u8; NONCE_LEN] = random();
    let mut buf = plaintext.to_vec();
    k.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)
        .expect("sealing cannot fail for in-memory buffers");
    let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
    out.push(V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buf);
    out
}

fn open(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < 1 + NONCE_LEN + AES_256_GCM.tag_len() || sealed[0] != V1 {
        return Err(CryptoError::Malformed);
    }
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte key"));
    let nonce = Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN]).map_err(|_| CryptoError::Malformed)?;
    let mut buf = sealed[1 + NONCE_LEN..].to_vec();
    let plain = k.open_in_place(nonce, Aad::from(aad), &mut buf).map_err(|_| CryptoError::Open)?;
    Ok(plain.to_vec())
}

/// The master key: 32 bytes, kept hex-encoded in a file only the service user reads.
#[derive(Clone)]
pub struct MasterKey {
    key: [u8; 32],
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id()).finish_non_exhaustive()
    }
}

impl MasterKey {
    pub fn generate() -> MasterKey {
        MasterKey { key: random() }
    }

    /// Reads the key, refusing a file that group or others can read.
    pub fn load(path: &Path) -> Result<MasterKey, CryptoError> {
        let key_file = |source| CryptoError::KeyFile { path: path.to_path_buf(), source };
        hangar_certs::check_private_file(path).map_err(key_file)?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| key_file(hangar_certs::CertError::Read { path: path.to_path_buf(), source: e }))?;
        let bytes = hex::decode(text.trim()).map_err(|_| CryptoError::KeyFormat { path: path.to_path_buf() })?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::KeyFormat { path: path.to_path_buf() })?;
        Ok(MasterKey { key })
    }

    /// Writes the key (0600, atomically).
    pub fn save(&self, path: &Path) -> Result<(), CryptoError> {
        hangar_certs::write_private_file(path, format!("{}\n", hex::encode(self.key)).as_bytes())
            .map_err(|source| CryptoError::KeyFile { path: path.to_path_buf(), source })
    }

    /// A short public identifier (the first 8 bytes of SHA-256 of the key, hex),
    /// stored beside each wrapped data key so rotation knows what wrapped it.
    pub fn id(&self) -> String {
        hex::encode(&ring::digest::digest(&ring::digest::SHA256, &self.key).as_ref()[..8])
    }

    /// A key for signing links, derived from this one for `purpose`.
    pub fn mac_key(&self, purpose: &str) -> crate::MacKey {
        crate::MacKey::derive(&self.key, purpose)
    }

    pub fn wrap(&self, dk: &DataKey) -> Vec<u8> {
        seal(&self.key, &dk.key, WRAP_CONTEXT)
    }

    pub fn unwrap_key(&self, wrapped: &[u8]) -> Result<DataKey, CryptoError> {
        let raw = open(&self.key, wrapped, WRAP_CONTEXT)?;
        let key: [u8; 32] = raw.try_into().map_err(|_| CryptoError::Malformed)?;
        Ok(DataKey { key })
    }
}

/// A data key: seals secrets. Lives unwrapped only in memory.
#[derive(Clone)]
pub struct DataKey {
    key: [u8; 32],
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    pub fn generate() -> DataKey {
        DataKey { key: random() }
    }

    /// Seals `plaintext`; `context` (e.g. "stack:12:env:TF_VAR_token") must be
    /// given again to open it.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        seal(&self.key, plaintext, context)
    }

    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open(&self.key, sealed, context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn seal_open_with_context_and_tamper_detection() {
        let dk = DataKey::generate();
        let sealed = dk.seal(b"s3cr3t", b"stack:1:env:A");
        assert_eq!(dk.open(&sealed, b"stack:1:env:A").unwrap(), b"s3cr3t");
        assert!(matches!(dk.open(&sealed, b"stack:2:env:A"), Err(CryptoError::Open)));
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(dk.open(&bad, b"stack:1:env:A"), Err(CryptoError::Open)));
        assert!(matches!(dk.open(&sealed[..10], b"x"), Err(CryptoError::Malformed)));
        assert!(matches!(DataKey::generate().open(&sealed, b"stack:1:env:A"), Err(CryptoError::Open)));
    }

    #[test]
    fn master_key_wraps_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let old = MasterKey::generate();
        old.save(&path).unwrap();
        let loaded = MasterKey::load(&path).unwrap();
        assert_eq!(loaded.id(), old.id());

        let dk = DataKey::generate();
        let sealed = dk.seal(b"value", b"ctx");
        let wrapped = old.wrap(&dk);
        // Rotation: unwrap with the old key, wrap with the new one; secrets untouched.
        let new = MasterKey::generate();
        let rewrapped = new.wrap(&old.unwrap_key(&wrapped).unwrap());
        assert!(new.unwrap_key(&wrapped).is_err());
        assert_eq!(new.unwrap_key(&rewrapped).unwrap().open(&sealed, b"ctx").unwrap(), b"value");
        assert!(!format!("{new:?}").contains(&hex::encode(new.key)));
    }

    #[test]
    fn master_key_file_must_be_private_and_well_formed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        MasterKey::generate().save(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(MasterKey::load(&path), Err(CryptoError::KeyFile { .. })));
        std::fs::write(&path, "nothex").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(MasterKey::load(&path), Err(CryptoError::KeyFormat { .. })));
    }
}
