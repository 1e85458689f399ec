//! Scale-out behind a real load balancer: two `hangar server` processes, each
//! with its own broker, on one PostgreSQL and one Garage, behind Debian's
//! HAProxy (TCP passthrough for the API and for MQTT, health checks on each
//! server's `/ready` over HTTPS, a PROXY protocol header naming each API
//! client), with `hangar drain` twice. Failed logins through the balancer are
//! throttled per client, not for everyone at once. Worker hosts join
//! and connect through the balancer's addresses only and land on both
//! servers; a run made READY while its only worker is connected to the other
//! server reaches it; runs of a pool are claimed once each; and when one server
//! is killed (SIGKILL) while runs are on its workers, they reconnect through
//! the balancer to the survivor and their runs finish, reports, logs and
//! state all landed, none lost or run twice; back up, it is taken in again.
//! One worker is on the HTTP transport and goes through the same.

mod balancer;
mod common;
mod fleet;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use balancer::{Balancer, Member};

use diesel_async::RunQueryDsl;
use fleet::{Fleet, FleetOptions, SOON};
use hangar_testkit::{ChildProcess, GitServer, TestDir, cargo_bin, provider, wait_for};
use serde_json::{Value, json};

/// A configuration whose apply writes `content` to `path` on the worker
/// host through the test provider (from the appliance's provider mirror).
fn config_with_file(path: &Path, content: &str) -> String {
    format!(
        "{}\nresource \"hangartest_file\" \"out\" {{\n  path    = \"{}\"\n  content = \"{content}\"\n  mode    = \"0644\"\n}}\n",
        provider::required_providers(),
        path.display()
    )
}

fn worker_id(config_dir: &Path) -> i64 {
    let text = std::fs::read_to_string(config_dir.join("worker.toml")).unwrap();
    text.lines().find_map(|l| l.strip_prefix("worker_id = ")).unwrap().trim().parse().unwrap()
}

fn set_poll_secs(config_dir: &Path, secs: u64) {
    let path = config_dir.join("worker.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("poll_secs = 2\n"), "{text}");
    std::fs::write(&path, text.replace("poll_secs = 2\n", &format!("poll_secs = {secs}\n"))).unwrap();
}

/// The worker that holds (or held) run `id`, from the database.
async fn run_worker_id(fleet: &Fleet, id: &str) -> Option<i64> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
        worker_id: Option<i64>,
    }
    let mut c = fleet.app.pg.database().connect().await.unwrap();
    diesel::sql_query("SELECT worker_id FROM runs WHERE id = $1")
        .bind::<diesel::sql_types::BigInt, _>(id.parse::<i64>().unwrap())
        .get_result::<Row>(&mut c)
        .await
        .unwrap()
        .worker_id
}

