//! The web console in a real browser: Debian's Chromium, driven over
//! WebDriver (chromedriver) by fantoccini, against a whole appliance —
//! PostgreSQL, Garage, `hangar server` with its broker, `hangar drain`, a
//! real `hangar-worker`, a git server and Terraform 1.0.3. Everything is done
//! by clicking and typing as a person would; the API is used only to check.
//!
//! Screenshots of the main pages at 1280 and 390 pixels wide are written to
//! `console-screenshots/` in the cargo target's test directory.

mod common;
mod fleet;

#[path = "../../../bundles/tests/common/mod.rs"]
#[allow(unused_imports)]
mod bundle_kit;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use fleet::{CONFIG, Fleet, SOON};
use hangar_testkit::{ChildProcess, GitServer, TestDir, free_port, wait_for};
use serde_json::{Value, json};

/// Printed by the held `terraform plan` before it waits: the page must show
/// it while the run is still PLANNING.
const PLAN_MARK: &str = "console-test: planning, please wait";
const SECRET: &str = "browser-secret-7f3a9c21";
const HOSTILE: &str = "<img src=x onerror=alert(1)>";
/// A red line of plan output that is also markup: it must arrive as red text.
const LOG_HOSTILE: &str = "<script>alert('log')</script> in red";
/// The first line of the commit the run plans: markup that must stay text.
const COMMIT_SUBJECT: &str = "<script>alert(1)</script> first commit";

fn chromium() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| {
        names.iter().map(|n| Path::new("/usr/bin").join(n)).find(|p| p.exists())
    };
    Some((find(&["chromium", "chromium-browser"])?, find(&["chromedriver"])?))
}

/// chromedriver on a free port, and a session of headless Chromium with a
/// fresh profile and the performance log on.
async fn browser(files: &TestDir, name: &str) -> (ChildProcess, Client) {
    let (chrome, driver) = chromium().expect("chromium and chromedriver (Debian's chromium and chromium-driver packages)");
    let port = free_port();
    let mut cmd = Command::new(driver);
    cmd.arg(format!("--port={port}")).stdin(Stdio::null());
    let proc = ChildProcess::spawn(cmd, &format!("chromedriver-{name}"), files.path());
    let url = format!("http://127.0.0.1:{port}");
    let profile = files.subdir(&format!("chrome-profile-{name}"));
    let caps = json!({
        "browserName": "chrome",
        // The appliance's certificate is from its own CA, which this profile does not hold.
        "acceptInsecureCerts": true,
        "goog:loggingPrefs": { "performance": "ALL" },
        "goog:chromeOptions": {
            "binary": chrome,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1280,900", format!("--user-data-dir={}", profile.display()),
            ],
        },
    });
    let caps: serde_json::Map<String, Value> = serde_json::from_value(caps).unwrap();
    let client = wait_for("chromedriver to start a session", Duration::from_secs(60), || {
        let (caps, url) = (caps.clone(), url.clone());
        async move {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            ClientBuilder::new(connector).capabilities(caps).connect(&url).await.ok()
        }
    })
    .await;
    (proc, client)
}

/// The browser's performance log since the last call (chromedriver's `se/log`).
#[derive(Debug)]
struct PerformanceLog;

impl fantoccini::wd::WebDriverCompatibleCommand for PerformanceLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"performance"}"#.to_string()))
    }
}

/// Every URL the browser requested, from its performance log.
async fn requested_urls(c: &Client) -> Vec<String> {
    let log = c.issue_cmd(PerformanceLog).await.expect("the performance log");
    let mut urls = Vec::new();
    for entry in log.as_array().cloned().unwrap_or_default() {
        let Some(msg) = entry["message"].as_str() else { continue };
        let Ok(msg) = serde_json::from_str::<Value>(msg) else { continue };
        if msg["message"]["method"] == "Network.requestWillBeSent"
            && let Some(u) = msg["message"]["params"]["request"]["url"].as_str()
        {
            urls.push(u.to_string());
        }
    }
    urls
}

