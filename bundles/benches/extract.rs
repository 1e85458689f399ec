//! Verify + extract throughput of a bundle of realistic mixed content (1 GiB and
//! 256 MiB), against what this machine does on one core for the two costs the
//! reader cannot avoid: zstd decompression and SHA-256. Peak memory is measured
//! in a child process per bundle size, to show it does not grow with the bundle.
//!
//! Run with `cargo bench -p hangar-bundle --bench extract`. Bundles are built and
//! extracted in memory (`$HANGAR_BENCH_DIR`, default /dev/shm: a tmpfs, where the
//! final sync costs nothing), so the figures are the reader's own; one more
//! extraction goes to disk (`$HANGAR_BENCH_DISK_DIR`, default the temporary
//! directory) to show what durability on this machine's disk adds.
//!
//! On a machine shared with other work, `HANGAR_BENCH_FIFO=1` runs every measured
//! phase (including the zstd and SHA-256 baselines) under `chrt -f 10`, so that
//! background compilations do not decide the figures.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use hangar_bundle::{
    BuildOptions, Bundle, ExtractOptions, Kind, Layout, PublicKey, SigningKey, TrustStore,
    build_bundle,
};

const MIB: u64 = 1 << 20;
const CHILD: &str = "HANGAR_BENCH_CHILD";

fn main() {
    if let Ok(task) = std::env::var(CHILD) {
        child(&task);
        return;
    }
    let name = format!("hangar-bundle-bench-{}", std::process::id());
    let memory = std::env::var_os("HANGAR_BENCH_DIR")
        .map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from)
        .join(&name);
    let disk = std::env::var_os("HANGAR_BENCH_DISK_DIR")
        .map_or_else(std::env::temp_dir, PathBuf::from)
        .join(&name);
    fs::create_dir_all(&memory).unwrap();
    fs::create_dir_all(&disk).unwrap();
    let result = std::panic::catch_unwind(|| run(&memory, &disk));
    let _ = fs::remove_dir_all(&memory);
    let _ = fs::remove_dir_all(&disk);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// One measured run of the reader in a child process.
#[derive(Clone, Copy)]
struct Run {
    secs: f64,
    /// User plus system CPU time.
    cpu_secs: f64,
    hwm_kib: u64,
}

struct Measured {
    size: u64,
    payload: u64,
    files: usize,
    build_secs: f64,
    verify: Run,
    extract: Run,
    extract_disk: Run,
}

fn run(work: &Path, disk: &Path) {
    let key = SigningKey::from_seed(&[7; 32]);
    let pub_path = work.join("bench.pub");
    fs::write(&pub_path, key.public_key().to_pem()).unwrap();

    let mut results = Vec::new();
    for size in [256 * MIB, 1024 * MIB] {
        let src = work.join(format!("src-{size}"));
        let files = make_tree(&src, size);
        let bundle = work.join(format!("b-{size}.bundle"));
        let mut layout = Layout::new();
        layout.add_tree("", &src).unwrap();
        let started = Instant::now();
        let manifest = build_bundle(
            &layout,
            &bundle,
            BuildOptions {
                kind: Kind::Appliance,
                version: "1.0.0".parse().unwrap(),
                platform: "linux-x86_64".into(),
                created: chrono::Utc::now(),
                expires: None,
                compression_level: 3,
                threads: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
                signing_keys: std::slice::from_ref(&key),
                progress: None,
            },
        )
        .unwrap();
        let build_secs = started.elapsed().as_secs_f64();
        fs::remove_dir_all(&src).unwrap();

        // Best of three for the in-memory figures (the machine may be shared).
        let best = |task: &str, dest: &Path| {
            let mut best: Option<Run> = None;
            for _ in 0..3 {
                let run = spawn_child(task, &bundle, dest, &pub_path);
                if dest.exists() {
                    fs::remove_dir_all(dest).unwrap();
                }
                if best.is_none_or(|b| run.secs < b.secs) {
                    best = Some(run);
                }
            }
            best.unwrap()
        };
        let verify = best("verify", &work.join("unused"));
        let extract = best("extract", &work.join(format!("out-{size}")));
        let dest = disk.join(format!("out-{size}"));
        let extract_disk = spawn_child("extract", &bundle, &dest, &pub_path);
        fs::remove_dir_all(&dest).unwrap();
        results.push(Measured {
            size: manifest.total_size(),
            payload: manifest.payload.size,
            files,
            build_secs,
            verify,
            extract,
            extract_disk,
        });
        if size < 1024 * MIB {
            fs::remove_file(&bundle).unwrap();
        }
    }
    let big = work.join(format!("b-{}.bundle", 1024 * MIB));
    let zstd_rate = spawn_child("zstd", &big, work, &pub_path).secs;
    let sha_rate = spawn_child("sha256", &big, work, &pub_path).secs;
    report(&results, zstd_rate, sha_rate);
}

