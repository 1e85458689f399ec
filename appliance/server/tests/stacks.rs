//! Stacks, contexts and environment variables through the API, with secret
//! values that go in and never come out: not in answers, not in the audit trail,
//! not in the server's log, not in the database in clear.

mod common;

use common::*;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use hangar_db::schema::{audit_events, stacks, variables};
use serde_json::json;

const SECRET: &str = "s3cr3t-Value-Never-Shown-4711";
const CONTEXT_SECRET: &str = "ctx-Secret-Value-0815";

#[tokio::test]
async fn stacks_contexts_and_variables_with_secrets_that_never_come_back() {
    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    let writer = app.user_token(&admin, "writer@hangar.test", "WRITER").await;
    let mut bodies = Vec::new();

    app.ok(&admin, "mutation { createWorkerPool(name: \"linux\", description: \"x86 hosts\") { id } }", json!({})).await;
    let mut input = stack_input("network", "https://git.example/infra/network.git");
    input["workerPool"] = json!("linux");
    input["labels"] = json!(["team:net", "prod", "prod"]);
    input["driftSchedule"] = json!("0 */6 * * *");
    input["projectRoot"] = json!("envs/prod");
    let created = app.ok(&writer, CREATE_STACK, json!({ "i": input })).await;
    assert_eq!(created["createStack"]["workerPool"]["name"], "linux");
    assert_eq!(created["createStack"]["labels"], json!(["team:net", "prod"]));
    app.ok(&writer, CREATE_STACK, json!({ "i": stack_input("dns", "git@git.example:infra/dns.git") })).await;

    let (code, msg) = app.err(Some(&writer), CREATE_STACK, json!({ "i": stack_input("network", "https://git.example/x.git") })).await;
    assert_eq!(code, "CONFLICT", "{msg}");
    let by_label = app.ok(&writer, "{ stacks(label: \"team:net\") { slug } }", json!({})).await;
    assert_eq!(by_label["stacks"], json!([{ "slug": "network" }]));

    let updated = app
        .ok(
            &writer,
            "mutation { updateStack(slug: \"network\", input: { branch: \"release/1.x\", autodeploy: true, workerPool: \"\", driftSchedule: \"\" }) { branch autodeploy workerPool { name } driftSchedule } }",
            json!({}),
        )
        .await;
    assert_eq!(
        updated["updateStack"],
        json!({ "branch": "release/1.x", "autodeploy": true, "workerPool": null, "driftSchedule": null })
    );

    // Variables: plain ones read back, secret ones are sealed and masked.
    let set = "mutation($s: String!, $n: String!, $v: String!, $x: Boolean) { setStackVariable(stack: $s, name: $n, value: $v, secret: $x) { name secret value } }";
    let plain = app.ok(&writer, set, json!({ "s": "network", "n": "TF_VAR_region", "v": "eu-west-1" })).await;
    assert_eq!(plain["setStackVariable"]["value"], "eu-west-1");
    let secret = app.ok(&writer, set, json!({ "s": "network", "n": "TF_VAR_token", "v": SECRET, "x": true })).await;
    assert_eq!(secret["setStackVariable"], json!({ "name": "TF_VAR_token", "secret": true, "value": "********" }));
    bodies.push(secret.to_string());

    // A context shared by both stacks; the stack's own variables win, then the
    // context with the lowest priority number.
    app.ok(&writer, "mutation { createContext(slug: \"aws\", name: \"AWS account\") { id } }", json!({})).await;
    app.ok(&writer, "mutation { createContext(slug: \"defaults\", name: \"Defaults\") { id } }", json!({})).await;
    let setc = "mutation($c: String!, $n: String!, $v: String!, $x: Boolean) { setContextVariable(context: $c, name: $n, value: $v, secret: $x) { name value } }";
    bodies.push(app.ok(&writer, setc, json!({ "c": "aws", "n": "AWS_SECRET_ACCESS_KEY", "v": CONTEXT_SECRET, "x": true })).await.to_string());
    app.ok(&writer, setc, json!({ "c": "aws", "n": "TF_VAR_region", "v": "us-east-2" })).await;
    app.ok(&writer, setc, json!({ "c": "aws", "n": "AWS_REGION", "v": "from-aws" })).await;
    app.ok(&writer, setc, json!({ "c": "defaults", "n": "AWS_REGION", "v": "from-defaults" })).await;
    let attach = "mutation($s: String!, $c: String!, $p: Int) { attachContext(stack: $s, context: $c, priority: $p) { slug } }";
    app.ok(&writer, attach, json!({ "s": "network", "c": "aws", "p": 1 })).await;
    app.ok(&writer, attach, json!({ "s": "network", "c": "defaults", "p": 5 })).await;
    app.ok(&writer, attach, json!({ "s": "dns", "c": "aws", "p": 0 })).await;

    let view = app
        .ok(
            &writer,
            "{ stack(slug: \"network\") { variables { name secret value } contexts { priority context { slug } } effectiveVariables { name value secret source } } }",
            json!({}),
        )
        .await;
    bodies.push(view.to_string());
    let eff = &view["stack"]["effectiveVariables"];
    let find = |n: &str| eff.as_array().unwrap().iter().find(|v| v["name"] == n).cloned().unwrap();
    assert_eq!(find("TF_VAR_region")["value"], "eu-west-1");
    assert_eq!(find("TF_VAR_region")["source"], "stack");
    assert_eq!(find("AWS_REGION")["value"], "from-aws");
    assert_eq!(find("AWS_SECRET_ACCESS_KEY"), json!({ "name": "AWS_SECRET_ACCESS_KEY", "value": "********", "secret": true, "source": "context:aws" }));
    assert_eq!(view["stack"]["contexts"][0]["context"]["slug"], "aws");
    // Raising the priority number of aws lets defaults win.
    app.ok(&writer, attach, json!({ "s": "network", "c": "aws", "p": 9 })).await;
    let again = app.ok(&writer, "{ stack(slug: \"network\") { effectiveVariables { name value } } }", json!({})).await;
    bodies.push(again.to_string());
    assert!(again.to_string().contains("from-defaults"));
    let ctx = app.ok(&writer, "{ context(slug: \"aws\") { variables { name value } stacks { priority stack { slug } } } }", json!({})).await;
    bodies.push(ctx.to_string());
    assert_eq!(ctx["context"]["stacks"].as_array().unwrap().len(), 2);

    // Overwriting a secret with a plain value and back works; deleting works.
    app.ok(&writer, set, json!({ "s": "network", "n": "TF_VAR_flip", "v": "one", "x": true })).await;
    let flipped = app.ok(&writer, set, json!({ "s": "network", "n": "TF_VAR_flip", "v": "plain", "x": false })).await;
    assert_eq!(flipped["setStackVariable"]["value"], "plain");
    app.ok(&writer, "mutation { deleteStackVariable(stack: \"network\", name: \"TF_VAR_flip\") }", json!({})).await;
    assert_eq!(app.err(Some(&writer), "mutation { deleteStackVariable(stack: \"network\", name: \"TF_VAR_flip\") }", json!({})).await.0, "NOT_FOUND");

    let detach = app.ok(&writer, "mutation { detachContext(stack: \"dns\", context: \"aws\") { contexts { priority } } }", json!({})).await;
    assert_eq!(detach["detachContext"]["contexts"], json!([]));

    // The audit trail names secrets but never their values.
    let audit = app.ok(&admin, "{ auditEvents(first: 200) { items { actor action target details } } }", json!({})).await;
    bodies.push(audit.to_string());
    let set_events: Vec<_> = audit["auditEvents"]["items"].as_array().unwrap().iter().filter(|e| e["action"] == "variable.set").collect();
    assert!(set_events.iter().any(|e| e["details"] == json!({ "name": "TF_VAR_token", "secret": true }) && e["target"] == "stack:network"));

    for b in &bodies {
        assert!(!b.contains(SECRET) && !b.contains(CONTEXT_SECRET), "a secret value came back: {b}");
    }
    let log = app.server_log();
    assert!(log.contains("login"), "the server does log (so the check below means something)");
    assert!(!log.contains(SECRET) && !log.contains(CONTEXT_SECRET), "a secret value reached the log");

    // At rest: sealed bytes only.
    let mut c = app.pg.database().connect().await.unwrap();
    let rows: Vec<(String, Option<String>, Option<Vec<u8>>)> = variables::table
        .filter(variables::secret.eq(true))
        .select((variables::name, variables::value, variables::sealed))
        .load(&mut c)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    for (name, value, sealed) in rows {
        assert!(value.is_none(), "{name}");
        let sealed = sealed.unwrap();
        assert!(!sealed.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()), "{name}");
        assert!(!sealed.windows(CONTEXT_SECRET.len()).any(|w| w == CONTEXT_SECRET.as_bytes()), "{name}");
    }
    let details: Vec<serde_json::Value> = audit_events::table.select(audit_events::details).load(&mut c).await.unwrap();
    assert!(!serde_json::to_string(&details).unwrap().contains(SECRET));

    // Deleting a stack takes its variables with it; its context stays.
    app.ok(&writer, "mutation { deleteStack(slug: \"network\") }", json!({})).await;
    assert_eq!(app.ok(&writer, "{ stack(slug: \"network\") { id } }", json!({})).await["stack"], json!(null));
    let left: i64 = variables::table.filter(variables::stack_id.is_not_null()).count().get_result(&mut c).await.unwrap();
    assert_eq!(left, 0);
    app.ok(&writer, "mutation { deleteContext(slug: \"defaults\") }", json!({})).await;
}