fn screenshots_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Screenshots of the page at 1280 and 390 pixels wide (and a check that the
/// page holds no secret's value).
async fn shoot(c: &Client, name: &str) {
    assert!(!c.source().await.unwrap().contains(SECRET), "the {name} page shows the secret");
    for (w, h) in [(1280, 900), (390, 844)] {
        c.set_window_size(w, h).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let png = c.screenshot().await.unwrap();
        std::fs::write(screenshots_dir().join(format!("{name}-{w}.png")), png).unwrap();
    }
    c.set_window_size(1280, 900).await.unwrap();
}

/// The element `loc`, waiting for the page that holds it to load.
async fn find(c: &Client, loc: Locator<'_>) -> fantoccini::elements::Element {
    let what = format!("{loc:?}");
    match c.wait().at_most(Duration::from_secs(30)).for_element(loc).await {
        Ok(e) => e,
        Err(e) => {
            let _ = std::fs::write(screenshots_dir().join("failed.png"), c.screenshot().await.unwrap_or_default());
            panic!("{what} on {}: {e}", c.current_url().await.map(|u| u.to_string()).unwrap_or_default())
        }
    }
}

async fn fill(c: &Client, id: &str, value: &str) {
    let e = find(c, Locator::Id(id)).await;
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

async fn click(c: &Client, css: &str) {
    find(c, Locator::Css(css)).await.click().await.unwrap();
}

async fn click_button(c: &Client, text: &str) {
    let xpath = format!("//button[normalize-space(.)='{text}']");
    find(c, Locator::XPath(&xpath)).await.click().await.unwrap();
}

async fn sign_in(c: &Client, base: &str, email: &str, password: &str) {
    c.goto(&format!("{base}/login")).await.unwrap();
    fill(c, "email", email).await;
    fill(c, "password", password).await;
    click_button(c, "Sign in").await;
    c.wait().for_element(Locator::Css("nav[aria-label=Main]")).await.expect("signed in");
}

async fn page_has(c: &Client, text: &str) -> bool {
    c.source().await.map(|s| s.contains(text)).unwrap_or(false)
}

/// A Terraform "version" whose `plan` prints a line, waits for `gate`, then
/// runs the real Terraform 1.0.3: a run that stays PLANNING with output.
fn held_plan_tool(fleet: &Fleet, version: &str) -> PathBuf {
    let gate = fleet.files.subdir("plan-gate").join("go");
    let dir = fleet.files.path().join("tools/terraform").join(version);
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = plan ]; then\n  echo '{PLAN_MARK}'\n  printf '\\033[31m%s\\033[0m\\n' \"{LOG_HOSTILE}\"\n  while [ ! -e '{gate}' ]; do /bin/sleep 0.1; done\nfi\nexec '{tf}' \"$@\"\n",
        gate = gate.display(),
        tf = hangar_testkit::terraform::terraform().display(),
    );
    let path = dir.join("terraform");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    gate
}

async fn run_state(fleet: &Fleet, id: &str) -> String {
    fleet.run(id).await.0
}

