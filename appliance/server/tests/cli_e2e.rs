//! The `hangar` client commands against a whole appliance (`hangar server`
//! with its broker and provider mirror, `hangar drain`, a git server and a
//! worker running Terraform 1.0.3 with the test provider), run as a person or
//! a script would: log in, list and show stacks, set variables (a secret read
//! from standard input and never printed), trigger a run and follow its logs
//! to the confirmation, confirm and follow the apply, read the logs back, run
//! a task, replay a policy; and the failures: a run that fails makes the command fail
//! with its reason, a reader's confirm is refused, a missing server is a
//! usage error, an unknown run is named.

mod common;
mod fleet;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use fleet::{Fleet, FleetOptions};
use hangar_testkit::{GitServer, TestDir, provider};
use serde_json::{Value, json};

fn config_with_file(path: &Path, content: &str) -> String {
    format!(
        "{}\nresource \"hangartest_file\" \"motd\" {{\n  path    = \"{}\"\n  content = \"{content}\"\n}}\n",
        provider::required_providers(),
        path.display()
    )
}

/// `hangar ARGS` with the client configuration under `home` (and nothing of
/// this process's own environment that would say where to connect).
fn hangar(home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(hangar_testkit::cargo_bin("hangar"));
    cmd.args(args)
        .env("HANGAR_CLIENT_CONFIG", home.join("client.toml"))
        .env_remove("HANGAR_SERVER")
        .env_remove("HANGAR_API_KEY")
        .env_remove("HANGAR_PROFILE")
        .stdin(Stdio::null());
    cmd
}

