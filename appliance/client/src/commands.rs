//! The everyday client subcommands of `hangar`: `login`, `stack`, `run`,
//! `env` and `policy`. Each prints lines for people, or JSON with `--json`;
//! a followed run that does not finish makes the command fail (exit 1).

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::runs::{self, Followed};
use crate::{Client, ClientError, ConnectArgs};

/// `--json` and the connection flags, shared by every command below.
#[derive(Debug, Args)]
pub struct Common {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print JSON instead of lines for people.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Common {
    fn client(&self) -> Result<Client, ClientError> {
        Client::new(self.connect.resolve()?)
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializes"));
}

// ---- login -----------------------------------------------------------------

#[derive(Debug, Args)]
pub struct LoginArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The account's e-mail address.
    #[arg(long)]
    pub email: String,
}

/// Logs in with a password (asked, or read from standard input) and keeps the
/// session token as the profile's key; the profile (`default` unless
/// `--profile`) is written to the client configuration.
pub async fn login(args: LoginArgs) -> Result<(), ClientError> {
    let name = args
        .connect
        .profile
        .clone()
        .unwrap_or_else(|| "default".into());
    let server = args.connect.server.clone().ok_or_else(|| {
        ClientError::Config("no server: give --server URL or HANGAR_SERVER".into())
    })?;
    let server = url::Url::parse(&server)
        .map_err(|e| ClientError::Config(format!("--server {server:?}: {e}")))?;
    if server.scheme() != "https" || server.host_str().is_none() {
        return Err(ClientError::Config(format!(
            "--server {server}: must be an https:// URL with a host"
        )));
    }
    let mut profile = crate::Profile {
        server,
        ca_file: args.connect.ca_file.clone(),
        api_key: String::new(),
    };
    let password = read_value("the password")?;
    let client = Client::new(profile.clone())?;
    let q = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token expiresAt user { email role } } }";
    let d = client
        .graphql(q, json!({ "e": args.email, "p": password }))
        .await?;
    profile.api_key = text(&d["login"]["token"]);
    let key_file = crate::profile::config_path()
        .and_then(|p| p.parent().map(|d| d.join(format!("{name}.token"))))
        .ok_or_else(|| {
            ClientError::Config("no HOME: cannot place the client configuration".into())
        })?;
    let saved = crate::profile::save_profile(&name, &profile, &key_file)?;
    println!(
        "logged in as {} ({}) until {}; profile {name} in {}",
        text(&d["login"]["user"]["email"]),
        text(&d["login"]["user"]["role"]),
        text(&d["login"]["expiresAt"]),
        saved.display()
    );
    Ok(())
}

// ---- stack -----------------------------------------------------------------

#[derive(Debug, Args)]
pub struct StackArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: StackCommand,
}

#[derive(Debug, Subcommand)]
pub enum StackCommand {
    /// The stacks, with the state of each one's last run.
    List {
        /// Only the stacks with this label.
        #[arg(long)]
        label: Option<String>,
    },
    /// One stack: its settings, lock, variables and last runs.
    Show { stack: String },
}

const STACK_FIELDS: &str = "slug name space { slug } repository branch projectRoot tool toolVersion autodeploy labels needsReconciliation workerPool { name } stateLock { heldBy createdAt }";