/// Runs one measurement in a fresh process (for its own peak memory).
fn spawn_child(task: &str, bundle: &Path, dest: &Path, key: &Path) -> Run {
    let exe = std::env::current_exe().unwrap();
    let mut command = if std::env::var_os("HANGAR_BENCH_FIFO").is_some() {
        let mut c = Command::new("chrt");
        c.args(["-f", "10"]).arg(exe);
        c
    } else {
        Command::new(exe)
    };
    let output = command
        .env(CHILD, task)
        .arg(bundle)
        .arg(dest)
        .arg(key)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{task}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let fields: Vec<f64> = text
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    Run {
        secs: fields[0],
        cpu_secs: fields[1],
        hwm_kib: fields[2] as u64,
    }
}

fn child(task: &str) {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let (bundle, dest, key) = (&args[0], &args[1], &args[2]);
    let mut trust = TrustStore::empty();
    trust.add(PublicKey::from_file(key).unwrap());
    // The baselines report a rate in place of seconds.
    match task {
        "zstd" => return println!("{} 0 0", zstd_single_core(bundle, key)),
        "sha256" => return println!("{} 0 0", sha256_single_core()),
        _ => {}
    }
    let started = Instant::now();
    let opened = Bundle::open(bundle, &trust).unwrap();
    match task {
        "verify" => {
            opened.verify(ExtractOptions::default()).unwrap();
        }
        "extract" => {
            opened.extract(dest, ExtractOptions::default()).unwrap();
        }
        other => panic!("unknown task {other}"),
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{secs} {} {}", cpu_secs(), vm_hwm_kib());
}

/// User plus system CPU time of this process, from /proc/self/stat.
fn cpu_secs() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}

fn vm_hwm_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Single-threaded decompression of the payload to nowhere, in decompressed bytes/s.
fn zstd_single_core(bundle: &Path, key: &Path) -> f64 {
    let mut trust = TrustStore::empty();
    trust.add(PublicKey::from_file(key).unwrap());
    let opened = Bundle::open(bundle, &trust).unwrap();
    let size = opened.manifest().payload.size;
    let mut file = fs::File::open(bundle).unwrap();
    let len = file.metadata().unwrap().len();
    io::Seek::seek(&mut file, io::SeekFrom::Start(len - size)).unwrap();
    let mut payload = Vec::with_capacity(size as usize);
    file.read_to_end(&mut payload).unwrap();
    let mut best = 0f64;
    for _ in 0..3 {
        let started = Instant::now();
        let mut decoder = zstd::stream::read::Decoder::new(&payload[..]).unwrap();
        let n = io::copy(&mut decoder, &mut io::sink()).unwrap();
        best = best.max(n as f64 / started.elapsed().as_secs_f64());
    }
    best
}

/// Single-threaded SHA-256 (ring) over 1 GiB from memory, in bytes/s.
fn sha256_single_core() -> f64 {
    let buf = noise(11, 64 * MIB as usize);
    let mut best = 0f64;
    for _ in 0..3 {
        let started = Instant::now();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for _ in 0..16 {
            for chunk in buf.chunks(MIB as usize) {
                ctx.update(chunk);
            }
        }
        std::hint::black_box(ctx.finish());
        best = best.max((16 * buf.len()) as f64 / started.elapsed().as_secs_f64());
    }
    best
}