#[tokio::test]
async fn a_person_runs_terraform_from_the_console() {
    hangar_testkit::init();
    let fleet = Fleet::start().await;
    let base = fleet.app.url("");
    let origin = base.trim_end_matches('/').to_string();
    let git = GitServer::start().await;
    git.create_repo("infra");
    git.push_files("infra", "main", &[("infra/main.tf", CONFIG)], &format!("{COMMIT_SUBJECT}\n\nThe body stays in git."));
    let gate = held_plan_tool(&fleet, "1.0.3-console");

    let (_driver, c) = browser(&fleet.files, "admin").await;
    // Signed out, the console is the login page.
    c.goto(&base).await.unwrap();
    assert!(c.current_url().await.unwrap().path().starts_with("/login"));
    shoot(&c, "login").await;
    sign_in(&c, &base, common::ADMIN_EMAIL, common::ADMIN_PASSWORD).await;
    assert!(page_has(&c, "No stacks yet").await, "the empty stacks page");

    // A worker pool, and a worker host joined with the token the page shows once.
    click(&c, "a[href='/pools']").await;
    fill(&c, "pool-name", "browser").await;
    click_button(&c, "Create the pool").await;
    find(&c, Locator::Id("pool-h-browser")).await;
    click_button(&c, "Create a join token").await;
    let token = find(&c, Locator::Id("once-2")).await.text().await.unwrap();
    assert!(token.starts_with("hjt_"), "{token}");
    let command = find(&c, Locator::Id("once-1")).await.text().await.unwrap();
    assert!(command.starts_with("hangar-worker join --server ") && command.contains(&token), "{command}");
    let worker_dir = fleet.files.subdir("worker-w1");
    let out = Command::new(hangar_testkit::cargo_bin("hangar-worker"))
        .args(["join", "--server", &base, "--token", &token, "--name", "w1", "--config-dir"])
        .arg(&worker_dir)
        .arg("--ca")
        .arg(fleet.app.ca_path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "hangar-worker join: {}", String::from_utf8_lossy(&out.stderr));
    let toml = std::fs::read_to_string(worker_dir.join("worker.toml"))
        .unwrap()
        .replace("/var/lib/hangar-worker/work", &fleet.files.subdir("work-w1").display().to_string())
        .replace("/var/cache/hangar-worker", &fleet.files.subdir("cache-w1").display().to_string())
        .replace("heartbeat_secs = 10\n", "heartbeat_secs = 1\n")
        .replace("poll_secs = 30\n", "poll_secs = 2\n");
    std::fs::write(worker_dir.join("worker.toml"), toml).unwrap();
    let _worker = fleet.run_worker(&worker_dir, "w1");
    fleet.wait_workers("browser", "idle", 1).await;
    c.goto(&format!("{base}/pools")).await.unwrap();
    assert!(page_has(&c, "w1").await);
    shoot(&c, "pools").await;

    // A VCS integration (plain git, polled) and a stack on it, by the forms.
    click(&c, "a[href='/vcs']").await;
    fill(&c, "vcs-name", "local-git").await;
    find(&c, Locator::Id("vcs-kind")).await.select_by_value("GIT").await.unwrap();
    fill(&c, "vcs-url", &git.base_url()).await;
    click_button(&c, "Connect").await;
    find(&c, Locator::XPath("//h1[normalize-space(.)='local-git']")).await;
    c.goto(&format!("{base}/stacks/new")).await.unwrap();
    fill(&c, "name", "Network").await;
    fill(&c, "slug", "network").await;
    fill(&c, "repository", &git.url("infra")).await;
    fill(&c, "project_root", "infra").await;
    fill(&c, "tool_version", "1.0.3-console").await;
    find(&c, Locator::Id("pool")).await.select_by_value("browser").await.unwrap();
    find(&c, Locator::Id("vcs")).await.select_by_value("local-git").await.unwrap();
    fill(&c, "labels", "team:net prod").await;
    click_button(&c, "Create the stack").await;
    find(&c, Locator::XPath("//h1[normalize-space(.)='Network']")).await;

    // A secret variable, typed into the form; never shown again.
    click(&c, "details summary").await;
    fill(&c, "var-name", "TF_VAR_secret").await;
    fill(&c, "var-value", SECRET).await;
    click(&c, "#var-secret").await;
    click_button(&c, "Save variable").await;
    find(&c, Locator::XPath("//span[normalize-space(.)='secret · set']")).await;

    // Trigger: the run page shows the plan's output while it is still planning.
    click_button(&c, "Trigger a run").await;
    find(&c, Locator::Css("pre[data-phase=planning]")).await;
    let run_path = c.current_url().await.unwrap().path().to_string();
    let run_id = run_path.trim_start_matches("/runs/").to_string();
    wait_for("the plan's output in the page while planning", SOON, || async {
        let text = c.find(Locator::Css("pre[data-phase=planning]")).await.ok()?.text().await.ok()?;
        text.contains(PLAN_MARK).then_some(())
    })
    .await;
    assert_eq!(run_state(&fleet, &run_id).await, "PLANNING", "the line arrived while the run was planning");
    // Output that is markup arrives as text, its colour as a class.
    let red = wait_for("the red line in the page", SOON, || async {
        c.find(Locator::Css("pre[data-phase=planning] span.a-f1")).await.ok()?.text().await.ok()
    })
    .await;
    assert_eq!(red, LOG_HOSTILE);
    assert!(c.find_all(Locator::Css("main script")).await.unwrap().is_empty(), "the log injected a script element");
    assert!(c.get_alert_text().await.is_err(), "the log opened a dialog");
    // The commit's message, which is markup, is its subject as text.
    let subject = find(&c, Locator::Id("commit-message")).await.text().await.unwrap();
    assert_eq!(subject, COMMIT_SUBJECT);
    assert!(c.find_all(Locator::Css("main script")).await.unwrap().is_empty(), "the commit message injected a script element");
    assert!(c.get_alert_text().await.is_err(), "the commit message opened a dialog");
    c.execute("document.querySelector('pre[data-phase=planning]').scrollIntoView({block: 'end'})", vec![]).await.unwrap();
    shoot(&c, "run-planning").await;

    // A reader in another browser: no Confirm button, and a hand-made POST is refused.
    c.goto(&format!("{base}/admin")).await.unwrap();
    fill(&c, "u-email", "reader@hangar.test").await;
    find(&c, Locator::Id("u-role")).await.select_by_value("READER").await.unwrap();
    fill(&c, "u-password", "Quiet-Lantern-0123456789!").await;
    click_button(&c, "Create the user").await;
    find(&c, Locator::XPath("//td[contains(., 'reader@hangar.test')]")).await;
    shoot(&c, "admin").await;

    std::fs::write(&gate, b"").unwrap();
    c.goto(&format!("{base}{run_path}")).await.unwrap();
    // The page follows the run: Confirm appears when the plan waits for it.
    wait_for("the Confirm button", SOON, || async {
        c.find(Locator::XPath("//button[normalize-space(.)='Confirm']")).await.ok().map(|_| ())
    })
    .await;
    assert_eq!(run_state(&fleet, &run_id).await, "UNCONFIRMED");
    assert!(page_has(&c, "to add").await, "the plan's summary");
    shoot(&c, "run-unconfirmed").await;

    {
        let (_reader_driver, r) = browser(&fleet.files, "reader").await;
        sign_in(&r, &base, "reader@hangar.test", "Quiet-Lantern-0123456789!").await;
        r.goto(&format!("{base}{run_path}")).await.unwrap();
        assert!(page_has(&r, "UNCONFIRMED").await);
        assert!(r.find(Locator::XPath("//button[normalize-space(.)='Confirm']")).await.is_err(), "a reader sees no Confirm");
        let token = find(&r, Locator::Css("input[name=csrf]")).await.attr("value").await.unwrap().unwrap();
        let status = r
            .execute_async(
                "const [url, token, done] = arguments; fetch(url, {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'csrf=' + token}).then(r => done(r.status));",
                vec![json!(format!("{run_path}/confirm")), json!(token)],
            )
            .await
            .unwrap();
        assert_eq!(status, json!(403), "a reader's hand-made confirm is refused");
        assert_eq!(run_state(&fleet, &run_id).await, "UNCONFIRMED");
        r.close().await.unwrap();
    }

    // A form on another site posting to the appliance changes nothing.
    let before = fleet.ok("{ runs(stack: \"network\") { items { id } } }", json!({})).await;
    let page = format!(
        "data:text/html,<form method=post action='{base}/stacks/network/trigger'><input name=csrf value=x><button id=go>go</button></form>"
    );
    c.goto(&page).await.unwrap();
    click(&c, "#go").await;
    find(&c, Locator::XPath("//h1[normalize-space(.)='Refused']")).await;
    assert!(page_has(&c, "not sent from a page of this Hangar appliance").await);
    let after = fleet.ok("{ runs(stack: \"network\") { items { id } } }", json!({})).await;
    assert_eq!(before, after, "a cross-site form triggered a run");

    // Confirm by clicking; the run finishes and the stack has state version 1.
    c.goto(&format!("{base}{run_path}")).await.unwrap();
    click_button(&c, "Confirm").await;
    wait_for("the run to show FINISHED", SOON, || async {
        let badge = c.find(Locator::Css("#run-head h1 .badge")).await.ok()?.text().await.ok()?;
        (badge == "FINISHED").then_some(())
    })
    .await;
    let log = find(&c, Locator::Css("pre[data-phase=applying]")).await.text().await.unwrap();
    assert!(log.contains("Apply complete!"), "{log}");
    shoot(&c, "run-finished").await;
    c.goto(&format!("{base}/stacks/network")).await.unwrap();
    let version = find(&c, Locator::Css("#state + table tbody tr td")).await.text().await.unwrap();
    assert_eq!(version.trim(), "1", "state version 1");
    assert_eq!(fleet.state_versions("network").await, 1);
    // The run history shows the commit's subject as text too.
    let subject = find(&c, Locator::Css("#stack-runs .subject-cell")).await.text().await.unwrap();
    assert_eq!(subject, COMMIT_SUBJECT);
    assert!(c.find_all(Locator::Css("main script")).await.unwrap().is_empty(), "the run history holds an injected element");
    assert!(c.get_alert_text().await.is_err(), "the run history opened a dialog");
    shoot(&c, "stack").await;

    // A hostile stack name renders as text: no dialog, no injected element.
    c.goto(&format!("{base}/stacks/new")).await.unwrap();
    fill(&c, "name", HOSTILE).await;
    fill(&c, "slug", "hostile").await;
    fill(&c, "repository", &git.url("infra")).await;
    click_button(&c, "Create the stack").await;
    find(&c, Locator::XPath("//p[normalize-space(.)='hostile']")).await;
    for path in ["/stacks", "/stacks/hostile"] {
        c.goto(&format!("{base}{path}")).await.unwrap();
        assert!(c.get_alert_text().await.is_err(), "{path} opened a dialog");
        assert!(c.find_all(Locator::Css("main img")).await.unwrap().is_empty(), "{path} holds an injected element");
        assert!(page_has(&c, "onerror=alert(1)").await, "{path} shows the name as text");
    }
    c.goto(&format!("{base}/stacks")).await.unwrap();
    shoot(&c, "stacks").await;

    // The secret's value is in no page (each one photographed), nor in the
    // answer to a missing one.
    for path in ["/stacks/network", &run_path, "/vcs", "/vcs/local-git", "/contexts", "/admin/audit", "/account", "/admin/system", "/stacks/nothing-here"] {
        c.goto(&format!("{base}{path}")).await.unwrap();
        let name = path.trim_start_matches('/').replace('/', "-");
        shoot(&c, &name).await;
    }
    assert!(page_has(&c, "Not found").await, "the missing stack's page");

    // Nothing was requested from any origin but the appliance.
    let urls = requested_urls(&c).await;
    assert!(urls.iter().any(|u| u.starts_with(&origin)), "the log holds the appliance's requests: {urls:?}");
    // Requests that leave the browser (the browser's own chrome:// pages, and
    // the test's data: page, do not).
    let network = |u: &&String| ["http://", "https://", "ws://", "wss://"].iter().any(|s| u.starts_with(s));
    let foreign: Vec<&String> =
        urls.iter().filter(network).filter(|u| !u.starts_with(&format!("{origin}/")) && *u != &origin).collect();
    assert!(foreign.is_empty(), "requests to other origins: {foreign:?}");
    c.close().await.unwrap();
}

