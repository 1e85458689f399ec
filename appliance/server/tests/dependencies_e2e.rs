//! Stack dependencies on real resources: four stacks in a diamond
//! (network → cluster, network → dns, cluster + dns → app), each managing a
//! file on the worker host through the test provider, with outputs passed
//! down as `TF_VAR_…`. Two workers, so that cluster and dns apply side by
//! side. A finished apply of network starts cluster and dns; app starts
//! once, after both. A failed apply stops the chain and the stack below
//! says where; fixing it resumes the chain. Cycles, bad names and a missing
//! output are refused with their reason; the console shows all of it.

mod common;
mod fleet;

use std::path::Path;

use fleet::{Fleet, FleetOptions, SOON};
use hangar_testkit::{ChildProcess, GitServer, TestDir, provider, wait_for};
use serde_json::{Value, json};

fn file(name: &str, path: &Path, content: &str) -> String {
    format!("resource \"hangartest_file\" \"{name}\" {{\n  path    = \"{}\"\n  content = \"{content}\"\n}}\n", path.display())
}

fn variable(name: &str) -> String {
    format!("variable \"{name}\" {{\n  type = string\n}}\n")
}

fn output(name: &str, value: &str) -> String {
    format!("output \"{name}\" {{\n  value = {value}\n}}\n")
}

/// The four stacks' configurations, network's file holding `generation`;
/// dns's broken (a required argument missing) when `dns_broken`.
fn configs(dir: &Path, generation: &str, dns_broken: bool) -> Vec<(String, String)> {
    let rp = provider::required_providers();
    let network = format!(
        "{rp}{}{}{}",
        file("net", &dir.join("network.txt"), generation),
        output("path", "hangartest_file.net.path"),
        output("tag", &format!("\"{generation}\"")),
    );
    let cluster = format!(
        "{rp}{}{}{}",
        variable("network_path"),
        file("cluster", &dir.join("cluster.txt"), "cluster on ${var.network_path}"),
        output("name", "\"blue\""),
    );
    let dns = if dns_broken {
        format!("{rp}{}resource \"hangartest_file\" \"zone\" {{\n  content = \"no path\"\n}}\n", variable("network_tag"))
    } else {
        format!(
            "{rp}{}{}{}",
            variable("network_tag"),
            file("zone", &dir.join("dns.txt"), "zone for ${var.network_tag}"),
            output("zone", &format!("\"zone-{generation}\"")),
        )
    };
    let app = format!(
        "{rp}{}{}{}",
        variable("cluster"),
        variable("zone"),
        file("app", &dir.join("app.txt"), "app on ${var.cluster} in ${var.zone}"),
    );
    [("network", network), ("cluster", cluster), ("dns", dns), ("app", app)]
        .into_iter()
        .map(|(s, c)| (format!("{s}/main.tf"), c))
        .collect()
}

fn push(git: &GitServer, files: &[(String, String)], message: &str) {
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
    git.push_files("infra", "main", &files, message);
}

const DEPEND: &str = "mutation($s: String!, $d: String!, $o: [DependencyOutputInput!]!) { addStackDependency(stack: $s, dependsOn: $d, outputs: $o) { slug } }";

async fn depend(fleet: &Fleet, stack: &str, on: &str, outputs: Value) -> Value {
    fleet.app.gql(Some(&fleet.admin), DEPEND, json!({ "s": stack, "d": on, "o": outputs })).await.1
}

/// The tracked runs of `stack`, oldest first: (id, state, triggeredBy, createdAt, updatedAt).
async fn tracked(fleet: &Fleet, stack: &str) -> Vec<Value> {
    let d = fleet
        .ok(
            "query($s: String!) { runs(stack: $s, first: 50) { items { id kind state triggeredBy failureReason createdAt updatedAt } } }",
            json!({ "s": stack }),
        )
        .await;
    let mut runs: Vec<Value> = d["runs"]["items"].as_array().unwrap().iter().filter(|r| r["kind"] == "TRACKED").cloned().collect();
    runs.reverse();
    runs
}

