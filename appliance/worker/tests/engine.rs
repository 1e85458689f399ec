//! The run engine against the genuine Terraform 1.0.3 and a real git server:
//! plans with and without changes, confirmation, autodeploy, failures with
//! useful notes, secret masking across chunk boundaries, log sequence numbers,
//! cancellation of the whole process group, and `errored.tfstate`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_testkit::git::GitServerOptions;
use hangar_testkit::{GitServer, TestDir, wait_for};
use hangar_types::worker::{EnvVar, Phase, PlanUpload, StateReport, ToolSpec};
use hangar_types::{RunKind, RunState, Tool};
use hangar_worker::engine::{
    self, Backend, ChunkPolicy, Decision, EngineOptions, HookError, Mirror, Outcome, Refused,
    RunHooks, RunSpec, StopSignal,
};
use tokio::sync::watch;

const RUN_TOKEN: &str = "hrt_run_token_that_must_never_show";

/// A configuration that needs no provider. Its state lives beside the runs'
/// work directories, so consecutive runs share it.
const CONFIG: &str = r#"
terraform {
  backend "local" {
    path = "../../../shared.tfstate"
  }
}

variable "greeting" {
  type    = string
  default = "hello"
}

locals {
  message = "${var.greeting} world"
}

output "message" {
  value = local.message
}
"#;

#[derive(Debug, Clone)]
enum Event {
    Report(StateReport),
    Log(Phase, u64, Vec<u8>),
    Plan(PlanUpload, Vec<u8>),
    PlanJson(Vec<u8>),
    Errored(Vec<u8>),
}

/// Records everything the engine hands over; serves the tool from a local file.
struct Recorder {
    events: Mutex<Vec<Event>>,
    tool_source: PathBuf,
    downloads: AtomicU32,
    decision: watch::Receiver<Option<Decision>>,
    refuse: Option<RunState>,
}

impl Recorder {
    fn new(decision: watch::Receiver<Option<Decision>>) -> Recorder {
        Recorder {
            events: Mutex::default(),
            tool_source: hangar_testkit::terraform::terraform(),
            downloads: AtomicU32::new(0),
            decision,
            refuse: None,
        }
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    fn states(&self) -> Vec<RunState> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Report(r) => Some(r.to),
                _ => None,
            })
            .collect()
    }

    fn last_report(&self) -> StateReport {
        self.events()
            .into_iter()
            .rev()
            .find_map(|e| match e {
                Event::Report(r) => Some(r),
                _ => None,
            })
            .expect("a report")
    }

    /// The commit message reported (with INITIALIZING, and only there).
    fn commit_message(&self) -> Option<String> {
        let reports: Vec<StateReport> = self
            .events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Report(r) => Some(r),
                _ => None,
            })
            .collect();
        for r in &reports {
            assert_eq!(
                r.commit_message.is_some(),
                r.to == RunState::Initializing,
                "a commit message with {:?}",
                r.to
            );
        }
        reports.into_iter().find_map(|r| r.commit_message)
    }

    /// Every phase's chunks, checked to be numbered 0, 1, 2, ... in order.
    fn logs(&self) -> BTreeMap<&'static str, Vec<Vec<u8>>> {
        let mut by: BTreeMap<&'static str, Vec<Vec<u8>>> = BTreeMap::new();
        for e in self.events() {
            if let Event::Log(phase, seq, data) = e {
                let chunks = by.entry(phase.as_str()).or_default();
                assert_eq!(
                    seq,
                    chunks.len() as u64,
                    "chunk numbers of {} are contiguous from 0",
                    phase.as_str()
                );
                assert!(!data.is_empty(), "no empty chunk");
                chunks.push(data);
            }
        }
        by
    }

    fn log_text(&self, phase: Phase) -> String {
        let logs = self.logs();
        String::from_utf8_lossy(
            &logs
                .get(phase.as_str())
                .cloned()
                .unwrap_or_default()
                .concat(),
        )
        .into_owned()
    }

    fn all_text(&self) -> String {
        let mut s = String::new();
        for e in self.events() {
            match e {
                Event::Log(_, _, d) => s.push_str(&String::from_utf8_lossy(&d)),
                Event::Report(r) => {
                    s.push_str(&r.note);
                    s.push_str(r.commit_message.as_deref().unwrap_or_default());
                }
                _ => {}
            }
            s.push('\n');
        }
        s
    }
}

impl RunHooks for Recorder {
    async fn report(&self, report: StateReport) -> Result<(), Refused> {
        let to = report.to;
        self.events.lock().unwrap().push(Event::Report(report));
        match self.refuse {
            Some(state) if to == RunState::Planning => Err(Refused { state }),
            _ => Ok(()),
        }
    }

