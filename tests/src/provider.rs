//! The test provider (`tests/provider`, the binary
//! `terraform-provider-hangartest`) packaged as Terraform's provider mirrors
//! hold providers: `<hostname>/<namespace>/<type>/terraform-provider-<type>_<version>_<os>_<arch>.zip`,
//! the layout `terraform providers mirror` writes, which a filesystem mirror
//! reads and the appliance's `[server] provider_mirror_dir` serves. The zip
//! is made once per build of the binary and copied into each mirror.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::bins::cargo_bin;

/// The provider's source address hostname: under `.test`, a top-level domain
/// reserved for testing, so it can never be taken for a real registry.
pub const HOSTNAME: &str = "hangar.test";
pub const NAMESPACE: &str = "hangar";
/// The provider's type: resources `hangartest_file`, `hangartest_directory`,
/// data source `hangartest_file`.
pub const TYPE: &str = "hangartest";
/// The version the package is published as.
pub const VERSION: &str = "0.1.0";
/// What a configuration's `required_providers` names as `source`.
pub const SOURCE: &str = "hangar.test/hangar/hangartest";
/// The binary in the package.
pub const BINARY: &str = "terraform-provider-hangartest";

/// The platform the tests run on, as Terraform names it (`linux_amd64`).
pub fn platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    format!("{}_{arch}", std::env::consts::OS)
}

/// The package's file name for `version` on this platform.
pub fn archive_name(version: &str) -> String {
    format!("terraform-provider-{TYPE}_{version}_{}.zip", platform())
}

/// The `terraform { required_providers { ... } }` block a configuration
/// needs to use the provider at exactly [`VERSION`].
pub fn required_providers() -> String {
    format!(
        "terraform {{\n  required_providers {{\n    {TYPE} = {{\n      source  = \"{SOURCE}\"\n      version = \"{VERSION}\"\n    }}\n  }}\n}}\n"
    )
}

/// A Terraform CLI configuration that installs providers from the
/// filesystem mirror `mirror` only (nothing is ever downloaded).
pub fn filesystem_mirror_cli_config(mirror: &Path) -> String {
    format!(
        "disable_checkpoint = true\nprovider_installation {{\n  filesystem_mirror {{\n    path = \"{}\"\n  }}\n}}\n",
        mirror.display()
    )
}

/// The provider's zip, made from the binary of this test run (built first if
/// need be) and kept beside it; made again only when the binary changed.
/// Its bytes depend on the binary's alone (fixed times), so its hash is the
/// same wherever it is made from the same binary.
pub fn package() -> PathBuf {
    let bin = cargo_bin(BINARY);
    let dir = bin.parent().expect("a binary has a directory").join("hangartest-package");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let zip_path = dir.join(archive_name(VERSION));
    let stamp_path = dir.join(format!("{}.source", archive_name(VERSION)));
    let meta = fs::metadata(&bin).unwrap_or_else(|e| panic!("read {}: {e}", bin.display()));
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default();
    let stamp = format!("{} {}\n", meta.len(), mtime.as_nanos());

    use nix::fcntl::{Flock, FlockArg};
    let lock = File::create(dir.join(".lock")).expect("create the package lock");
    let _lock = Flock::lock(lock, FlockArg::LockExclusive).expect("take the package lock");
    if zip_path.is_file() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return zip_path;
    }
    let partial = dir.join(format!(".{}.{}", archive_name(VERSION), std::process::id()));
    write_zip(&bin, &partial).unwrap_or_else(|e| panic!("package {} into {}: {e}", bin.display(), partial.display()));
    fs::rename(&partial, &zip_path).unwrap_or_else(|e| panic!("move {} into place: {e}", zip_path.display()));
    fs::write(&stamp_path, stamp).expect("write the package stamp");
    zip_path
}

/// One entry, the binary, executable (Terraform keeps the mode the zip
/// records), stored rather than deflated (a local copy, made once per run).
fn write_zip(bin: &Path, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use zip::write::SimpleFileOptions;
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default())
        .unix_permissions(0o755);
    let mut zip = zip::ZipWriter::new(File::create(out)?);
    zip.start_file(BINARY, options)?;
    let mut src = File::open(bin)?;
    std::io::copy(&mut src, &mut zip)?;
    zip.finish()?.flush()?;
    Ok(())
}

/// Puts the package into the mirror directory `mirror` as [`VERSION`];
/// returns where it lies.
pub fn add_to_mirror(mirror: &Path) -> PathBuf {
    add_to_mirror_as(mirror, VERSION)
}

/// Puts the package into `mirror` as `version` (the same binary under
/// another version: for version constraints and upgrades).
pub fn add_to_mirror_as(mirror: &Path, version: &str) -> PathBuf {
    let dir = mirror.join(HOSTNAME).join(NAMESPACE).join(TYPE);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    // Readable by the service user a server runs as.
    use std::os::unix::fs::PermissionsExt;
    for d in [mirror.to_path_buf(), mirror.join(HOSTNAME), mirror.join(HOSTNAME).join(NAMESPACE), dir.clone()] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap_or_else(|e| panic!("chmod {}: {e}", d.display()));
    }
    let to = dir.join(archive_name(version));
    fs::copy(package(), &to).unwrap_or_else(|e| panic!("copy the provider package to {}: {e}", to.display()));
    fs::set_permissions(&to, fs::Permissions::from_mode(0o644)).unwrap_or_else(|e| panic!("chmod {}: {e}", to.display()));
    to
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_mirror_layout() {
        assert_eq!(SOURCE, format!("{HOSTNAME}/{NAMESPACE}/{TYPE}"));
        assert_eq!(BINARY, format!("terraform-provider-{TYPE}"));
        let name = archive_name("1.2.3");
        assert!(name.starts_with("terraform-provider-hangartest_1.2.3_linux_"), "{name}");
        assert!(name.ends_with(".zip"));
        assert!(required_providers().contains(&format!("source  = \"{SOURCE}\"")));
    }
}