pub async fn stack(args: StackArgs) -> Result<(), ClientError> {
    let client = args.common.client()?;
    match args.command {
        StackCommand::List { label } => {
            let q = "query($l: String) { stacks(label: $l) { slug name branch labels space { slug } workerPool { name } runs(first: 1) { items { id state createdAt } } } }";
            let d = client.graphql(q, json!({ "l": label })).await?;
            if args.common.json {
                print_json(&d["stacks"]);
                return Ok(());
            }
            for s in d["stacks"].as_array().into_iter().flatten() {
                let last = &s["runs"]["items"][0];
                let last = if last.is_null() {
                    "no runs".to_string()
                } else {
                    format!("run {} {}", text(&last["id"]), text(&last["state"]))
                };
                println!(
                    "{:<24} {:<14} {:<16} {:<22} pool {:<12} {}",
                    text(&s["slug"]),
                    text(&s["space"]["slug"]),
                    text(&s["branch"]),
                    last,
                    text(&s["workerPool"]["name"]),
                    labels(&s["labels"])
                );
            }
        }
        StackCommand::Show { stack } => {
            let q = format!(
                "query($s: String!) {{ stack(slug: $s) {{ {STACK_FIELDS} variables {{ name secret value }} runs(first: 5) {{ items {{ id kind state commitSha createdAt }} }} }} }}"
            );
            let d = client.graphql(&q, json!({ "s": stack })).await?;
            let s = &d["stack"];
            if s.is_null() {
                return Err(not_found("stack", &stack));
            }
            if args.common.json {
                print_json(s);
                return Ok(());
            }
            println!("{} ({})", text(&s["slug"]), text(&s["name"]));
            println!(
                "  repository   {} @ {}",
                text(&s["repository"]),
                text(&s["branch"])
            );
            println!("  project root {}", or_dash(&s["projectRoot"]));
            println!(
                "  tool         {} {}",
                text(&s["tool"]),
                text(&s["toolVersion"])
            );
            println!("  space        {}", or_dash(&s["space"]["slug"]));
            println!("  worker pool  {}", or_dash(&s["workerPool"]["name"]));
            println!("  autodeploy   {}", s["autodeploy"]);
            println!("  labels       {}", labels(&s["labels"]));
            if s["needsReconciliation"] == true {
                println!("  needs reconciliation");
            }
            match &s["stateLock"] {
                Value::Null => println!("  state        unlocked"),
                l => println!(
                    "  state        locked by {} since {}",
                    text(&l["heldBy"]),
                    text(&l["createdAt"])
                ),
            }
            for v in s["variables"].as_array().into_iter().flatten() {
                let value = if v["secret"] == true {
                    "(secret, set)".to_string()
                } else {
                    text(&v["value"])
                };
                println!("  env          {}={}", text(&v["name"]), value);
            }
            for r in s["runs"]["items"].as_array().into_iter().flatten() {
                println!(
                    "  run {:<8} {:<9} {:<12} {} {}",
                    text(&r["id"]),
                    text(&r["kind"]),
                    text(&r["state"]),
                    short_sha(&r["commitSha"]),
                    text(&r["createdAt"])
                );
            }
        }
    }
    Ok(())
}

// ---- run -------------------------------------------------------------------

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: RunCommand,
}