    async fn log_chunk(&self, phase: Phase, seq: u64, data: Vec<u8>) {
        self.events
            .lock()
            .unwrap()
            .push(Event::Log(phase, seq, data));
    }

    async fn download_tool(&self, _tool: &ToolSpec, dest: &Path) -> Result<(), HookError> {
        self.downloads.fetch_add(1, Ordering::SeqCst);
        std::fs::copy(&self.tool_source, dest)?;
        Ok(())
    }

    async fn upload_plan(&self, path: &Path, upload: PlanUpload) -> Result<(), HookError> {
        let data = std::fs::read(path)?;
        self.events.lock().unwrap().push(Event::Plan(upload, data));
        Ok(())
    }

    async fn upload_plan_json(&self, data: Vec<u8>) -> Result<(), HookError> {
        self.events.lock().unwrap().push(Event::PlanJson(data));
        Ok(())
    }

    async fn upload_errored_state(&self, data: Vec<u8>) -> Result<(), HookError> {
        self.events.lock().unwrap().push(Event::Errored(data));
        Ok(())
    }

    async fn confirmation(&self) -> Decision {
        let mut rx = self.decision.clone();
        loop {
            if let Some(d) = rx.borrow_and_update().clone() {
                return d;
            }
            rx.changed().await.expect("decision sender kept");
        }
    }
}

struct Fixture {
    git: GitServer,
    dir: TestDir,
    cache: PathBuf,
}

impl Fixture {
    async fn new(label: &str) -> Fixture {
        hangar_testkit::init();
        let git = GitServer::start().await;
        git.create_repo("stack");
        let dir = TestDir::new(label);
        let cache = dir.subdir("cache");
        dir.subdir("runs");
        Fixture { git, dir, cache }
    }

    fn push(&self, files: &[(&str, &str)]) -> String {
        self.git.push_files("stack", "main", files, "change")
    }

    /// Commits `files` and symbolic links (path, target) with the git CLI.
    fn push_with_links(&self, files: &[(&str, &str)], links: &[(&str, &Path)]) -> String {
        let work = self.dir.path().join(format!("push-{}", std::process::id()));
        let git = |args: &[&str]| {
            let out = self
                .git
                .git()
                .current_dir(&work)
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        std::fs::create_dir_all(&work).unwrap();
        git(&["init", "--quiet", "-b", "main", "."]);
        for (path, contents) in files {
            let p = work.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, contents).unwrap();
        }
        for (path, target) in links {
            let p = work.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, p).unwrap();
        }
        git(&["add", "--all"]);
        git(&[
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@hangar.invalid",
            "commit",
            "--quiet",
            "-m",
            "links",
        ]);
        git(&[
            "push",
            "--quiet",
            "--force",
            &self.git.authed_url("stack"),
            "HEAD:refs/heads/main",
        ]);
        git(&["rev-parse", "HEAD"])
    }

    fn spec(&self, run_id: i64, kind: RunKind, sha: &str) -> RunSpec {
        RunSpec {
            run_id,
            kind,
            repository: self.git.url("stack"),
            commit_sha: sha.to_string(),
            project_root: "infra".into(),
            command: None,
            env: vec![],
            tool: ToolSpec {
                tool: Tool::Terraform,
                version: hangar_testkit::terraform::VERSION.into(),
                url: "https://appliance.invalid:1983/v1/tools/terraform/1.0.3/linux_amd64".into(),
                sha256: hangar_testkit::terraform::SHA256.into(),
            },
            backend: Backend::Configured,
            // Unreachable on purpose: the configuration needs no provider.
            mirror: Some(Mirror {
                url: "https://127.0.0.1:9/v1/providers/".into(),
                token: RUN_TOKEN.into(),
            }),
            autodeploy: false,
        }
    }

    fn options(&self) -> EngineOptions {
        EngineOptions {
            cache_dir: self.cache.clone(),
            vcs_ca: None,
            appliance_ca: None,
            stop_grace: Duration::from_secs(1),
            chunks: ChunkPolicy::default(),
        }
    }

    fn work_dir(&self, run_id: i64) -> PathBuf {
        self.dir.path().join(format!("runs/run-{run_id}"))
    }

    fn state_file(&self) -> PathBuf {
        self.dir.path().join("runs/shared.tfstate")
    }

    async fn execute(&self, spec: &RunSpec, opts: &EngineOptions, hooks: &Recorder) -> Outcome {
        let (_stop, signal) = StopSignal::new();
        engine::execute(spec, &self.work_dir(spec.run_id), opts, hooks, &signal).await
    }
}

