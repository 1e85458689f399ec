//! Module registry benchmark: how long Terraform's download of a module
//! takes on the appliance, against the release `hangar server` binary with
//! real PostgreSQL (fsync on), Garage behind TLS and a git server. Two
//! modules are published from a tag: a small one (a few files, as most
//! modules are) and one with 1 MiB of incompressible content.
//!
//! - The protocol, as Terraform 1.0.3 walks it: `GET …/versions`, `GET
//!   …/{version}/download` (204 and a signed link), `GET` of the link (the
//!   archive, checked against its SHA-256); each step and the whole, one
//!   client on a keep-alive connection, then 8 clients at once.
//! - Stock `terraform init` resolving `~> 1.0` of the small module from the
//!   appliance (service discovery, versions, download, unpack), as a worker
//!   does it, with an API key in its CLI configuration.
//!
//! `cargo bench -p hangar-server --bench registry` (`-- --quick` for a short run).

mod support;

use std::time::{Duration, Instant};

use hangar_testkit::{GitServer, TestDir};
use serde_json::{Value, json};
use support::{Options, Summary};

const PUBLISH: &str = "mutation($n: String!, $r: String!) { \
    publishModule(namespace: \"bench\", name: $n, system: \"any\", repository: $r, tag: \"v1.0.0\") { sha256 size } }";
const SMALL_MODULE: &[(&str, &str)] = &[
    ("main.tf", "variable \"name\" {\n  type    = string\n  default = \"bench\"\n}\n\nlocals {\n  tags = { name = var.name, owner = \"platform\" }\n}\n"),
    ("outputs.tf", "output \"tags\" {\n  value = local.tags\n}\n"),
    ("README.md", "# bench module\n\nA module of a few files, as most are.\n"),
];

/// The three requests of one download; their latencies.
async fn download(client: &reqwest::Client, base: &str, key: &str, name: &str) -> [Duration; 3] {
    let t = Instant::now();
    let r = client.get(format!("{base}/v1/modules/bench/{name}/any/versions")).bearer_auth(key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["modules"][0]["versions"][0]["version"], "1.0.0");
    let versions = t.elapsed();
    let t = Instant::now();
    let r = client.get(format!("{base}/v1/modules/bench/{name}/any/1.0.0/download")).bearer_auth(key).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let link = r.headers()["x-terraform-get"].to_str().unwrap().to_string();
    let located = t.elapsed();
    let t = Instant::now();
    let r = client.get(format!("{base}{link}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    assert!(!bytes.is_empty());
    [versions, located, t.elapsed()]
}

fn row(name: &str, all: Vec<Duration>) {
    let f = Summary::of(all);
    println!("| {name} | {} | {:.1} ms | {:.1} ms | {:.1} ms |", f.n, f.p50, f.p99, f.max);
}

fn main() {
    support::main(async move {
        let support::Bench { app, admin, quick } =
            support::start(Options { public_host: "127.0.0.1", ..Options::default() }).await;
        let key = app.ok(&admin, "mutation { createApiKey(name: \"bench\") { key } }", json!({})).await["createApiKey"]["key"]
            .as_str()
            .unwrap()
            .to_string();
        let git = GitServer::start().await;
        let big = support::common::incompressible(1024 * 1024);
        for (name, files) in [("small", SMALL_MODULE.to_vec()), ("large", vec![("blob.txt", big.as_str()), ("main.tf", "")])] {
            git.create_repo(name);
            git.push_files(name, "main", &files, "module");
            let dir = TestDir::new("bench-tag");
            let wc = git.working_copy(name, dir.path());
            wc.git(&["tag", "v1.0.0"]);
            wc.git(&["push", "--quiet", "origin", "v1.0.0"]);
            let p = app.ok(&admin, PUBLISH, json!({ "n": name, "r": git.url(name) })).await;
            println!("module {name}: archive {} bytes", p["publishModule"]["size"]);
        }
        println!();

        let base = format!("https://127.0.0.1:{}", app.addr.port());
        let rounds = if quick { 50 } else { 300 };
        println!("| request (one client, keep-alive) | requests | p50 | p99 | max |");
        println!("|---|---|---|---|---|");
        for name in ["small", "large"] {
            let client = support::client(&app);
            let mut steps: [Vec<Duration>; 3] = Default::default();
            let mut whole = Vec::new();
            for i in 0..rounds + 5 {
                let d = download(&client, &base, &key, name).await;
                if i >= 5 {
                    for (s, v) in steps.iter_mut().zip(d) {
                        s.push(v);
                    }
                    whole.push(d.iter().sum());
                }
            }
            let [versions, located, archive] = steps;
            row(&format!("{name}: versions"), versions);
            row(&format!("{name}: download (204, signed link)"), located);
            row(&format!("{name}: archive"), archive);
            row(&format!("**{name}: the three, one module download**"), whole);
        }

        println!("\n| concurrent downloads (small module) | clients | downloads | downloads/s | p50 | p99 |");
        println!("|---|---|---|---|---|---|");
        let clients = 8;
        let per = if quick { 25 } else { 100 };
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (client, base, key) = (support::client(&app), base.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for _ in 0..per {
                    lat.push(download(&client, &base, &key, "small").await.iter().sum::<Duration>());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let elapsed = started.elapsed().as_secs_f64();
        let f = Summary::of(all);
        println!("| versions + download + archive | {clients} | {} | {:.0} | {:.1} ms | {:.1} ms |", f.n, f.n as f64 / elapsed, f.p50, f.p99);

        // Stock Terraform resolving the module from the appliance, as on a worker.
        let dir = TestDir::new("bench-terraform");
        let cli = dir.path().join("cli.tfrc");
        std::fs::write(
            &cli,
            format!("disable_checkpoint = true\ncredentials \"127.0.0.1:{}\" {{\n  token = \"{key}\"\n}}\n", app.addr.port()),
        )
        .unwrap();
        let work = dir.path().join("root");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::write(
            work.join("main.tf"),
            format!(
                "module \"m\" {{\n  source  = \"127.0.0.1:{}/bench/small/any\"\n  version = \"~> 1.0\"\n}}\n\noutput \"tags\" {{\n  value = module.m.tags\n}}\n",
                app.addr.port()
            ),
        )
        .unwrap();
        let inits = if quick { 5 } else { 20 };
        let mut lat = Vec::new();
        for i in 0..inits + 1 {
            let _ = std::fs::remove_dir_all(work.join(".terraform"));
            let t = Instant::now();
            let out = std::process::Command::new(hangar_testkit::terraform::terraform())
                .args(["init", "-input=false", "-no-color", "-backend=false"])
                .current_dir(&work)
                .env("TF_CLI_CONFIG_FILE", &cli)
                .env("SSL_CERT_FILE", app.ca_path())
                .env("CHECKPOINT_DISABLE", "1")
                .output()
                .unwrap();
            assert!(out.status.success(), "terraform init: {}", String::from_utf8_lossy(&out.stderr));
            assert!(String::from_utf8_lossy(&out.stdout).contains("/bench/small/any 1.0.0 for m"));
            if i > 0 {
                lat.push(t.elapsed());
            }
        }
        println!("\n| stock Terraform 1.0.3 | runs | p50 | p99 | max |");
        println!("|---|---|---|---|---|");
        row("`terraform init` resolving `~> 1.0` of the small module (no providers)", lat);
    });
}
