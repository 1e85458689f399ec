//! Hangar's cryptography in one place: envelope encryption of secrets at rest
//! (AES-256-GCM data keys wrapped by a master key kept in a 0600 file), argon2id
//! for passwords, and random tokens stored only as SHA-256 hashes.

mod envelope;
mod mac;
mod password;
mod secret;
mod token;

pub use envelope::{DataKey, MasterKey, CryptoError};
pub use mac::MacKey;
pub use password::{PasswordError, check_password_strength, hash_password, verify_password};
pub use secret::SecretString;
pub use token::{IssuedToken, hash_token, new_token, token_matches, token_parts};