fn decided(
    d: Option<Decision>,
) -> (
    watch::Sender<Option<Decision>>,
    watch::Receiver<Option<Decision>>,
) {
    watch::channel(d)
}

fn state_outputs(path: &Path) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("state file")).expect("state JSON");
    v["outputs"].clone()
}

#[tokio::test]
async fn tracked_run_waits_for_confirmation_applies_and_a_rerun_has_no_changes() {
    let f = Fixture::new("engine-tracked").await;
    let sha = f.push(&[("infra/main.tf", CONFIG), ("README.md", "a stack\n")]);
    let (decide, rx) = decided(None);
    let hooks = Arc::new(Recorder::new(rx));
    let spec = f.spec(1, RunKind::Tracked, &sha);
    let opts = f.options();
    let run = {
        let (hooks, spec, opts, dir) = (hooks.clone(), spec.clone(), opts.clone(), f.work_dir(1));
        tokio::spawn(async move {
            let (_stop, signal) = StopSignal::new();
            engine::execute(&spec, &dir, &opts, &*hooks, &signal).await
        })
    };
    wait_for(
        "the run to await confirmation",
        Duration::from_secs(120),
        || {
            let s = hooks.states();
            async move { s.contains(&RunState::Unconfirmed).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        hooks.states(),
        [
            RunState::Preparing,
            RunState::Initializing,
            RunState::Planning,
            RunState::Unconfirmed
        ]
    );
    let unconfirmed = hooks.last_report();
    let changes = unconfirmed
        .changes
        .expect("changes reported with UNCONFIRMED");
    assert_eq!(
        (
            changes.add,
            changes.change,
            changes.destroy,
            changes.outputs
        ),
        (0, 0, 0, 1)
    );
    assert_eq!(hooks.commit_message().as_deref(), Some("change"));
    assert!(
        !f.state_file().exists(),
        "nothing applied before confirmation"
    );
    // The saved plan was handed over whole, described by its size and hash.
    let (upload, data) = hooks
        .events()
        .into_iter()
        .find_map(|e| match e {
            Event::Plan(u, d) => Some((u, d)),
            _ => None,
        })
        .expect("plan uploaded");
    assert_eq!(upload.size, data.len() as u64);
    assert_eq!(upload.sha256, sha256_hex(&data));
    // And the plan as `terraform show -json` printed it, for plan policies,
    // before the report that leaves PLANNING.
    let events = hooks.events();
    let json_at = events.iter().position(|e| matches!(e, Event::PlanJson(_))).expect("plan JSON uploaded");
    let unconfirmed_at = events
        .iter()
        .position(|e| matches!(e, Event::Report(r) if r.to == RunState::Unconfirmed))
        .expect("UNCONFIRMED reported");
    assert!(json_at < unconfirmed_at, "the plan's JSON goes before the report");
    let Event::PlanJson(json) = &events[json_at] else { unreachable!() };
    let plan: serde_json::Value = serde_json::from_slice(json).expect("the plan JSON parses");
    // This configuration has outputs only: they are what the plan changes.
    assert_eq!(plan["output_changes"]["message"]["after"], "hello world", "{plan}");

    decide.send(Some(Decision::Apply)).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("run ends")
        .unwrap();
    assert_eq!(
        outcome.state,
        RunState::Finished,
        "{outcome:?}\n{}",
        hooks.all_text()
    );
    assert_eq!(
        hooks.states(),
        [
            RunState::Preparing,
            RunState::Initializing,
            RunState::Planning,
            RunState::Unconfirmed,
            RunState::Applying,
            RunState::Finished
        ]
    );
    assert_eq!(
        state_outputs(&f.state_file())["message"]["value"],
        "hello world"
    );
    let logs = hooks.logs();
    for phase in ["preparing", "initializing", "planning", "applying"] {
        assert!(logs.contains_key(phase), "{phase} has a log");
    }
    assert!(hooks.log_text(Phase::Preparing).contains(&sha));
    assert!(
        hooks
            .log_text(Phase::Initializing)
            .contains("Terraform has been successfully initialized")
    );
    assert!(
        hooks
            .log_text(Phase::Planning)
            .contains("message = \"hello world\"")
    );
    assert!(hooks.log_text(Phase::Applying).contains("Apply complete!"));
    assert!(!hooks.all_text().contains(RUN_TOKEN));

    // The same commit again: nothing to do, and the tool comes from the cache.
    let again = Recorder::new(decided(None).1);
    let outcome = f
        .execute(&f.spec(2, RunKind::Tracked, &sha), &opts, &again)
        .await;
    assert_eq!(outcome.state, RunState::Finished, "{}", again.all_text());
    assert_eq!(
        again.states(),
        [
            RunState::Preparing,
            RunState::Initializing,
            RunState::Planning,
            RunState::Finished
        ]
    );
    assert_eq!(again.last_report().note, "no changes");
    assert_eq!(
        again.downloads.load(Ordering::SeqCst),
        0,
        "the cached tool was used"
    );
    assert_eq!(hooks.downloads.load(Ordering::SeqCst), 1);
    assert!(again.log_text(Phase::Preparing).contains("from the cache"));
}

#[tokio::test]
async fn a_second_commit_changing_an_output_is_planned_and_applied_with_autodeploy() {
    let f = Fixture::new("engine-autodeploy").await;
    let first = f.push(&[("infra/main.tf", CONFIG)]);
    let opts = f.options();
    let mut spec = f.spec(1, RunKind::Tracked, &first);
    spec.autodeploy = true;
    let hooks = Recorder::new(decided(None).1);
    let outcome = f.execute(&spec, &opts, &hooks).await;
    assert_eq!(outcome.state, RunState::Finished, "{}", hooks.all_text());
    assert!(
        !hooks.states().contains(&RunState::Unconfirmed),
        "autodeploy does not wait"
    );

    let second = f.push(&[("infra/main.tf", &CONFIG.replace("\"hello\"", "\"goodbye\""))]);
    let mut spec = f.spec(2, RunKind::Tracked, &second);
    spec.autodeploy = true;
    let hooks = Recorder::new(decided(None).1);
    let outcome = f.execute(&spec, &opts, &hooks).await;
    assert_eq!(outcome.state, RunState::Finished, "{}", hooks.all_text());
    assert_eq!(
        hooks.states(),
        [
            RunState::Preparing,
            RunState::Initializing,
            RunState::Planning,
            RunState::Applying,
            RunState::Finished
        ]
    );
    assert!(
        hooks
            .log_text(Phase::Planning)
            .contains("~ message = \"hello world\" -> \"goodbye world\"")
    );
    assert_eq!(
        state_outputs(&f.state_file())["message"]["value"],
        "goodbye world"
    );
}

#[tokio::test]
async fn proposed_runs_only_plan_and_a_discarded_run_applies_nothing() {
    let f = Fixture::new("engine-proposed").await;
    let sha = f.push(&[("infra/main.tf", CONFIG)]);
    let opts = f.options();
    let hooks = Recorder::new(decided(None).1);
    let outcome = f
        .execute(&f.spec(1, RunKind::Proposed, &sha), &opts, &hooks)
        .await;
    assert_eq!(outcome.state, RunState::Finished);
    assert_eq!(
        hooks.states(),
        [
            RunState::Preparing,
            RunState::Initializing,
            RunState::Planning,
            RunState::Finished
        ]
    );
    let last = hooks.last_report();
    assert!(last.note.contains("plan only"), "{}", last.note);
    assert_eq!(last.changes.map(|c| c.outputs), Some(1));
    assert!(
        hooks.events().iter().any(|e| matches!(e, Event::Plan(..))),
        "a proposed run's plan is kept too"
    );
    assert!(!f.state_file().exists());

    let hooks = Recorder::new(decided(Some(Decision::Ended(RunState::Discarded))).1);
    let outcome = f
        .execute(&f.spec(2, RunKind::Tracked, &sha), &opts, &hooks)
        .await;
    assert_eq!(outcome.state, RunState::Discarded);
    assert_eq!(
        hooks.states().last(),
        Some(&RunState::Unconfirmed),
        "nothing reported after a discard"
    );
    assert!(
        !f.state_file().exists(),
        "a discarded plan is never applied"
    );
}

#[tokio::test]
async fn a_syntax_error_and_a_plan_error_fail_with_the_error_in_the_note() {
    let f = Fixture::new("engine-errors").await;
    let opts = f.options();

    let sha = f.push(&[("infra/main.tf", "output \"broken\" {\n  value = \n}\n")]);
    let hooks = Recorder::new(decided(None).1);
    let outcome = f
        .execute(&f.spec(1, RunKind::Tracked, &sha), &opts, &hooks)
        .await;
    assert_eq!(outcome.state, RunState::Failed);
    assert_eq!(
        hooks.states(),
        [
            RunState::Preparing,
            RunState::Initializing,
            RunState::Failed
        ]
    );
    let note = hooks.last_report().note;
    assert!(
        note.starts_with("terraform init failed (exit code 1)"),
        "{note}"
    );
    assert!(
        note.contains("main.tf line 2"),
        "the note points at the error: {note}"
    );

    let sha = f.push(&[(
        "infra/main.tf",
        "output \"x\" {\n  value = file(\"no-such-file.txt\")\n}\n",
    )]);
    let hooks = Recorder::new(decided(None).1);
    let outcome = f
        .execute(&f.spec(2, RunKind::Tracked, &sha), &opts, &hooks)
        .await;
    assert_eq!(outcome.state, RunState::Failed);
    assert_eq!(
        hooks.states(),
        [
            RunState::Preparing,
            RunState::Initializing,
            RunState::Planning,
            RunState::Failed
        ]
    );
    let note = hooks.last_report().note;
    assert!(
        note.starts_with("terraform plan failed (exit code 1)"),
        "{note}"
    );
    assert!(note.contains("no-such-file.txt"), "{note}");
    assert!(
        !hooks.events().iter().any(|e| matches!(e, Event::Plan(..))),
        "no plan from a failed planning"
    );
}

#[tokio::test]
async fn bad_commits_roots_and_tool_checksums_fail_preparing() {
    let f = Fixture::new("engine-preparing").await;
    let sha = f.push(&[("infra/main.tf", CONFIG)]);
    let opts = f.options();

    let mut spec = f.spec(1, RunKind::Tracked, &sha);
    spec.tool.sha256 = "00".repeat(32);
    let hooks = Recorder::new(decided(None).1);
    let outcome = f.execute(&spec, &opts, &hooks).await;
    assert_eq!(outcome.state, RunState::Failed);
    assert!(
        outcome.note.contains("SHA-256") && outcome.note.contains(&"00".repeat(32)),
        "{}",
        outcome.note
    );
    assert!(
        !opts
            .cache_dir
            .join("tools")
            .join("00".repeat(32))
            .join("terraform")
            .exists(),
        "nothing unverified is cached"
    );

    let spec = f.spec(2, RunKind::Tracked, &"ab".repeat(20));
    let hooks = Recorder::new(decided(None).1);
    let outcome = f.execute(&spec, &opts, &hooks).await;
    assert_eq!(outcome.state, RunState::Failed);
    assert!(
        outcome.note.contains("is not in the repository"),
        "{}",
        outcome.note
    );

    let spec = f.spec(3, RunKind::Tracked, "HEAD; rm -rf /");
    let outcome = f
        .execute(&spec, &opts, &Recorder::new(decided(None).1))
        .await;
    assert_eq!(outcome.state, RunState::Failed);
    assert!(
        outcome.note.contains("not a hex object id"),
        "{}",
        outcome.note
    );

    for (i, root) in ["../..", "/etc", "missing"].into_iter().enumerate() {
        let mut spec = f.spec(10 + i as i64, RunKind::Tracked, &sha);
        spec.project_root = root.into();
        let outcome = f
            .execute(&spec, &opts, &Recorder::new(decided(None).1))
            .await;
        assert_eq!(outcome.state, RunState::Failed, "{root}");
        assert!(
            outcome.note.contains("project root"),
            "{root}: {}",
            outcome.note
        );
    }

    // A work directory that is not fresh is refused, not reused.
    let dir = f.work_dir(20);
    std::fs::create_dir_all(dir.join("leftover")).unwrap();
    let outcome = f
        .execute(
            &f.spec(20, RunKind::Tracked, &sha),
            &opts,
            &Recorder::new(decided(None).1),
        )
        .await;
    assert_eq!(outcome.state, RunState::Failed);
    assert!(outcome.note.contains("not empty"), "{}", outcome.note);
}

#[tokio::test]
async fn secrets_are_masked_across_chunks_lines_and_notes() {
    let f = Fixture::new("engine-masking").await;
    let secret = "s3cr3t-Value-42";
    let pem = "-----BEGIN TEST KEY-----\nMIIBVgIBADANBgkqhkiG9w0BAQEF\nAASCAUAwggE8AgEAAkEAq7BFUpkG\n-----END TEST KEY-----";
    let config = r#"
variable "password" {
  type = string
}
output "leak" {
  value = "password is ${var.password}"
}
"#;
    // A commit message naming the secret is masked like any other text.
    let sha = f.git.push_files(
        "stack",
        "main",
        &[("infra/main.tf", config)],
        &format!("rotate to {secret}\n\nbody"),
    );
    let mut opts = f.options();
    // Short chunks: the split secret below is cut by the timer between its halves.
    opts.chunks = ChunkPolicy {
        interval: Duration::from_millis(50),
        max_bytes: 64 * 1024,
    };

    // Terraform itself prints the secret variable in the plan.
    let mut spec = f.spec(1, RunKind::Proposed, &sha);
    spec.env = vec![
        EnvVar {
            name: "TF_VAR_password".into(),
            value: secret.into(),
            secret: true,
        },
        EnvVar {
            name: "VISIBLE".into(),
            value: "plain-value".into(),
            secret: false,
        },
    ];
    let hooks = Recorder::new(decided(None).1);
    let outcome = f.execute(&spec, &opts, &hooks).await;
    assert_eq!(outcome.state, RunState::Finished, "{}", hooks.all_text());
    let planning = hooks.log_text(Phase::Planning);
    assert!(
        planning.contains("leak = \"password is ***\""),
        "{planning}"
    );
    assert!(!hooks.all_text().contains(secret));
    assert_eq!(
        hooks.commit_message().as_deref(),
        Some("rotate to ***"),
        "the subject, masked"
    );

    // A task printing the secret in two writes 300 ms apart (two chunks), a
    // multi-line secret re-indented line by line, and a failure note.
    let mut spec = f.spec(2, RunKind::Task, &sha);
    spec.env = vec![
        EnvVar {
            name: "PW".into(),
            value: secret.into(),
            secret: true,
        },
        EnvVar {
            name: "KEY".into(),
            value: pem.into(),
            secret: true,
        },
    ];
    spec.command = Some(
        "printf 'first half: s3cr3t-Va'; sleep 0.3; printf 'lue-42 end\\n'; \
         printf '%s\\n' \"$KEY\" | sed 's/^/    /'; echo \"fatal: $PW\" >&2; exit 3"
            .into(),
    );
    let hooks = Recorder::new(decided(None).1);
    let outcome = f.execute(&spec, &opts, &hooks).await;
    assert_eq!(outcome.state, RunState::Failed);
    let chunks = hooks.logs()["planning"].clone();
    let split = chunks
        .iter()
        .position(|c| String::from_utf8_lossy(c).contains("first half"))
        .expect("first half");
    assert!(
        chunks.len() > split + 1,
        "the two writes went out as separate chunks"
    );
    let text = hooks.log_text(Phase::Planning);
    assert!(text.contains("first half: *** end"), "{text}");
    assert!(
        text.contains("    ***\n    ***\n    ***\n    ***\n"),
        "{text}"
    );
    assert!(!text.contains("MIIBVgIBADAN"), "{text}");
    let note = hooks.last_report().note;
    assert!(
        note.contains("the task failed (exit code 3)") && note.contains("fatal: ***"),
        "{note}"
    );
    let all = hooks.all_text();
    assert!(!all.contains(secret) && !all.contains("AASCAUAwggE8") && !all.contains(RUN_TOKEN));
}

#[tokio::test]
async fn large_output_is_cut_into_numbered_chunks_of_at_most_64_kib() {
    let f = Fixture::new("engine-chunks").await;
    let sha = f.push(&[("infra/main.tf", CONFIG)]);
    let mut spec = f.spec(1, RunKind::Task, &sha);
    // 300,000 bytes, each line numbered.
    spec.command = Some("seq -w 1 50000 | sed 's/$/ line/'".into());
    let hooks = Recorder::new(decided(None).1);
    let outcome = f.execute(&spec, &f.options(), &hooks).await;
    assert_eq!(outcome.state, RunState::Finished, "{}", hooks.all_text());
    let chunks = hooks.logs()["planning"].clone();
    assert!(chunks.len() >= 5, "{} chunks", chunks.len());
    assert!(chunks.iter().all(|c| c.len() <= 64 * 1024));
    let text = String::from_utf8(chunks.concat()).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.ends_with(" line")).collect();
    assert_eq!(lines.len(), 50000);
    assert_eq!(lines[0], "00001 line");
    assert_eq!(lines[49999], "50000 line");
}

/// Processes whose process group is `pgid` and that are not zombies.
fn live_in_group(pgid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2].parse::<i32>() == Ok(pgid) && fields[0] != "Z" {
            found.push(pid);
        }
    }
    found
}