/// An administrator uploads a signed bundle from the System page: the page's
/// script sends it through the resumable upload API with the page's session,
/// and takes up an upload cut halfway (here by a connection that dropped
/// after half of it arrived) instead of starting over. A file that is not a
/// bundle is refused with its reason and nothing is staged.
#[tokio::test]
async fn an_admin_uploads_a_bundle_from_the_system_page_and_a_cut_upload_resumes() {
    use bundle_kit::corpus;
    hangar_testkit::init();
    let files = TestDir::new("browser-upload");
    let keys = files.subdir("keys");
    std::fs::write(keys.join("trusted.pub"), corpus::trusted_key().public_key().to_pem()).unwrap();
    let staging = files.path().join("staging");
    let app = common::Appliance::start_with(common::Options {
        server_extra: format!("bundles_dir = \"{}\"\nbundle_trust_dir = \"{}\"\n", staging.display(), keys.display()),
        ..Default::default()
    })
    .await;
    let admin = app.admin_token().await;
    let base = app.url("");
    let bytes = corpus::genuine(&bundle_kit::Meta::default(), &corpus::sample(&corpus::tool_v1()), &[&corpus::trusted_key()]);
    let path = files.path().join("hangar-1.0.0.bundle");
    std::fs::write(&path, &bytes).unwrap();

    // Half of it arrived before the connection dropped.
    let created: Value = app
        .client
        .post(app.url("/api/v1/bundles/uploads"))
        .bearer_auth(&admin)
        .json(&json!({ "name": "hangar-1.0.0.bundle", "size": bytes.len() }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let half = bytes.len() / 2;
    let r = app
        .client
        .patch(app.url(&format!("/api/v1/bundles/uploads/{id}")))
        .bearer_auth(&admin)
        .header("upload-offset", "0")
        .body(bytes[..half].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let (_driver, c) = browser(&files, "upload").await;
    sign_in(&c, &base, common::ADMIN_EMAIL, common::ADMIN_PASSWORD).await;
    c.goto(&app.url("/admin/system")).await.unwrap();
    find(&c, Locator::Css("form[data-upload]:not([hidden])")).await;
    // The browser remembers the upload of this very file, as the page did
    // when the connection dropped.
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let key = format!("hangar-upload:hangar-1.0.0.bundle:{}:{modified}", bytes.len());
    c.execute("localStorage.setItem(arguments[0], arguments[1]);", vec![json!(key), json!(id)]).await.unwrap();
    find(&c, Locator::Id("bundle-file")).await.send_keys(&path.display().to_string()).await.unwrap();
    click_button(&c, "Upload").await;

    // Staged under the upload's id: only the missing half was sent. The page
    // reloads with the bundle listed and the upgrade it offers.
    let staged = wait_for("the bundle to be staged", SOON, || {
        let (client, url, admin) = (app.client.clone(), app.url("/api/v1/bundles"), admin.clone());
        async move {
            let v: Value = client.get(url).bearer_auth(admin).send().await.ok()?.json().await.ok()?;
            v["bundles"].as_array().and_then(|l| l.first().cloned())
        }
    })
    .await;
    assert_eq!((staged["id"].as_str(), staged["version"].as_str()), (Some(id.as_str()), Some("1.0.0")), "{staged}");
    let row = "aria-label=\"Upgrade the appliance to 1.0.0\"".to_string();
    wait_for("the page to list it", SOON, || {
        let c = c.clone();
        let row = row.clone();
        async move { page_has(&c, &row).await.then_some(()) }
    })
    .await;
    assert!(page_has(&c, &id).await);
    let stored: Value = c.execute("return localStorage.getItem(arguments[0]);", vec![json!(key)]).await.unwrap();
    assert_eq!(stored, Value::Null, "a finished upload is forgotten");
    shoot(&c, "system-bundles").await;

    // Not a bundle: refused at once, with the reason, and nothing staged.
    let junk = files.path().join("notes.bundle");
    std::fs::write(&junk, vec![b'x'; 4096]).unwrap();
    find(&c, Locator::Id("bundle-file")).await.send_keys(&junk.display().to_string()).await.unwrap();
    click_button(&c, "Upload").await;
    wait_for("the refusal", SOON, || {
        let c = c.clone();
        async move { page_has(&c, "Not uploaded: the bundle is refused").await.then_some(()) }
    })
    .await;
    shoot(&c, "system-upload-refused").await;
    let v: Value = app.client.get(app.url("/api/v1/bundles")).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["bundles"].as_array().unwrap().len(), 1, "{v}");
    assert!(std::fs::read_dir(staging.join("uploads")).unwrap().next().is_none(), "the refused upload left nothing");
}

/// A writer wires one stack to another from the stack page: the dependency
/// and the output it passes are listed, the page says the chain waits for a
/// dependency never applied, a dependency that would close a cycle is
/// refused with the cycle named, and removing it empties the list.
#[tokio::test]
async fn a_writer_wires_stacks_together_from_the_stack_page() {
    hangar_testkit::init();
    let files = TestDir::new("browser-dependencies");
    let app = common::Appliance::start().await;
    let admin = app.admin_token().await;
    let base = app.url("");
    for slug in ["network", "app"] {
        let (status, v) = app.gql(Some(&admin), common::CREATE_STACK, json!({ "i": common::stack_input(slug, "https://git.example/infra.git") })).await;
        assert!(status == 200 && v["errors"].is_null(), "{v}");
    }
    let (_driver, c) = browser(&files, "dependencies").await;
    sign_in(&c, &base, common::ADMIN_EMAIL, common::ADMIN_PASSWORD).await;

    c.goto(&format!("{base}/stacks/app")).await.unwrap();
    assert!(page_has(&c, "Depends on no stack.").await);
    click(&c, "#dependencies ~ details summary").await;
    fill(&c, "dep-on", "network").await;
    fill(&c, "dep-outputs", "vpc_id = network_vpc").await;
    click_button(&c, "Add the dependency").await;
    find(&c, Locator::Css("#held")).await;
    assert!(page_has(&c, "vpc_id → TF_VAR_network_vpc").await);
    assert!(page_has(&c, "Dependency network was never applied").await);
    shoot(&c, "stack-dependencies").await;
    c.goto(&format!("{base}/stacks/app")).await.unwrap();
    shoot(&c, "stack-held").await;
    let d = app.gql(Some(&admin), "query { stack(slug: \"app\") { dependsOn { stack { slug } outputs { output input } } } }", json!({})).await.1;
    assert_eq!(d["data"]["stack"]["dependsOn"], json!([{ "stack": { "slug": "network" }, "outputs": [{ "output": "vpc_id", "input": "network_vpc" }] }]), "{d}");

    // The other way round would be a cycle: refused, and named.
    c.goto(&format!("{base}/stacks/network")).await.unwrap();
    assert!(page_has(&c, "Depended on by").await);
    click(&c, "#dependencies ~ details summary").await;
    fill(&c, "dep-on", "app").await;
    click_button(&c, "Add the dependency").await;
    wait_for("the refusal", Duration::from_secs(30), || async { page_has(&c, "cycle network → app → network").await.then_some(()) }).await;
    shoot(&c, "dependency-cycle").await;

    // The Policies page lists what applies where, and offers the workbench.
    let body = "package hangar.chain\n\ntrigger contains \"app\" if input.run.state == \"FINISHED\"\n";
    let create = "mutation($b: String!) { createPolicy(input: { name: \"after-network\", kind: TRIGGER, body: $b, description: \"app follows network\" }) { name } }";
    assert!(app.gql(Some(&admin), create, json!({ "b": body })).await.1["errors"].is_null());
    assert!(app.gql(Some(&admin), "mutation { attachPolicy(policy: \"after-network\", stack: \"network\") }", json!({})).await.1["errors"].is_null());
    c.goto(&format!("{base}/policies")).await.unwrap();
    find(&c, Locator::Id("wb-body")).await;
    assert!(page_has(&c, "after-network").await && page_has(&c, "app follows network").await);
    find(&c, Locator::Id("wb-kind")).await.select_by_value("TRIGGER").await.unwrap();
    fill(&c, "wb-body", body).await;
    click_button(&c, "Test against past runs").await;
    wait_for("the workbench's answer", Duration::from_secs(30), || async {
        page_has(&c, "No recorded evaluation of this kind yet").await.then_some(())
    })
    .await;
    shoot(&c, "policies").await;
    c.goto(&format!("{base}/modules")).await.unwrap();
    assert!(page_has(&c, "No modules yet").await);
    shoot(&c, "modules-empty").await;

    c.goto(&format!("{base}/stacks/app")).await.unwrap();
    click_button(&c, "Remove").await;
    wait_for("the dependency removed", Duration::from_secs(30), || async { page_has(&c, "Depends on no stack.").await.then_some(()) }).await;
    assert!(!page_has(&c, "id=\"held\"").await);
}

#[tokio::test]
async fn an_admin_gives_a_team_its_space_and_the_team_sees_only_it() {
    hangar_testkit::init();
    let files = TestDir::new("browser-spaces");
    let app = common::Appliance::start().await;
    let admin = app.admin_token().await;
    let base = app.url("");
    for (slug, parent) in [("platform", "root"), ("payments", "platform"), ("search", "platform")] {
        let q = "mutation($s: String!, $p: String!) { createSpace(slug: $s, name: $s, parent: $p) { slug } }";
        assert!(app.gql(Some(&admin), q, json!({ "s": slug, "p": parent })).await.1["errors"].is_null());
    }
    for (slug, space) in [("ledger", "payments"), ("index", "search")] {
        let mut input = common::stack_input(slug, "https://git.example/infra.git");
        input["space"] = json!(space);
        assert!(app.gql(Some(&admin), common::CREATE_STACK, json!({ "i": input })).await.1["errors"].is_null());
    }
    let create = "mutation { createUser(email: \"pay@hangar.test\", role: NO_ACCESS, password: \"Violet-Harbor-3-Kite!\") { id } }";
    assert!(app.gql(Some(&admin), create, json!({})).await.1["errors"].is_null());

    // The admin grants the team its space from the space's page.
    let (_driver, c) = browser(&files, "spaces").await;
    sign_in(&c, &base, common::ADMIN_EMAIL, common::ADMIN_PASSWORD).await;
    c.goto(&format!("{base}/spaces")).await.unwrap();
    find(&c, Locator::LinkText("payments")).await;
    shoot(&c, "spaces").await;
    c.goto(&format!("{base}/spaces/payments")).await.unwrap();
    fill(&c, "grant-user", "pay@hangar.test").await;
    find(&c, Locator::Id("grant-role")).await.select_by_value("WRITER").await.unwrap();
    click_button(&c, "Grant").await;
    wait_for("the grant", Duration::from_secs(30), || async { page_has(&c, "pay@hangar.test").await.then_some(()) }).await;
    fill(&c, "new-slug", "payments-eu").await;
    click_button(&c, "Create").await;
    wait_for("the new space", Duration::from_secs(30), || async { page_has(&c, "Your role here").await.then_some(()) }).await;
    c.goto(&format!("{base}/spaces/payments")).await.unwrap();
    find(&c, Locator::Id("grants")).await;
    assert!(page_has(&c, "payments-eu").await);
    shoot(&c, "space-admin").await;

    // The team: its space and the one below, no grants to manage, nothing else.
    let (_driver2, t) = browser(&files, "spaces-team").await;
    sign_in(&t, &base, "pay@hangar.test", "Violet-Harbor-3-Kite!").await;
    t.goto(&format!("{base}/stacks")).await.unwrap();
    find(&t, Locator::LinkText("Stack ledger")).await;
    assert!(!page_has(&t, "/stacks/index").await, "a stack of another team's space is listed");
    t.goto(&format!("{base}/spaces")).await.unwrap();
    find(&t, Locator::LinkText("payments")).await;
    assert!(!page_has(&t, "/spaces/search").await && !page_has(&t, "/spaces/platform").await);
    shoot(&t, "spaces-team").await;
    t.goto(&format!("{base}/spaces/payments")).await.unwrap();
    find(&t, Locator::XPath("//*[contains(., 'Your role here')]")).await;
    assert!(!page_has(&t, "Roles granted here").await && !page_has(&t, "Create a space below").await);
    t.goto(&format!("{base}/stacks/index")).await.unwrap();
    wait_for("the not-found page", Duration::from_secs(30), || async { page_has(&t, "Not found").await.then_some(()) }).await;
    // The team's admin creates a pool in a space below the team from the
    // Pools page, and may connect a git server there.
    let create = "mutation { createUser(email: \"lead@pay.test\", role: NO_ACCESS, password: \"Amber-Falcon-8-Reed!\") { id } }";
    assert!(app.gql(Some(&admin), create, json!({})).await.1["errors"].is_null());
    let grant = "mutation { grantSpaceRole(space: \"payments\", user: \"lead@pay.test\", role: ADMIN) { slug } }";
    assert!(app.gql(Some(&admin), grant, json!({})).await.1["errors"].is_null());
    let (_driver3, l) = browser(&files, "spaces-lead").await;
    sign_in(&l, &base, "lead@pay.test", "Amber-Falcon-8-Reed!").await;
    l.goto(&format!("{base}/pools")).await.unwrap();
    fill(&l, "pool-name", "pay-builders").await;
    find(&l, Locator::Id("pool-space")).await.select_by_value("payments-eu").await.unwrap();
    click_button(&l, "Create the pool").await;
    wait_for("the new pool", Duration::from_secs(30), || async { page_has(&l, "Create a join token").await.then_some(()) }).await;
    shoot(&l, "pools-space-admin").await;
    let d = app.ok(&admin, "{ workerPools { name space { slug } } }", json!({})).await;
    assert!(d["workerPools"].as_array().unwrap().iter().any(|p| p["name"] == "pay-builders" && p["space"]["slug"] == "payments-eu"), "{d}");
    l.goto(&format!("{base}/vcs")).await.unwrap();
    find(&l, Locator::Id("vcs-space")).await;
    shoot(&l, "vcs-space-admin").await;
}
