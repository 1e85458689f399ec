//! End to end: a real appliance bundle, built from this workspace by
//! `bundles/build-appliance.sh`, installed non-interactively into a temporary
//! prefix; the appliance reached over TLS trusting only the CA the installer
//! made; PostgreSQL's TLS as strict as the other listeners'; the administrator logs in through GraphQL; a second run repairs
//! nothing and clobbers nothing; status, a redacted support bundle, and an
//! uninstall that leaves no process and only the data behind.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::{ADMIN_EMAIL, ADMIN_PASSWORD, Site, bundle, check, client};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn installs_from_a_real_bundle_serves_graphql_and_uninstalls_cleanly() {
    hangar_testkit::init();
    let built = bundle();
    let site = Site::new("install-e2e", &built);
    let out = check("install", site.install());
    assert!(out.contains("is ready"), "{out}");
    assert!(out.contains(&format!("https://localhost:{}", site.ports.server)), "{out}");
    assert!(out.contains("CA SHA-256"), "{out}");
    assert!(out.contains("hangar-worker join --server"), "{out}");
    assert!(!out.contains(ADMIN_PASSWORD), "the password is never printed");
    eprintln!("{out}");

    // Over TLS trusting only the generated CA.
    let http = client(&site.ca());
    let base = format!("https://localhost:{}", site.ports.server);
    let ready = http.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    for c in ["postgres", "objects", "broker"] {
        assert_eq!(body["components"][c]["status"], "ok", "{body}");
    }
    let login = |password: &'static str| {
        let http = http.clone();
        let url = format!("{base}/graphql");
        async move {
            let r = http
                .post(url)
                .json(&json!({
                    "query": "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token user { email role } } }",
                    "variables": { "e": ADMIN_EMAIL, "p": password },
                }))
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()
        }
    };
    let ok = login(ADMIN_PASSWORD).await;
    let token = ok["data"]["login"]["token"].as_str().unwrap_or_else(|| panic!("{ok}")).to_string();
    assert_eq!(ok["data"]["login"]["user"]["role"], "ADMIN", "{ok}");
    let wrong = login("Not-The-Passw0rd-At-All").await;
    assert!(wrong["errors"].is_array() && wrong["data"].is_null(), "{wrong}");
    let me: Value = http
        .post(format!("{base}/graphql"))
        .bearer_auth(&token)
        .json(&json!({ "query": "{ me { email } }" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["data"]["me"]["email"], ADMIN_EMAIL, "{me}");
    // A client trusting the system's roots does not get in.
    let foreign = reqwest::Client::builder().build().unwrap();
    assert!(foreign.get(format!("{base}/ready")).send().await.is_err());

    // PostgreSQL offers what every other listener offers: AEAD suites only. A
    // client offering only CBC suites (LUCKY13's) is refused, an AEAD one served.
    let cbc = "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES128-SHA256:AES128-SHA:AES256-SHA256";
    let (served, text) = common::postgres_handshake(site.ports.database, &site.ca(), cbc);
    assert!(!served, "a CBC-only client was served: {text}");
    let aead = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256";
    let (served, text) = common::postgres_handshake(site.ports.database, &site.ca(), aead);
    assert!(served && text.contains("Verify return code: 0 (ok)"), "an AEAD client was refused: {text}");
    assert!(text.contains("-GCM-SHA256"), "{text}");

    // Secrets: 0600, owned by the service user; none in hangar.toml.
    let svc = nix::unistd::User::from_name("hangar").unwrap().expect("the service user exists");
    let config = fs::read_to_string(site.path("etc/hangar/hangar.toml")).unwrap();
    let mut secret_values = Vec::new();
    for e in fs::read_dir(site.path("etc/hangar/secrets")).unwrap().flatten() {
        let meta = e.metadata().unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", e.path().display());
        assert_eq!(meta.uid(), svc.uid.as_raw(), "{}", e.path().display());
        let value = fs::read_to_string(e.path()).unwrap().trim().to_string();
        assert!(!config.contains(&value), "{} is in hangar.toml", e.path().display());
        secret_values.push(value);
    }
    assert!(secret_values.len() >= 5, "{secret_values:?}");
    // The drain keeps its repository copies in a directory of the service user's own.
    let drain_dir = site.path("var/lib/hangar/drain");
    assert!(config.contains(&format!("[drain]\ndata_dir = \"{}\"", drain_dir.display())), "{config}");
    let meta = fs::metadata(&drain_dir).unwrap();
    assert_eq!((meta.uid(), meta.permissions().mode() & 0o777), (svc.uid.as_raw(), 0o700));
    let release = site.path("opt/hangar/current");
    assert_eq!(fs::read_link(&release).unwrap(), std::path::Path::new("releases").join(env!("CARGO_PKG_VERSION")));

    // Status: ready.
    let status = check("status", site.command(&["status"]).output().unwrap());
    assert!(status.contains("READY") && !status.contains("NOT READY"), "{status}");
    assert!(status.contains(&format!("database        bundled PostgreSQL on port {}", site.ports.database)), "{status}");
    for svc in ["postgres", "garage", "objects-tls", "server", "drain", "scheduler"] {
        assert!(status.lines().any(|l| l.trim_start().starts_with(svc) && l.contains("ready")), "{svc}: {status}");
    }

    // Run again: everything is in place, nothing is replaced.
    let db_password = fs::read(site.path("etc/hangar/secrets/db-password")).unwrap();
    let ca = fs::read(site.ca()).unwrap();
    let again = check("second install", site.install());
    assert!(again.contains("already unpacked"), "{again}");
    assert!(again.contains("configuration unchanged") || again.contains("(unchanged)"), "{again}");
    assert_eq!(fs::read(site.path("etc/hangar/secrets/db-password")).unwrap(), db_password);
    assert_eq!(fs::read(site.ca()).unwrap(), ca);
    assert_eq!(login(ADMIN_PASSWORD).await["data"]["login"]["user"]["email"], ADMIN_EMAIL);

    // Support bundle: logs and configuration, no secret value anywhere in it.
    let archive = site.dir.path().join("support.tar.gz");
    check("support-bundle", site.command(&["support-bundle", "--out", archive.to_str().unwrap()]).output().unwrap());
    let mut names = Vec::new();
    let mut all = Vec::new();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(fs::File::open(&archive).unwrap()));
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        names.push(entry.path().unwrap().display().to_string());
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        all.extend(bytes);
    }
    for expected in ["hangar-support/etc/hangar.toml", "hangar-support/logs/server.log", "hangar-support/status.txt"] {
        assert!(names.iter().any(|n| n == expected), "{expected} in {names:?}");
    }
    let text = String::from_utf8_lossy(&all);
    for value in &secret_values {
        assert!(!text.contains(value.as_str()), "a secret value is in the support bundle");
    }
    assert!(!text.contains(ADMIN_PASSWORD));

    // Uninstall: no process left; release and configuration gone; data kept.
    let out = check("uninstall", site.command(&["uninstall"]).output().unwrap());
    assert!(out.contains("kept the data"), "{out}");
    assert_eq!(site.processes(), Vec::<(i32, String)>::new(), "processes left");
    for gone in ["opt/hangar", "etc/hangar/hangar.toml", "etc/hangar/garage.toml", "etc/hangar/install-state.json", "var/log/hangar"] {
        assert!(!site.path(gone).exists(), "{gone} is still there");
    }
    for kept in ["var/lib/hangar/postgres/PG_VERSION", "etc/hangar/secrets/db-password", "etc/hangar/secrets/master.key", "etc/hangar/pki/ca.key"] {
        assert!(site.path(kept).exists(), "{kept} was removed");
    }
    assert!(http.get(format!("{base}/ready")).send().await.is_err(), "the server still answers");
    let after = site.command(&["status"]).output().unwrap();
    assert_eq!(after.status.code(), Some(1));

    // --purge-data removes the rest.
    check("reinstall", site.install());
    check("uninstall --purge-data", site.command(&["uninstall", "--purge-data"]).output().unwrap());
    assert_eq!(site.files(), vec!["etc".to_string(), "opt".into(), "var".into(), "var/lib".into(), "var/log".into()].into_iter().filter(|p| site.path(p).exists()).collect::<Vec<_>>());
    assert!(!site.path("var/lib/hangar").exists());
    assert!(!site.path("etc/hangar").exists());
}