#[tokio::test]
async fn a_stop_kills_the_whole_process_group_even_what_ignores_sigterm() {
    let f = Fixture::new("engine-cancel").await;
    let sha = f.push(&[("infra/main.tf", CONFIG)]);
    let mut spec = f.spec(1, RunKind::Task, &sha);
    spec.command = Some(
        "(trap '' TERM; sleep 300) & (sleep 300) & echo $$ > pids.tmp; mv pids.tmp pids; echo started; wait".into(),
    );
    let hooks = Arc::new(Recorder::new(decided(None).1));
    let (stop, signal) = StopSignal::new();
    let run = {
        let (hooks, spec, opts, dir) = (hooks.clone(), spec.clone(), f.options(), f.work_dir(1));
        tokio::spawn(async move { engine::execute(&spec, &dir, &opts, &*hooks, &signal).await })
    };
    let pids = f.work_dir(1).join("src/infra/pids");
    let pgid: i32 = wait_for("the task to start", Duration::from_secs(120), || {
        let pids = pids.clone();
        async move {
            std::fs::read_to_string(&pids)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        }
    })
    .await;
    wait_for(
        "the group's processes",
        Duration::from_secs(10),
        || async move { (live_in_group(pgid).len() >= 3).then_some(()) },
    )
    .await;
    stop.stop("canceled by an operator");
    let outcome = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the stop is prompt")
        .unwrap();
    assert_eq!(outcome.state, RunState::Stopped);
    assert_eq!(outcome.note, "canceled by an operator");
    assert_eq!(hooks.states().last(), Some(&RunState::Stopped));
    // SIGKILL is delivered by the time the run ends; a killed process can still
    // take a moment to finish dying on a loaded machine.
    wait_for(
        "no process of the run's group to survive",
        Duration::from_secs(5),
        || async move { live_in_group(pgid).is_empty().then_some(()) },
    )
    .await;
    assert!(
        hooks
            .log_text(Phase::Planning)
            .contains("stopping: canceled by an operator")
    );

    // A stop asked for before a phase starts ends the run there.
    let (stop, signal) = StopSignal::new();
    stop.stop("the worker is shutting down");
    let hooks = Recorder::new(decided(None).1);
    let outcome = engine::execute(
        &f.spec(2, RunKind::Tracked, &sha),
        &f.work_dir(2),
        &f.options(),
        &hooks,
        &signal,
    )
    .await;
    assert_eq!(outcome.state, RunState::Stopped);
    assert_eq!(hooks.states(), [RunState::Preparing, RunState::Stopped]);
}