#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Queue a run of a stack (at the head of its branch unless --commit).
    Trigger {
        stack: String,
        /// The commit to run (40 hex digits).
        #[arg(long)]
        commit: Option<String>,
        /// Plan only, beside the tracked runs.
        #[arg(long)]
        proposed: bool,
        /// Stream the logs until the run ends or waits for confirmation; the
        /// exit code is the outcome's.
        #[arg(long)]
        follow: bool,
    },
    /// Run a one-off command in a stack's workspace on a worker, after
    /// `terraform init` (e.g. `hangar run task net -- terraform state list`).
    Task {
        stack: String,
        /// The command and its arguments, run by /bin/sh (quote as for a shell).
        #[arg(required = true, last = true, num_args = 1..)]
        command: Vec<String>,
        /// The commit to run at (40 hex digits).
        #[arg(long)]
        commit: Option<String>,
        /// Stream its output until it ends; the exit code is the outcome's.
        #[arg(long)]
        follow: bool,
    },
    /// A run's state, commit, trigger and plan summary.
    Show { id: String },
    /// Let an UNCONFIRMED run apply its plan.
    Confirm {
        id: String,
        /// Stream the apply's logs until the run ends.
        #[arg(long)]
        follow: bool,
    },
    /// Reject an UNCONFIRMED run's plan.
    Discard { id: String },
    /// Stop a run that has not started applying.
    Cancel { id: String },
    /// Approve or reject a run (for approval policies).
    Review {
        id: String,
        #[arg(long, value_enum)]
        decision: Decision,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// A run's log: all of it, or followed live.
    Logs {
        id: String,
        /// Only this phase.
        #[arg(long, value_enum)]
        phase: Option<LogPhase>,
        /// Stream new output until the run ends.
        #[arg(long, conflicts_with = "phase")]
        follow: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Decision {
    Approve,
    Reject,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogPhase {
    Preparing,
    Initializing,
    Planning,
    Applying,
}

impl LogPhase {
    fn as_str(self) -> &'static str {
        match self {
            LogPhase::Preparing => "preparing",
            LogPhase::Initializing => "initializing",
            LogPhase::Planning => "planning",
            LogPhase::Applying => "applying",
        }
    }
}

pub async fn run(args: RunArgs) -> Result<(), ClientError> {
    let client = args.common.client()?;
    let json_out = args.common.json;
    match args.command {
        RunCommand::Trigger {
            stack,
            commit,
            proposed,
            follow,
        } => {
            let run = runs::trigger(&client, &stack, commit.as_deref(), proposed).await?;
            if !follow {
                show_run(&run, json_out);
                return Ok(());
            }
            if !json_out {
                eprintln!(
                    "run {} of {} at {} queued",
                    text(&run["id"]),
                    stack,
                    short_sha(&run["commitSha"])
                );
            }
            follow_run(&client, &text(&run["id"]), json_out).await
        }
        RunCommand::Task {
            stack,
            command,
            commit,
            follow,
        } => {
            let run = runs::task(&client, &stack, &command.join(" "), commit.as_deref()).await?;
            if !follow {
                show_run(&run, json_out);
                return Ok(());
            }
            if !json_out {
                eprintln!("task {} of {} queued", text(&run["id"]), stack);
            }
            follow_run(&client, &text(&run["id"]), json_out).await
        }
        RunCommand::Show { id } => {
            let run = runs::show(&client, &id).await?;
            show_run(&run, json_out);
            Ok(())
        }
        RunCommand::Confirm { id, follow } => {
            let run = runs::operate(&client, "confirmRun", &id).await?;
            if follow {
                return follow_run(&client, &id, json_out).await;
            }
            show_run(&run, json_out);
            Ok(())
        }
        RunCommand::Discard { id } => {
            show_run(&runs::operate(&client, "discardRun", &id).await?, json_out);
            Ok(())
        }
        RunCommand::Cancel { id } => {
            show_run(&runs::operate(&client, "cancelRun", &id).await?, json_out);
            Ok(())
        }
        RunCommand::Review { id, decision, note } => {
            let run =
                runs::review(&client, &id, matches!(decision, Decision::Approve), &note).await?;
            show_run(&run, json_out);
            Ok(())
        }
        RunCommand::Logs {
            id,
            phase,
            follow: false,
        } => {
            let text = runs::logs(&client, &id, phase.map(LogPhase::as_str)).await?;
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|source| ClientError::Write {
                    path: PathBuf::from("(standard output)"),
                    source,
                })
        }
        RunCommand::Logs {
            id, follow: true, ..
        } => {
            let mut out = std::io::stdout();
            let mut on_text = |_: &str, t: &str| {
                let _ = out.write_all(t.as_bytes());
                let _ = out.flush();
            };
            let ended = runs::follow(&client, &id, false, 5, &mut on_text, &mut |_| {}).await?;
            outcome(&client, &id, ended).await.map(|_| ())
        }
    }
}

/// Follows run `id` to its end (or until it waits for a person), printing its
/// log (or, with `json`, the run at the end); fails unless it finished or waits.
async fn follow_run(client: &Client, id: &str, json_out: bool) -> Result<(), ClientError> {
    let mut out = std::io::stdout();
    let mut on_text = |_: &str, t: &str| {
        if !json_out {
            let _ = out.write_all(t.as_bytes());
            let _ = out.flush();
        }
    };
    let mut on_state = |s: &str| {
        if !json_out {
            eprintln!("-- {s}");
        }
    };
    let followed = runs::follow(client, id, true, 5, &mut on_text, &mut on_state).await?;
    let run = outcome(client, id, followed.clone()).await?;
    if json_out {
        print_json(&run);
    } else if let Followed::Waiting(_) = followed {
        eprintln!("{}", plan_line(&run));
        eprintln!(
            "run {id} waits for confirmation: `hangar run confirm {id} --follow` or `hangar run discard {id}`"
        );
    }
    Ok(())
}

/// The run as it ended; an error when it ended other than FINISHED.
async fn outcome(client: &Client, id: &str, followed: Followed) -> Result<Value, ClientError> {
    let run = runs::show(client, id).await?;
    match followed {
        Followed::Ended(state) if state != "FINISHED" => Err(ClientError::RunEnded {
            id: id.to_string(),
            state,
            reason: run["failureReason"].as_str().map(str::to_string),
        }),
        _ => Ok(run),
    }
}

fn plan_line(run: &Value) -> String {
    let c = &run["changes"];
    if c.is_null() {
        return "plan: no summary reported".into();
    }
    format!(
        "plan: {} to add, {} to change, {} to destroy",
        c["add"], c["change"], c["destroy"]
    )
}

fn show_run(run: &Value, json_out: bool) {
    if json_out {
        print_json(run);
        return;
    }
    println!(
        "run {} of {}: {} {} at {} on {}, triggered by {}",
        text(&run["id"]),
        text(&run["stack"]["slug"]),
        text(&run["kind"]),
        text(&run["state"]),
        short_sha(&run["commitSha"]),
        text(&run["branch"]),
        text(&run["triggeredBy"])
    );
    if let Some(subject) = run["commitMessage"].as_str() {
        println!("  commit: {subject}");
    }
    if !run["changes"].is_null() {
        println!("  {}", plan_line(run));
    }
    if let Some(reason) = run["failureReason"].as_str() {
        println!("  failed: {reason}");
    }
}

// ---- env -------------------------------------------------------------------

#[derive(Debug, Args)]
pub struct EnvArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: EnvCommand,
}

