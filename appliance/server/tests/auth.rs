//! Logging in, sessions, API keys, and who may do what: every role against every
//! class of mutation, over real TLS against the `hangar server` process.

mod common;

use common::*;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use hangar_db::schema::{api_keys, sessions};
use serde_json::json;

const ME: &str = "{ me { email role } }";

#[tokio::test]
async fn login_sessions_and_bad_tokens() {
    let app = Appliance::start().await;
    let token = app.admin_token().await;
    assert!(token.starts_with("hss_"), "{token}");
    let me = app.ok(&token, ME, json!({})).await;
    assert_eq!(me["me"], json!({ "email": ADMIN_EMAIL, "role": "ADMIN" }));

    // Wrong password and unknown email read the same.
    let login = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }";
    let wrong = app.err(None, login, json!({ "e": ADMIN_EMAIL, "p": "Wrong-Password-123" })).await;
    let unknown = app.err(None, login, json!({ "e": "nobody@hangar.test", "p": "Wrong-Password-123" })).await;
    assert_eq!(wrong, unknown);
    assert_eq!(wrong.0, "UNAUTHENTICATED");
    let huge = app.err(None, login, json!({ "e": "x".repeat(10_000), "p": "y".repeat(100_000) })).await;
    assert_eq!(huge.0, "UNAUTHENTICATED");
    // A password typed into the email field is not written anywhere.
    let typo = "Typed-Into-Email-Passw0rd";
    app.err(None, login, json!({ "e": typo, "p": "x" })).await;
    let audit = app.ok(&token, "{ auditEvents(action: \"user.login_failed\") { items { target details } } }", json!({})).await;
    assert_eq!(audit["auditEvents"]["items"].as_array().unwrap().len(), 4, "{audit}");
    assert!(audit.to_string().contains(&format!("user:{ADMIN_EMAIL}")), "{audit}");
    assert!(!audit.to_string().contains(typo) && !app.server_log().contains(typo));

    // Tokens that are not ours: 401 before any GraphQL runs.
    let hss = token.clone();
    let forged = format!("{}{}", &hss[..hss.len() - 1], if hss.ends_with('a') { 'b' } else { 'a' });
    for bad in ["garbage", "hss_short_x", forged.as_str(), "hak_aaaaaaaaaaaa_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"] {
        let (status, body) = app.gql(Some(bad), ME, json!({})).await;
        assert_eq!(status, 401, "{bad}: {body}");
        assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    }
    let basic = app.client.post(app.url("/graphql")).header("authorization", "Basic YWRtaW46cHc=").json(&json!({ "query": ME })).send().await.unwrap();
    assert_eq!(basic.status(), 401);
    assert_eq!(basic.headers()["www-authenticate"], "Bearer");

    // An expired session is refused.
    let other = app.admin_token().await;
    let mut c = app.pg.database().connect().await.unwrap();
    let id = other.split('_').nth(1).unwrap().to_string();
    diesel::update(sessions::table.filter(sessions::token_id.eq(&id)))
        .set(sessions::expires_at.eq(chrono::Utc::now() - chrono::Duration::minutes(1)))
        .execute(&mut c)
        .await
        .unwrap();
    assert_eq!(app.gql(Some(&other), ME, json!({})).await.0, 401);

    // Logout revokes the session; the token never works again.
    assert_eq!(app.ok(&token, "mutation { logout }", json!({})).await["logout"], true);
    assert_eq!(app.gql(Some(&token), ME, json!({})).await.0, 401);

    // Tokens are stored only as hashes.
    let stored: Vec<String> = sessions::table.select(sessions::token_hash).load(&mut c).await.unwrap();
    assert!(stored.iter().all(|h| h.len() == 64 && !h.contains(&token)));
    assert!(!app.server_log().contains(&token));
}

