//! The keys a host trusts to sign bundles: those compiled into the release plus
//! the `*.pub` files of a trust directory (`/etc/hangar/trust` on an appliance).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::KeyError;
use crate::keys::{KeyId, PublicKey};

mod release {
    include!(concat!(env!("OUT_DIR"), "/release_keys.rs"));
}

/// Where a trusted key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    /// Compiled into this build (`HANGAR_BUNDLE_RELEASE_KEYS` at build time).
    Release(String),
    /// A file of a trust directory.
    File(PathBuf),
    /// Added by the program itself.
    Added,
}

/// A trusted public key.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub key: PublicKey,
    pub origin: KeyOrigin,
}

/// The set of keys whose signatures make a bundle acceptable.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    keys: BTreeMap<KeyId, TrustedKey>,
}

impl TrustStore {
    /// A store trusting nothing.
    pub fn empty() -> TrustStore {
        TrustStore::default()
    }

    /// The keys compiled into this build; empty unless it is an official release.
    pub fn release() -> TrustStore {
        let mut store = TrustStore::empty();
        for (name, bytes) in release::RELEASE_KEYS {
            store.insert(
                PublicKey::from_bytes(*bytes),
                KeyOrigin::Release((*name).to_owned()),
            );
        }
        store
    }

    /// The release keys plus every `*.pub` file of `dir`.
    ///
    /// The directory and its key files must not be writable by group or others,
    /// and an unreadable or malformed `*.pub` file is an error rather than a key
    /// silently left out. Other files are ignored.
    pub fn load(dir: &Path) -> Result<TrustStore, KeyError> {
        let mut store = TrustStore::release();
        store.add_dir(dir)?;
        Ok(store)
    }

    /// Adds every `*.pub` file of `dir` (see [`TrustStore::load`]).
    pub fn add_dir(&mut self, dir: &Path) -> Result<(), KeyError> {
        check_not_writable_by_others(dir)?;
        let read_err = |source| KeyError::Read {
            path: dir.to_path_buf(),
            source,
        };
        let mut paths = Vec::new();
        for entry in fs::read_dir(dir).map_err(read_err)? {
            let path = entry.map_err(read_err)?.path();
            if path.extension().is_some_and(|x| x == "pub") {
                paths.push(path);
            }
        }
        paths.sort();
        for path in paths {
            check_not_writable_by_others(&path)?;
            let key = PublicKey::from_file(&path)?;
            self.insert(key, KeyOrigin::File(path));
        }
        Ok(())
    }

    /// Trusts `key`.
    pub fn add(&mut self, key: PublicKey) {
        self.insert(key, KeyOrigin::Added);
    }

    fn insert(&mut self, key: PublicKey, origin: KeyOrigin) {
        self.keys
            .entry(key.id())
            .or_insert(TrustedKey { key, origin });
    }

    pub fn get(&self, id: &KeyId) -> Option<&TrustedKey> {
        self.keys.get(id)
    }

    pub fn keys(&self) -> impl Iterator<Item = &TrustedKey> {
        self.keys.values()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

fn check_not_writable_by_others(path: &Path) -> Result<(), KeyError> {
    let meta = fs::metadata(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    // A sticky, world-writable directory (like /tmp) still lets anyone add a file.
    if mode & 0o022 != 0 {
        return Err(KeyError::InsecureTrust {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}