fn with_input(mut cmd: Command, input: &str) -> Output {
    use std::io::Write;
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn both(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs `cmd`, which must succeed; returns its standard output.
fn ok(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}:\n{}", both(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_of(cmd: Command) -> Value {
    let text = ok(cmd);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// Runs `cmd`, which must fail with `code`; returns its one error line.
fn fails(mut cmd: Command, code: i32) -> String {
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(code), "{cmd:?}:\n{}", both(&out));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("hangar: error:")).collect();
    assert_eq!(lines.len(), 1, "one error line:\n{err}");
    lines[0].to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_logs_in_runs_terraform_to_the_end_and_fails_clearly() {
    let mirror_dir = TestDir::new("provider-mirror");
    provider::add_to_mirror(mirror_dir.path());
    let settings = format!("provider_mirror_dir = \"{}\"\n", mirror_dir.path().display());
    let fleet = Fleet::start_with_server(FleetOptions::default(), &settings).await;
    let host = fleet.files.subdir("worker-host");
    let motd = host.join("motd");
    let home = fleet.files.subdir("client-home");
    let server = fleet.app.url("/");
    let ca = fleet.app.ca_path().display().to_string();

    // Where to connect is a usage question: exit code 2.
    let line = fails(hangar(&home, &["stack", "list"]), 2);
    assert!(line.contains("no server"), "{line}");

    // Log in: the password from standard input, the session kept as a
    // private key file of the default profile.
    let login = hangar(&home, &["login", "--server", &server, "--ca-file", &ca, "--email", common::ADMIN_EMAIL]);
    let out = with_input(login, &format!("{}\n", common::ADMIN_PASSWORD));
    assert!(out.status.success(), "{}", both(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("logged in as admin@hangar.test (ADMIN)"), "{}", both(&out));
    let key = home.join("default.token");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let wrong = hangar(&home, &["login", "--server", &server, "--ca-file", &ca, "--email", common::ADMIN_EMAIL]);
    let out = with_input(wrong, "not-the-password\n");
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNAUTHENTICATED"), "{}", both(&out));

    let git = GitServer::start().await;
    git.create_repo("files");
    git.push_files("files", "main", &[("infra/main.tf", &config_with_file(&motd, "hello"))], "a file");
    fleet.create_stack("files", &git.url("files"), "builders", json!({ "labels": ["team-a"] })).await;
    let config = fleet.join_worker("builders", "host-a").await;
    let worker = fleet.run_worker(&config, "host-a");
    fleet.wait_workers("builders", "idle", 1).await;

    let stacks = json_of(hangar(&home, &["stack", "list", "--json"]));
    assert_eq!(stacks[0]["slug"], "files", "{stacks}");
    assert_eq!(json_of(hangar(&home, &["stack", "list", "--label", "nope", "--json"])), json!([]));
    let shown = ok(hangar(&home, &["stack", "show", "files"]));
    assert!(shown.contains("worker pool  builders") && shown.contains("state        unlocked"), "{shown}");
    let line = fails(hangar(&home, &["stack", "show", "ghost"]), 1);
    assert!(line.contains("stack \"ghost\" does not exist"), "{line}");

    // Variables: a secret from standard input is never printed back.
    ok(hangar(&home, &["env", "set", "files", "GREETING", "hello"]));
    let out = with_input(hangar(&home, &["env", "set", "files", "TF_VAR_token", "--secret"]), "s3cret-value\n");
    assert!(out.status.success(), "{}", both(&out));
    let listed = ok(hangar(&home, &["env", "list", "files"]));
    assert!(listed.contains("GREETING=hello") && listed.contains("TF_VAR_token=(secret, set)"), "{listed}");
    assert!(!listed.contains("s3cret"), "{listed}");
    let line = fails(hangar(&home, &["env", "set", "files", "BAD-NAME", "x"]), 1);
    assert!(line.contains("BAD_USER_INPUT") && line.contains("environment variable name"), "{line}");
    ok(hangar(&home, &["env", "unset", "files", "GREETING"]));
    assert!(!ok(hangar(&home, &["env", "list", "files"])).contains("GREETING"));

    // Trigger and follow: the plan streams, and the command ends when the run
    // waits for confirmation, saying so.
    let out = hangar(&home, &["run", "trigger", "files", "--follow"]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("Plan: 1 to add, 0 to change, 0 to destroy."), "{stdout}");
    assert!(stderr.contains("-- PLANNING") && stderr.contains("-- UNCONFIRMED"), "{stderr}");
    assert!(stderr.contains("plan: 1 to add, 0 to change, 0 to destroy"), "{stderr}");
    let id = stderr.split("hangar run confirm ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap().to_string();
    assert!(!motd.exists());

    // A reader may look but not confirm.
    let reader = fleet
        .ok("mutation { createApiKey(name: \"reader\", role: READER) { key } }", json!({}))
        .await["createApiKey"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    let mut as_reader = hangar(&home, &["run", "confirm", &id]);
    as_reader.env("HANGAR_API_KEY", &reader);
    let line = fails(as_reader, 1);
    assert!(line.contains("FORBIDDEN"), "{line}");
    let mut reads = hangar(&home, &["run", "show", &id, "--json"]);
    reads.env("HANGAR_API_KEY", &reader);
    assert_eq!(json_of(reads)["state"], "UNCONFIRMED");

    // Confirm and follow the apply to its end.
    let out = hangar(&home, &["run", "confirm", &id, "--follow"]).output().unwrap();
    assert!(out.status.success(), "{}", both(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Apply complete! Resources: 1 added"), "{}", both(&out));
    assert_eq!(std::fs::read_to_string(&motd).unwrap(), "hello");
    let run = json_of(hangar(&home, &["run", "show", &id, "--json"]));
    assert_eq!((run["state"].as_str(), run["stack"]["slug"].as_str()), (Some("FINISHED"), Some("files")), "{run}");
    assert_eq!(run["commitMessage"], "a file", "{run}");
    let shown = ok(hangar(&home, &["run", "show", &id]));
    assert!(shown.contains("FINISHED") && shown.contains("  commit: a file"), "{shown}");
    let log = ok(hangar(&home, &["run", "logs", &id]));
    assert!(log.contains("Plan: 1 to add") && log.contains("Apply complete!"), "{log}");
    let planning = ok(hangar(&home, &["run", "logs", &id, "--phase", "planning"]));
    assert!(planning.contains("Plan: 1 to add") && !planning.contains("Apply complete!"), "{planning}");
    assert!(!log.contains("s3cret-value"), "secrets are masked in logs");
    // Following an ended run prints its whole log and ends at once.
    let followed = ok(hangar(&home, &["run", "logs", &id, "--follow"]));
    assert_eq!(followed, log);

    // A task, its command after `--`, followed to its end.
    let out = ok(hangar(&home, &["run", "task", "files", "--follow", "--", "terraform", "state", "list"]));
    assert!(out.contains("hangartest_file.motd"), "{out}");

    // A run that fails makes the command fail, with the run's reason.
    git.push_files("files", "main", &[("infra/main.tf", "resource \"nope\" {\n")], "broken");
    let line = fails(hangar(&home, &["run", "trigger", "files", "--follow"]), 1);
    assert!(line.contains("ended FAILED"), "{line}");

    // A queued run canceled (no worker left to take it first); an unknown
    // run named.
    drop(worker);
    git.push_files("files", "main", &[("infra/main.tf", &config_with_file(&motd, "again"))], "again");
    let queued = json_of(hangar(&home, &["run", "trigger", "files", "--proposed", "--json"]));
    assert_eq!(queued["kind"], "PROPOSED");
    let id = queued["id"].as_str().unwrap();
    let canceled = json_of(hangar(&home, &["run", "cancel", id, "--json"]));
    assert!(["CANCELED", "STOPPED"].contains(&canceled["state"].as_str().unwrap()), "{canceled}");
    let line = fails(hangar(&home, &["run", "show", "999999"]), 1);
    assert!(line.contains("run \"999999\" does not exist"), "{line}");
    let line = fails(hangar(&home, &["run", "discard", id]), 1);
    assert!(line.contains("discardRun: REFUSED"), "{line}");

    // A policy replayed against the recorded plans (none here: no policy
    // was attached) says so, and one that does not compile is named.
    let policy = fleet.files.path().join("policy.rego");
    std::fs::write(&policy, "package hangar.x\n\ndeny contains \"no\" if true\n").unwrap();
    let replays = json_of(hangar(&home, &["policy", "test", policy.to_str().unwrap(), "--kind", "plan", "--json"]));
    assert!(replays.as_array().is_some(), "{replays}");
    std::fs::write(&policy, "package hangar.x\n\ndeny contains msg if {\n").unwrap();
    let line = fails(hangar(&home, &["policy", "test", policy.to_str().unwrap(), "--kind", "plan"]), 1);
    assert!(line.contains("body is refused: line "), "{line}");
}

/// `hangar space …`: an admin shapes the tree and grants a team its space;
/// the team's API key then sees only its space, from the command line.
#[tokio::test]
async fn spaces_and_grants_from_the_command_line() {
    let app = common::Appliance::start().await;
    let admin = app.admin_token().await;
    let files = TestDir::new("cli-spaces");
    let home = files.subdir("home");
    let server = app.url("/");
    let ca = app.ca_path().display().to_string();
    let as_key = |key: &str, args: &[&str]| {
        let mut cmd = hangar(&home, args);
        cmd.env("HANGAR_SERVER", &server).env("HANGAR_API_KEY", key).args(["--ca-file", &ca]);
        cmd
    };

    ok(as_key(&admin, &["space", "create", "org", "--name", "Organisation"]));
    ok(as_key(&admin, &["space", "create", "payments", "--parent", "org"]));
    ok(as_key(&admin, &["space", "create", "search", "--parent", "org"]));
    let made = json_of(as_key(&admin, &["space", "create", "payments-eu", "--parent", "payments", "--json"]));
    assert_eq!(made["parent"]["slug"], "payments");
    for (slug, space) in [("ledger", "payments"), ("index", "search")] {
        let mut input = common::stack_input(slug, "https://git.example/infra.git");
        input["space"] = json!(space);
        app.ok(&admin, common::CREATE_STACK, json!({ "i": input })).await;
    }
    app.ok(
        &admin,
        "mutation { createUser(email: \"pay@hangar.test\", role: NO_ACCESS, password: \"Orange-Kettle-8-Wind!\") { id } }",
        json!({}),
    )
    .await;
    let granted = ok(as_key(&admin, &["space", "grant", "payments", "--user", "pay@hangar.test", "--role", "writer"]));
    assert!(granted.contains("pay@hangar.test is writer in payments and every space below"), "{granted}");

    // The tree as the admin sees it, indented under its parents.
    let tree = ok(as_key(&admin, &["space", "list"]));
    let lines: Vec<&str> = tree.lines().map(|l| l.split_whitespace().next().unwrap_or("")).collect();
    assert_eq!(lines, ["root", "org", "payments", "payments-eu", "search"], "{tree}");
    assert!(tree.contains("\n  org") && tree.contains("\n      payments-eu"), "{tree}");
    let shown = ok(as_key(&admin, &["space", "show", "payments"]));
    assert!(shown.contains("stack    ledger") && shown.contains("grant    writer  pay@hangar.test"), "{shown}");

    // The team's key: its space and below, nothing else, and no grants to read.
    let team = app.login("pay@hangar.test", "Orange-Kettle-8-Wind!").await;
    let key = app.ok(&team, "mutation { createApiKey(name: \"ci\") { key apiKey { role } } }", json!({})).await;
    assert_eq!(key["createApiKey"]["apiKey"]["role"], "WRITER", "a key takes its owner's highest role");
    let key = key["createApiKey"]["key"].as_str().unwrap().to_string();
    let seen = json_of(as_key(&key, &["space", "list", "--json"]));
    let slugs: Vec<&str> = seen.as_array().unwrap().iter().map(|s| s["slug"].as_str().unwrap()).collect();
    assert_eq!(slugs, ["payments", "payments-eu"], "{seen}");
    let list = ok(as_key(&key, &["stack", "list"]));
    assert!(list.contains("ledger") && list.contains("payments") && !list.contains("index"), "{list}");
    let line = fails(as_key(&key, &["stack", "show", "index"]), 1);
    assert!(line.contains("stack \"index\" does not exist"), "{line}");
    let shown = ok(as_key(&key, &["space", "show", "payments"]));
    assert!(shown.contains("my role  writer") && !shown.contains("grant "), "{shown}");
    let line = fails(as_key(&key, &["space", "grant", "payments", "--user", "pay@hangar.test", "--role", "admin"]), 1);
    assert!(line.contains("FORBIDDEN"), "{line}");
    let line = fails(as_key(&key, &["space", "show", "search"]), 1);
    assert!(line.contains("space \"search\" does not exist"), "{line}");

    // Usage mistakes are exit 2 (the argument parser says what is wrong);
    // refusals name their reason.
    for args in [
        &["space", "grant", "payments", "--role", "reader"][..],
        &["space", "grant", "payments", "--user", "a@b.c", "--api-key", "1", "--role", "reader"],
        &["space", "grant", "payments", "--user", "a@b.c", "--role", "owner"],
    ] {
        let out = as_key(&admin, args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", both(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("error:"), "{args:?}: {}", both(&out));
    }
    let line = fails(as_key(&admin, &["space", "delete", "payments"]), 1);
    assert!(line.contains("not empty") && line.contains("1 spaces") && line.contains("1 stacks"), "{line}");
    ok(as_key(&admin, &["space", "revoke", "payments", "--user", "pay@hangar.test"]));
    assert_eq!(json_of(as_key(&key, &["space", "list", "--json"])), json!([]));
    ok(as_key(&admin, &["space", "delete", "payments-eu"]));
}
