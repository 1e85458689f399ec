//! The commands of `hangar-bundle`, each a thin layer over the library.

use std::borrow::Cow;
use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Parser, Subcommand};
use hangar_bundle::recipe::{Recipe, RecipeBuild};
use hangar_bundle::{
    BuildError, Bundle, BundleError, Entry, ExtractOptions, KeyError, Manifest, Progress,
    SigningKey, TrustStore, Version, generate_key_files, sign_bundle,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nix::sys::signal::{SigSet, Signal};
use serde_json::json;

/// Prints a line on stdout. A reader that went away (`inspect | head`) is not an
/// error worth a message: the command ends quietly.
macro_rules! out {
    ($($arg:tt)*) => {
        emit(format_args!($($arg)*))
    };
}

fn emit(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"))
    {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// Where an appliance keeps the public keys it trusts to sign bundles.
const DEFAULT_TRUST_DIR: &str = "/etc/hangar/trust";

/// Signed offline bundles for Hangar: build, sign, verify, inspect, extract.
#[derive(Debug, Parser)]
#[command(name = "hangar-bundle", version)]
pub struct Cli {
    /// Print one JSON object on stdout instead of text, and no progress bars.
    #[arg(long, global = true)]
    json: bool,
    /// Write logs (with full error chains) to this file.
    #[arg(long, global = true, value_name = "FILE")]
    log_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate an Ed25519 signing key: BASE.key (mode 0600) and BASE.pub.
    Keygen {
        /// Path prefix of the two files.
        #[arg(long, value_name = "BASE")]
        out: PathBuf,
    },
    /// Build a bundle from a recipe, signed now with --key or unsigned for `sign`.
    Build {
        /// The recipe (TOML).
        #[arg(long, value_name = "FILE")]
        recipe: PathBuf,
        /// The bundle to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Set a recipe variable (repeatable).
        #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
        vars: Vec<(String, String)>,
        /// Sign with this private key (repeatable).
        #[arg(long = "key", value_name = "FILE")]
        keys: Vec<PathBuf>,
        /// zstd level 1-19, overriding the recipe's.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=19))]
        compression_level: Option<i32>,
    },
    /// Add signatures to a bundle, after verifying its payload against its manifest.
    Sign {
        /// The bundle file.
        bundle: PathBuf,
        /// Private key to sign with (repeatable).
        #[arg(long = "key", value_name = "FILE", required = true)]
        keys: Vec<PathBuf>,
        /// Write the signed bundle here instead of replacing BUNDLE.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Verify a bundle completely (signature, every entry, the payload), writing nothing.
    Verify {
        /// The bundle file.
        bundle: PathBuf,
        #[command(flatten)]
        trust: TrustArgs,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Show a bundle's kind, version, signers and files (after checking its signature).
    Inspect {
        /// The bundle file.
        bundle: PathBuf,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Verify and extract a bundle into a new directory, atomically.
    Extract {
        /// The bundle file.
        bundle: PathBuf,
        /// The directory to create; it must not exist, its parent must.
        #[arg(long, value_name = "DIR")]
        into: PathBuf,
        #[command(flatten)]
        trust: TrustArgs,
        #[command(flatten)]
        policy: PolicyArgs,
    },
}

#[derive(Debug, Args)]
struct TrustArgs {
    /// Directory of trusted public keys (*.pub), repeatable [default: /etc/hangar/trust
    /// when it exists]. Keys compiled into the release are always trusted.
    #[arg(long = "trust", value_name = "DIR")]
    dirs: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct PolicyArgs {
    /// The version installed now: an older bundle is refused without --allow-downgrade.
    #[arg(long, value_name = "VERSION")]
    installed_version: Option<Version>,
    /// Accept a bundle older than --installed-version.
    #[arg(long)]
    allow_downgrade: bool,
    /// UNSAFE: accept a bundle past its expiry date.
    #[arg(long)]
    danger_allow_expired: bool,
    /// Refuse a bundle built for another platform than this one (e.g. linux-x86_64).
    #[arg(long, value_name = "PLATFORM")]
    platform: Option<String>,
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))?;
    if name.is_empty() {
        return Err(format!("{s:?} has an empty name"));
    }
    Ok((name.to_owned(), value.to_owned()))
}

pub fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let filter = |default: &str| {
        EnvFilter::try_from_env("HANGAR_LOG").unwrap_or_else(|_| EnvFilter::new(default))
    };
    if let Some(path) = &cli.log_file {
        match fs::OpenOptions::new().create(true).append(true).open(path) {
            Ok(file) => {
                tracing_subscriber::fmt()
                    .with_env_filter(filter("info"))
                    .with_ansi(false)
                    .with_writer(std::sync::Mutex::new(file))
                    .init();
            }
            Err(e) => eprintln!("warning: cannot open log file {}: {e}", path.display()),
        }
    } else if std::env::var_os("HANGAR_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(filter("info"))
            .with_writer(std::io::stderr)
            .init();
    }
}

/// Prints the one-line error with its causes (and, with --json, a JSON object
/// on stdout): "cannot write ...: No space left on device".
pub fn report_error(cli: &Cli, error: &anyhow::Error) {
    let line = format!("{error:#}").replace('\n', " ");
    eprintln!("error: {line}");
    if cli.json {
        let code = error
            .downcast_ref::<BundleError>()
            .map(BundleError::code)
            .or_else(|| error.downcast_ref::<BuildError>().map(BuildError::code))
            .or_else(|| error.downcast_ref::<KeyError>().map(KeyError::code))
            .unwrap_or("error");
        out!("{}", json!({ "ok": false, "code": code, "error": line }));
    }
}

pub fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Keygen { out } => keygen(cli, out),
        Command::Build {
            recipe,
            out,
            vars,
            keys,
            compression_level,
        } => build(cli, recipe, out, vars, keys, *compression_level),
        Command::Sign { bundle, keys, out } => sign(cli, bundle, keys, out.as_deref()),
        Command::Verify {
            bundle,
            trust,
            policy,
        } => verify(cli, bundle, trust, policy),
        Command::Inspect { bundle, trust } => inspect(cli, bundle, trust),
        Command::Extract {
            bundle,
            into,
            trust,
            policy,
        } => extract(cli, bundle, into, trust, policy),
    }
}

fn keygen(cli: &Cli, base: &Path) -> anyhow::Result<()> {
    let (key, private, public) = generate_key_files(base)?;
    if cli.json {
        out!(
            "{}",
            json!({
                "ok": true,
                "key_id": key.id().to_string(),
                "private_key": private,
                "public_key": public,
            })
        );
    } else {
        out!("key id      {}", key.id());
        out!("private key {} (keep it secret)", private.display());
        out!(
            "public key  {} (copy it to trust directories)",
            public.display()
        );
    }
    Ok(())
}

fn load_keys(paths: &[PathBuf]) -> Result<Vec<SigningKey>, KeyError> {
    paths.iter().map(|p| SigningKey::from_file(p)).collect()
}

fn build(
    cli: &Cli,
    recipe_path: &Path,
    out: &Path,
    vars: &[(String, String)],
    keys: &[PathBuf],
    level: Option<i32>,
) -> anyhow::Result<()> {
    // Keys first: a bad key should fail before minutes of building.
    let keys = load_keys(keys)?;
    let recipe = Recipe::load(recipe_path, vars)?;
    let bar = progress_bar(cli, "building");
    let mut report = |p: Progress| bar.update(p);
    let manifest = recipe.build(
        out,
        RecipeBuild {
            signing_keys: &keys,
            compression_level: level,
            progress: Some(&mut report),
        },
    )?;
    bar.finish();
    let signers: Vec<String> = keys.iter().map(|k| k.id().to_string()).collect();
    if cli.json {
        out!(
            "{}",
            json!({
                "ok": true,
                "path": out,
                "kind": manifest.kind,
                "version": manifest.version.to_string(),
                "platform": manifest.platform,
                "entries": manifest.entries.len(),
                "files": manifest.file_count(),
                "bytes": manifest.total_size(),
                "payload_bytes": manifest.payload.size,
                "signed_by": signers,
            })
        );
    } else {
        out!(
            "built {} ({} {} for {}): {} files, {} → {}",
            out.display(),
            manifest.kind,
            manifest.version,
            manifest.platform,
            manifest.file_count(),
            human_bytes(manifest.total_size()),
            human_bytes(manifest.payload.size),
        );
        if signers.is_empty() {
            out!(
                "unsigned: sign it with `hangar-bundle sign {} --key KEY`",
                out.display()
            );
        } else {
            out!("signed by {}", signers.join(", "));
        }
    }
    Ok(())
}

fn sign(cli: &Cli, bundle: &Path, keys: &[PathBuf], out: Option<&Path>) -> anyhow::Result<()> {
    let keys = load_keys(keys)?;
    let out = out.unwrap_or(bundle);
    let signed = sign_bundle(bundle, out, &keys)?;
    let ids: Vec<String> = signed.iter().map(ToString::to_string).collect();
    if cli.json {
        out!("{}", json!({ "ok": true, "path": out, "signed_by": ids }));
    } else {
        out!("signed {} by {}", out.display(), ids.join(", "));
    }
    Ok(())
}

fn trust_store(args: &TrustArgs) -> anyhow::Result<TrustStore> {
    let mut store = TrustStore::release();
    if args.dirs.is_empty() {
        let default = Path::new(DEFAULT_TRUST_DIR);
        if default.is_dir() {
            store.add_dir(default)?;
        }
    }
    for dir in &args.dirs {
        store.add_dir(dir)?;
    }
    Ok(store)
}

fn options<'a>(
    policy: &PolicyArgs,
    progress: Option<&'a mut dyn FnMut(Progress)>,
) -> ExtractOptions<'a> {
    ExtractOptions {
        installed_version: policy.installed_version.clone(),
        allow_downgrade: policy.allow_downgrade,
        danger_allow_expired: policy.danger_allow_expired,
        platform: policy.platform.clone(),
        progress,
        interrupt: None,
    }
}