#[tokio::test]
async fn a_refused_report_ends_the_run_without_further_reports() {
    let f = Fixture::new("engine-refused").await;
    let sha = f.push(&[("infra/main.tf", CONFIG)]);
    let mut hooks = Recorder::new(decided(None).1);
    hooks.refuse = Some(RunState::Canceled);
    let outcome = f
        .execute(&f.spec(1, RunKind::Tracked, &sha), &f.options(), &hooks)
        .await;
    assert_eq!(outcome.state, RunState::Canceled);
    assert_eq!(
        hooks.states(),
        [
            RunState::Preparing,
            RunState::Initializing,
            RunState::Planning
        ]
    );
    assert!(
        !hooks.logs().contains_key("planning"),
        "nothing ran after the refusal"
    );
}

/// An HTTP state backend that takes locks and reads but refuses every write,
/// so that Terraform cannot save its state (the appliance's own backend does
/// not fail on demand). Records each request's method and authorization.
/// Each request's method and `Authorization` header.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

async fn refusing_state_backend() -> (SocketAddr, Seen) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let auth = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .map(String::from);
                            let method = req.method().to_string();
                            log.lock().unwrap().push((method.clone(), auth));
                            let _ = req.into_body().collect().await;
                            let status = match method.as_str() {
                                "GET" => 404,
                                "LOCK" | "UNLOCK" => 200,
                                _ => 403,
                            };
                            let mut r = hyper::Response::new(Full::new(Bytes::from_static(b"")));
                            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(tcp);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn errored_state_is_uploaded_when_terraform_cannot_save_it() {
    let f = Fixture::new("engine-errored").await;
    // No backend block of its own: the engine's override supplies the HTTP backend.
    let config = CONFIG.replace(
        "terraform {\n  backend \"local\" {\n    path = \"../../../shared.tfstate\"\n  }\n}\n",
        "",
    );
    assert!(!config.contains("backend"));
    // The repository tries to make the worker write through a link and upload
    // a file of the host as its errored state.
    let outside = f.dir.path().join("outside.txt");
    std::fs::write(&outside, "untouched").unwrap();
    let host_file = f.dir.path().join("host-secret.txt");
    std::fs::write(&host_file, "a file of the worker host").unwrap();
    let sha = f.push_with_links(
        &[("infra/main.tf", &config)],
        &[
            ("infra/hangar_backend_override.tf", &outside),
            ("infra/errored.tfstate", &host_file),
        ],
    );
    let (addr, seen) = refusing_state_backend().await;
    let mut spec = f.spec(1, RunKind::Tracked, &sha);
    spec.autodeploy = true;
    spec.backend = Backend::Http {
        state_url: format!("http://{addr}/state/v1/stack"),
        run_token: RUN_TOKEN.into(),
    };
    let hooks = Recorder::new(decided(None).1);
    let outcome = f.execute(&spec, &f.options(), &hooks).await;
    assert_eq!(outcome.state, RunState::Failed, "{}", hooks.all_text());
    assert_eq!(hooks.states().last(), Some(&RunState::Failed));
    assert!(hooks.states().contains(&RunState::Applying));
    let note = hooks.last_report().note;
    assert!(note.contains("errored.tfstate was uploaded"), "{note}");
    assert!(note.contains("terraform apply failed"), "{note}");
    let errored = hooks
        .events()
        .into_iter()
        .find_map(|e| match e {
            Event::Errored(d) => Some(d),
            _ => None,
        })
        .expect("errored.tfstate uploaded");
    assert_eq!(
        std::fs::read_to_string(&outside).unwrap(),
        "untouched",
        "nothing written through a link"
    );
    assert_eq!(
        std::fs::read_to_string(&host_file).unwrap(),
        "a file of the worker host"
    );
    assert!(
        hooks
            .log_text(Phase::Applying)
            .contains("removing the errored.tfstate the repository carries")
    );
    let state: serde_json::Value =
        serde_json::from_slice(&errored).expect("a state file, not the host's file");
    assert_eq!(state["outputs"]["message"]["value"], "hello world");

    // Terraform spoke to the backend as the engine configured it.
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("run:{RUN_TOKEN}"))
    );
    let seen = seen.lock().unwrap().clone();
    let methods: Vec<&str> = seen.iter().map(|(m, _)| m.as_str()).collect();
    assert!(
        methods.contains(&"LOCK") && methods.contains(&"UNLOCK") && methods.contains(&"POST"),
        "{methods:?}"
    );
    assert!(
        seen.iter()
            .all(|(_, a)| a.as_deref() == Some(basic.as_str())),
        "every request carries run:<token>"
    );
    assert!(!hooks.all_text().contains(RUN_TOKEN));
    let override_file = f.work_dir(1).join("src/infra/hangar_backend_override.tf");
    assert!(
        std::fs::read_to_string(override_file)
            .unwrap()
            .contains("backend \"http\"")
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(f.work_dir(1).join("backend.tfbackend"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the run's credential is private");
}

fn sha256_hex(data: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_vcs_over_https_is_trusted_only_through_its_configured_ca() {
    hangar_testkit::init();
    let dir = TestDir::new("engine-vcs-tls");
    let password = "s3cret-git-pass";
    let git = GitServer::start_with(GitServerOptions {
        tls_pki: Some(dir.path().join("vcs-pki")),
        credentials: Some(("hangar".into(), password.into())),
    })
    .await;
    git.create_repo("stack");
    let sha = git.push_files("stack", "main", &[("infra/main.tf", CONFIG)], "over https");
    let cache = dir.subdir("cache");
    dir.subdir("runs");
    let f = Fixture { git, dir, cache };
    let mut opts = f.options();
    let mut spec = f.spec(1, RunKind::Proposed, &sha);
    // Credentials in the URL, as a stack may be configured.
    spec.repository = f.git.authed_url("stack");
    assert!(spec.repository.contains(password));

    // Without the VCS's CA the clone is refused (nothing else is trusted).
    let hooks = Recorder::new(decided(None).1);
    let outcome = f.execute(&spec, &opts, &hooks).await;
    assert_eq!(outcome.state, RunState::Failed);
    assert!(outcome.note.contains("git fetch"), "{}", outcome.note);
    let preparing = hooks.log_text(Phase::Preparing);
    assert!(
        preparing.to_lowercase().contains("certificate"),
        "{preparing}"
    );
    assert!(!hooks.all_text().contains(password));

    opts.vcs_ca = Some(f.git.ca_path().expect("the server's CA").to_path_buf());
    spec.run_id = 2;
    let hooks = Recorder::new(decided(None).1);
    let outcome = f.execute(&spec, &opts, &hooks).await;
    assert_eq!(outcome.state, RunState::Finished, "{}", hooks.all_text());
    assert!(
        !hooks.all_text().contains(password),
        "the URL's password is masked"
    );
}
