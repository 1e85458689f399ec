//! The preflight checklist: what the host must offer before anything is
//! changed. Read-only.

use std::path::Path;

use crate::error::InstallError;
use crate::host::Host;
use crate::report::Reporter;

/// The stated minimums for one appliance host.
pub const MIN_CPUS: usize = 2;
pub const MIN_MEMORY_MIB: u64 = 2048;
pub const MIN_DISK_MIB: u64 = 4096;

/// The checks an operator may take responsibility for with
/// `--ignore-preflight`: the host's size and clock. Privileges, platform and
/// host name cannot be ignored: nothing would work without them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ignorable {
    Processors,
    Memory,
    Disk,
    Clock,
}

impl Ignorable {
    fn name(self) -> &'static str {
        match self {
            Ignorable::Processors => "processors",
            Ignorable::Memory => "memory",
            Ignorable::Disk => "disk",
            Ignorable::Clock => "clock",
        }
    }
}

/// Runs every check, reporting each; fails with the first failed one after
/// all are shown. A failed check named in `ignore` is reported as a warning
/// and does not stop the install.
pub fn run(host: &Host, reporter: &dyn Reporter, ignore: &[Ignorable]) -> Result<(), InstallError> {
    let mut failed: Option<InstallError> = None;
    let mut check = |name: &'static str, result: Result<String, String>| match result {
        Ok(detail) => reporter.check(true, name, &detail),
        Err(problem) if ignore.iter().any(|i| i.name() == name) => {
            reporter.warn(name, &format!("{problem} (ignored: --ignore-preflight {name})"));
        }
        Err(problem) => {
            reporter.check(false, name, &problem);
            failed.get_or_insert(InstallError::Preflight { check: name, problem });
        }
    };
    check(
        "privileges",
        if nix::unistd::geteuid().is_root() { Ok("running as root".into()) } else { Err("the installer must run as root".into()) },
    );
    let platform = hangar_bundle::host_platform();
    check(
        "platform",
        if platform == "linux-x86_64" { Ok(format!("{} on {platform}", os_name())) } else { Err(format!("{platform} is not supported (linux-x86_64 only)")) },
    );
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    check(
        "processors",
        if cpus >= MIN_CPUS { Ok(format!("{cpus} (at least {MIN_CPUS})")) } else { Err(format!("{cpus}, need at least {MIN_CPUS}")) },
    );
    let mem = memory_mib();
    check(
        "memory",
        match mem {
            Some(m) if m >= MIN_MEMORY_MIB => Ok(format!("{m} MiB (at least {MIN_MEMORY_MIB})")),
            Some(m) => Err(format!("{m} MiB, need at least {MIN_MEMORY_MIB} MiB")),
            None => Err("cannot read /proc/meminfo".into()),
        },
    );
    let disk = free_disk_mib(&host.prefix);
    check(
        "disk",
        match disk {
            Some(d) if d >= MIN_DISK_MIB => Ok(format!("{d} MiB free under {} (at least {MIN_DISK_MIB})", host.prefix.display())),
            Some(d) => Err(format!("{d} MiB free under {}, need at least {MIN_DISK_MIB} MiB", host.prefix.display())),
            None => Err(format!("cannot read the free space of {}", host.prefix.display())),
        },
    );
    let now = (host.clock)();
    check(
        "clock",
        if now.format("%Y").to_string().parse::<i32>().unwrap_or(0) >= 2025 {
            Ok(format!("{} UTC", now.format("%Y-%m-%d %H:%M:%S")))
        } else {
            Err(format!("the clock says {now}; certificates issued now would be wrong (set the time)"))
        },
    );
    let hostname = system_hostname();
    check(
        "host name",
        if hostname.is_empty() || hostname == "(none)" { Err("the host has no name".into()) } else { Ok(hostname) },
    );
    check(
        "supervision",
        Ok(if host.systemd { "systemd runs this host: the appliance becomes a unit".into() } else { "no systemd: the installer starts the supervisor itself".into() }),
    );
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
        })
        .unwrap_or_else(|| "Linux".into())
}

pub fn system_hostname() -> String {
    nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
}

fn memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kib / 1024)
}

fn free_disk_mib(path: &Path) -> Option<u64> {
    // The nearest existing ancestor: the prefix may not exist yet.
    let existing = path.ancestors().find(|p| p.exists())?;
    let st = nix::sys::statvfs::statvfs(existing).ok()?;
    Some(st.blocks_available() * st.fragment_size() / (1024 * 1024))
}
