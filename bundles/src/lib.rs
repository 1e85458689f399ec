//! Signed offline bundles: the format, a streaming verifying reader, the builder.
//!
//! A bundle is one file: a JSON manifest listing every entry with its size, mode
//! and SHA-256; Ed25519 signatures over the manifest's exact bytes; then a zstd
//! compressed tar payload (FORMAT.md has the details). The installer uses it so:
//!
//! ```no_run
//! # fn main() -> Result<(), hangar_bundle::BundleError> {
//! use std::path::Path;
//! use hangar_bundle::{Bundle, ExtractOptions, TrustStore, host_platform};
//!
//! let trust = TrustStore::load(Path::new("/etc/hangar/trust"))?;
//! // Signature checked here, against the trust store; no payload byte is read.
//! let bundle = Bundle::open(Path::new("hangar-appliance-0.2.0.bundle"), &trust)?;
//! let version = bundle.manifest().version.to_string();
//! let mut bar = |p: hangar_bundle::Progress| eprintln!("{}/{}", p.done, p.total);
//! bundle.extract(
//!     &Path::new("/opt/hangar/releases").join(&version),
//!     ExtractOptions {
//!         installed_version: Some("0.1.0".parse().unwrap()),
//!         platform: Some(host_platform()),
//!         progress: Some(&mut bar),
//!         ..Default::default()
//!     },
//! )?;
//! # Ok(())
//! # }
//! ```

mod bundle;
mod error;
mod extract;
pub mod format;
mod incoming;
mod keys;
mod limits;
pub mod manifest;
mod pubkey_pem;
pub mod recipe;
mod sign;
mod stream;
mod tempname;
pub mod tools;
mod trust;
mod writer;

pub use bundle::{Bundle, SignatureInfo, host_platform};
pub use error::{BuildError, BundleError, KeyError};
pub use extract::{ExtractOptions, Progress, Summary};
pub use incoming::Incoming;
pub use keys::{KeyId, PublicKey, SigningKey, check_private_file, generate_key_files};
pub use limits::Limits;
pub use manifest::{Entry, Kind, Manifest};
pub use semver::Version;
pub use sign::sign_bundle;
pub use tools::{ApplyError, Applied, ToolsArea};
pub use trust::{KeyOrigin, TrustStore, TrustedKey};
pub use writer::{BuildOptions, Layout, LayoutEntry, build_bundle};