/// Whether `log` names run `id` as a field (`run_id=7`, not `run_id=71`).
fn names_run(log: &str, id: &str) -> bool {
    let tag = format!("run_id={id}");
    log.match_indices(&tag).any(|(i, _)| !log[i + tag.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

/// A login through the balancer from the client address `source`.
async fn login_from(fleet: &Fleet, source: &str, email: &str, password: &str) -> Value {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(fleet.app.ca_path()).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .local_address(source.parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    let query = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }";
    let r = client.post(fleet.app.url("/graphql")).json(&json!({ "query": query, "variables": { "e": email, "p": password } }));
    r.send().await.unwrap().json().await.unwrap()
}

/// A GraphQL request sent to one member directly, not through the balancer.
async fn gql_on(fleet: &Fleet, member: &Member, query: &str, variables: Value) -> Value {
    let r = fleet
        .app
        .client
        .post(member.url("/graphql"))
        .bearer_auth(&fleet.admin)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert!(body.get("errors").is_none(), "{query} on {}: {body}", member.name);
    body["data"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_servers_behind_haproxy_share_the_fleet_and_a_killed_one_loses_no_run() {
    let mirror = TestDir::new("provider-mirror");
    provider::add_to_mirror(mirror.path());
    // Long polls are held five minutes, as long as the HTTP worker asks.
    let settings = format!("provider_mirror_dir = \"{}\"\nworker_claim_wait_secs = 300\n", mirror.path().display());
    let mut fleet = Fleet::start_with_server(FleetOptions::default(), &settings).await;
    // A second drain: several drains share the queue.
    let drain2 = {
        let mut cmd = Command::new(cargo_bin("hangar"));
        cmd.arg("--config").arg(&fleet.app.config).arg("drain").env("HANGAR_LOG", "info").stdin(Stdio::null());
        ChildProcess::spawn(cmd, "drain-2", fleet.app.dir.path())
    };

    // The appliance's own server gives way to two members; the balancer takes
    // its addresses, which the configuration names as the public URL and the
    // broker URL, so everything that reached the appliance now reaches the balancer.
    let shared_api = fleet.app.addr.port();
    let shared_mqtt = fleet.app.broker_port.unwrap();
    let first = fleet.app.server.take().unwrap();
    drop(first);
    let dir = fleet.app.dir.path().to_path_buf();
    let mut members: Vec<Member> =
        ["s1", "s2"].iter().map(|n| Member::new(&fleet.app.config, &dir, n, shared_api, shared_mqtt)).collect();
    // Both start at once on the one database and object store.
    for m in &mut members {
        m.spawn(&dir, "info");
    }
    let client = fleet.app.client.clone();
    for m in &members {
        wait_for(&format!("{} to be ready (log {})", m.name, m.log().log_path().display()), SOON, || async {
            let (status, body) = m.ready(&client).await?;
            (status == 200 && body["components"]["broker"]["status"] == "ok").then_some(())
        })
        .await;
    }
    let ca = fleet.app.ca_path();
    let balancer =
        Balancer::start(&dir, &Balancer::config(shared_api, shared_mqtt, &members, &ca, &dir.join("haproxy.sock"), 4096));
    for m in &members {
        balancer.wait_status(&m.name, "UP").await;
    }
    let (status, body) = fleet.app.ready().await;
    assert_eq!(status, 200, "/ready through the balancer: {body}");

    // ---- the servers see clients, not the balancer ----
    // Ten failed logins from one client lock that client out, and nobody else.
    for i in 0..10 {
        let v = login_from(&fleet, "127.0.0.3", common::ADMIN_EMAIL, &format!("Wrong-Guess-{i}")).await;
        assert_eq!(v["errors"][0]["extensions"]["code"], "UNAUTHENTICATED", "{v}");
    }
    let v = login_from(&fleet, "127.0.0.3", common::ADMIN_EMAIL, common::ADMIN_PASSWORD).await;
    assert_eq!(v["errors"][0]["extensions"]["code"], "REFUSED", "{v}");
    let v = login_from(&fleet, "127.0.0.4", common::ADMIN_EMAIL, common::ADMIN_PASSWORD).await;
    assert!(v["data"]["login"]["token"].is_string(), "another client is not locked out: {v}");
    let audit =
        fleet.ok("{ auditEvents(action: \"user.login_failed\") { items { details } } }", json!({})).await;
    let items = audit["auditEvents"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 10, "{audit}");
    assert!(items.iter().all(|i| i["details"]["source"] == "127.0.0.3"), "{audit}");

    // ---- workers join and connect through the balancer only ----
    let git = GitServer::start().await;
    let out = fleet.files.subdir("outputs");
    git.create_repo("infra");
    let stacks = ["alpha", "bravo", "charlie", "delta"];
    let mut files = vec![];
    for s in stacks.iter().chain(&["solo", "web"]) {
        files.push((format!("{s}/main.tf"), config_with_file(&out.join(s), &format!("applied by {s}"))));
    }
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
    git.push_files("infra", "main", &files, "six stacks, one file each");
    // Applies wait for the test's word, so that a server dies under them.
    let held = fleet.hold_tool("1.0.3-held", &["apply"]);
    for s in &stacks {
        let extra = json!({ "projectRoot": s, "autodeploy": true, "toolVersion": held.version });
        fleet.create_stack(s, &git.url("infra"), "fleet", extra).await;
    }
    fleet.create_stack("solo", &git.url("infra"), "solo", json!({ "projectRoot": "solo", "autodeploy": true })).await;
    fleet
        .create_stack("web", &git.url("infra"), "web", json!({ "projectRoot": "web", "autodeploy": true, "toolVersion": held.version }))
        .await;

    // Workers poll only every five minutes: a run reaching one sooner was
    // announced to it by the broker it is connected to, or woke its long poll.
    let mut workers: BTreeMap<i64, (String, ChildProcess)> = BTreeMap::new();
    let mut names: Vec<(String, &str)> = (1..=4).map(|i| (format!("f{i}"), "fleet")).collect();
    names.push(("solo".to_string(), "solo"));
    for (name, pool) in &names {
        let config = fleet.join_worker(pool, name).await;
        set_poll_secs(&config, 300);
        let toml = std::fs::read_to_string(config.join("worker.toml")).unwrap();
        assert!(
            toml.contains(&format!("https://localhost:{shared_api}")) && toml.contains(&format!("mqtts://localhost:{shared_mqtt}")),
            "the worker knows the balancer's addresses only: {toml}"
        );
        let process = fleet.run_worker(&config, name);
        workers.insert(worker_id(&config), (name.clone(), process));
    }
    let web_config = fleet.join_http_worker("web", "web").await;
    set_poll_secs(&web_config, 300);
    let web_id = worker_id(&web_config);
    workers.insert(web_id, ("web".to_string(), fleet.run_worker(&web_config, "web")));
    fleet.wait_workers("fleet", "idle", 4).await;
    fleet.wait_workers("solo", "idle", 1).await;
    fleet.wait_workers("web", "idle", 1).await;

    // Some landed on each server: each server's /ready counts its broker's
    // connections, and its log names whom it admitted.
    let mqtt_workers: BTreeSet<i64> = workers.keys().copied().filter(|w| *w != web_id).collect();
    let spread = wait_for("the five MQTT workers to be counted by the servers", SOON, || async {
        let mut counts = vec![];
        for m in &members {
            counts.push(m.connections(&client).await?);
        }
        (counts.iter().sum::<u64>() == 5).then_some(counts)
    })
    .await;
    assert!(spread.iter().all(|c| *c >= 1), "leastconn spreads the workers over both brokers: {spread:?}");
    let on: Vec<BTreeSet<i64>> = members.iter().map(Member::admitted).collect();
    assert!(on[0].is_disjoint(&on[1]), "{on:?}");
    assert_eq!(on[0].union(&on[1]).copied().collect::<BTreeSet<_>>(), mqtt_workers, "{on:?}");
    for (m, ids) in members.iter().zip(&on) {
        assert_eq!(m.connections(&client).await, Some(ids.len() as u64), "{}", m.name);
    }

    // ---- a run made READY reaches a worker connected to the other server ----
    let solo = *workers.iter().find(|(_, (n, _))| n == "solo").unwrap().0;
    let (home, other) = if on[0].contains(&solo) { (0, 1) } else { (1, 0) };
    let d = gql_on(&fleet, &members[other], "mutation { triggerRun(stack: \"solo\") { id } }", json!({})).await;
    let solo_run = d["triggerRun"]["id"].as_str().unwrap().to_string();
    let logs: Vec<&ChildProcess> =
        workers.values().map(|(_, p)| p).chain(members.iter().map(Member::log)).chain([&drain2]).collect();
    fleet.wait_state(&solo_run, "FINISHED", &logs).await;
    assert_eq!(run_worker_id(&fleet, &solo_run).await, Some(solo));
    assert_eq!(std::fs::read_to_string(out.join("solo")).unwrap(), "applied by solo");
    assert!(members[home].admitted().contains(&solo) && !members[other].admitted().contains(&solo));

    // ---- runs of a pool, each claimed once; one server dies under them ----
    let mut runs = BTreeMap::new();
    for s in &stacks {
        runs.insert(s.to_string(), fleet.trigger(s).await);
    }
    runs.insert("web".to_string(), fleet.trigger("web").await);
    // Every apply is held: five runs on five different workers.
    wait_for("the five runs to be applying on their workers", SOON, || async {
        let mut n = 0;
        for id in runs.values() {
            let (state, run) = fleet.run(id).await;
            assert!(!fleet::TERMINAL.contains(&state.as_str()), "run {id} ended early: {run}");
            n += usize::from(state == "APPLYING");
        }
        (n == runs.len()).then_some(())
    })
    .await;
    let mut holders = BTreeMap::new();
    for (stack, id) in &runs {
        holders.insert(stack.clone(), run_worker_id(&fleet, id).await.expect("a claimed run names its worker"));
    }
    let distinct: BTreeSet<i64> = holders.values().copied().collect();
    assert_eq!(distinct.len(), runs.len(), "one run per worker: {holders:?}");
    assert_eq!(holders["web"], web_id);

    // The server with more of the busy workers is killed outright.
    let busy_on = |i: usize| holders.values().filter(|w| on[i].contains(w)).count();
    let victim = if busy_on(0) >= busy_on(1) { 0 } else { 1 };
    let survivor = 1 - victim;
    assert!(busy_on(victim) >= 1, "{holders:?} {on:?}");
    let victim_name = members[victim].name.clone();
    let mut dead = members[victim].process.take().unwrap();
    dead.kill();
    // The health checks take it out of both backends.
    balancer.wait_status(&victim_name, "DOWN").await;
    // Its workers come back through the balancer: all five MQTT workers are
    // on the survivor's broker.
    wait_for("every MQTT worker to be connected to the surviving server", SOON, || async {
        (members[survivor].connections(&client).await == Some(5)).then_some(())
    })
    .await;

    held.release("apply");
    let logs: Vec<&ChildProcess> =
        workers.values().map(|(_, p)| p).chain(members[survivor].process.as_ref()).chain([&drain2, &dead]).collect();
    for (stack, id) in &runs {
        let run = fleet.wait_state(id, "FINISHED", &logs).await;
        let history = fleet.history(id).await;
        assert_eq!(
            history,
            ["QUEUED", "READY", "PREPARING", "INITIALIZING", "PLANNING", "APPLYING", "FINISHED"],
            "run {id} of {stack} went through each state once: {run}"
        );
        assert_eq!(run_worker_id(&fleet, id).await, Some(holders[stack]), "run {id} stayed with its worker");
        // Claimed once: only its worker's log names it.
        let named: Vec<&str> =
            workers.values().filter(|(_, p)| names_run(&p.output(), id)).map(|(n, _)| n.as_str()).collect();
        assert_eq!(named, [workers[&holders[stack]].0.as_str()], "run {id} appears in one worker's log");
        // What Terraform did landed: the file, the state, the whole log.
        assert_eq!(std::fs::read_to_string(out.join(stack)).unwrap(), format!("applied by {stack}"));
        assert_eq!(fleet.state_versions(stack).await, 1, "{stack}: one state version");
        let log = fleet.run_log(id).await;
        assert!(log.contains("Apply complete! Resources: 1 added"), "run {id}'s log is whole: {log}");
    }

    // The survivor alone goes on dispatching, to both transports.
    for s in ["alpha", "web"] {
        std::fs::remove_file(out.join(s)).unwrap();
        // The held tool's gate stays open from now on.
        let id = fleet.trigger(s).await;
        fleet.wait_state(&id, "FINISHED", &logs).await;
        assert_eq!(std::fs::read_to_string(out.join(s)).unwrap(), format!("applied by {s}"));
    }
    let (status, body) = fleet.app.ready().await;
    assert_eq!(status, 200, "/ready through the balancer with one server left: {body}");

    // ---- the server comes back and takes its share again ----
    members[victim].spawn(&dir, "info");
    balancer.wait_status(&victim_name, "UP").await;
    // The solo pool's worker leaves; a new one joins, and the balancer gives
    // its MQTT session to the server with the fewest (the one back).
    drop(workers.remove(&solo));
    let late_config = fleet.join_worker("solo", "late").await;
    set_poll_secs(&late_config, 300);
    let late = worker_id(&late_config);
    workers.insert(late, ("late".to_string(), fleet.run_worker(&late_config, "late")));
    wait_for("the new worker to be connected to the server that came back", SOON, || async {
        members[victim].admitted().contains(&late).then_some(())
    })
    .await;
    std::fs::remove_file(out.join("solo")).unwrap();
    let id = fleet.trigger("solo").await;
    let logs: Vec<&ChildProcess> = workers.values().map(|(_, p)| p).chain(members.iter().map(Member::log)).collect();
    fleet.wait_state(&id, "FINISHED", &logs).await;
    assert_eq!(run_worker_id(&fleet, &id).await, Some(late));
    assert_eq!(std::fs::read_to_string(out.join("solo")).unwrap(), "applied by solo");

    // The HTTP worker's long poll is held by one of the two servers: a run
    // triggered through each server's own API reaches it, so one of them
    // crossed from a server that does not hold the poll.
    for m in &members {
        let d = gql_on(&fleet, m, "mutation { triggerRun(stack: \"web\") { id } }", json!({})).await;
        let id = d["triggerRun"]["id"].as_str().unwrap().to_string();
        fleet.wait_state(&id, "FINISHED", &logs).await;
        assert_eq!(run_worker_id(&fleet, &id).await, Some(web_id), "run {id} triggered on {}", m.name);
    }
    drop(dead);
    drop(balancer);
}