/// Waits for `stack` to have `n` tracked runs, the newest ended; returns them.
async fn settled(fleet: &Fleet, stack: &str, n: usize, workers: &[&ChildProcess]) -> Vec<Value> {
    let runs = wait_for(&format!("{n} tracked run(s) of {stack}"), SOON, || async {
        let runs = tracked(fleet, stack).await;
        (runs.len() >= n).then_some(runs)
    })
    .await;
    assert_eq!(runs.len(), n, "{stack}: {runs:?}");
    let id = runs[n - 1]["id"].as_str().unwrap().to_string();
    let end = wait_for(&format!("run {id} of {stack} to end"), SOON, || async {
        let (state, run) = fleet.run(&id).await;
        fleet::TERMINAL.contains(&state.as_str()).then_some(run)
    })
    .await;
    if end["state"] != "FINISHED" && end["state"] != "FAILED" {
        for w in workers {
            eprintln!("{}", w.output());
        }
    }
    let mut runs = tracked(fleet, stack).await;
    runs.truncate(n);
    runs
}

const HELD: &str = "query($s: String!) { stack(slug: $s) { held { kind stack runId message } dependsOn { stack { slug } outputs { output input } standing { status runId runState } } dependents { slug } } }";

#[tokio::test(flavor = "multi_thread")]
async fn a_diamond_of_stacks_applies_in_order_and_a_failure_stops_the_chain() {
    let mirror_dir = TestDir::new("provider-mirror");
    provider::add_to_mirror(mirror_dir.path());
    let settings = format!("provider_mirror_dir = \"{}\"\n", mirror_dir.path().display());
    let fleet = Fleet::start_with_server(FleetOptions::default(), &settings).await;
    let host = fleet.files.subdir("worker-host");
    let git = GitServer::start().await;
    git.create_repo("infra");
    push(&git, &configs(&host, "net-1", false), "four stacks");
    for stack in ["network", "cluster", "dns", "app"] {
        fleet.create_stack(stack, &git.url("infra"), "builders", json!({ "projectRoot": stack, "autodeploy": true })).await;
    }
    let mut workers = Vec::new();
    for name in ["host-a", "host-b"] {
        let config = fleet.join_worker("builders", name).await;
        workers.push(fleet.run_worker(&config, name));
    }
    fleet.wait_workers("builders", "idle", 2).await;
    let ws: Vec<&ChildProcess> = workers.iter().collect();

    // The diamond, outputs wired down.
    for (stack, on, outputs) in [
        ("cluster", "network", json!([{ "output": "path", "input": "network_path" }])),
        ("dns", "network", json!([{ "output": "tag", "input": "network_tag" }])),
        ("app", "cluster", json!([{ "output": "name", "input": "cluster" }])),
        ("app", "dns", json!([{ "output": "zone", "input": "zone" }])),
    ] {
        let v = depend(&fleet, stack, on, outputs).await;
        assert_eq!(v["data"]["addStackDependency"]["slug"], stack, "{v}");
    }

    // Refusals: a cycle, named; a stack on itself; names Terraform would
    // refuse; an input set twice or by two dependencies; a stack that is not.
    let v = depend(&fleet, "network", "app", json!([])).await;
    let m = v["errors"][0]["message"].as_str().unwrap();
    assert!(m.contains("cycle network → app → cluster → network"), "{v}");
    let v = depend(&fleet, "dns", "dns", json!([])).await;
    assert!(v["errors"][0]["message"].as_str().unwrap().contains("cycle dns → dns"), "{v}");
    for (outputs, needle) in [
        (json!([{ "output": "a b", "input": "x" }]), "not a Terraform name"),
        (json!([{ "output": "ok", "input": "1x" }]), "not a Terraform name"),
        (json!([{ "output": "a", "input": "x" }, { "output": "b", "input": "x" }]), "set twice"),
        (json!([{ "output": "other", "input": "cluster" }]), "already set by dependency cluster"),
    ] {
        let v = depend(&fleet, "app", "network", outputs.clone()).await;
        assert!(v["errors"][0]["message"].as_str().unwrap_or_default().contains(needle), "{outputs}: {v}");
    }
    let v = depend(&fleet, "app", "ghost", json!([])).await;
    assert_eq!(v["errors"][0]["extensions"]["code"], "NOT_FOUND", "{v}");
    let reader = fleet.app.user_token(&fleet.admin, "reader@hangar.test", "READER").await;
    let (_, v) = fleet.app.gql(Some(&reader), DEPEND, json!({ "s": "app", "d": "network", "o": [] })).await;
    assert_eq!(v["errors"][0]["extensions"]["code"], "FORBIDDEN", "{v}");

    let d = fleet.ok(HELD, json!({ "s": "app" })).await;
    assert_eq!(d["stack"]["held"]["kind"], "NEVER_APPLIED", "{d}");
    assert_eq!(d["stack"]["dependsOn"][0]["stack"]["slug"], "cluster", "{d}");
    assert_eq!(d["stack"]["dependsOn"][1]["outputs"], json!([{ "output": "zone", "input": "zone" }]), "{d}");

    // One apply of network runs the whole diamond, app once and last.
    fleet.trigger("network").await;
    let network = settled(&fleet, "network", 1, &ws).await;
    assert_eq!(network[0]["state"], "FINISHED", "{network:?}");
    let cluster = settled(&fleet, "cluster", 1, &ws).await;
    let dns = settled(&fleet, "dns", 1, &ws).await;
    for runs in [&cluster, &dns] {
        assert_eq!(runs[0]["state"], "FINISHED", "{runs:?}");
        assert_eq!(runs[0]["triggeredBy"], format!("dependency network (run {})", network[0]["id"].as_str().unwrap()));
    }
    let app = settled(&fleet, "app", 1, &ws).await;
    assert_eq!(app[0]["state"], "FINISHED", "{app:?}");
    let app_created = app[0]["createdAt"].as_str().unwrap();
    for runs in [&cluster, &dns] {
        assert!(runs[0]["updatedAt"].as_str().unwrap() <= app_created, "app started before its dependencies finished: {runs:?} {app:?}");
    }
    assert_eq!(std::fs::read_to_string(host.join("network.txt")).unwrap(), "net-1");
    assert_eq!(std::fs::read_to_string(host.join("cluster.txt")).unwrap(), format!("cluster on {}", host.join("network.txt").display()));
    assert_eq!(std::fs::read_to_string(host.join("dns.txt")).unwrap(), "zone for net-1");
    assert_eq!(std::fs::read_to_string(host.join("app.txt")).unwrap(), "app on blue in zone-net-1");
    // Nothing more starts: app depends on nothing that is still to run.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(tracked(&fleet, "app").await.len(), 1);
    let d = fleet.ok(HELD, json!({ "s": "app" })).await;
    assert_eq!(d["stack"]["held"], Value::Null, "{d}");
    assert_eq!(d["stack"]["dependsOn"][0]["standing"]["status"], "APPLIED", "{d}");
    let d = fleet.ok(HELD, json!({ "s": "network" })).await;
    assert_eq!(d["stack"]["dependents"], json!([{ "slug": "cluster" }, { "slug": "dns" }]), "{d}");

    // A failed apply of dns stops the chain there: app does not start, and
    // says where it stopped.
    push(&git, &configs(&host, "net-2", true), "dns broken");
    fleet.trigger("network").await;
    assert_eq!(settled(&fleet, "network", 2, &ws).await[1]["state"], "FINISHED");
    assert_eq!(settled(&fleet, "cluster", 2, &ws).await[1]["state"], "FINISHED");
    let dns = settled(&fleet, "dns", 2, &ws).await;
    assert_eq!(dns[1]["state"], "FAILED", "{dns:?}");
    let stopped = wait_for("the chain's stop audited", SOON, || async {
        let d = fleet
            .ok("query { auditEvents(first: 5, action: \"stack.chain_stopped\") { items { target details } } }", json!({}))
            .await;
        d["auditEvents"]["items"].as_array().unwrap().first().cloned()
    })
    .await;
    assert_eq!(stopped["target"], "stack:dns", "{stopped}");
    assert_eq!(stopped["details"]["dependents"], json!(["app"]), "{stopped}");
    assert_eq!(tracked(&fleet, "app").await.len(), 1, "app must not start after a failed dependency");
    let d = fleet.ok(HELD, json!({ "s": "app" })).await;
    let held = &d["stack"]["held"];
    assert_eq!((held["kind"].as_str(), held["stack"].as_str()), (Some("STOPPED"), Some("dns")), "{d}");
    assert_eq!(held["runId"], dns[1]["id"], "{d}");
    assert!(held["message"].as_str().unwrap().starts_with("the chain stopped at dns: its run"), "{d}");
    let console = common::ConsoleSession::login(&fleet.app).await;
    let page = console.get("/stacks/app").await;
    assert!(page.contains("Chain stopped upstream") && page.contains("The chain stopped at dns"), "{page}");
    assert!(page.contains("name → TF_VAR_cluster") && page.contains("href=\"/stacks/dns\""), "{page}");
    assert!(console.get("/stacks/network").await.contains("Depended on by"), "network's page names its dependents");

    // Fixed and applied, dns resumes the chain: app runs with the new values.
    push(&git, &configs(&host, "net-2", false), "dns fixed");
    fleet.trigger("dns").await;
    assert_eq!(settled(&fleet, "dns", 3, &ws).await[2]["state"], "FINISHED");
    let app = settled(&fleet, "app", 2, &ws).await;
    assert_eq!(app[1]["state"], "FINISHED", "{app:?}");
    assert!(app[1]["triggeredBy"].as_str().unwrap().starts_with("dependency dns"), "{app:?}");
    assert_eq!(std::fs::read_to_string(host.join("app.txt")).unwrap(), "app on blue in zone-net-2");

    // An output the dependency does not have fails the run with that reason,
    // rather than running it with a value missing.
    let v = depend(&fleet, "app", "network", json!([{ "output": "nope", "input": "extra" }])).await;
    assert!(v["errors"].is_null(), "{v}");
    fleet.trigger("app").await;
    let app = settled(&fleet, "app", 3, &ws).await;
    assert_eq!(app[2]["state"], "FAILED", "{app:?}");
    let reason = app[2]["failureReason"].as_str().unwrap();
    assert!(reason.contains("dependency network has no output \"nope\""), "{reason}");

    // Removed, the dependency is gone from both sides.
    let d = fleet.ok("mutation { removeStackDependency(stack: \"app\", dependsOn: \"network\") { slug } }", json!({})).await;
    assert_eq!(d["removeStackDependency"]["slug"], "app");
    let d = fleet.ok(HELD, json!({ "s": "network" })).await;
    assert_eq!(d["stack"]["dependents"], json!([{ "slug": "cluster" }, { "slug": "dns" }]), "{d}");
    let (_, v) = fleet.app.gql(Some(&fleet.admin), "mutation { removeStackDependency(stack: \"app\", dependsOn: \"network\") { slug } }", json!({})).await;
    assert_eq!(v["errors"][0]["extensions"]["code"], "NOT_FOUND", "{v}");
    // A stack others depend on is not deleted from under them.
    let (_, v) = fleet.app.gql(Some(&fleet.admin), "mutation { deleteStack(slug: \"network\") }", json!({})).await;
    let m = v["errors"][0]["message"].as_str().unwrap_or_default();
    assert_eq!(m, "stack network is depended on by cluster, dns: remove those dependencies first", "{v}");
    assert!(fleet.ok(HELD, json!({ "s": "network" })).await["stack"].is_object());
    let audit = fleet.ok("query { auditEvents(first: 10, action: \"stack.depend\") { items { target } } }", json!({})).await;
    assert_eq!(audit["auditEvents"]["items"].as_array().unwrap().len(), 5, "{audit}");
}