#[tokio::test]
async fn hostile_and_malformed_stack_input_is_refused_or_stored_verbatim() {
    let app = Appliance::start().await;
    let w = app.admin_token().await;
    let bad = |field: &str, value: serde_json::Value| {
        let mut i = stack_input("ok-slug", "https://git.example/x.git");
        i[field] = value;
        json!({ "i": i })
    };
    let cases = [
        ("slug", json!("x'; DROP TABLE stacks; --"), "slug"),
        ("slug", json!("UPPER"), "slug"),
        ("slug", json!("-lead"), "slug"),
        ("repository", json!("--upload-pack=touch /tmp/pwned"), "repository"),
        ("repository", json!("file:///etc/passwd"), "repository"),
        ("repository", json!("ext::sh -c touch% /tmp/pwned"), "repository"),
        ("branch", json!("main..evil"), "branch"),
        ("branch", json!("-x"), "branch"),
        ("projectRoot", json!("../../etc"), "projectRoot"),
        ("projectRoot", json!("/abs"), "projectRoot"),
        ("toolVersion", json!("1.9.0; rm -rf /"), "toolVersion"),
        ("labels", json!(["ok", "bad label"]), "labels"),
        ("driftSchedule", json!("every full moon"), "driftSchedule"),
        ("name", json!(""), "name"),
        ("name", json!("x".repeat(1000)), "name"),
        ("workerPool", json!("no-such-pool"), "worker pool"),
    ];
    for (field, value, named) in cases {
        let (code, msg) = app.err(Some(&w), CREATE_STACK, bad(field, value.clone())).await;
        assert!(code == "BAD_USER_INPUT" || code == "NOT_FOUND", "{field}={value}: {code} {msg}");
        assert!(msg.contains(named), "{field}={value}: {msg}");
    }
    let (_, msg) = app.err(Some(&w), CREATE_STACK, bad("tool", json!("PULUMI"))).await;
    assert!(msg.contains("PULUMI"), "an unknown tool fails validation before any resolver runs: {msg}");

    // SQL-looking text where free text is allowed is stored and returned as is.
    let sqlish = "Robert'); DROP TABLE stacks;--";
    let mut i = stack_input("bobby", "https://git.example/x.git");
    i["name"] = json!(sqlish);
    i["description"] = json!("1' OR '1'='1");
    let made = app.ok(&w, CREATE_STACK, json!({ "i": i })).await;
    assert_eq!(made["createStack"]["name"], sqlish);
    let set = "mutation($v: String!) { setStackVariable(stack: \"bobby\", name: \"X\", value: $v) { value } }";
    assert_eq!(app.ok(&w, set, json!({ "v": "'; DELETE FROM users; --" })).await["setStackVariable"]["value"], "'; DELETE FROM users; --");
    let (code, _) = app.err(Some(&w), "mutation { setStackVariable(stack: \"bobby\", name: \"BAD-NAME\", value: \"x\") { value } }", json!({})).await;
    assert_eq!(code, "BAD_USER_INPUT");
    let (code, _) = app.err(Some(&w), set.replace("bobby", "nope").as_str(), json!({ "v": "x" })).await;
    assert_eq!(code, "NOT_FOUND");
    let mut c = app.pg.database().connect().await.unwrap();
    let n: i64 = stacks::table.count().get_result(&mut c).await.unwrap();
    assert_eq!(n, 1, "the stacks table is intact");
    app.ok(&w, "{ me { email } }", json!({})).await;
}
