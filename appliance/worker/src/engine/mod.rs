//! The run engine: given a run's spec, a fresh work directory and hooks for
//! state reports, log chunks and uploads, it runs the phases — PREPARING (clone
//! at the commit, fetch and verify the tool), INITIALIZING (`terraform init`
//! against the configured backend, providers from the appliance's mirror only),
//! PLANNING (saved plan, change summary, plan upload), waiting for confirmation
//! when a human must confirm, and APPLYING the saved plan. It knows nothing of
//! HTTPS or MQTT: the hooks do, so the engine runs the same against the
//! appliance and in tests.

mod files;
mod git;
mod logs;
pub mod mask;
mod process;
mod tool;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hangar_types::worker::{
    Changes, EnvVar, MAX_PLAN_BYTES, MAX_PLAN_JSON_BYTES, Phase, PlanUpload, RunAssignment, StateReport, ToolSpec,
};
use hangar_types::{RunKind, RunState};
use tokio::sync::watch;
use tracing::{info, warn};

pub use files::ERRORED_STATE;
pub use logs::ChunkPolicy;
pub use mask::Masker;
pub use tool::sha256_file;

use logs::LogStream;
use process::{Cmd, Ended};

/// An error of a hook, as the engine passes it on.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// The appliance refused a state report: the run is in `state` and this worker
/// must let go of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the appliance refused the report: the run is {state}")]
pub struct Refused {
    pub state: RunState,
}

/// What a human decided about a plan awaiting confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// CONFIRMED: apply the saved plan.
    Apply,
    /// The run ended without applying (discarded, failed, ...), in this state.
    Ended(RunState),
}

/// Where the engine's work goes. Implemented over HTTPS by the worker's agent
/// and in memory by tests.
pub trait RunHooks: Send + Sync {
    /// A state change with its note. `Err` when the appliance refused it.
    fn report(&self, report: StateReport) -> impl Future<Output = Result<(), Refused>> + Send;
    /// The `seq`th chunk (from 0, per phase) of a phase's masked output.
    fn log_chunk(&self, phase: Phase, seq: u64, data: Vec<u8>) -> impl Future<Output = ()> + Send;
    /// Writes the tool binary `tool` names to `dest` (verified by the engine).
    fn download_tool(
        &self,
        tool: &ToolSpec,
        dest: &Path,
    ) -> impl Future<Output = Result<(), HookError>> + Send;
    /// Uploads the saved plan at `path`, described by `upload`.
    fn upload_plan(
        &self,
        path: &Path,
        upload: PlanUpload,
    ) -> impl Future<Output = Result<(), HookError>> + Send;
    /// Uploads the plan as `terraform show -json` printed it (for the
    /// appliance's plan policies), before the report that leaves PLANNING.
    fn upload_plan_json(
        &self,
        data: Vec<u8>,
    ) -> impl Future<Output = Result<(), HookError>> + Send;
    /// Uploads the `errored.tfstate` Terraform left.
    fn upload_errored_state(
        &self,
        data: Vec<u8>,
    ) -> impl Future<Output = Result<(), HookError>> + Send;
    /// Resolves once the run awaiting confirmation was confirmed or ended.
    fn confirmation(&self) -> impl Future<Output = Decision> + Send;
}

/// Tells a run to stop (an operator's cancel, the worker shutting down, the
/// appliance ending the run). The first reason given wins.
#[derive(Debug, Clone)]
pub struct StopHandle {
    tx: watch::Sender<Option<String>>,
}

impl StopHandle {
    pub fn stop(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.tx.send_if_modified(|cur| {
            if cur.is_none() {
                *cur = Some(reason);
                true
            } else {
                false
            }
        });
    }

    pub fn is_stopped(&self) -> bool {
        self.tx.borrow().is_some()
    }
}

/// The engine's side of a [`StopHandle`].
#[derive(Debug, Clone)]
pub struct StopSignal {
    rx: watch::Receiver<Option<String>>,
}

impl StopSignal {
    pub fn new() -> (StopHandle, StopSignal) {
        let (tx, rx) = watch::channel(None);
        (StopHandle { tx }, StopSignal { rx })
    }

