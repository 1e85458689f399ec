//! What admins do: worker pools and workers, dead jobs, the audit trail, and the
//! `hangar admin` commands (the installer's create-user, master-key rotation).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use hangar_crypto::MasterKey;
use hangar_db::queue::{self, NewJob};
use hangar_db::schema::{data_keys, stacks, workers};
use hangar_store::secrets::SecretBox;
use hangar_store::stacks::{Owner, sealed_value};
use serde_json::json;

#[tokio::test]
async fn pools_workers_dead_jobs_and_the_audit_trail() {
    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    let reader = app.user_token(&admin, "reader@hangar.test", "READER").await;
    let pool = app.ok(&admin, "mutation { createWorkerPool(name: \"gpu\", description: \"big boxes\") { id generation } }", json!({})).await;
    assert_eq!(pool["createWorkerPool"]["generation"], 1);
    let pool_id: i64 = pool["createWorkerPool"]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(app.err(Some(&admin), "mutation { createWorkerPool(name: \"gpu\") { id } }", json!({})).await.0, "CONFLICT");
    assert_eq!(app.err(Some(&admin), "mutation { createWorkerPool(name: \"Bad Name\") { id } }", json!({})).await.0, "BAD_USER_INPUT");

    // Workers register through their own endpoint; here they are put in place.
    let mut c = app.pg.database().connect().await.unwrap();
    for (name, serial, status) in [("w1", "01", "idle"), ("w2", "02", "busy")] {
        diesel::insert_into(workers::table)
            .values((
                workers::pool_id.eq(pool_id),
                workers::name.eq(name),
                workers::pool_generation.eq(1),
                workers::cert_serial.eq(serial),
                workers::cert_not_after.eq(chrono::Utc::now() + chrono::Duration::days(30)),
                workers::status.eq(status),
            ))
            .execute(&mut c)
            .await
            .unwrap();
    }
    let list = "{ workers(pool: \"gpu\") { id name status pool { name } } }";
    let seen = app.ok(&reader, list, json!({})).await;
    let statuses: Vec<&str> = seen["workers"].as_array().unwrap().iter().map(|w| w["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["idle", "busy"]);
    assert_eq!(seen["workers"][0]["pool"]["name"], "gpu");

    // A reset starts a new generation: the workers that joined before are stale.
    let reset = app.ok(&admin, "mutation { resetWorkerPool(name: \"gpu\") { generation workers { status } } }", json!({})).await;
    assert_eq!(reset["resetWorkerPool"]["generation"], 2);
    assert_eq!(reset["resetWorkerPool"]["workers"], json!([{ "status": "stale" }, { "status": "stale" }]));
    let w1 = seen["workers"][0]["id"].clone();
    let revoked = app.ok(&admin, "mutation($id: ID!) { revokeWorker(id: $id) { status revokedAt } }", json!({ "id": w1 })).await;
    assert_eq!(revoked["revokeWorker"]["status"], "revoked");
    assert_eq!(app.err(Some(&reader), "mutation($id: ID!) { revokeWorker(id: $id) { status } }", json!({ "id": w1 })).await.0, "FORBIDDEN");
    assert_eq!(app.err(Some(&admin), "{ workers(pool: \"nope\") { id } }", json!({})).await.0, "NOT_FOUND");

    // Deleting the pool leaves its stacks without a pool.
    let mut s = stack_input("on-gpu", "https://git.example/x.git");
    s["workerPool"] = json!("gpu");
    app.ok(&admin, CREATE_STACK, json!({ "i": s })).await;
    app.ok(&admin, "mutation { deleteWorkerPool(name: \"gpu\") }", json!({})).await;
    let st = app.ok(&reader, "{ stack(slug: \"on-gpu\") { workerPool { name } } }", json!({})).await;
    assert_eq!(st["stack"]["workerPool"], json!(null));
    assert_eq!(app.ok(&reader, "{ workers { id } }", json!({})).await["workers"], json!([]));

    // A job that failed every attempt is listed for admins and can be retried.
    queue::enqueue(&mut c, &NewJob::new("test.explode", json!({ "stack": 1 })).queue("api-test").max_attempts(1)).await.unwrap();
    let claimed = queue::claim(&mut c, "api-test", "test", 1, Duration::from_secs(30)).await.unwrap();
    assert!(queue::bury(&mut c, claimed[0].token(), "boom: handler panicked").await.unwrap());
    let dead = app.ok(&admin, "{ deadJobs { id kind attempts lastError payload } }", json!({})).await;
    assert_eq!(dead["deadJobs"][0]["kind"], "test.explode");
    assert_eq!(dead["deadJobs"][0]["lastError"], "boom: handler panicked");
    assert_eq!(dead["deadJobs"][0]["payload"], json!({ "stack": 1 }));
    let job = dead["deadJobs"][0]["id"].clone();
    assert_eq!(app.ok(&admin, "mutation($id: ID!) { retryDeadJob(id: $id) }", json!({ "id": job })).await["retryDeadJob"], true);
    assert_eq!(app.ok(&admin, "{ deadJobs { id } }", json!({})).await["deadJobs"], json!([]));
    assert_eq!(app.err(Some(&admin), "mutation($id: ID!) { retryDeadJob(id: $id) }", json!({ "id": job })).await.0, "NOT_FOUND");
    assert_eq!(queue::claim(&mut c, "api-test", "test", 1, Duration::from_secs(30)).await.unwrap().len(), 1);

    // Every mutation above left one audit event, newest first, paged and filtered.
    let page = "query($a: ID, $f: String) { auditEvents(first: 4, after: $a, action: $f) { items { id actor action target details } nextCursor } }";
    let mut all = Vec::new();
    let mut after = serde_json::Value::Null;
    loop {
        let p = app.ok(&admin, page, json!({ "a": after })).await;
        all.extend(p["auditEvents"]["items"].as_array().unwrap().iter().cloned());
        after = p["auditEvents"]["nextCursor"].clone();
        if after.is_null() {
            break;
        }
    }
    let actions: Vec<&str> = all.iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in ["user.create", "user.login", "worker_pool.create", "worker_pool.reset", "worker.revoke", "stack.create", "worker_pool.delete", "job.retry"] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    let ids: Vec<i64> = all.iter().map(|e| e["id"].as_str().unwrap().parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first, no repeats: {ids:?}");
    let resets = app.ok(&admin, page, json!({ "f": "worker_pool.reset" })).await;
    assert_eq!(resets["auditEvents"]["items"][0]["details"], json!({ "generation": 2 }));
    assert_eq!(resets["auditEvents"]["items"][0]["actor"], ADMIN_EMAIL);
    assert_eq!(resets["auditEvents"]["items"][0]["target"], "worker_pool:gpu");
    let created = all.iter().find(|e| e["action"] == "user.create" && e["target"] == format!("user:{ADMIN_EMAIL}")).unwrap();
    assert_eq!(created["actor"], "hangar admin (command line)");
}

#[tokio::test]
async fn create_user_takes_the_password_from_a_private_file_or_stdin_and_is_idempotent_only_when_asked() {
    let app = Appliance::start().await;
    let email = "ops@hangar.test";
    let create = |extra: &[&str], stdin: Option<&str>| {
        let mut args = vec!["admin", "create-user", "--email", email, "--role", "writer"];
        args.extend_from_slice(extra);
        app.hangar(&args, stdin)
    };
    let o = create(&["--password-stdin"], Some("First-Passw0rd-Here\n"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), format!("created user {email} (writer)"));
    app.login(email, "First-Passw0rd-Here").await;

    // Running it again is an error unless --update is given.
    let again = create(&["--password-stdin"], Some("Second-Passw0rd-Here\n"));
    assert_eq!(again.status.code(), Some(1));
    let e = stderr(&again);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains(email) && e.contains("already exists") && e.contains("--update"), "{e}");
    app.login(email, "First-Passw0rd-Here").await;

    let file = app.dir.path().join("new-password");
    hangar_certs::write_private_file(&file, b"Second-Passw0rd-Here\n").unwrap();
    let upd = app.hangar(&["admin", "create-user", "--email", email, "--role", "admin", "--password-file", file.to_str().unwrap(), "--update"], None);
    assert!(upd.status.success(), "{}", stderr(&upd));
    assert_eq!(stdout(&upd).trim(), format!("updated user {email} (admin)"));
    let token = app.login(email, "Second-Passw0rd-Here").await;
    assert_eq!(app.ok(&token, "{ me { role } }", json!({})).await["me"]["role"], "ADMIN");

    // A password file others can read is refused, and so is a weak password.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let loose = create(&["--password-file", file.to_str().unwrap(), "--update"], None);
    assert_eq!(loose.status.code(), Some(1));
    assert!(stderr(&loose).contains("new-password") && stderr(&loose).contains("0600"), "{}", stderr(&loose));
    let weak = app.hangar(&["admin", "create-user", "--email", "weak@hangar.test", "--role", "reader", "--password-stdin"], Some("password\n"));
    assert_eq!(weak.status.code(), Some(1));
    assert!(stderr(&weak).contains("too weak"), "{}", stderr(&weak));
    let bad_email = app.hangar(&["admin", "create-user", "--email", "not an email", "--role", "reader", "--password-stdin"], Some("Str0ng-Enough-Pass\n"));
    assert_eq!(bad_email.status.code(), Some(1));

    // Usage: no password source, a password on the command line, an unknown role.
    for args in [
        vec!["admin", "create-user", "--email", email, "--role", "admin"],
        vec!["admin", "create-user", "--email", email, "--role", "admin", "--password", "Sup3r-Secret-Pw"],
        vec!["admin", "create-user", "--email", email, "--role", "root", "--password-stdin"],
        vec!["admin", "create-user", "--email", email, "--role", "admin", "--password-stdin", "--password-file", "/x"],
    ] {
        let o = app.hangar(&args, Some(""));
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    for help in [vec!["admin", "--help"], vec!["admin", "create-user", "--help"], vec!["admin", "rotate-master-key", "--help"], vec!["server", "--help"]] {
        let o = app.hangar(&help, None);
        assert_eq!(o.status.code(), Some(0), "{help:?}");
    }
}

#[tokio::test]
async fn master_key_rotation_rewraps_data_keys_and_the_old_key_stops_working() {
    let mut app = Appliance::start().await;
    let admin = app.admin_token().await;
    app.ok(&admin, CREATE_STACK, json!({ "i": stack_input("vault", "https://git.example/v.git") })).await;
    let set = "mutation($n: String!, $v: String!) { setStackVariable(stack: \"vault\", name: $n, value: $v, secret: true) { name } }";
    app.ok(&admin, set, json!({ "n": "DB_PASSWORD", "v": "before-rotation-1" })).await;

    let old = MasterKey::load(&app.master_key).unwrap();
    let mut c = app.pg.database().connect().await.unwrap();
    let stack_id: i64 = stacks::table.filter(stacks::slug.eq("vault")).select(stacks::id).first(&mut c).await.unwrap();
    let owner = Owner::Stack(stack_id);
    let sealed = sealed_value(&mut c, owner, "DB_PASSWORD").await.unwrap().unwrap();
    let context = owner.seal_context("DB_PASSWORD");
    assert_eq!(SecretBox::new(old.clone()).open(&mut c, &sealed, &context).await.unwrap(), b"before-rotation-1");

    // Rotation with a key file that does not exist yet: it is made, 0600.
    let new_path = app.dir.path().join("secrets/master.key.new");
    let o = app.hangar(&["admin", "rotate-master-key", "--new-key-file", new_path.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("re-wrapped 1 data key(s)"), "{}", stdout(&o));
    assert_eq!(std::fs::metadata(&new_path).unwrap().permissions().mode() & 0o777, 0o600);
    let new = MasterKey::load(&new_path).unwrap();
    let ids: Vec<String> = data_keys::table.select(data_keys::master_key_id).load(&mut c).await.unwrap();
    assert_eq!(ids, vec![new.id()]);

    // The sealed value itself did not change, opens with the new key, not the old.
    let after = sealed_value(&mut c, owner, "DB_PASSWORD").await.unwrap().unwrap();
    assert_eq!(after, sealed);
    assert_eq!(SecretBox::new(new.clone()).open(&mut c, &after, &context).await.unwrap(), b"before-rotation-1");
    let refused = SecretBox::new(old.clone()).open(&mut c, &after, &context).await.unwrap_err().to_string();
    assert!(refused.contains("rotated"), "{refused}");

    // Rotating again from the old key fails and changes nothing.
    let stale = app.hangar(&["admin", "rotate-master-key", "--new-key-file", app.dir.path().join("third.key").to_str().unwrap()], None);
    assert_eq!(stale.status.code(), Some(1));
    assert!(stderr(&stale).contains(&old.id()) && stderr(&stale).contains(&new.id()), "{}", stderr(&stale));
    assert!(!app.dir.path().join("third.key").exists(), "no key file is written when rotation cannot happen");
    let same = app.hangar(&["admin", "rotate-master-key", "--new-key-file", app.master_key.to_str().unwrap()], None);
    assert_eq!(same.status.code(), Some(1));

    // A server still configured with the old key refuses to start, saying why.
    app.server().terminate(Duration::from_secs(20));
    let mut cmd = std::process::Command::new(hangar_testkit::cargo_bin("hangar"));
    cmd.arg("--config").arg(&app.config).arg("server").env("HANGAR_LOG", "warn");
    let mut refused = hangar_testkit::ChildProcess::spawn(cmd, "server-old-key", app.dir.path());
    let status = refused.wait_timeout(Duration::from_secs(30)).expect("a server with the old key must exit");
    assert_eq!(status.code(), Some(1));
    let e = refused.output();
    assert!(e.contains("rotated") && e.contains(&new.id()) && e.lines().count() == 1, "{e}");

    // The operator swaps the file; everything works, old and new secrets alike.
    std::fs::rename(&new_path, &app.master_key).unwrap();
    app.start_server().await;
    let admin = app.admin_token().await;
    app.ok(&admin, set, json!({ "n": "API_TOKEN", "v": "after-rotation-2" })).await;
    let fresh = sealed_value(&mut c, owner, "API_TOKEN").await.unwrap().unwrap();
    let boxed = SecretBox::new(new);
    assert_eq!(boxed.open(&mut c, &fresh, &owner.seal_context("API_TOKEN")).await.unwrap(), b"after-rotation-2");
    assert_eq!(boxed.open(&mut c, &sealed, &context).await.unwrap(), b"before-rotation-1");
    let audit = app.ok(&admin, "{ auditEvents(action: \"secrets.rotate_master_key\") { items { details } } }", json!({})).await;
    assert_eq!(audit["auditEvents"]["items"][0]["details"]["data_keys"], 1);
    let log = app.server_log();
    assert!(!log.contains("before-rotation-1") && !log.contains("after-rotation-2"));
}