fn report(results: &[Measured], zstd_rate: f64, sha_rate: f64) {
    let gb = |bytes_per_sec: f64| bytes_per_sec / 1e9;
    println!("\nmachine: {}", machine());
    println!("zstd decompression, one core: {:.2} GB/s", gb(zstd_rate));
    println!("SHA-256 (ring), one core:     {:.2} GB/s", gb(sha_rate));
    for r in results {
        let rate = |secs: f64| r.size as f64 / secs;
        println!(
            "\nbundle of {} MiB in {} files ({} MiB compressed, built in {:.1} s)",
            r.size / MIB,
            r.files,
            r.payload / MIB,
            r.build_secs
        );
        let line = |what: &str, run: &Run| {
            println!(
                "  {what:<34} {:.2} GB/s  {:>5.2} s  {:>3.0} % of zstd  CPU {:.1} cores  peak RSS {} MiB",
                gb(rate(run.secs)),
                run.secs,
                100.0 * rate(run.secs) / zstd_rate,
                run.cpu_secs / run.secs,
                run.hwm_kib / 1024
            );
        };
        line("verify (nothing written)", &r.verify);
        line("verify + extract (tmpfs)", &r.extract);
        line("verify + extract + sync (disk)", &r.extract_disk);
    }
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0);
    format!("{cpu}, {cores} cores, {} GiB RAM", mem / 1024 / 1024)
}

/// A tree of `total` bytes resembling a release: a third incompressible (already
/// compressed archives, images), a third executable-like, a third text. Seven
/// files in ten are small (1-64 KiB), the rest 64 KiB-64 MiB, log-uniformly, so
/// that most files are small and most bytes are in large ones (the appliance
/// bundle has about 3 files per MiB). Returns the number of files.
fn make_tree(root: &Path, total: u64) -> usize {
    fs::create_dir_all(root).unwrap();
    let draws = noise(0x5eed, 1 << 20);
    let mut written = 0u64;
    let mut count = 0usize;
    while written < total {
        let (a, b) = (
            draws[(2 * count) % draws.len()],
            draws[(2 * count + 1) % draws.len()],
        );
        let exponent = f64::from(b) / 255.0;
        let size = if a % 10 < 7 {
            (1024.0 * 64f64.powf(exponent)) as u64
        } else {
            (65536.0 * 1024f64.powf(exponent)) as u64
        };
        let size = size.min(total - written).max(1);
        let dir = root.join(format!("d{:02}/s{}", count % 37, count % 5));
        fs::create_dir_all(&dir).unwrap();
        let seed = count as u64 + 1;
        let data = match count % 3 {
            0 => noise(seed, size as usize),
            1 => binary_like(seed, size as usize),
            _ => text(seed, size as usize),
        };
        let mut f = fs::File::create(dir.join(format!("f{count:05}"))).unwrap();
        f.write_all(&data).unwrap();
        written += size;
        count += 1;
    }
    count
}

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Like machine code: recurring 64-byte lines with local variation, zero padding.
fn binary_like(seed: u64, len: usize) -> Vec<u8> {
    let lines = noise(seed ^ 0xb1, 64 * 4096);
    let picks = noise(seed ^ 0xb2, len / 64 + 1);
    let mut out = Vec::with_capacity(len + 64);
    for (i, pick) in picks.iter().enumerate() {
        let line = usize::from(*pick) * 16 + (i % 16);
        let mut chunk = lines[line * 64..line * 64 + 64].to_vec();
        match pick % 4 {
            0 => chunk[..32].fill(0),
            1 => chunk[(i % 8) * 8..(i % 8) * 8 + 8].copy_from_slice(&(i as u64).to_le_bytes()),
            _ => {}
        }
        out.extend_from_slice(&chunk);
    }
    out.truncate(len);
    out
}

fn text(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: [&str; 32] = [
        "the",
        "bundle",
        "signed",
        "offline",
        "worker",
        "stack",
        "plan",
        "apply",
        "state",
        "provider",
        "module",
        "release",
        "manifest",
        "payload",
        "entry",
        "staging",
        "resource",
        "variable",
        "output",
        "terraform",
        "aws_instance",
        "count",
        "for_each",
        "depends_on",
        "lifecycle",
        "{",
        "}",
        "=",
        "\"",
        "true",
        "false",
        "null",
    ];
    let picks = noise(seed ^ 0x7e, len / 4 + 1);
    let mut out = Vec::with_capacity(len + 32);
    for (i, p) in picks.iter().enumerate() {
        if out.len() >= len {
            break;
        }
        out.extend_from_slice(WORDS[usize::from(*p) % 32].as_bytes());
        out.push(if i % 9 == 8 { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}