    /// The reason, if a stop was asked for.
    pub fn current(&self) -> Option<String> {
        self.rx.borrow().clone()
    }

    /// Resolves with the reason once a stop is asked for.
    pub async fn requested(&self) -> String {
        let mut rx = self.rx.clone();
        loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                return r;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Where state lives during the run.
#[derive(Clone, PartialEq, Eq)]
pub enum Backend {
    /// Whatever the configuration says (a local state file when it says
    /// nothing): for tests and tools that need no appliance.
    Configured,
    /// The appliance's HTTP state backend, with the run's credential.
    Http {
        state_url: String,
        run_token: String,
    },
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Configured => f.write_str("Configured"),
            Backend::Http { state_url, .. } => f
                .debug_struct("Http")
                .field("state_url", state_url)
                .finish_non_exhaustive(),
        }
    }
}

/// The provider network mirror and the token Terraform presents to it.
#[derive(Clone, PartialEq, Eq)]
pub struct Mirror {
    pub url: String,
    pub token: String,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Everything the engine needs to know about a run.
#[derive(Clone)]
pub struct RunSpec {
    pub run_id: i64,
    pub kind: RunKind,
    /// Clone URL (credentials in it are masked in logs).
    pub repository: String,
    pub commit_sha: String,
    /// Relative to the repository root; `""` or `"."` for the root.
    pub project_root: String,
    /// The command of a task run.
    pub command: Option<String>,
    pub env: Vec<EnvVar>,
    pub tool: ToolSpec,
    pub backend: Backend,
    /// `None`: no provider can be installed.
    pub mirror: Option<Mirror>,
    pub autodeploy: bool,
}

impl std::fmt::Debug for RunSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunSpec")
            .field("run_id", &self.run_id)
            .field("kind", &self.kind)
            .field("commit_sha", &self.commit_sha)
            .field("project_root", &self.project_root)
            .field("env", &self.env)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl From<&RunAssignment> for RunSpec {
    fn from(a: &RunAssignment) -> Self {
        RunSpec {
            run_id: a.run_id,
            kind: a.kind,
            repository: a.stack.repository.clone(),
            commit_sha: a.commit_sha.clone(),
            project_root: a.stack.project_root.clone(),
            command: a.command.clone(),
            env: a.env.clone(),
            tool: a.tool.clone(),
            backend: Backend::Http {
                state_url: a.state_url.clone(),
                run_token: a.run_token.clone(),
            },
            mirror: Some(Mirror {
                url: a.provider_mirror_url.clone(),
                token: a.run_token.clone(),
            }),
            autodeploy: a.autodeploy,
        }
    }
}

impl RunSpec {
    /// Every value that must never appear in a log.
    pub fn secrets(&self) -> Vec<String> {
        let mut s: Vec<String> = self
            .env
            .iter()
            .filter(|e| e.secret)
            .map(|e| e.value.clone())
            .collect();
        if let Backend::Http { run_token, .. } = &self.backend {
            s.push(run_token.clone());
        }
        if let Some(m) = &self.mirror {
            s.push(m.token.clone());
        }
        if let Ok(u) = url::Url::parse(&self.repository)
            && let Some(p) = u.password()
        {
            s.push(p.to_string());
            // Also as git prints it, percent-decoded.
            if let Ok(d) = percent_decode(p) {
                s.push(d);
            }
        }
        s
    }
}

fn percent_decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out)
}

/// How the engine runs, from the worker's configuration.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Tool binaries and the provider plugin cache, shared by runs.
    pub cache_dir: PathBuf,
    /// CA bundle for the VCS, given to git as `GIT_SSL_CAINFO`.
    pub vcs_ca: Option<PathBuf>,
    /// The appliance CA, given to Terraform as `SSL_CERT_FILE`.
    pub appliance_ca: Option<PathBuf>,
    /// Between SIGTERM and SIGKILL when a command is stopped.
    pub stop_grace: Duration,
    pub chunks: ChunkPolicy,
}