#[tokio::test]
async fn api_keys_are_shown_once_capped_by_role_and_revocable() {
    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    let writer = app.user_token(&admin, "writer@hangar.test", "WRITER").await;

    let create = "mutation($n: String!, $r: UserRole, $d: Int) { createApiKey(name: $n, role: $r, expiresInDays: $d) { key apiKey { id prefix role active } } }";
    let made = app.ok(&writer, create, json!({ "n": "ci", "r": "READER", "d": 30 })).await;
    let key = made["createApiKey"]["key"].as_str().unwrap().to_string();
    let key_id = made["createApiKey"]["apiKey"]["id"].as_str().unwrap().to_string();
    assert!(key.starts_with(made["createApiKey"]["apiKey"]["prefix"].as_str().unwrap()));
    assert_eq!(made["createApiKey"]["apiKey"]["role"], "READER");

    // The key authenticates with its own (lower) role.
    assert_eq!(app.ok(&key, ME, json!({})).await["me"]["email"], "writer@hangar.test");
    let (code, _) = app.err(Some(&key), CREATE_STACK, json!({ "i": stack_input("by-key", "https://git.example/x.git") })).await;
    assert_eq!(code, "FORBIDDEN");

    // Listing shows the key without its secret; nothing returns it again.
    let listed = app.ok(&writer, "{ apiKeys { id name prefix active } }", json!({})).await;
    assert!(!listed.to_string().contains(&key));
    assert_eq!(listed["apiKeys"][0]["active"], true);

    // Nobody mints a key above their own role.
    let (code, _) = app.err(Some(&writer), create, json!({ "n": "root", "r": "ADMIN" })).await;
    assert_eq!(code, "FORBIDDEN");
    let (code, _) = app.err(Some(&writer), create, json!({ "n": "x", "d": 0 })).await;
    assert_eq!(code, "BAD_USER_INPUT");

    // Another writer cannot see or revoke it; an admin can.
    let other = app.user_token(&admin, "other@hangar.test", "WRITER").await;
    let revoke = "mutation($id: ID!) { revokeApiKey(id: $id) { active revokedAt } }";
    assert_eq!(app.err(Some(&other), revoke, json!({ "id": key_id })).await.0, "NOT_FOUND");
    assert_eq!(app.err(Some(&other), "{ apiKeys(all: true) { id } }", json!({})).await.0, "FORBIDDEN");
    let all = app.ok(&admin, "{ apiKeys(all: true) { id owner { email } } }", json!({})).await;
    assert_eq!(all["apiKeys"][0]["owner"]["email"], "writer@hangar.test");
    assert_eq!(app.ok(&admin, revoke, json!({ "id": key_id })).await["revokeApiKey"]["active"], false);
    let (status, _) = app.gql(Some(&key), ME, json!({})).await;
    assert_eq!(status, 401, "a revoked key is refused");

    // An expired key is refused too.
    let made = app.ok(&writer, create, json!({ "n": "short", "d": 1 })).await;
    let short = made["createApiKey"]["key"].as_str().unwrap().to_string();
    assert_eq!(app.gql(Some(&short), ME, json!({})).await.0, 200);
    let mut c = app.pg.database().connect().await.unwrap();
    diesel::update(api_keys::table.filter(api_keys::name.eq("short")))
        .set(api_keys::expires_at.eq(Some(chrono::Utc::now() - chrono::Duration::seconds(1))))
        .execute(&mut c)
        .await
        .unwrap();
    assert_eq!(app.gql(Some(&short), ME, json!({})).await.0, 401);

    // Disabling the owner stops their keys and sessions at once.
    let users = app.ok(&admin, "{ users { id email } }", json!({})).await;
    let writer_id = users["users"].as_array().unwrap().iter().find(|u| u["email"] == "writer@hangar.test").unwrap()["id"].clone();
    let live = app.ok(&writer, create, json!({ "n": "live" })).await["createApiKey"]["key"].as_str().unwrap().to_string();
    app.ok(&admin, "mutation($id: ID!) { updateUser(id: $id, disabled: true) { disabled } }", json!({ "id": writer_id })).await;
    assert_eq!(app.gql(Some(&live), ME, json!({})).await.0, 401);
    assert_eq!(app.gql(Some(&writer), ME, json!({})).await.0, 401);
    assert!(!app.server_log().contains(&live) && !app.server_log().contains(&key));
}

#[tokio::test]
async fn unauthenticated_callers_get_nothing_but_login() {
    let app = Appliance::start().await;
    for q in ["{ stacks { slug } }", "{ me { email } }", "{ workerPools { name } }", "{ auditEvents { items { id } } }"] {
        let (status, body) = app.gql(None, q, json!({})).await;
        assert_eq!(status, 200);
        assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED", "{q}: {body}");
        assert!(body["data"].is_null() || body["data"].as_object().is_none_or(|m| m.values().all(|v| v.is_null())), "{body}");
    }
    let (code, _) = app.err(None, CREATE_STACK, json!({ "i": stack_input("anon", "https://git.example/x.git") })).await;
    assert_eq!(code, "UNAUTHENTICATED");
    // The schema is not described to anonymous callers.
    for (q, field) in [("{ __schema { types { name } } }", "__schema"), ("{ __type(name: \"Stack\") { fields { name } } }", "__type")] {
        let (_, body) = app.gql(None, q, json!({})).await;
        assert!(body["data"][field].is_null(), "{body}");
        assert!(!body.to_string().contains("repository") && !body.to_string().contains("Mutation"), "{body}");
    }
    // A signed-in reader may introspect.
    let admin = app.admin_token().await;
    let reader = app.user_token(&admin, "reader@hangar.test", "READER").await;
    let schema = app.ok(&reader, "{ __schema { queryType { name } } }", json!({})).await;
    assert_eq!(schema["__schema"]["queryType"]["name"], "Query");
}

