//! Passwords: argon2id (PHC strings, salt included) and a strength check the
//! installer and the API share.

use argon2::{Argon2, PasswordHasher, PasswordVerifier};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("password is too weak: {0}")]
    Weak(String),
    #[error("cannot hash password")]
    Hash,
}

/// Hashes with argon2id and a random salt; returns the PHC string to store.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|_| PasswordError::Hash)
}

/// True when `password` matches the stored PHC string (false for a malformed one).
pub fn verify_password(password: &str, phc: &str) -> bool {
    Argon2::default().verify_password(password.as_bytes(), phc).is_ok()
}

/// At least 12 characters from at least three classes (lower, upper, digit,
/// other), or at least 20 characters; never containing the account name.
pub fn check_password_strength(password: &str, account: &str) -> Result<(), PasswordError> {
    let weak = |why: &str| Err(PasswordError::Weak(why.into()));
    let len = password.chars().count();
    if len < 12 {
        return weak("use at least 12 characters");
    }
    if len > 1024 {
        return weak("use at most 1024 characters");
    }
    let classes = [
        password.chars().any(|c| c.is_lowercase()),
        password.chars().any(|c| c.is_uppercase()),
        password.chars().any(|c| c.is_ascii_digit()),
        password.chars().any(|c| !c.is_alphanumeric()),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if classes < 3 && len < 20 {
        return weak("mix at least three of lower case, upper case, digits and symbols, or use 20 characters or more");
    }
    let name = account.split('@').next().unwrap_or("").to_lowercase();
    if name.len() >= 3 && password.to_lowercase().contains(&name) {
        return weak("do not include the account name");
    }
    let distinct: std::collections::HashSet<char> = password.chars().collect();
    if distinct.len() < 6 {
        return weak("use more distinct characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ() {
        let a = hash_password("correct horse battery staple").unwrap();
        let b = hash_password("correct horse battery staple").unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b, "random salt");
        assert!(verify_password("correct horse battery staple", &a));
        assert!(!verify_password("correct horse battery stapl", &a));
        assert!(!verify_password("x", "not a phc string"));
    }

    #[test]
    fn strength() {
        assert!(check_password_strength("short1A!", "a@b").is_err());
        assert!(check_password_strength("alllowercaseletters", "a@b").is_err());
        assert!(check_password_strength("Tr0ub4dor&3xyz", "ops@example.com").is_ok());
        assert!(check_password_strength("a very long passphrase indeed", "ops@example.com").is_ok());
        assert!(check_password_strength("OpsOps12345!!", "ops@example.com").is_err());
        assert!(check_password_strength("aaaaaaaaaaaaaaaaaaaaaaaa", "x@y").is_err());
    }
}
