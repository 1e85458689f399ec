//! Wall time from `hangar-install --answers` to a ready appliance on this
//! machine, with the time of each step, from an appliance bundle of release
//! binaries. Run as root: `cargo bench -p hangar-install --bench install`.
//! Each round installs into a fresh temporary prefix and removes it after.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hangar_testkit::{TestDir, free_port};

const ROUNDS: usize = 3;

fn check(what: &str, out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn main() {
    assert!(nix::unistd::geteuid().is_root(), "the installer bench runs as root");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("building the release binaries");
    check(
        "cargo build --release",
        Command::new(&cargo)
            .args(["build", "--release", "-p", "hangar", "-p", "hangar-worker", "-p", "hangar-install", "-p", "hangar-bundle"])
            .current_dir(&repo)
            .output()
            .unwrap(),
    );
    // A separate target directory (CARGO_TARGET_DIR) keeps this build from
    // waiting on others' locks.
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo.join("target"));
    let bins = target.join("release");
    let work = TestDir::new("install-bench");
    let key = work.path().join("bench-key");
    check("keygen", Command::new(bins.join("hangar-bundle")).arg("keygen").arg("--out").arg(&key).output().unwrap());
    let trust = work.subdir("trust");
    fs::copy(key.with_extension("pub"), trust.join("bench.pub")).unwrap();
    let bundle = work.path().join("appliance.bundle");
    eprintln!("building the appliance bundle");
    check(
        "build-appliance.sh",
        Command::new(repo.join("bundles/build-appliance.sh"))
            .arg("--bin-dir")
            .arg(&bins)
            .arg("--key")
            .arg(key.with_extension("key"))
            .arg("--out")
            .arg(&bundle)
            .args(["--offline", "--compression-level", "3"])
            .output()
            .unwrap(),
    );
    let size = fs::metadata(&bundle).unwrap().len();

    let mut totals = Vec::new();
    let mut steps: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for round in 0..ROUNDS {
        let prefix = work.path().join(format!("root-{round}"));
        fs::create_dir(&prefix).unwrap();
        fs::set_permissions(&prefix, fs::Permissions::from_mode(0o755)).unwrap();
        let answers = write_answers(work.path(), round, &bundle);
        let t = Instant::now();
        let out = check(
            "hangar-install",
            Command::new(bins.join("hangar-install"))
                .arg("--prefix")
                .arg(&prefix)
                .arg("--answers")
                .arg(&answers)
                .arg("--trust")
                .arg(&trust)
                .arg("--timings")
                .args(["--ignore-preflight", "disk"])
                .output()
                .unwrap(),
        );
        let wall = t.elapsed();
        totals.push(wall.as_secs_f64());
        let mut in_timings = false;
        for line in out.lines() {
            if line.starts_with("Timings:") {
                in_timings = true;
                continue;
            }
            if in_timings && let Some((name, secs)) = parse_timing(line) {
                if !order.contains(&name) {
                    order.push(name.clone());
                }
                steps.entry(name).or_default().push(secs);
            }
        }
        eprintln!("round {round}: {:.2} s to ready", wall.as_secs_f64());
        check(
            "uninstall",
            Command::new(bins.join("hangar-install")).arg("--prefix").arg(&prefix).args(["uninstall", "--purge-data"]).output().unwrap(),
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    println!("bundle: {} MiB (zstd level 3, release binaries)", size >> 20);
    println!("wall time from `hangar-install --answers` to ready, {ROUNDS} rounds: median {:.2} s, min {:.2} s, max {:.2} s",
        median(&totals),
        totals.iter().cloned().fold(f64::MAX, f64::min),
        totals.iter().cloned().fold(0.0, f64::max));
    println!("| step | median s |");
    println!("|---|---|");
    for name in &order {
        println!("| {name} | {:.2} |", median(&steps[name]));
    }
    println!("machine: {}", machine());
}

fn parse_timing(line: &str) -> Option<(String, f64)> {
    let line = line.trim();
    let secs = line.strip_suffix(" s")?;
    let (name, value) = secs.rsplit_once(' ')?;
    Some((name.trim().to_string(), value.trim().parse().ok()?))
}

fn write_answers(dir: &Path, round: usize, bundle: &Path) -> PathBuf {
    let path = dir.join(format!("answers-{round}.toml"));
    fs::write(
        &path,
        format!(
            "bundle = {bundle:?}\nallow_downgrade = false\nhostname = \"localhost\"\naddresses = [\"127.0.0.1\"]\n\
             listen_address = \"127.0.0.1\"\nserver_port = {}\nbroker_port = {}\ndatabase_port = {}\nobjects_port = {}\n\
             garage_s3_port = {}\ngarage_rpc_port = {}\ngarage_admin_port = {}\ndata_dir = \"/var/lib/hangar\"\n\
             admin_email = \"admin@bench.test\"\nadmin_password = \"Bench-Passw0rd-Install\"\nobject_store = \"bundled\"\n\
             tls = \"generate\"\nconfirm = true\n",
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            bundle = bundle.display().to_string(),
        ),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn machine() -> String {
    let lscpu = Command::new("lscpu").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let model = lscpu.lines().find_map(|l| l.strip_prefix("Model name:")).unwrap_or("?").trim().to_string();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("MemTotal:")).and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok()))
        .unwrap_or(0);
    format!("{model}, {cores} cores, {} GiB RAM", mem / 1024 / 1024)
}