/// Set when SIGINT, SIGTERM or SIGHUP arrives during an extraction.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// From now on SIGINT, SIGTERM and SIGHUP set [`INTERRUPTED`] instead of
/// killing the process, so that an extraction stops at its next buffer and
/// removes its staging directory (possibly gigabytes) before exiting.
///
/// The signals are blocked in the calling thread, and so in every thread it
/// starts afterwards (the extraction's), and taken by one thread of their own.
fn catch_signals() {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(signal);
    }
    if let Err(e) = set.thread_block() {
        tracing::warn!(error = %e, "cannot catch signals; an interrupted extraction leaves its staging directory");
        return;
    }
    let waiter = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(signal) = set.wait() {
                if !INTERRUPTED.swap(true, Ordering::SeqCst) {
                    tracing::warn!(%signal, "interrupted: removing the staging directory");
                }
            }
        });
    if let Err(e) = waiter {
        tracing::warn!(error = %e, "cannot catch signals; an interrupted extraction leaves its staging directory");
        // Unblocked again, so that a signal still ends the process.
        let _ = set.thread_unblock();
    }
}

fn signer_ids(bundle: &Bundle) -> Vec<String> {
    bundle
        .trusted_signers()
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn verify(cli: &Cli, path: &Path, trust: &TrustArgs, policy: &PolicyArgs) -> anyhow::Result<()> {
    let trust = trust_store(trust)?;
    let bundle = Bundle::open(path, &trust)?;
    if policy.danger_allow_expired {
        tracing::warn!(bundle = %path.display(), "expiry check disabled by --danger-allow-expired");
    }
    let bar = progress_bar(cli, "verifying");
    let mut report = |p: Progress| bar.update(p);
    let summary = bundle.verify(options(policy, Some(&mut report)))?;
    bar.finish();
    let m = bundle.manifest();
    if cli.json {
        out!(
            "{}",
            json!({
                "ok": true,
                "path": path,
                "kind": m.kind,
                "version": m.version.to_string(),
                "platform": m.platform,
                "signed_by": signer_ids(&bundle),
                "files": summary.files,
                "dirs": summary.dirs,
                "bytes": summary.bytes,
            })
        );
    } else {
        out!(
            "{}: valid {} bundle {} for {}, signed by {}; {} files, {} verified",
            path.display(),
            m.kind,
            m.version,
            m.platform,
            signer_ids(&bundle).join(", "),
            summary.files,
            human_bytes(summary.bytes),
        );
    }
    Ok(())
}

fn inspect(cli: &Cli, path: &Path, trust: &TrustArgs) -> anyhow::Result<()> {
    let trust = trust_store(trust)?;
    let bundle = Bundle::open(path, &trust)?;
    let m: &Manifest = bundle.manifest();
    if cli.json {
        let signatures: Vec<_> = bundle
            .signatures()
            .iter()
            .map(|s| json!({ "key_id": s.key_id.to_string(), "trusted": s.trusted }))
            .collect();
        out!(
            "{}",
            json!({
                "ok": true,
                "path": path,
                "format_version": m.format_version,
                "kind": m.kind,
                "version": m.version.to_string(),
                "platform": m.platform,
                "created": m.created,
                "expires": m.expires,
                "signatures": signatures,
                "files": m.file_count(),
                "bytes": m.total_size(),
                "payload": m.payload,
                "entries": m.entries,
            })
        );
        return Ok(());
    }
    let signatures: Vec<String> = bundle
        .signatures()
        .iter()
        .map(|s| {
            format!(
                "{} ({})",
                s.key_id,
                if s.trusted { "trusted" } else { "unknown key" }
            )
        })
        .collect();
    out!("bundle     {}", path.display());
    out!("kind       {}", m.kind);
    out!("version    {}", m.version);
    out!("platform   {}", m.platform);
    out!("created    {}", m.created.to_rfc3339());
    out!(
        "expires    {}",
        m.expires
            .map_or_else(|| "never".to_owned(), |e| e.to_rfc3339())
    );
    out!("signed by  {}", signatures.join(", "));
    out!(
        "contents   {} files, {} directories, {} ({} compressed)",
        m.file_count(),
        m.entries.len() - m.file_count(),
        human_bytes(m.total_size()),
        human_bytes(m.payload.size),
    );
    for entry in &m.entries {
        let path = visible(entry.path());
        match entry {
            Entry::Dir { mode, .. } => out!("  {mode} {:>12}  {path}/", "-"),
            Entry::File { mode, size, .. } => out!("  {mode} {size:>12}  {path}"),
        }
    }
    Ok(())
}

fn extract(
    cli: &Cli,
    path: &Path,
    into: &Path,
    trust: &TrustArgs,
    policy: &PolicyArgs,
) -> anyhow::Result<()> {
    // Before any other thread exists (see catch_signals).
    catch_signals();
    let trust = trust_store(trust)?;
    let bundle = Bundle::open(path, &trust)?;
    if policy.danger_allow_expired {
        tracing::warn!(bundle = %path.display(), "expiry check disabled by --danger-allow-expired");
    }
    let bar = progress_bar(cli, "extracting");
    let mut report = |p: Progress| bar.update(p);
    let summary = bundle.extract(
        into,
        ExtractOptions {
            interrupt: Some(&INTERRUPTED),
            ..options(policy, Some(&mut report))
        },
    )?;
    bar.finish();
    let m = bundle.manifest();
    if cli.json {
        out!(
            "{}",
            json!({
                "ok": true,
                "path": path,
                "into": into,
                "kind": m.kind,
                "version": m.version.to_string(),
                "signed_by": signer_ids(&bundle),
                "files": summary.files,
                "dirs": summary.dirs,
                "bytes": summary.bytes,
            })
        );
    } else {
        out!(
            "extracted {} {} into {}: {} files, {}",
            m.kind,
            m.version,
            into.display(),
            summary.files,
            human_bytes(summary.bytes),
        );
    }
    Ok(())
}

/// `text` with every character that does not show as itself escaped (`\u{200b}`):
/// zero-width and bidirectional-override characters would let a name pass
/// for another (`bin/hangar\u{200b}` for `bin/hangar`).
fn visible(text: &str) -> Cow<'_, str> {
    // `escape_debug` escapes what is not printable and what modifies the
    // character before it; quotes are left as they are.
    let shows_as_itself = |c: char| matches!(c, '"' | '\'') || c.escape_debug().len() == 1;
    let hidden = |c: char| !shows_as_itself(c) || INVISIBLE.iter().any(|r| r.contains(&c));
    if !text.chars().any(hidden) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if hidden(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Characters that draw nothing or reorder what follows, beyond those
/// `escape_debug` already escapes: soft hyphen, Hangul fillers, Mongolian
/// vowel separator, zero-width spaces and joiners, directional marks,
/// embeddings, overrides and isolates, invisible operators, the byte order
/// mark, variation selectors, and tags.
const INVISIBLE: &[std::ops::RangeInclusive<char>] = &[
    '\u{ad}'..='\u{ad}',
    '\u{34f}'..='\u{34f}',
    '\u{61c}'..='\u{61c}',
    '\u{115f}'..='\u{1160}',
    '\u{17b4}'..='\u{17b5}',
    '\u{180b}'..='\u{180f}',
    '\u{200b}'..='\u{200f}',
    '\u{202a}'..='\u{202e}',
    '\u{2060}'..='\u{206f}',
    '\u{3164}'..='\u{3164}',
    '\u{fe00}'..='\u{fe0f}',
    '\u{feff}'..='\u{feff}',
    '\u{ffa0}'..='\u{ffa0}',
    '\u{fff0}'..='\u{fffb}',
    '\u{e0000}'..='\u{e0fff}',
];

/// A byte progress bar on stderr, drawn only when stderr is a terminal.
struct Bar(Option<ProgressBar>);

fn progress_bar(cli: &Cli, what: &'static str) -> Bar {
    if cli.json || !std::io::stderr().is_terminal() {
        return Bar(None);
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:10} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what);
    Bar(Some(bar))
}

impl Bar {
    fn update(&self, p: Progress) {
        if let Some(bar) = &self.0 {
            bar.set_length(p.total);
            bar.set_position(p.done);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