/// How a run ended on this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub state: RunState,
    pub note: String,
    pub changes: Option<Changes>,
}

/// Failures of the engine's own work (not of the tool).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot use {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create a pipe for a command's output")]
    Pipe {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot wait for {program}")]
    Wait {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fetching the tool from {url} failed")]
    ToolDownload {
        url: String,
        #[source]
        source: HookError,
    },
    #[error("the tool from {url} has SHA-256 {actual}, expected {expected}")]
    ToolChecksum {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("the tool's SHA-256 {sha256:?} is not 64 hex digits")]
    BadToolHash { sha256: String },
    #[error("{url:?} is not a valid URL")]
    BadUrl { url: String },
    #[error("commit {sha:?} is not a hex object id")]
    BadCommit { sha: String },
    #[error("project root {root:?} is not a directory inside the repository")]
    BadProjectRoot { root: String },
    #[error("the work directory {path} is not empty")]
    WorkDirInUse { path: PathBuf },
    #[error("a task run has no command")]
    NoCommand,
}

/// Lines of a failing command kept in the run's note.
const NOTE_LINES: usize = 12;

/// Environment names the worker sets itself; a stack cannot override them.
const RESERVED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "TF_CLI_CONFIG_FILE",
    "SSL_CERT_FILE",
    "TF_IN_AUTOMATION",
    "TF_INPUT",
    "CHECKPOINT_DISABLE",
];

/// The proxy settings Terraform is given from the worker's own environment,
/// both spellings, so that its HTTP state backend, the provider mirror and
/// module downloads take the route the worker's own HTTPS takes. A stack's
/// variables of the same names come after them and win.
const PROXY_ENV: &[&str] = &[
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// The proxy variables among `vars` (the worker's environment).
pub fn proxy_env(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    vars.into_iter()
        .filter(|(k, _)| PROXY_ENV.contains(&k.as_str()))
        .collect()
}

/// Runs `spec` in `work_dir` (created, or empty) until it ends on this worker.
/// The engine reports every state it moves the run to; the returned outcome is
/// the last one.
pub async fn execute<H: RunHooks>(
    spec: &RunSpec,
    work_dir: &Path,
    opts: &EngineOptions,
    hooks: &H,
    stop: &StopSignal,
) -> Outcome {
    let run = Run {
        spec,
        work_dir,
        opts,
        hooks,
        stop,
        masker_secrets: spec.secrets(),
    };
    let outcome = run.phases().await;
    info!(run_id = spec.run_id, state = %outcome.state, "run ended on this worker");
    outcome
}

struct Run<'a, H: RunHooks> {
    spec: &'a RunSpec,
    work_dir: &'a Path,
    opts: &'a EngineOptions,
    hooks: &'a H,
    stop: &'a StopSignal,
    masker_secrets: Vec<String>,
}

/// A phase's end that is not "go on".
enum Halt {
    /// Report this and end.
    Report(RunState, String),
    /// Already decided elsewhere: end in this state without reporting.
    Ended(RunState, String),
}

