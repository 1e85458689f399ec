//! An appliance with everything a run needs, for end-to-end tests of the run
//! lifecycle: `hangar server` hosting the MQTT broker and serving Terraform
//! 1.0.3 from its tools directory, `hangar drain` and `hangar scheduler` as
//! processes, and worker hosts joined with `hangar-worker join` and running
//! `hangar-worker run`, each its own process.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use diesel_async::RunQueryDsl;
use hangar_testkit::{ChildProcess, TestDir, cargo_bin, wait_for};
use serde_json::{Value, json};

use crate::common::{Appliance, CREATE_STACK, Options, stack_input};

/// How long a run may take to reach a state: Terraform, git and several
/// processes share two cores with other tests.
pub const SOON: Duration = Duration::from_secs(180);

/// States a run never leaves.
pub const TERMINAL: [&str; 5] = ["FINISHED", "FAILED", "DISCARDED", "CANCELED", "STOPPED"];

/// A Terraform configuration that needs no downloaded provider: variables,
/// locals and outputs. `secret_length` proves a secret variable arrived.
pub const CONFIG: &str = r#"
variable "greeting" {
  type    = string
  default = "hello"
}

variable "secret" {
  type    = string
  default = ""
}

locals {
  message = "${var.greeting} world"
}

output "message" {
  value = local.message
}

output "secret_length" {
  value = length(var.secret)
}
"#;

pub struct Fleet {
    pub app: Appliance,
    pub files: TestDir,
    pub admin: String,
    pub drain: Option<ChildProcess>,
    pub scheduler: Option<ChildProcess>,
}

/// Knobs that differ between lifecycle tests.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// How long a worker's lease on a run lasts without a heartbeat.
    pub lease_secs: u64,
    /// Whether to run `hangar scheduler` (the stuck-run reaper lives there).
    pub scheduler: bool,
    /// The host of the appliance's public URL (see `Options::public_host`).
    pub public_host: &'static str,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions { lease_secs: 30, scheduler: false, public_host: "localhost" }
    }
}

impl Fleet {
    pub async fn start() -> Fleet {
        Self::start_with(FleetOptions::default()).await
    }

    pub async fn start_with(opts: FleetOptions) -> Fleet {
        Self::start_with_server(opts, "").await
    }

    /// As `start_with`, with `server_settings` (TOML lines of the `[server]`
    /// section, e.g. `max_state_bytes = 4096`) added to the server's configuration.
    pub async fn start_with_server(opts: FleetOptions, server_settings: &str) -> Fleet {
        let files = TestDir::new("fleet");
        let tools = files.subdir("tools");
        let bin_dir = tools.join("terraform/1.0.3");
        std::fs::create_dir_all(&bin_dir).unwrap();
        std::fs::copy(hangar_testkit::terraform::terraform(), bin_dir.join("terraform")).unwrap();
        let extra =
            format!("tools_dir = \"{}\"\nworker_lease_secs = {}\n{server_settings}", tools.display(), opts.lease_secs);
        let app = Appliance::start_with(Options { server_extra: extra, broker: true, public_host: opts.public_host, ..Options::default() }).await;
        wait_for("the hosted broker to be ready", SOON, || async {
            let (status, body) = app.ready().await;
            (status == 200 && body.to_string().contains("broker")).then_some(())
        })
        .await;
        let admin = app.admin_token().await;
        let mut fleet = Fleet { app, files, admin, drain: None, scheduler: None };
        fleet.drain = Some(fleet.spawn_hangar("drain"));
        if opts.scheduler {
            fleet.scheduler = Some(fleet.spawn_hangar("scheduler"));
        }
        fleet
    }

    /// Starts `hangar <command>` with the appliance's configuration.
    pub fn spawn_hangar(&self, command: &str) -> ChildProcess {
        let mut cmd = Command::new(cargo_bin("hangar"));
        cmd.arg("--config").arg(&self.app.config).arg(command).env("HANGAR_LOG", "info").stdin(Stdio::null());
        ChildProcess::spawn(cmd, command, self.app.dir.path())
    }

    pub async fn ok(&self, query: &str, variables: Value) -> Value {
        self.app.ok(&self.admin, query, variables).await
    }

    /// Creates `pool` if it does not exist yet.
    pub async fn create_pool(&self, pool: &str) {
        let (_, body) = self
            .app
            .gql(Some(&self.admin), "mutation($n: String!) { createWorkerPool(name: $n) { id } }", json!({ "n": pool }))
            .await;
        if let Some(errors) = body.get("errors") {
            assert!(errors.to_string().contains("exists"), "createWorkerPool {pool}: {body}");
        }
    }

    /// A Terraform 1.0.3 stack on `pool` whose configuration lives under `infra/`.
    pub async fn create_stack(&self, slug: &str, repository: &str, pool: &str, extra: Value) {
        self.create_pool(pool).await;
        let mut input = stack_input(slug, repository);
        input["tool"] = json!("TERRAFORM");
        input["toolVersion"] = json!("1.0.3");
        input["workerPool"] = json!(pool);
        input["projectRoot"] = json!("infra");
        if let Value::Object(more) = extra {
            for (k, v) in more {
                input[k] = v;
            }
        }
        self.ok(CREATE_STACK, json!({ "i": input })).await;
    }

