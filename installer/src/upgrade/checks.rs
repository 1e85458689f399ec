//! The pre-checks of an upgrade, each reported by name with its result. They
//! change nothing: a refused upgrade leaves the appliance as it was.

use std::path::Path;
use std::time::{Duration, Instant};

use hangar_bundle::{Bundle, ExtractOptions, Kind, TrustStore};
use serde::Deserialize;

use super::record::Check;
use crate::error::InstallError;
use hangar_types::error_chain as chain;
use crate::installed::Installation;
use crate::report::Reporter;

/// Where an appliance bundle describes its release.
pub const RELEASE_INFO: &str = "share/hangar/release.toml";

/// `share/hangar/release.toml` of a release.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseInfo {
    pub format: u32,
    pub version: semver::Version,
    /// The oldest installed release this one upgrades from directly.
    #[serde(default)]
    pub min_upgrade_from: Option<semver::Version>,
}

/// What the checks found out, for the steps that follow.
#[derive(Debug)]
pub struct Checked {
    pub bundle: Bundle,
    pub digest: String,
}

/// The checks' results as they are reported.
pub struct Checklist<'a> {
    pub reporter: &'a dyn Reporter,
    pub checks: Vec<Check>,
    failed: Option<(String, String)>,
}

impl std::fmt::Debug for Checklist<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checklist").field("checks", &self.checks).finish_non_exhaustive()
    }
}

impl<'a> Checklist<'a> {
    pub fn new(reporter: &'a dyn Reporter) -> Checklist<'a> {
        Checklist { reporter, checks: Vec::new(), failed: None }
    }

    pub fn report(&mut self, name: &str, result: Result<String, String>) {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(p) => (false, p),
        };
        self.reporter.check(ok, name, &detail);
        if !ok && self.failed.is_none() {
            self.failed = Some((name.to_string(), detail.clone()));
        }
        self.checks.push(Check { name: name.to_string(), ok, detail });
    }

    /// Reports `name` as failed and returns the refusal.
    pub fn refuse(&mut self, name: &str, problem: String) -> InstallError {
        self.report(name, Err(problem.clone()));
        self.verdict().err().unwrap_or(InstallError::Refused { check: name.to_string(), problem })
    }

    /// The first failed check, as the error that refuses the upgrade.
    pub fn verdict(&self) -> Result<(), InstallError> {
        match &self.failed {
            Some((name, detail)) => Err(InstallError::Refused { check: name.clone(), problem: detail.clone() }),
            None => Ok(()),
        }
    }
}