#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// A stack's variables (secret values are never shown).
    List { stack: String },
    /// Set a variable of a stack. Without VALUE, the value is read from
    /// standard input (so that a secret stays out of the shell's history).
    Set {
        stack: String,
        name: String,
        value: Option<String>,
        /// Write-only: runs get it, nobody reads it back.
        #[arg(long)]
        secret: bool,
    },
    /// Remove a variable of a stack.
    Unset { stack: String, name: String },
}

pub async fn env(args: EnvArgs) -> Result<(), ClientError> {
    let client = args.common.client()?;
    match args.command {
        EnvCommand::List { stack } => {
            let q = "query($s: String!) { stack(slug: $s) { variables { name secret value updatedAt } } }";
            let d = client.graphql(q, json!({ "s": stack })).await?;
            if d["stack"].is_null() {
                return Err(not_found("stack", &stack));
            }
            let vars = &d["stack"]["variables"];
            if args.common.json {
                print_json(vars);
                return Ok(());
            }
            for v in vars.as_array().into_iter().flatten() {
                let value = if v["secret"] == true {
                    "(secret, set)".to_string()
                } else {
                    text(&v["value"])
                };
                println!("{}={}", text(&v["name"]), value);
            }
        }
        EnvCommand::Set {
            stack,
            name,
            value,
            secret,
        } => {
            let value = match value {
                Some(v) => v,
                None => read_value(&name)?,
            };
            let q = "mutation($s: String!, $n: String!, $v: String!, $x: Boolean) { setStackVariable(stack: $s, name: $n, value: $v, secret: $x) { name secret updatedAt } }";
            let d = client
                .graphql(q, json!({ "s": stack, "n": name, "v": value, "x": secret }))
                .await?;
            if args.common.json {
                print_json(&d["setStackVariable"]);
                return Ok(());
            }
            println!(
                "{} set on {stack}{}",
                name,
                if secret { " (secret)" } else { "" }
            );
        }
        EnvCommand::Unset { stack, name } => {
            let q =
                "mutation($s: String!, $n: String!) { deleteStackVariable(stack: $s, name: $n) }";
            client.graphql(q, json!({ "s": stack, "n": name })).await?;
            if args.common.json {
                print_json(&json!({ "stack": stack, "unset": name }));
                return Ok(());
            }
            println!("{name} removed from {stack}");
        }
    }
    Ok(())
}