    /// Joins a worker host to `pool` as an operator would (`hangar-worker
    /// join` with a one-time token) and tunes its config for tests. Returns
    /// the worker's config directory.
    pub async fn join_worker(&self, pool: &str, name: &str) -> PathBuf {
        self.join_worker_via(pool, name, &self.app.url(""), self.app.broker_port.expect("a hosted broker")).await
    }

    /// As `join_worker`, but the worker reaches the server at `server_url`
    /// and the broker on `broker_port` of localhost (a relay, say).
    pub async fn join_worker_via(&self, pool: &str, name: &str, server_url: &str, broker_port: u16) -> PathBuf {
        self.join_worker_with(pool, name, server_url, broker_port, "mqtt").await
    }

    /// Joins a worker on the HTTP transport (`--transport http`): its
    /// configuration names no broker. It joins through `server_url` (the
    /// host's own route) and keeps the appliance's public URL.
    pub async fn join_http_worker(&self, pool: &str, name: &str) -> PathBuf {
        let url = format!("https://localhost:{}", self.app.addr.port());
        self.join_worker_with(pool, name, &url, self.app.broker_port.unwrap_or(1), "http").await
    }

    async fn join_worker_with(&self, pool: &str, name: &str, server_url: &str, broker_port: u16, transport: &str) -> PathBuf {
        self.create_pool(pool).await;
        let token = self.ok("mutation($p: String!) { createJoinToken(pool: $p) { token } }", json!({ "p": pool })).await
            ["createJoinToken"]["token"]
            .as_str()
            .unwrap()
            .to_string();
        let dir = self.files.subdir(&format!("worker-{name}"));
        let out = Command::new(cargo_bin("hangar-worker"))
            .args(["join", "--server", server_url, "--token", &token, "--name", name, "--config-dir"])
            .arg(&dir)
            .arg("--ca")
            .arg(self.app.ca_path())
            .args(["--transport", transport])
            .env("HANGAR_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "hangar-worker join: {}", String::from_utf8_lossy(&out.stderr));
        let path = dir.join("worker.toml");
        let own_broker = format!(":{}\"", self.app.broker_port.unwrap_or(1));
        let toml = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/var/lib/hangar-worker/work", &self.files.subdir(&format!("work-{name}")).display().to_string())
            .replace("/var/cache/hangar-worker", &self.files.subdir(&format!("cache-{name}")).display().to_string())
            .replace("heartbeat_secs = 10\n", "heartbeat_secs = 1\n")
            .replace("poll_secs = 30\n", "poll_secs = 2\n")
            .replace("stop_grace_secs = 10\n", "stop_grace_secs = 2\n")
            .replace(&own_broker, &format!(":{broker_port}\""));
        assert!(toml.contains("heartbeat_secs = 1\n") && toml.contains("poll_secs = 2\n"), "{toml}");
        std::fs::write(&path, toml).unwrap();
        dir
    }

    /// `hangar-worker run` for a joined worker.
    pub fn run_worker(&self, config_dir: &Path, name: &str) -> ChildProcess {
        let mut cmd = Command::new(cargo_bin("hangar-worker"));
        cmd.args(["run", "--config-dir"])
            .arg(config_dir)
            .env("HANGAR_LOG", "info,hangar_worker=debug")
            .stdin(Stdio::null());
        ChildProcess::spawn(cmd, &format!("worker-{name}"), self.files.path())
    }

    /// Waits until `pool` shows `n` workers with `status`.
    pub async fn wait_workers(&self, pool: &str, status: &str, n: usize) {
        wait_for(&format!("{n} worker(s) of {pool} to show as {status}"), SOON, || async {
            let d = self.ok("query($p: String!) { workers(pool: $p) { status } }", json!({ "p": pool })).await;
            let count = d["workers"].as_array().map(|w| w.iter().filter(|w| w["status"] == status).count()).unwrap_or(0);
            (count == n).then_some(())
        })
        .await;
    }

    pub async fn trigger(&self, stack: &str) -> String {
        let d = self.ok("mutation($s: String!) { triggerRun(stack: $s) { id } }", json!({ "s": stack })).await;
        d["triggerRun"]["id"].as_str().unwrap().to_string()
    }

    /// A run's whole log, as the API serves it.
    pub async fn run_log(&self, id: &str) -> String {
        let r = self.app.client.get(self.app.url(&format!("/api/v1/runs/{id}/logs"))).bearer_auth(&self.admin).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// The run's state and the whole `run` object.
    pub async fn run(&self, id: &str) -> (String, Value) {
        let d = self.ok("query($id: ID!) { run(id: $id) { state failureReason } }", json!({ "id": id })).await;
        (d["run"]["state"].as_str().unwrap_or_default().to_string(), d["run"].clone())
    }

    /// Waits for run `id` to reach `want`; a run that ends in another
    /// terminal state fails the test at once. `logs` are named in the wait's
    /// timeout message.
    pub async fn wait_state(&self, id: &str, want: &str, logs: &[&ChildProcess]) -> Value {
        let mut all: Vec<String> = logs.iter().map(|l| l.log_path().display().to_string()).collect();
        for p in [self.app.server.as_ref(), self.drain.as_ref(), self.scheduler.as_ref()].into_iter().flatten() {
            all.push(p.log_path().display().to_string());
        }
        let what = format!("run {id} to be {want} (logs: {})", all.join(", "));
        wait_for(&what, SOON, || async {
            let (state, run) = self.run(id).await;
            if state == want {
                return Some(run);
            }
            assert!(!TERMINAL.contains(&state.as_str()), "run {id} ended {state} while waiting for {want}: {run}");
            None
        })
        .await
    }

    /// The states run `id` went through, in order.
    pub async fn history(&self, id: &str) -> Vec<String> {
        #[derive(diesel::QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Text)]
            to_state: String,
        }
        let id: i64 = id.parse().unwrap();
        let mut c = self.app.pg.database().connect().await.unwrap();
        diesel::sql_query("SELECT to_state FROM run_events WHERE run_id = $1 ORDER BY id")
            .bind::<diesel::sql_types::BigInt, _>(id)
            .load::<Row>(&mut c)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.to_state)
            .collect()
    }

