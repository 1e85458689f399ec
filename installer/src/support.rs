//! `hangar-install support-bundle`: the configuration, the install state, the
//! services' status and their logs in one `.tar.gz` for a support case, with
//! every secret value the appliance holds replaced by `<redacted>`.

use std::fs;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::error::InstallError;
use crate::host::{Host, write_atomic};
use crate::state::InstallState;

/// Log bytes kept per file (the end of it).
const LOG_TAIL: usize = 4 << 20;

/// Writes the archive to `out`; returns the names of the files in it.
pub fn support_bundle(host: &Host, out: &Path) -> Result<Vec<String>, InstallError> {
    let probe = host.layout(Path::new("/var/lib/hangar"));
    let state = InstallState::load(&probe.state_file)?.ok_or_else(|| InstallError::NotInstalled { prefix: host.prefix.clone() })?;
    let l = host.layout(&state.data_dir);
    let secrets = secret_values(&l.secrets);
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: String, path: &Path| {
        if let Ok(bytes) = fs::read(path) {
            let start = bytes.len().saturating_sub(LOG_TAIL);
            files.push((name, redact(&bytes[start..], &secrets)));
        }
    };
    add("etc/hangar.toml".into(), &l.config);
    add("etc/garage.toml".into(), &l.garage_config);
    add("etc/install-state.json".into(), &l.state_file);
    add("etc/backup.toml".into(), &crate::installed::backup_settings_path(&l));
    // The records of upgrades and restores (the newest ones).
    if let Ok(entries) = fs::read_dir(l.data.join("upgrades")) {
        let mut records: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect();
        records.sort();
        for p in records.iter().rev().take(20) {
            add(format!("upgrades/{}", p.file_name().unwrap_or_default().to_string_lossy()), p);
        }
    }
    add("postgres/hangar.conf".into(), &l.postgres.join("hangar.conf"));
    add("postgres/pg_hba.conf".into(), &l.postgres.join("pg_hba.conf"));
    add("pki/ca.crt".into(), &l.pki.join("ca.crt"));
    if let Ok(entries) = fs::read_dir(&l.logs) {
        let mut logs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
        logs.sort();
        for p in logs {
            let name = format!("logs/{}", p.file_name().unwrap_or_default().to_string_lossy());
            add(name, &p);
        }
    }
    let status = match crate::status::status(host) {
        Ok((text, _)) => text,
        Err(e) => format!("status unavailable: {}\n", hangar_types::error_chain(&e)),
    };
    files.push(("status.txt".into(), redact(status.as_bytes(), &secrets)));
    files.push((
        "secrets.txt".into(),
        format!("{} secret files, every value replaced by <redacted> in this archive\n", secrets.len()).into_bytes(),
    ));

    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    let mtime = (host.clock)().timestamp().max(0) as u64;
    for (name, bytes) in &files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(mtime);
        header.set_cksum();
        tar.append_data(&mut header, format!("hangar-support/{name}"), bytes.as_slice()).map_err(InstallError::io("archive", name.as_str()))?;
    }
    let gz = tar.into_inner().map_err(InstallError::io("finish", out))?;
    let bytes = gz.finish().map_err(InstallError::io("compress", out))?;
    // The archive holds logs: not for everyone to read.
    write_atomic(out, &bytes, 0o600, None)?;
    Ok(files.into_iter().map(|(n, _)| n).collect())
}

/// The values of every secret file (trimmed), longest first so that a secret
/// containing another is redacted whole.
pub fn secret_values(dir: &Path) -> Vec<String> {
    let mut values: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| s.len() >= 8)
        .collect();
    values.sort_by_key(|s| std::cmp::Reverse(s.len()));
    values.dedup();
    values
}

pub fn redact(bytes: &[u8], secrets: &[String]) -> Vec<u8> {
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    for s in secrets {
        if text.contains(s.as_str()) {
            text = text.replace(s.as_str(), "<redacted>");
        }
    }
    text.into_bytes()
}