/// A value from standard input: typed at a terminal without echo, or piped
/// (all of it, one trailing newline dropped).
fn read_value(name: &str) -> Result<String, ClientError> {
    let stdin = std::io::stdin();
    let read_err = |source| ClientError::Read {
        path: PathBuf::from("(standard input)"),
        source,
    };
    let mut value = String::new();
    if stdin.is_terminal() {
        value = dialoguer::Password::new()
            .with_prompt(format!("value of {name}"))
            .allow_empty_password(true)
            .interact()
            .map_err(|e| ClientError::Config(format!("cannot read the value of {name}: {e}")))?;
    } else {
        stdin.lock().read_to_string(&mut value).map_err(read_err)?;
        if value.ends_with('\n') {
            value.pop();
            if value.ends_with('\r') {
                value.pop();
            }
        }
    }
    Ok(value)
}

// ---- policy ----------------------------------------------------------------

#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// What a policy (not yet saved) would have decided for the inputs
    /// recorded by the last runs; nothing is recorded or enforced.
    Test {
        /// The policy's Rego source.
        file: PathBuf,
        #[arg(long, value_enum)]
        kind: PolicyKind,
        /// How many recorded evaluations to replay (1-100).
        #[arg(long, default_value_t = 10)]
        runs: u32,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PolicyKind {
    Plan,
    Approval,
    Trigger,
    Push,
}

pub async fn policy(args: PolicyArgs) -> Result<(), ClientError> {
    let client = args.common.client()?;
    match args.command {
        PolicyCommand::Test { file, kind, runs } => {
            let body = std::fs::read_to_string(&file).map_err(|source| ClientError::Read {
                path: file.clone(),
                source,
            })?;
            let kind = match kind {
                PolicyKind::Plan => "PLAN",
                PolicyKind::Approval => "APPROVAL",
                PolicyKind::Trigger => "TRIGGER",
                PolicyKind::Push => "PUSH",
            };
            let q = "query($k: PolicyKindValue!, $b: String!, $r: Int!) { testPolicy(kind: $k, body: $b, runs: $r) { runId stackId recordedPolicy recordedVersion recordedResult result messages { level text } error durationMs } }";
            let d = client
                .graphql(q, json!({ "k": kind, "b": body, "r": runs }))
                .await?;
            let replays = &d["testPolicy"];
            if args.common.json {
                print_json(replays);
                return Ok(());
            }
            let list = replays.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no recorded {} evaluations to replay", kind.to_lowercase());
            }
            for r in list {
                let now = r["result"]
                    .as_str()
                    .map_or_else(|| format!("error: {}", text(&r["error"])), str::to_string);
                let subject = match r["runId"].as_str() {
                    Some(run) => format!("run {run:<8}"),
                    None => format!("stack {:<6}", text(&r["stackId"])),
                };
                println!(
                    "{subject} was {} by {} v{}; would be {}",
                    text(&r["recordedResult"]),
                    text(&r["recordedPolicy"]),
                    r["recordedVersion"],
                    now
                );
                for m in r["messages"].as_array().into_iter().flatten() {
                    println!("    {}: {}", text(&m["level"]), text(&m["text"]));
                }
            }
        }
    }
    Ok(())
}

// ---- helpers ---------------------------------------------------------------

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn or_dash(v: &Value) -> String {
    match text(v) {
        s if s.is_empty() => "-".into(),
        s => s,
    }
}

fn short_sha(v: &Value) -> String {
    text(v).chars().take(12).collect()
}

fn labels(v: &Value) -> String {
    v.as_array()
        .map(|l| l.iter().map(text).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

fn not_found(what: &str, name: &str) -> ClientError {
    ClientError::GraphQl {
        operation: what.to_string(),
        code: "NOT_FOUND".into(),
        message: format!("{what} {name:?} does not exist"),
    }
}