/// One representative mutation (or admin-only query) per class.
struct Case {
    class: &'static str,
    query: &'static str,
    vars: serde_json::Value,
    min_role: &'static str,
}

#[tokio::test]
async fn each_role_against_each_class_of_mutation() {
    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    let writer = app.user_token(&admin, "writer@hangar.test", "WRITER").await;
    let reader = app.user_token(&admin, "reader@hangar.test", "READER").await;
    app.ok(&admin, CREATE_STACK, json!({ "i": stack_input("base", "https://git.example/base.git") })).await;
    app.ok(&admin, "mutation { createContext(slug: \"shared\", name: \"Shared\") { id } }", json!({})).await;
    app.ok(&admin, "mutation { createWorkerPool(name: \"base-pool\") { id } }", json!({})).await;
    let victim = app.ok(&admin, "{ users { id email } }", json!({})).await["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == "reader@hangar.test")
        .unwrap()["id"]
        .clone();
    let sha = "a".repeat(40);

    let cases = [
        Case { class: "stack", query: CREATE_STACK, vars: json!({ "i": stack_input("s-{n}", "https://git.example/n.git") }), min_role: "WRITER" },
        Case { class: "stack update", query: "mutation { updateStack(slug: \"base\", input: { autodeploy: true }) { autodeploy } }", vars: json!({}), min_role: "WRITER" },
        Case { class: "variable", query: "mutation($n: String!) { setStackVariable(stack: \"base\", name: $n, value: \"v\", secret: true) { name } }", vars: json!({ "n": "V_{n}" }), min_role: "WRITER" },
        Case { class: "context", query: "mutation($s: String!) { createContext(slug: $s, name: \"C\") { id } }", vars: json!({ "s": "c-{n}" }), min_role: "WRITER" },
        Case { class: "attachment", query: "mutation { attachContext(stack: \"base\", context: \"shared\", priority: 1) { slug } }", vars: json!({}), min_role: "WRITER" },
        Case { class: "run", query: "mutation($c: String) { triggerRun(stack: \"base\", commitSha: $c) { id } }", vars: json!({ "c": sha }), min_role: "WRITER" },
        Case { class: "user", query: "mutation($e: String!) { createUser(email: $e, role: READER, password: \"Another-Str0ng-Pass\") { id } }", vars: json!({ "e": "u{n}@hangar.test" }), min_role: "ADMIN" },
        Case { class: "user update", query: "mutation($id: ID!) { updateUser(id: $id, name: \"Renamed\") { name } }", vars: json!({ "id": victim }), min_role: "ADMIN" },
        Case { class: "worker pool", query: "mutation($p: String!) { createWorkerPool(name: $p) { generation } }", vars: json!({ "p": "pool-{n}" }), min_role: "ADMIN" },
        Case { class: "pool reset", query: "mutation { resetWorkerPool(name: \"base-pool\") { generation } }", vars: json!({}), min_role: "ADMIN" },
        Case { class: "dead jobs", query: "{ deadJobs { id } }", vars: json!({}), min_role: "ADMIN" },
        Case { class: "audit", query: "{ auditEvents { items { id } } }", vars: json!({}), min_role: "ADMIN" },
        Case { class: "all users", query: "{ users { id } }", vars: json!({}), min_role: "ADMIN" },
    ];
    let roles = [("READER", &reader), ("WRITER", &writer), ("ADMIN", &admin)];
    let rank = |r: &str| ["READER", "WRITER", "ADMIN"].iter().position(|x| *x == r).unwrap();
    let mut n = 0;
    for case in &cases {
        for (role, token) in roles {
            n += 1;
            let vars: serde_json::Value = serde_json::from_str(&case.vars.to_string().replace("{n}", &n.to_string())).unwrap();
            let (status, body) = app.gql(Some(token), case.query, vars).await;
            assert_eq!(status, 200, "{}: {body}", case.class);
            let allowed = rank(role) >= rank(case.min_role);
            if allowed {
                assert!(body.get("errors").is_none(), "{} as {role} should work: {body}", case.class);
            } else {
                assert_eq!(body["errors"][0]["extensions"]["code"], "FORBIDDEN", "{} as {role}: {body}", case.class);
            }
        }
    }
    // Refused mutations changed nothing: only the allowed ones left audit events.
    let events = app.ok(&admin, "{ auditEvents(first: 500, action: \"stack.create\") { items { actor } } }", json!({})).await;
    let actors: Vec<&str> = events["auditEvents"]["items"].as_array().unwrap().iter().map(|e| e["actor"].as_str().unwrap()).collect();
    assert!(!actors.contains(&"reader@hangar.test"), "{actors:?}");
    assert!(actors.contains(&"writer@hangar.test") && actors.contains(&ADMIN_EMAIL), "{actors:?}");

    // Readers read everything else.
    for q in ["{ stacks { slug variables { name value } } }", "{ contexts { slug } }", "{ workerPools { name } }", "{ workers { id } }", "{ runs(stack: \"base\") { items { id } } }"] {
        app.ok(&reader, q, json!({})).await;
    }
    // The last admin cannot lock everyone out.
    let me = app.ok(&admin, "{ me { email } users { id email } }", json!({})).await;
    let admin_id = me["users"].as_array().unwrap().iter().find(|u| u["email"] == ADMIN_EMAIL).unwrap()["id"].clone();
    let (code, msg) = app.err(Some(&admin), "mutation($id: ID!) { updateUser(id: $id, role: READER) { id } }", json!({ "id": admin_id })).await;
    assert_eq!(code, "REFUSED", "{msg}");
}

#[tokio::test]
async fn changing_a_password_ends_other_sessions_and_checks_strength() {
    let app = Appliance::start().await;
    let a = app.admin_token().await;
    let b = app.admin_token().await;
    let change = "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }";
    let (code, msg) = app.err(Some(&a), change, json!({ "c": ADMIN_PASSWORD, "n": "short" })).await;
    assert_eq!(code, "BAD_USER_INPUT");
    assert!(msg.contains("too weak"), "{msg}");
    let (code, _) = app.err(Some(&a), change, json!({ "c": "not-the-password", "n": "An0ther-Good-Passphrase" })).await;
    assert_eq!(code, "BAD_USER_INPUT");
    app.ok(&a, change, json!({ "c": ADMIN_PASSWORD, "n": "An0ther-Good-Passphrase" })).await;
    assert_eq!(app.gql(Some(&a), ME, json!({})).await.0, 200, "the session that changed it stays");
    assert_eq!(app.gql(Some(&b), ME, json!({})).await.0, 401, "other sessions end");
    app.login(ADMIN_EMAIL, "An0ther-Good-Passphrase").await;
    let log = app.server_log();
    assert!(!log.contains("An0ther-Good-Passphrase") && !log.contains(ADMIN_PASSWORD));
}

#[tokio::test]
async fn repeated_failed_logins_are_throttled_and_audited() {
    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    let password = "Throttled-Acc0unt-Pass";
    app.ok(
        &admin,
        "mutation($e: String!, $p: String!) { createUser(email: $e, role: READER, password: $p) { id } }",
        json!({ "e": "guessed@hangar.test", "p": password }),
    )
    .await;
    let login = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }";
    for n in 0..10 {
        let (code, _) = app.err(None, login, json!({ "e": "guessed@hangar.test", "p": format!("Guess-{n}-Passw0rd") })).await;
        assert_eq!(code, "UNAUTHENTICATED");
    }
    // Now even the right password is refused, with a reason a person can act on.
    let (code, message) = app.err(None, login, json!({ "e": "guessed@hangar.test", "p": password })).await;
    assert_eq!(code, "REFUSED", "{message}");
    assert!(message.contains("too many failed logins") && message.contains("15 minutes"), "{message}");
    // The refusals are in the audit trail, with the address they came from
    // (who else may still log in is `hostile_api.rs`'s).
    let audit = app.ok(&admin, "{ auditEvents(action: \"user.login_throttled\") { items { details } } }", json!({})).await;
    assert_eq!(audit["auditEvents"]["items"][0]["details"]["source"], "127.0.0.1", "{audit}");
}