impl<'a, H: RunHooks> Run<'a, H> {
    fn log(&self, phase: Phase) -> LogStream<'a, H> {
        LogStream::new(
            self.hooks,
            phase,
            Masker::new(self.masker_secrets.iter().map(String::as_str)),
            self.opts.chunks,
        )
    }

    fn mask(&self, text: &str) -> String {
        Masker::new(self.masker_secrets.iter().map(String::as_str)).mask_all(text)
    }

    async fn report(&self, to: RunState, note: &str, changes: Option<Changes>) -> Result<(), Halt> {
        self.send(StateReport {
            to,
            note: self.mask(note),
            changes,
            commit_message: None,
        })
        .await
    }

    async fn send(&self, report: StateReport) -> Result<(), Halt> {
        match self.hooks.report(report).await {
            Ok(()) => Ok(()),
            Err(r) => Err(Halt::Ended(
                r.state,
                format!("the appliance ended the run ({})", r.state),
            )),
        }
    }

    async fn end(&self, halt: Halt, changes: Option<Changes>) -> Outcome {
        match halt {
            Halt::Ended(state, note) => Outcome {
                state,
                note,
                changes,
            },
            Halt::Report(state, note) => {
                let note = self.mask(&note);
                match self.report(state, &note, changes).await {
                    Ok(()) => Outcome {
                        state,
                        note,
                        changes,
                    },
                    Err(Halt::Ended(s, n)) | Err(Halt::Report(s, n)) => Outcome {
                        state: s,
                        note: n,
                        changes,
                    },
                }
            }
        }
    }

    /// A stop requested before a phase starts ends the run there.
    fn stopped(&self) -> Result<(), Halt> {
        match self.stop.current() {
            Some(reason) => Err(Halt::Report(RunState::Stopped, reason)),
            None => Ok(()),
        }
    }

    async fn phases(&self) -> Outcome {
        let prepared = match self.prepare().await {
            Ok(p) => p,
            Err(h) => return self.end(h, None).await,
        };
        if let Err(h) = self.initialize(&prepared).await {
            return self.end(h, None).await;
        }
        let changes = match self.plan(&prepared).await {
            Ok(c) => c,
            Err(h) => return self.end(h, None).await,
        };
        let Some(changes) = changes else {
            // Task runs end in their planning phase.
            return self
                .end(
                    Halt::Report(RunState::Finished, "task finished".into()),
                    None,
                )
                .await;
        };
        self.decide_and_apply(&prepared, changes).await
    }

    async fn prepare(&self) -> Result<Prepared, Halt> {
        self.report(RunState::Preparing, "worker preparing the run", None)
            .await?;
        let mut log = self.log(Phase::Preparing);
        let r = self.prepare_inner(&mut log).await;
        log.finish().await;
        r
    }

    async fn prepare_inner(&self, log: &mut LogStream<'a, H>) -> Result<Prepared, Halt> {
        let fail = |e: EngineError| {
            Halt::Report(
                RunState::Failed,
                format!("preparing failed: {}", hangar_types::error_chain(&e)),
            )
        };
        let layout = Layout::create(self.work_dir).map_err(fail)?;
        self.stopped()?;
        let git = git::Git {
            vcs_ca: self.opts.vcs_ca.clone(),
            grace: self.opts.stop_grace,
        };
        match git
            .checkout(
                &self.spec.repository,
                &self.spec.commit_sha,
                &layout.src,
                log,
                self.stop,
            )
            .await
        {
            Ok(git::Checkout::Done) => {}
            Ok(git::Checkout::Stopped(reason)) => {
                return Err(Halt::Report(RunState::Stopped, reason));
            }
            Ok(git::Checkout::Failed(what)) => {
                let tail = log.tail_lines(NOTE_LINES);
                return Err(Halt::Report(RunState::Failed, format!("{what}\n{tail}")));
            }
            Err(e) => return Err(fail(e)),
        }
        let commit_message = git.message(&layout.src, log).await;
        let root = project_root(&layout.src, &self.spec.project_root).map_err(fail)?;
        self.stopped()?;
        let tool = tool::ensure(self.hooks, &self.spec.tool, &self.opts.cache_dir, log)
            .await
            .map_err(fail)?;
        let plugins = self.opts.cache_dir.join("plugins");
        std::fs::create_dir_all(&plugins).map_err(|source| {
            fail(EngineError::Io {
                path: plugins.clone(),
                source,
            })
        })?;
        let cli = files::cli_config(self.spec.mirror.as_ref(), &plugins).map_err(fail)?;
        write_private(&layout.cli_config, &cli).map_err(fail)?;
        let mut env = proxy_env(std::env::vars());
        for v in &self.spec.env {
            if RESERVED_ENV.contains(&v.name.as_str()) || v.name.is_empty() || v.name.contains('=')
            {
                log.line(&format!(
                    "ignoring environment variable {:?}: the worker sets it",
                    v.name
                ))
                .await;
                continue;
            }
            env.push((v.name.clone(), v.value.clone()));
        }
        let tool_dir = tool
            .parent()
            .expect("cached tool has a directory")
            .to_path_buf();
        env.extend([
            ("PATH".to_string(), process::tool_path(&tool_dir)),
            ("HOME".to_string(), layout.home.display().to_string()),
            ("TMPDIR".to_string(), layout.tmp.display().to_string()),
            (
                "TF_CLI_CONFIG_FILE".to_string(),
                layout.cli_config.display().to_string(),
            ),
            ("TF_IN_AUTOMATION".to_string(), "1".to_string()),
            ("TF_INPUT".to_string(), "0".to_string()),
            ("CHECKPOINT_DISABLE".to_string(), "1".to_string()),
        ]);
        if let Some(ca) = &self.opts.appliance_ca {
            env.push(("SSL_CERT_FILE".to_string(), ca.display().to_string()));
        }
        Ok(Prepared {
            layout,
            root,
            tool,
            env,
            commit_message,
        })
    }

    fn cmd(&self, p: &Prepared, program: &Path, args: &[&str], display: &str) -> Cmd {
        Cmd {
            program: program.to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
            cwd: p.root.clone(),
            env: p.env.clone(),
            display: display.to_string(),
        }
    }

    async fn run_tool(
        &self,
        cmd: &Cmd,
        log: &mut LogStream<'a, H>,
        stoppable: bool,
        what: &str,
    ) -> Result<i32, Halt> {
        match process::run(cmd, log, self.stop, stoppable, self.opts.stop_grace).await {
            Ok(Ended::Exited(c)) => Ok(c),
            Ok(Ended::Stopped(reason)) => Err(Halt::Report(RunState::Stopped, reason)),
            Ok(Ended::Signaled(s)) => {
                let tail = log.tail_lines(NOTE_LINES);
                Err(Halt::Report(
                    RunState::Failed,
                    format!("{what} was killed by signal {s}\n{tail}"),
                ))
            }
            Err(e) => Err(Halt::Report(
                RunState::Failed,
                format!("{what}: {}", hangar_types::error_chain(&e)),
            )),
        }
    }

    fn failed(&self, log: &LogStream<'a, H>, what: &str, code: i32) -> Halt {
        let tail = log.tail_lines(NOTE_LINES);
        Halt::Report(
            RunState::Failed,
            format!("{what} failed (exit code {code})\n{tail}"),
        )
    }

    async fn initialize(&self, p: &Prepared) -> Result<(), Halt> {
        self.stopped()?;
        // The commit's message travels with this report: it is read from the
        // checkout, masked like any text leaving the worker.
        self.send(StateReport {
            to: RunState::Initializing,
            note: "terraform init".into(),
            changes: None,
            commit_message: p
                .commit_message
                .as_deref()
                .and_then(|m| hangar_types::worker::commit_subject(&self.mask(m))),
        })
        .await?;
        let mut log = self.log(Phase::Initializing);
        let r = self.initialize_inner(p, &mut log).await;
        log.finish().await;
        r
    }

    async fn initialize_inner(&self, p: &Prepared, log: &mut LogStream<'a, H>) -> Result<(), Halt> {
        let fail = |e: EngineError| {
            Halt::Report(
                RunState::Failed,
                format!("initializing failed: {}", hangar_types::error_chain(&e)),
            )
        };
        let mut args: Vec<String> = vec!["init".into(), "-input=false".into(), "-no-color".into()];
        if let Backend::Http {
            state_url,
            run_token,
        } = &self.spec.backend
        {
            let override_path = p.root.join(files::BACKEND_OVERRIDE);
            write_fresh(&override_path, files::backend_override()).map_err(fail)?;
            write_private(
                &p.layout.backend_config,
                &files::backend_config(state_url, run_token),
            )
            .map_err(fail)?;
            log.line(&format!(
                "state: the appliance's HTTP backend at {state_url}"
            ))
            .await;
            args.push(format!(
                "-backend-config={}",
                p.layout.backend_config.display()
            ));
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let cmd = self.cmd(
            p,
            &p.tool,
            &argv,
            &format!("{} {}", self.tool_name(), args.join(" ")),
        );
        match self.run_tool(&cmd, log, true, "terraform init").await? {
            0 => Ok(()),
            c => Err(self.failed(log, "terraform init", c)),
        }
    }

    fn tool_name(&self) -> &'static str {
        match self.spec.tool.tool {
            hangar_types::Tool::Terraform => "terraform",
            hangar_types::Tool::Opentofu => "tofu",
        }
    }

    /// `Ok(None)` for a task run (its command ran), else the plan's changes.
    async fn plan(&self, p: &Prepared) -> Result<Option<PlanResult>, Halt> {
        self.stopped()?;
        let note = if self.spec.kind == RunKind::Task {
            "running the task"
        } else {
            "terraform plan"
        };
        self.report(RunState::Planning, note, None).await?;
        let mut log = self.log(Phase::Planning);
        let r = if self.spec.kind == RunKind::Task {
            self.task_inner(p, &mut log).await.map(|()| None)
        } else {
            self.plan_inner(p, &mut log).await.map(Some)
        };
        log.finish().await;
        r
    }

    async fn task_inner(&self, p: &Prepared, log: &mut LogStream<'a, H>) -> Result<(), Halt> {
        let Some(command) = self.spec.command.as_deref() else {
            return Err(Halt::Report(
                RunState::Failed,
                hangar_types::error_chain(&EngineError::NoCommand),
            ));
        };
        let cmd = self.cmd(p, Path::new("/bin/sh"), &["-c", command], command);
        match self.run_tool(&cmd, log, true, "the task").await? {
            0 => Ok(()),
            c => Err(self.failed(log, "the task", c)),
        }
    }

    async fn plan_inner(
        &self,
        p: &Prepared,
        log: &mut LogStream<'a, H>,
    ) -> Result<PlanResult, Halt> {
        let fail = |e: EngineError| {
            Halt::Report(
                RunState::Failed,
                format!("planning failed: {}", hangar_types::error_chain(&e)),
            )
        };
        let out = format!("-out={}", p.layout.plan.display());
        let args = [
            "plan",
            "-input=false",
            "-no-color",
            out.as_str(),
            "-detailed-exitcode",
        ];
        let cmd = self.cmd(
            p,
            &p.tool,
            &args,
            &format!("{} {}", self.tool_name(), args.join(" ")),
        );
        let has_changes = match self.run_tool(&cmd, log, true, "terraform plan").await? {
            0 => false,
            2 => true,
            c => return Err(self.failed(log, "terraform plan", c)),
        };
        let plan_path = p.layout.plan.display().to_string();
        let show = self.cmd(
            p,
            &p.tool,
            &["show", "-json", "-no-color", &plan_path],
            "terraform show -json",
        );
        let (code, json) = process::capture(&show, log).await.map_err(fail)?;
        if code != 0 {
            return Err(self.failed(log, "terraform show -json", code));
        }
        let changes = files::plan_changes(&json).map_err(|e| {
            Halt::Report(
                RunState::Failed,
                format!("terraform show -json printed no readable plan: {e}"),
            )
        })?;
        let summary = format!(
            "Plan: {} to add, {} to change, {} to destroy, {} output(s) changed.",
            changes.add, changes.change, changes.destroy, changes.outputs
        );
        log.line(&summary).await;
        // The appliance's plan policies read this; one too large to keep is
        // not sent, and a stack with plan policies then fails its run there.
        if json.len() as u64 > MAX_PLAN_JSON_BYTES {
            log.line(&format!(
                "the plan's JSON is {} bytes, more than the {MAX_PLAN_JSON_BYTES} bytes the appliance keeps: plan policies cannot read it",
                json.len()
            ))
            .await;
        } else if let Err(e) = self.hooks.upload_plan_json(json).await {
            return Err(Halt::Report(
                RunState::Failed,
                format!("uploading the plan's JSON failed: {}", hangar_types::error_chain(&*e)),
            ));
        }
        let size = std::fs::metadata(&p.layout.plan)
            .map_err(|source| {
                fail(EngineError::Io {
                    path: p.layout.plan.clone(),
                    source,
                })
            })?
            .len();
        // Refused here rather than by the appliance after the upload: the run
        // must not go on to apply a plan the appliance never stored.
        if size > MAX_PLAN_BYTES {
            let message = format!(
                "the saved plan is {size} bytes, more than the {MAX_PLAN_BYTES} bytes the appliance stores"
            );
            log.line(&message).await;
            return Err(Halt::Report(RunState::Failed, message));
        }
        let sha256 = tool::sha256_file(&p.layout.plan).await.map_err(fail)?;
        if let Err(e) = self
            .hooks
            .upload_plan(&p.layout.plan, PlanUpload { size, sha256 })
            .await
        {
            return Err(Halt::Report(
                RunState::Failed,
                format!("uploading the plan failed: {}", hangar_types::error_chain(&*e)),
            ));
        }
        Ok(PlanResult {
            changes,
            has_changes,
            summary,
        })
    }

    async fn decide_and_apply(&self, p: &Prepared, plan: PlanResult) -> Outcome {
        let changes = Some(plan.changes);
        let applies = self.spec.kind.may_apply() && plan.has_changes;
        if !applies {
            let note = if plan.has_changes {
                format!("{} ({} run: plan only)", plan.summary, self.spec.kind)
            } else {
                "no changes".to_string()
            };
            return self
                .end(Halt::Report(RunState::Finished, note), changes)
                .await;
        }
        if let Err(h) = self.stopped() {
            return self.end(h, changes).await;
        }
        if !self.spec.autodeploy {
            if let Err(h) = self
                .report(RunState::Unconfirmed, &plan.summary, changes)
                .await
            {
                return self.end(h, changes).await;
            }
            let decision = tokio::select! {
                d = self.hooks.confirmation() => d,
                reason = self.stop.requested() => {
                    // Nothing was applied; an unconfirmed run can only fail from here.
                    let note = format!("{reason}: the plan was not applied");
                    return self.end(Halt::Report(RunState::Failed, note), changes).await;
                }
            };
            match decision {
                Decision::Apply => {}
                Decision::Ended(state) => {
                    return Outcome {
                        state,
                        note: format!("the run was {state} before applying"),
                        changes,
                    };
                }
            }
        }
        if let Err(h) = self
            .report(RunState::Applying, "applying the saved plan", changes)
            .await
        {
            return self.end(h, changes).await;
        }
        let mut log = self.log(Phase::Applying);
        let result = self.apply_inner(p, &mut log).await;
        log.finish().await;
        let halt = match result {
            Ok(()) => Halt::Report(RunState::Finished, "applied".into()),
            Err(h) => h,
        };
        self.end(halt, changes).await
    }

    async fn apply_inner(&self, p: &Prepared, log: &mut LogStream<'a, H>) -> Result<(), Halt> {
        let errored = p.root.join(ERRORED_STATE);
        // Only what this apply leaves is uploaded: one the repository carried
        // (perhaps a link to a file of this host) goes first.
        if std::fs::symlink_metadata(&errored).is_ok() {
            log.line("removing the errored.tfstate the repository carries")
                .await;
            std::fs::remove_file(&errored).map_err(|source| {
                Halt::Report(
                    RunState::Failed,
                    hangar_types::error_chain(&EngineError::Io {
                        path: errored.clone(),
                        source,
                    }),
                )
            })?;
        }
        let plan_path = p.layout.plan.display().to_string();
        let args = ["apply", "-input=false", "-no-color", plan_path.as_str()];
        let cmd = self.cmd(
            p,
            &p.tool,
            &args,
            &format!("{} {}", self.tool_name(), args.join(" ")),
        );
        // Never stopped by the worker: an interrupted apply leaves state and
        // reality apart.
        let result = self.run_tool(&cmd, log, false, "terraform apply").await;
        let left = std::fs::symlink_metadata(&errored)
            .map(|m| m.file_type().is_file())
            .unwrap_or(false);
        let errored_note = if left {
            let note = match std::fs::read(&errored) {
                Ok(bytes) => match self.hooks.upload_errored_state(bytes).await {
                    Ok(()) => "Terraform could not save the state: its errored.tfstate was uploaded to the appliance"
                        .to_string(),
                    Err(e) => format!(
                        "Terraform could not save the state, and uploading its errored.tfstate failed ({}); it is kept in {}",
                        hangar_types::error_chain(&*e),
                        errored.display()
                    ),
                },
                Err(e) => format!("Terraform could not save the state, and its errored.tfstate is unreadable: {e}"),
            };
            log.line(&note).await;
            warn!(run_id = self.spec.run_id, "{note}");
            Some(note)
        } else {
            None
        };
        let code = result?;
        match (code, errored_note) {
            (0, None) => Ok(()),
            (0, Some(note)) => Err(Halt::Report(RunState::Failed, note)),
            (c, None) => Err(self.failed(log, "terraform apply", c)),
            (c, Some(note)) => {
                let tail = log.tail_lines(NOTE_LINES);
                Err(Halt::Report(
                    RunState::Failed,
                    format!("terraform apply failed (exit code {c}); {note}\n{tail}"),
                ))
            }
        }
    }
}