    /// How many state versions the appliance keeps for `stack`.
    pub async fn state_versions(&self, stack: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut c = self.app.pg.database().connect().await.unwrap();
        diesel::sql_query(
            "SELECT count(*) AS n FROM state_versions v JOIN stacks s ON s.id = v.stack_id WHERE s.slug = $1",
        )
        .bind::<diesel::sql_types::Text, _>(stack)
        .get_result::<N>(&mut c)
        .await
        .unwrap()
        .n
    }
}

/// A Terraform "version" in the appliance's tools directory that is a script
/// holding chosen subcommands (`plan`, `apply`, ...) until the test releases
/// them, then exec'ing the real Terraform 1.0.3. The worker verifies it
/// against the SHA-256 the appliance announces like any tool. A held command
/// also starts a `sleep` child in its process group, so a test can tell
/// whether the whole group was stopped or only the process the worker started.
pub struct HeldTool {
    /// What a stack names as its `toolVersion`.
    pub version: String,
    gate: PathBuf,
}

impl Fleet {
    /// Serves a held Terraform as `version` (e.g. `1.0.3-held`) for `held` commands.
    pub fn hold_tool(&self, version: &str, held: &[&str]) -> HeldTool {
        let gate = self.files.subdir(&format!("gate-{version}"));
        let dir = self.files.path().join("tools/terraform").join(version);
        std::fs::create_dir_all(&dir).unwrap();
        let script = format!(
            "#!/bin/sh\n\
             gate='{gate}'\n\
             case ' {held} ' in *\" $1 \"*)\n\
             \x20 /bin/sleep 600 &\n\
             \x20 echo $! > \"$gate/$1.child\"\n\
             \x20 echo $$ > \"$gate/$1.pid.new\" && /bin/mv \"$gate/$1.pid.new\" \"$gate/$1.pid\"\n\
             \x20 while [ ! -e \"$gate/$1.go\" ]; do /bin/sleep 0.1; done\n\
             \x20 kill $! 2>/dev/null\n\
             \x20 ;;\n\
             esac\n\
             exec '{terraform}' \"$@\"\n",
            gate = gate.display(),
            held = held.join(" "),
            terraform = hangar_testkit::terraform::terraform().display(),
        );
        let path = dir.join("terraform");
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        HeldTool { version: version.to_string(), gate }
    }
}

impl HeldTool {
    /// Waits until a held `command` is waiting; returns its process group id
    /// (the worker starts each command as a group leader) and its child's pid.
    pub async fn reached(&self, command: &str) -> (i32, i32) {
        let read = |ext: &str| {
            std::fs::read_to_string(self.gate.join(format!("{command}.{ext}"))).ok().and_then(|s| s.trim().parse().ok())
        };
        wait_for(&format!("a held `terraform {command}` to start"), SOON, || async {
            Some((read("pid")?, read("child")?))
        })
        .await
    }

    /// Lets `command` run, now and every later time.
    pub fn release(&self, command: &str) {
        std::fs::write(self.gate.join(format!("{command}.go")), b"").unwrap();
    }
}

/// The pids of the live processes in process group `pgid`.
pub fn process_group(pgid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // `pid (comm) state ppid pgrp ...`: comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // A zombie is gone as a process; only its parent has not reaped it yet.
        if matches!(fields.as_slice(), ["Z", ..]) {
            continue;
        }
        if fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) {
            found.push(pid);
        }
    }
    found
}
