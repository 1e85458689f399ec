//! The text form of an Ed25519 public key: PEM "PUBLIC KEY" (SubjectPublicKeyInfo).
//!
//! Shared, as plain functions over bytes, by the library and by `build.rs`, which
//! compiles release keys into the binary; so it must not use anything else of the crate.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): the key's 32 bytes follow.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
const END: &str = "-----END PUBLIC KEY-----";

/// Parses a PEM "PUBLIC KEY" holding an Ed25519 key; text outside the markers is ignored.
pub(crate) fn parse_public_key_pem(text: &str) -> Result<[u8; 32], &'static str> {
    let start = text.find(BEGIN).ok_or("no \"BEGIN PUBLIC KEY\" line")?;
    let rest = &text[start + BEGIN.len()..];
    let end = rest.find(END).ok_or("no \"END PUBLIC KEY\" line")?;
    let b64: String = rest[..end].split_whitespace().collect();
    let der = STANDARD
        .decode(b64.as_bytes())
        .map_err(|_| "the PEM body is not valid base64")?;
    if der.len() != SPKI_PREFIX.len() + 32 || der[..SPKI_PREFIX.len()] != SPKI_PREFIX {
        return Err("not an Ed25519 public key");
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&der[SPKI_PREFIX.len()..]);
    Ok(key)
}

/// Encodes an Ed25519 public key as PEM "PUBLIC KEY", readable by OpenSSL.
pub(crate) fn encode_public_key_pem(key: &[u8; 32]) -> String {
    let mut der = Vec::with_capacity(SPKI_PREFIX.len() + 32);
    der.extend_from_slice(&SPKI_PREFIX);
    der.extend_from_slice(key);
    format!("{BEGIN}\n{}\n{END}\n", STANDARD.encode(der))
}