/// Every check, in order. `installed` is the running release.
pub fn run(
    inst: &Installation,
    list: &mut Checklist<'_>,
    bundle_path: &Path,
    trust: &TrustStore,
    allow_downgrade: bool,
    apply_wait: Duration,
    interrupted: &dyn Fn() -> bool,
) -> Result<Checked, InstallError> {
    let installed: semver::Version = inst
        .state
        .release
        .parse()
        .map_err(|_| InstallError::State { path: inst.layout.state_file.clone(), problem: format!("release {:?} is not a version", inst.state.release) })?;

    // The signature first: nothing else of an untrusted file is looked at.
    let bundle = match Bundle::open(bundle_path, trust) {
        Ok(b) => b,
        Err(e) => return Err(list.refuse("signature and trust root", chain(&e))),
    };
    let signers: Vec<String> = bundle.trusted_signers().iter().map(|k| k.to_string()).collect();
    list.report("signature and trust root", Ok(format!("signed by trusted key {}", signers.join(", "))));
    let m = bundle.manifest().clone();
    let platform = hangar_bundle::host_platform();
    list.report(
        "kind and platform",
        if m.kind != Kind::Appliance {
            Err(format!("a {} bundle, not an appliance release", m.kind))
        } else if m.platform != platform && m.platform != "any" {
            Err(format!("built for {}, this host is {platform}", m.platform))
        } else {
            Ok(format!("appliance for {}", m.platform))
        },
    );
    list.verdict()?;

    // Every byte against the signed manifest, and the release's description.
    let digest = crate::install::manifest_digest(&bundle);
    let verified = bundle.verify_reading(
        ExtractOptions { platform: Some(platform), ..Default::default() },
        RELEASE_INFO,
        64 << 10,
    );
    let info = match verified {
        Ok((summary, info)) => {
            list.report("contents", Ok(format!("{} files, {} MiB, every hash verified", summary.files, summary.bytes >> 20)));
            info
        }
        Err(e) => {
            list.report("contents", Err(chain(&e)));
            list.verdict()?;
            None
        }
    };
    let info: Option<ReleaseInfo> = match info.map(|bytes| String::from_utf8(bytes).map_err(|e| e.to_string()).and_then(|t| toml::from_str::<ReleaseInfo>(&t).map_err(|e| e.message().to_string()))) {
        None => None,
        Some(Ok(i)) => Some(i),
        Some(Err(problem)) => {
            list.report("upgrade path", Err(format!("{RELEASE_INFO} in the bundle is invalid: {problem}")));
            list.verdict()?;
            None
        }
    };

    let to = m.version.clone();
    let releases = &inst.layout.releases;
    let replaced = releases.join(to.to_string());
    let marker = std::fs::read_to_string(crate::install::marker_path(&inst.layout, &to.to_string())).unwrap_or_default();
    list.report(
        "version",
        match to.cmp_precedence(&installed) {
            std::cmp::Ordering::Greater if replaced.is_dir() && marker.trim() != digest => Err(format!(
                "release {to} is on this host already, unpacked from another bundle ({}): remove it or use that bundle",
                replaced.display()
            )),
            std::cmp::Ordering::Greater => Ok(format!("{to}, newer than the installed {installed}")),
            std::cmp::Ordering::Equal => Err(format!("release {to} is the installed one; nothing to upgrade")),
            std::cmp::Ordering::Less if allow_downgrade => Ok(format!("{to}, older than the installed {installed}: a downgrade, as asked (--allow-downgrade)")),
            std::cmp::Ordering::Less => Err(format!("{to} is older than the installed {installed}; a downgrade needs --allow-downgrade")),
        },
    );
    list.report(
        "upgrade path",
        match info.as_ref().and_then(|i| i.min_upgrade_from.clone()) {
            Some(min) if installed.cmp_precedence(&min).is_lt() && !allow_downgrade => Err(format!(
                "release {to} upgrades from {min} or later, this host has {installed}: upgrade to {min} first, then to {to}"
            )),
            Some(min) => Ok(format!("{to} upgrades from {min} or later; {installed} qualifies")),
            None => Ok(format!("{to} declares no minimum release to upgrade from")),
        },
    );
    if let Some(i) = &info
        && i.version != to
    {
        list.report("upgrade path", Err(format!("{RELEASE_INFO} says {} but the bundle is {to}", i.version)));
    }
    let cluster_major = crate::pgtool::cluster_major(&inst.layout.postgres);
    let bundle_major = m
        .entries
        .iter()
        .filter_map(|e| e.path().strip_prefix("embedded/postgres/usr/lib/postgresql/"))
        .find_map(|rest| rest.split('/').next().filter(|d| d.parse::<u32>().is_ok()).map(str::to_owned));
    list.report(
        "database format",
        match (cluster_major, bundle_major) {
            (Some(a), Some(b)) if a == b => Ok(format!("PostgreSQL {a} in the bundle and on disk")),
            (Some(a), Some(b)) => Err(format!("the bundle carries PostgreSQL {b}, the data directory is PostgreSQL {a}")),
            (None, _) => Err(format!("no PostgreSQL cluster in {}", inst.layout.postgres.display())),
            (Some(a), None) => Err(format!("the bundle carries no PostgreSQL (the data directory is PostgreSQL {a})")),
        },
    );
    list.verdict()?;

    // Room for the release and a backup of the database.
    let cluster = inst.cluster()?;
    let db_bytes = cluster.database_size().unwrap_or(0);
    let release_bytes = m.total_size();
    let opt_free = free_bytes(&inst.layout.opt);
    let backups_free = free_bytes(&inst.layout.data);
    let same_fs = device(&inst.layout.opt).is_some() && device(&inst.layout.opt) == device(&inst.layout.data);
    let need_opt = if replaced.is_dir() { 0 } else { release_bytes };
    let mib = |b: u64| b >> 20;
    list.report(
        "free disk",
        match (opt_free, backups_free) {
            (Some(o), Some(b)) => {
                let short = if same_fs {
                    (o < need_opt + db_bytes).then(|| format!("{} MiB free, the release and a backup need {} MiB", mib(o), mib(need_opt + db_bytes)))
                } else if o < need_opt {
                    Some(format!("{} MiB free under {}, the release needs {} MiB", mib(o), inst.layout.opt.display(), mib(need_opt)))
                } else {
                    (b < db_bytes).then(|| format!("{} MiB free under {}, a backup needs {} MiB", mib(b), inst.layout.data.display(), mib(db_bytes)))
                };
                match short {
                    Some(p) => Err(p),
                    None => Ok(format!("{} MiB free; the release takes {} MiB, a backup about {} MiB", mib(o.min(b)), mib(need_opt), mib(db_bytes))),
                }
            }
            _ => Err("cannot read the free space".into()),
        },
    );
    list.report("services", super::health::services_ready(inst).map(|n| format!("{n} services ready, /ready answers")));
    list.verdict()?;

    // Never interrupt an apply: wait for runs applying (or confirmed, about
    // to apply) to end, up to the limit.
    let started = Instant::now();
    let mut announced = false;
    loop {
        let busy = applying(&cluster)?;
        if busy.is_empty() {
            let waited = started.elapsed();
            list.report(
                "runs applying",
                Ok(if announced { format!("none any more (waited {:.0} s)", waited.as_secs_f64()) } else { "none".into() }),
            );
            break;
        }
        if started.elapsed() >= apply_wait || interrupted() {
            list.report(
                "runs applying",
                Err(format!(
                    "run(s) {} still applying after {:.0} s; an apply is never interrupted: upgrade when they finish (or wait longer with --apply-wait)",
                    busy.join(", "),
                    started.elapsed().as_secs_f64()
                )),
            );
            list.verdict()?;
        }
        if !announced {
            list.reporter.info(&format!("waiting for run(s) {} to finish applying (up to {} s)", busy.join(", "), apply_wait.as_secs()));
            announced = true;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    Ok(Checked { bundle, digest })
}

/// Runs applying, or confirmed and about to apply.
pub fn applying(cluster: &crate::pgtool::Cluster) -> Result<Vec<String>, InstallError> {
    Ok(cluster
        .query("SELECT id FROM runs WHERE state IN ('APPLYING', 'CONFIRMED') ORDER BY id")?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

fn existing(path: &Path) -> Option<&Path> {
    path.ancestors().find(|p| p.exists())
}

fn free_bytes(path: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(existing(path)?).ok()?;
    Some(st.blocks_available() * st.fragment_size())
}

fn device(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(existing(path)?).ok().map(|m| m.dev())
}
