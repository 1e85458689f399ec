//! Ed25519 signing keys and public keys, their files and their ids.
//!
//! A private key is a PEM "PRIVATE KEY" (PKCS#8, as written by `keygen` or by
//! `openssl genpkey -algorithm ed25519`), kept at mode 0600: a key file that group
//! or others can access is refused. A public key is a PEM "PUBLIC KEY". A key id is
//! the first 8 bytes of the SHA-256 of the raw 32-byte public key, in hex.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

use crate::KeyError;
use crate::pubkey_pem::{encode_public_key_pem, parse_public_key_pem};

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Length of a key id in bytes (its hex form is twice as long).
pub const KEY_ID_LEN: usize = 8;

/// Identifies a public key: the first 8 bytes of its SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl KeyId {
    pub fn of(public_key: &[u8; 32]) -> KeyId {
        let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest.as_ref()[..KEY_ID_LEN]);
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// An Ed25519 public key that may verify bundle signatures.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    bytes: [u8; 32],
    id: KeyId,
}

impl PublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> PublicKey {
        PublicKey {
            id: KeyId::of(&bytes),
            bytes,
        }
    }

    /// Reads a PEM "PUBLIC KEY" file.
    pub fn from_file(path: &Path) -> Result<PublicKey, KeyError> {
        let text = fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_pem(&text).map_err(|reason| KeyError::Malformed {
            path: path.to_path_buf(),
            reason,
        })
    }

    pub fn from_pem(text: &str) -> Result<PublicKey, &'static str> {
        parse_public_key_pem(text).map(PublicKey::from_bytes)
    }

    pub fn to_pem(&self) -> String {
        encode_public_key_pem(&self.bytes)
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// True when `signature` is this key's signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.bytes)
            .verify(message, signature)
            .is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

/// A private Ed25519 key. Its `Debug` shows the key id only.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl SigningKey {
    /// Generates a key; returns it with its PKCS#8 document (for saving).
    pub fn generate() -> Result<(SigningKey, Vec<u8>), KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Generate)?;
        let key = Self::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Generate)?;
        Ok((key, pkcs8.as_ref().to_vec()))
    }

    /// Builds a key from a 32-byte seed. Meant for tests and fuzzing, where a
    /// reproducible key is wanted and nobody trusts it.
    pub fn from_seed(seed: &[u8; 32]) -> SigningKey {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).expect("any 32 bytes are a seed");
        Self::from_pair(pair)
    }

    fn from_pkcs8(der: &[u8]) -> Result<SigningKey, ring::error::KeyRejected> {
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map(Self::from_pair)
    }

    fn from_pair(pair: Ed25519KeyPair) -> SigningKey {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(pair.public_key().as_ref());
        SigningKey {
            pair,
            public: PublicKey::from_bytes(bytes),
        }
    }

    /// Reads a private key file, refusing one that group or others can access.
    pub fn from_file(path: &Path) -> Result<SigningKey, KeyError> {
        check_private_file(path)?;
        let text = fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let malformed = |reason| KeyError::Malformed {
            path: path.to_path_buf(),
            reason,
        };
        let der =
            pem_body(&text, "PRIVATE KEY").ok_or_else(|| malformed("not a PEM PRIVATE KEY"))?;
        Self::from_pkcs8(&der).map_err(|_| malformed("not an Ed25519 PKCS#8 private key"))
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    pub fn id(&self) -> KeyId {
        self.public.id
    }

    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        out
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.public.id)
            .finish_non_exhaustive()
    }
}

/// Generates a key pair and writes `<base>.key` (0600) and `<base>.pub`; never overwrites.
pub fn generate_key_files(base: &Path) -> Result<(SigningKey, PathBuf, PathBuf), KeyError> {
    let name = base
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let private = base.with_file_name(format!("{name}.key"));
    let public = base.with_file_name(format!("{name}.pub"));
    for path in [&private, &public] {
        if path.symlink_metadata().is_ok() {
            return Err(KeyError::Exists { path: path.clone() });
        }
    }
    let (key, pkcs8) = SigningKey::generate()?;
    write_new_file(
        &private,
        pem_encode("PRIVATE KEY", &pkcs8).as_bytes(),
        0o600,
    )?;
    write_new_file(&public, key.public_key().to_pem().as_bytes(), 0o644)?;
    Ok((key, private, public))
}

/// Refuses a private key file that group or others can read, write or execute.
pub fn check_private_file(path: &Path) -> Result<(), KeyError> {
    let meta = fs::metadata(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::InsecurePrivateKey {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Creates `path` with `mode` from the first byte; fails if it exists.
fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), KeyError> {
    let write_err = |source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(write_err)?;
    // The umask may have removed bits from `mode`; state it exactly.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(contents))
        .and_then(|()| file.sync_all())
        .map_err(|source| {
            let _ = fs::remove_file(path);
            write_err(source)
        })
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_body(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let b64: String = text[start..stop].split_whitespace().collect();
    STANDARD.decode(b64.as_bytes()).ok()
}
