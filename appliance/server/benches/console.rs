//! Console benchmark, with 1,000 stacks and 10,000 runs in the database: the
//! server's time per page (p50/p99, measured at a client on loopback), and in
//! headless Chromium the first load of the stacks page to DOMContentLoaded,
//! the bytes a first load and a later navigation transfer, and how long a
//! log chunk takes from being stored to being visible in an open run page.
//!
//! `cargo bench -p hangar-server --bench console` (add `-- --quick` for fewer
//! samples). The browser figures need Debian's `chromium` and `chromium-driver`.

#[allow(unused_imports)]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use diesel_async::RunQueryDsl;
use fantoccini::{Client, ClientBuilder, Locator};
use hangar_testkit::{ChildProcess, free_port, wait_for};
use hangar_types::worker::Phase;
use serde_json::{Value, json};
use support::{Options, Summary};

const STACKS: i64 = 1_000;
const RUNS: i64 = 10_000;

fn main() {
    support::main(async move {
        let support::Bench { app, quick, .. } = support::start(Options::default()).await;
        let mut conn = app.pg.database().connect().await.unwrap();
        // Stacks with labels, and ten runs each (the newest of a few still working).
        diesel::sql_query(format!(
            "INSERT INTO stacks (slug, name, repository, branch, tool_version, labels)
             SELECT 'stack-' || lpad(i::text, 4, '0'), 'Stack ' || i, 'https://git.example/infra/s' || i || '.git', 'main', '1.0.3',
                    ARRAY['bench', 'team-' || (i % 7)]
             FROM generate_series(1, {STACKS}) i"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        diesel::sql_query(format!(
            "INSERT INTO runs (stack_id, kind, state, commit_sha, branch, triggered_by, commit_message)
             SELECT s.id, 'tracked', CASE WHEN r = {per} AND s.id % 10 = 0 THEN 'UNCONFIRMED' WHEN r % 9 = 0 THEN 'FAILED' ELSE 'FINISHED' END,
                    md5(s.id::text || '-' || r) || '01234567', 'main', 'admin@hangar.test',
                    'Resize the node group of ' || s.slug || ' (change ' || r || ') <and escape this>'
             FROM stacks s, generate_series(1, {per}) r ORDER BY r, s.id",
            per = RUNS / STACKS
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        diesel::sql_query(
            "INSERT INTO run_events (run_id, from_state, to_state, cause, actor)
             SELECT r.id, s.f, s.t, 'bench', 'bench' FROM runs r,
             (VALUES (NULL, 'QUEUED'), ('QUEUED', 'READY'), ('READY', 'PREPARING'), ('PREPARING', 'INITIALIZING'),
                     ('INITIALIZING', 'PLANNING')) AS s(f, t)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        diesel::sql_query("ANALYZE").execute(&mut conn).await.unwrap();

        let mut session = Session::sign_in(&app).await;
        let run_id: i64 = {
            #[derive(diesel::QueryableByName)]
            struct Id {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                id: i64,
            }
            diesel::sql_query("SELECT max(id) AS id FROM runs").get_result::<Id>(&mut conn).await.unwrap().id
        };
        println!("{STACKS} stacks, {RUNS} runs\n");
        println!("| page | samples | p50 | p99 | max | bytes |");
        println!("|---|---|---|---|---|---|");
        let n = if quick { 50 } else { 300 };
        let pages = [
            ("stacks list, first page (50 of 1,000)", "/stacks".to_string()),
            ("stacks list, page 15", "/stacks?page=15".to_string()),
            ("stacks list, text filter", "/stacks?q=stack-05".to_string()),
            ("stacks list, label and state filter", "/stacks?label=team-3&state=FAILED".to_string()),
            ("stack (10 runs, overview, environment)", "/stacks/stack-0500".to_string()),
            ("run (timeline, empty log)", format!("/runs/{run_id}")),
            ("audit trail", "/admin/audit".to_string()),
        ];
        for (name, path) in &pages {
            let (s, bytes) = session.measure(path, n).await;
            println!("| {name} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {bytes} |", s.n, s.p50, s.p99, s.max);
        }

        if let Some((chrome, driver)) = chromium() {
            browser_figures(&app, &mut session, &chrome, &driver, run_id, quick).await;
        } else {
            println!("\n(no chromium/chromedriver: browser figures skipped)");
        }
    });
}

/// A signed-in client with the console's session cookie.
struct Session {
    client: reqwest::Client,
    base: String,
    cookie: String,
    password: (String, String),
}

impl Session {
    async fn sign_in(app: &support::Appliance) -> Session {
        let signed_in = support::common::ConsoleSession::login(app).await;
        Session {
            client: signed_in.client,
            base: signed_in.origin,
            cookie: signed_in.cookie,
            password: (support::common::ADMIN_EMAIL.to_string(), support::common::ADMIN_PASSWORD.to_string()),
        }
    }

    /// `n` sequential GETs of `path` after a warm-up: latencies and the page's size.
    async fn measure(&mut self, path: &str, n: usize) -> (Summary, usize) {
        let url = format!("{}{path}", self.base);
        let mut bytes = 0;
        let mut all = Vec::with_capacity(n);
        for i in 0..n + 10 {
            let t = Instant::now();
            let r = self.client.get(&url).header("cookie", &self.cookie).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            bytes = r.bytes().await.unwrap().len();
            if i >= 10 {
                all.push(t.elapsed());
            }
        }
        (Summary::of(all), bytes)
    }
}

fn chromium() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let find = |names: &[&str]| names.iter().map(|n| Path::new("/usr/bin").join(n)).find(|p| p.exists());
    Some((find(&["chromium", "chromium-browser"])?, find(&["chromedriver"])?))
}

async fn browser_figures(app: &support::Appliance, s: &mut Session, chrome: &Path, driver: &Path, run_id: i64, quick: bool) {
    let port = free_port();
    let mut cmd = Command::new(driver);
    cmd.arg(format!("--port={port}")).stdin(Stdio::null());
    let _driver = ChildProcess::spawn(cmd, "chromedriver", app.dir.path());
    let profile = app.dir.path().join("chrome-profile");
    let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
        "browserName": "chrome",
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": chrome,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                     "--window-size=1280,900", format!("--user-data-dir={}", profile.display())],
        },
    }))
    .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let c: Client = wait_for("chromedriver", Duration::from_secs(60), || {
        let (caps, url) = (caps.clone(), url.clone());
        async move {
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new()).capabilities(caps).connect(&url).await.ok()
        }
    })
    .await;
    let base = s.base.clone();
    c.goto(&format!("{base}/login")).await.unwrap();
    c.find(Locator::Id("email")).await.unwrap().send_keys(&s.password.0).await.unwrap();
    c.find(Locator::Id("password")).await.unwrap().send_keys(&s.password.1).await.unwrap();
    c.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
    c.wait().for_element(Locator::Css("nav[aria-label=Main]")).await.unwrap();

    // A fresh cache for the first load; then a navigation with the assets cached.
    c.goto("about:blank").await.unwrap();
    let transferred = "const nav = performance.getEntriesByType('navigation')[0];
        const res = performance.getEntriesByType('resource');
        return { dcl: nav.domContentLoadedEventEnd - nav.startTime,
                 bytes: nav.transferSize + res.reduce((a, r) => a + r.transferSize, 0),
                 resources: res.length };";
    let mut dcl = Vec::new();
    let mut first_bytes = 0;
    for i in 0..if quick { 5 } else { 20 } {
        // Clear the HTTP cache so every sample is a first load.
        c.issue_cmd(ClearCache).await.unwrap();
        c.goto(&format!("{base}/stacks")).await.unwrap();
        let m = Client::execute(&c, transferred, vec![]).await.unwrap();
        dcl.push(Duration::from_secs_f64(m["dcl"].as_f64().unwrap_or(0.0) / 1000.0));
        if i == 0 {
            first_bytes = m["bytes"].as_u64().unwrap_or(0);
        }
    }
    c.goto(&format!("{base}/stacks/stack-0500")).await.unwrap();
    let later = Client::execute(&c, transferred, vec![]).await.unwrap();
    let d = Summary::of(dcl);
    println!("\n| in headless Chromium | figure |");
    println!("|---|---|");
    println!("| stacks page, first load to DOMContentLoaded (p50 / p99 of {}) | {:.1} ms / {:.1} ms |", d.n, d.p50, d.p99);
    println!("| bytes transferred, first load of the stacks page (page, CSS, JS, icon) | {:.1} KB |", first_bytes as f64 / 1000.0);
    println!("| bytes transferred, later navigation to a stack | {:.1} KB |", later["bytes"].as_u64().unwrap_or(0) as f64 / 1000.0);

    // Log append → visible: a run that is planning, its page open and following.
    let mut conn = app.pg.database().connect().await.unwrap();
    diesel::sql_query(format!("UPDATE runs SET state = 'PLANNING' WHERE id = {run_id}")).execute(&mut conn).await.unwrap();
    let config = std::fs::read_to_string(&app.config).unwrap();
    let cfg: toml::Value = toml::from_str(&config).unwrap();
    let db: hangar_db::DbConfig = cfg["database"].clone().try_into().unwrap();
    let objects: hangar_objects::ObjectsConfig = cfg["objects"].clone().try_into().unwrap();
    let pool = hangar_db::Database::from_config(&db, "bench").unwrap().pool(Some(2)).unwrap();
    let store = hangar_objects::ObjectStore::connect(&objects).await.unwrap();
    c.goto(&format!("{base}/runs/{run_id}")).await.unwrap();
    wait_for("the log to follow", Duration::from_secs(20), || async {
        let s = c.find(Locator::Css("[data-log-status]")).await.ok()?.text().await.ok()?;
        (s == "Live").then_some(())
    })
    .await;
    let wait_js = "const [mark, done] = arguments;
        const pre = document.querySelector('pre[data-phase=planning]');
        if (pre.textContent.includes(mark)) { done(true); return; }
        new MutationObserver((_, o) => { if (pre.textContent.includes(mark)) { o.disconnect(); done(true); } })
            .observe(pre, { childList: true, subtree: true, characterData: true });";
    let mut lat = Vec::new();
    for seq in 0..if quick { 20 } else { 100 } {
        let mark = format!("bench line {seq} {}", rand_token());
        let waiting = c.execute_async(wait_js, vec![json!(mark)]);
        let body = bytes::Bytes::from(format!("\u{1b}[1m{mark}\u{1b}[0m\n"));
        let t = Instant::now();
        let (seen, stored) = tokio::join!(waiting, hangar_server::logs::append(&pool, &store, run_id, Phase::Planning, seq, body));
        stored.unwrap();
        seen.unwrap();
        lat.push(t.elapsed());
    }
    let l = Summary::of(lat);
    println!("| log append → text visible in the page (p50 / p99 of {}) | {:.1} ms / {:.1} ms |", l.n, l.p50, l.p99);
    c.close().await.unwrap();
}

fn rand_token() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// chromedriver's Chrome DevTools bridge: clears the browser's HTTP cache.
#[derive(Debug)]
struct ClearCache;

impl fantoccini::wd::WebDriverCompatibleCommand for ClearCache {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/goog/cdp/execute", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"cmd":"Network.clearBrowserCache","params":{}}"#.to_string()))
    }
}
