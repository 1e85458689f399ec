//! Keys that sign short-lived links (a URL that authorizes itself, for a
//! client that sends no credentials with it). Derived from the master key
//! for one purpose each, so every server holding the master key verifies
//! what another signed, and no key is stored anywhere.

use std::fmt;

use ring::hmac;

/// HMAC-SHA256 under a key derived from the master key for one purpose.
pub struct MacKey(hmac::Key);

impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MacKey").finish_non_exhaustive()
    }
}

impl MacKey {
    /// The key for `purpose`: HMAC(master, "hangar mac v1:" + purpose).
    pub(crate) fn derive(master: &[u8; 32], purpose: &str) -> MacKey {
        let root = hmac::Key::new(hmac::HMAC_SHA256, master);
        let derived = hmac::sign(&root, format!("hangar mac v1:{purpose}").as_bytes());
        MacKey(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
    }

    /// The signature of `message`, lowercase hex.
    pub fn sign(&self, message: &[u8]) -> String {
        hex::encode(hmac::sign(&self.0, message).as_ref())
    }

    /// Whether `signature` (hex) signs `message`, compared in constant time.
    pub fn verify(&self, message: &[u8], signature: &str) -> bool {
        hex::decode(signature).is_ok_and(|s| hmac::verify(&self.0, message, &s).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_hold_for_their_purpose_and_message_only() {
        let k = MacKey::derive(&[7; 32], "links");
        let s = k.sign(b"a");
        assert!(k.verify(b"a", &s));
        assert!(!k.verify(b"b", &s));
        assert!(!k.verify(b"a", "zz"));
        assert!(!MacKey::derive(&[7; 32], "other").verify(b"a", &s));
        assert!(!MacKey::derive(&[8; 32], "links").verify(b"a", &s));
    }
}
