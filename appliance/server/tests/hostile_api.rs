//! One anonymous request must not be able to stall the server or lock anyone
//! out, against the real `hangar server` process: fragment fan-out is refused
//! before validation and `/ready` stays up under it, anonymous callers get the
//! smallest budget, one request makes at most one login, failed logins are
//! throttled per address and per account without locking out the account's
//! own user, and variables are coerced to their declared types.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const LOGIN: &str = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }";

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

async fn gql_from(app: &Appliance, client: &reqwest::Client, query: &str, variables: Value) -> Value {
    let r = client.post(app.url("/graphql")).json(&json!({ "query": query, "variables": variables })).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn login_from(app: &Appliance, client: &reqwest::Client, email: &str, password: &str) -> Value {
    gql_from(app, client, LOGIN, json!({ "e": email, "p": password })).await
}

fn error_of(v: &Value) -> (String, String) {
    let e = &v["errors"][0];
    assert!(!e.is_null(), "expected an error: {v}");
    (e["extensions"]["code"].as_str().unwrap_or("").to_string(), e["message"].as_str().unwrap_or("").to_string())
}

async fn audit_count(app: &Appliance, action: &str) -> i64 {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut c = app.pg.database().connect().await.unwrap();
    let n: N = diesel::sql_query("SELECT count(*) AS n FROM audit_events WHERE action = $1")
        .bind::<diesel::sql_types::Text, _>(action)
        .get_result(&mut c)
        .await
        .unwrap();
    n.n
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
async fn one_request_makes_at_most_one_login() {
    let app = Appliance::start().await;
    // A thousand aliased logins cost more than any anonymous budget: refused
    // before a single password is hashed.
    let many: String = (0..1000).map(|i| format!("l{i}: login(email: \"{ADMIN_EMAIL}\", password: \"wrong-{i}\") {{ token }} ")).collect();
    let (_, v) = app.gql(None, &format!("mutation {{ {many} }}"), json!({})).await;
    assert_eq!(error_of(&v).0, "QUERY_TOO_COMPLEX", "{v}");
    assert_eq!(audit_count(&app, "user.login_failed").await, 0);

    // Within the budget, the first login is tried and the others refused
    // (however far execution goes once the first one failed).
    let few: String = (0..10).map(|i| format!("l{i}: login(email: \"{ADMIN_EMAIL}\", password: \"wrong-{i}\") {{ token }} ")).collect();
    let (_, v) = app.gql(None, &format!("mutation {{ {few} }}"), json!({})).await;
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors[0]["message"], "login failed: unknown email or wrong password", "{v}");
    assert!(errors[1..].iter().all(|e| e["message"] == "a request may attempt one login"), "{v}");
    assert_eq!(audit_count(&app, "user.login_failed").await, 1);
    // Even when the first one succeeds, the second is not tried.
    let two = format!(
        "mutation {{ a: login(email: \"{ADMIN_EMAIL}\", password: \"{ADMIN_PASSWORD}\") {{ token }} b: login(email: \"{ADMIN_EMAIL}\", password: \"x\") {{ token }} }}"
    );
    let logins = audit_count(&app, "user.login").await;
    let (_, v) = app.gql(None, &two, json!({})).await;
    assert_eq!(v["errors"][0]["message"], "a request may attempt one login", "{v}");
    assert_eq!(audit_count(&app, "user.login").await, logins + 1);
    assert_eq!(audit_count(&app, "user.login_failed").await, 1);
}

#[tokio::test]
async fn failed_logins_are_throttled_per_address_and_nobody_locks_out_another() {
    let app = Appliance::start().await;
    let attacker = client_from(&app, "127.0.0.2");
    for i in 0..10 {
        let v = login_from(&app, &attacker, ADMIN_EMAIL, &format!("Wrong-Guess-{i}")).await;
        assert_eq!(error_of(&v).0, "UNAUTHENTICATED", "{v}");
    }
    // That address is done for now, even with the right password...
    let v = login_from(&app, &attacker, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let (code, message) = error_of(&v);
    assert_eq!(code, "REFUSED");
    assert_eq!(message, "too many failed logins from this address; try again in 15 minutes");
    // ...and for any account, known or not.
    let v = login_from(&app, &attacker, "nobody@hangar.test", "x").await;
    assert_eq!(error_of(&v).1, "too many failed logins from this address; try again in 15 minutes");
    // The administrator, from elsewhere, is not locked out.
    let user = client_from(&app, "127.0.0.3");
    let v = login_from(&app, &user, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert!(v["data"]["login"]["token"].is_string(), "{v}");
    // Failures are recorded with where they came from.
    let admin = app.admin_token().await;
    let audit = app.ok(&admin, "{ auditEvents(action: \"user.login_failed\") { items { details } } }", json!({})).await;
    let items = audit["auditEvents"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 10);
    assert!(items.iter().all(|i| i["details"]["source"] == "127.0.0.2"), "{audit}");
}

#[tokio::test]
async fn guessing_one_account_from_many_addresses_is_slowed_without_locking_it() {
    let app = Appliance::start().await;
    // 50 failures from six addresses, each under its own limit of 10: the
    // account's limit.
    for a in 0..6 {
        let c = client_from(&app, &format!("127.0.1.{}", a + 1));
        for i in 0..(if a < 5 { 9 } else { 5 }) {
            let v = login_from(&app, &c, ADMIN_EMAIL, &format!("Guess-{a}-{i}")).await;
            assert_eq!(error_of(&v).0, "UNAUTHENTICATED", "{v}");
        }
    }
    // An address that has failed on this account is refused, right password
    // or not.
    let guesser = client_from(&app, "127.0.1.1");
    let v = login_from(&app, &guesser, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(error_of(&v).1, "too many failed logins for this account from this address; try again in 15 minutes");
    // Its own user, from an address with no failures on it, still gets in.
    let user = client_from(&app, "127.0.1.100");
    let v = login_from(&app, &user, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert!(v["data"]["login"]["token"].is_string(), "{v}");
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
    assert!(m.contains("StackInput.tool: \"PULUMI\" is not a value of IacTool (TERRAFORM, OPENTOFU)"), "{m}");
    // Good values still work.
    let ok = app.ok(&admin, "query($s: String!) { stack(slug: $s) { slug } }", json!({ "s": "s1" })).await;
    assert_eq!(ok["stack"]["slug"], "s1");
}