struct PlanResult {
    changes: Changes,
    has_changes: bool,
    summary: String,
}

/// The work directory of one run.
struct Layout {
    src: PathBuf,
    home: PathBuf,
    tmp: PathBuf,
    cli_config: PathBuf,
    backend_config: PathBuf,
    plan: PathBuf,
}

impl Layout {
    fn create(dir: &Path) -> Result<Layout, EngineError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| EngineError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        if std::fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
            return Err(EngineError::WorkDirInUse {
                path: dir.to_path_buf(),
            });
        }
        let l = Layout {
            src: dir.join("src"),
            home: dir.join("home"),
            tmp: dir.join("tmp"),
            cli_config: dir.join("terraform.rc"),
            backend_config: dir.join("backend.tfbackend"),
            plan: dir.join("plan.tfplan"),
        };
        for d in [&l.home, &l.tmp] {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        Ok(l)
    }
}

struct Prepared {
    layout: Layout,
    root: PathBuf,
    tool: PathBuf,
    env: Vec<(String, String)>,
    /// The checked-out commit's message, if git could say.
    commit_message: Option<String>,
}

fn project_root(src: &Path, root: &str) -> Result<PathBuf, EngineError> {
    let bad = || EngineError::BadProjectRoot {
        root: root.to_string(),
    };
    let rel = Path::new(root.trim_matches('/'));
    if Path::new(root).is_absolute()
        || rel.components().any(|c| {
            !matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        })
    {
        return Err(bad());
    }
    let full = src.join(rel);
    // Symlinks in the repository must not lead outside it.
    let canon = full.canonicalize().map_err(|_| bad())?;
    let src_canon = src.canonicalize().map_err(|source| EngineError::Io {
        path: src.to_path_buf(),
        source,
    })?;
    if !canon.starts_with(&src_canon) || !canon.is_dir() {
        return Err(bad());
    }
    Ok(canon)
}

/// Writes a new file where the repository may have put something of the same
/// name: whatever is there (a link included) is replaced, never written through.
fn write_fresh(path: &Path, contents: &str) -> Result<(), EngineError> {
    use std::io::Write;
    let io = |source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            return Err(io(std::io::Error::other(
                "a directory of that name is in the way",
            )));
        }
        Ok(_) => std::fs::remove_file(path).map_err(io)?,
        Err(_) => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)
}

fn write_private(path: &Path, contents: &str) -> Result<(), EngineError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    f.write_all(contents.as_bytes())
        .map_err(|source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terraform_gets_the_workers_proxy_settings_and_nothing_else() {
        let vars = [
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("no_proxy", "git.internal"),
            ("HOME", "/root"),
            ("https_proxy_extra", "x"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(
            proxy_env(vars),
            vec![
                ("HTTPS_PROXY".to_string(), "http://proxy:3128".to_string()),
                ("no_proxy".to_string(), "git.internal".to_string()),
            ]
        );
    }
}
