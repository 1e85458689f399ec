//! Random bearer tokens (API keys, worker tokens, join tokens, session tokens).
//! A token is `<kind>_<id>_<secret>`: the id is public and used for lookup, the
//! whole token is stored only as its SHA-256 (tokens are 160+ random bits, so a
//! slow hash adds nothing).

use ring::rand::{SecureRandom, SystemRandom};

use crate::SecretString;

/// A freshly made token: shown once, then only `hash` is kept.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The full token to hand out.
    pub token: SecretString,
    /// Public, unique part, used to find the stored hash.
    pub id: String,
    /// What to store.
    pub hash: String,
}

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";

fn random_text(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    SystemRandom::new().fill(&mut bytes).expect("system random source");
    bytes.iter().map(|b| ALPHABET[(*b & 31) as usize] as char).collect()
}

/// Makes a token of `kind` (lowercase letters, e.g. "hak" for API keys): a 12
/// character id and 40 characters (200 bits) of secret.
pub fn new_token(kind: &str) -> IssuedToken {
    let id = random_text(12);
    let token = format!("{kind}_{id}_{}", random_text(40));
    let hash = hash_token(&token);
    IssuedToken { token: SecretString::new(token), id, hash }
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()))
}

/// Splits a presented token into (kind, id) when it has the right shape.
pub fn token_parts(token: &str) -> Option<(&str, &str)> {
    let mut it = token.splitn(3, '_');
    let (kind, id, secret) = (it.next()?, it.next()?, it.next()?);
    let ok = |s: &str, len: Option<usize>| {
        !s.is_empty() && len.is_none_or(|l| s.len() == l) && s.bytes().all(|b| ALPHABET.contains(&b))
    };
    (ok(kind, None) && ok(id, Some(12)) && ok(secret, Some(40))).then_some((kind, id))
}

/// Compares a presented token with a stored hash in constant time.
pub fn token_matches(presented: &str, stored_hash: &str) -> bool {
    let computed = hash_token(presented);
    computed.len() == stored_hash.len()
        && computed.bytes().zip(stored_hash.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_verify() {
        let a = new_token("hak");
        let b = new_token("hak");
        assert_ne!(a.token.expose(), b.token.expose());
        assert!(token_matches(a.token.expose(), &a.hash));
        assert!(!token_matches(b.token.expose(), &a.hash));
        assert_eq!(token_parts(a.token.expose()), Some(("hak", a.id.as_str())));
        assert_eq!(token_parts("hak_short_x"), None);
        assert_eq!(token_parts("garbage"), None);
        assert!(!format!("{a:?}").contains(a.token.expose()));
    }
}
