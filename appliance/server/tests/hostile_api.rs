//! One anonymous request must not be able to stall the server, against the
//! real `hangar server` process: fragment fan-out is refused before validation
//! and `/ready` stays up under it, anonymous callers get the smallest budget,
//! and variables are coerced to their declared types.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// The query of the report: each fragment spreads the next one twice, 2^26
/// selections from about a kilobyte.
fn fan_out(levels: usize) -> String {
    let mut q = String::from("query{me{...M0}}");
    for i in 0..levels {
        q.push_str(&format!(" fragment M{i} on User{{...M{n} ...M{n}}}", n = i + 1));
    }
    q.push_str(&format!(" fragment M{levels} on User{{email}}"));
    q
}

/// A client of `app` whose connections come from `source` (any 127.0.0.0/8
/// address reaches the server on loopback).
fn client_from(app: &Appliance, source: &str) -> reqwest::Client {
    let cert = reqwest::Certificate::from_pem(&std::fs::read(app.ca_path()).unwrap()).unwrap();
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(cert)
        .local_address(source.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

fn error_of(v: &Value) -> (String, String) {
    let e = &v["errors"][0];
    assert!(!e.is_null(), "expected an error: {v}");
    (e["extensions"]["code"].as_str().unwrap_or("").to_string(), e["message"].as_str().unwrap_or("").to_string())
}

#[tokio::test]
async fn fragment_fan_out_is_refused_before_validation_and_ready_stays_up() {
    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    let q = fan_out(25);
    assert!(q.len() < 1100, "{}", q.len());

    for token in [None, Some(admin.as_str())] {
        let (status, v) = app.gql(token, &q, json!({})).await;
        assert_eq!(status, 200);
        let (code, message) = error_of(&v);
        assert_eq!(code, "QUERY_TOO_COMPLEX", "{v}");
        assert!(message.starts_with("query is too complex: with its fragments expanded it holds"), "{message}");
        assert!(v["data"].is_null(), "{v}");
    }
    // A fragment that spreads itself is refused, not expanded.
    let (_, v) = app.gql(None, "{ me { ...A } } fragment A on User { ...B } fragment B on User { ...A }", json!({})).await;
    assert_eq!(error_of(&v).1, "fragment \"A\" spreads itself, directly or through other fragments", "{v}");

    // Eight of them at once, again and again, while /ready is asked: it
    // answers every time, and the server never stops serving.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = Vec::new();
    for _ in 0..8 {
        let (client, url, q, stop) = (app.client.clone(), app.url("/graphql"), q.clone(), stop.clone());
        attackers.push(tokio::spawn(async move {
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < 200 {
                let r = client.post(&url).json(&json!({ "query": q })).send().await.expect("fan-out request");
                assert_eq!(r.status(), 200);
                sent += 1;
            }
            sent
        }));
    }
    let ready_client = client_from(&app, "127.0.0.1");
    for _ in 0..10 {
        let r = ready_client.get(app.url("/ready")).timeout(Duration::from_secs(5)).send().await.expect("/ready answers under load");
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for a in attackers {
        assert!(a.await.unwrap() > 0);
    }
}

#[tokio::test]
async fn callers_without_a_token_get_the_smallest_budget() {
    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    // 30 aliased fields with one selection each: 60 selections.
    let wide: String = (0..30).map(|i| format!("a{i}: me {{ email }} ")).collect();
    let q = format!("{{ {wide} }}");
    let (_, anonymous) = app.gql(None, &q, json!({})).await;
    let (code, message) = error_of(&anonymous);
    assert_eq!(code, "QUERY_TOO_COMPLEX");
    assert!(message.ends_with("at most 50 are allowed without a token"), "{message}");
    let data = app.ok(&admin, &q, json!({})).await;
    assert_eq!(data["a29"]["email"], ADMIN_EMAIL);
}

#[tokio::test]
async fn variables_are_coerced_to_their_declared_types() {
    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    app.ok(&admin, CREATE_STACK, json!({ "i": stack_input("s1", "https://git.example.test/org/s1.git") })).await;

    let (code, message) = app.err(Some(&admin), "query($v: Int!) { stack(slug: $v) { slug } }", json!({ "v": "s1" })).await;
    assert_eq!(code, "BAD_USER_INPUT");
    assert_eq!(message, "variable $v got invalid value \"s1\": Int is a whole number between -2147483648 and 2147483647");
    let (_, v) = app.gql(Some(&admin), "query($v: Int!) { stack(slug: $v) { slug } }", json!({ "v": "s1" })).await;
    assert!(v["data"].is_null(), "{v}");

    let set = "mutation($v: Int!) { setStackVariable(stack: \"s1\", name: \"COUNT\", value: $v) { name } }";
    let (code, _) = app.err(Some(&admin), set, json!({ "v": "not a number" })).await;
    assert_eq!(code, "BAD_USER_INPUT");
    let vars = app.ok(&admin, "{ stack(slug: \"s1\") { variables { name } } }", json!({})).await;
    assert_eq!(vars["stack"]["variables"], json!([]), "{vars}");

    // Missing, null, and the wrong shapes of input objects and enums.
    let (_, m) = app.err(Some(&admin), "query($s: String!) { stack(slug: $s) { slug } }", json!({})).await;
    assert_eq!(m, "variable $s of required type String! was not provided");
    let (_, m) = app.err(Some(&admin), CREATE_STACK, json!({ "i": { "slug": "s2", "name": "S2", "repository": "https://git.example.test/o/s2.git", "branch": "main", "tool": "PULUMI", "toolVersion": "1" } })).await;
    assert!(m.contains("StackInput.tool: IacTool is one of TERRAFORM, OPENTOFU"), "{m}");
    // Good values still work.
    let ok = app.ok(&admin, "query($s: String!) { stack(slug: $s) { slug } }", json!({ "s": "s1" })).await;
    assert_eq!(ok["stack"]["slug"], "s1");
}
