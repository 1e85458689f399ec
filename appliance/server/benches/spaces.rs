//! What spaces add to a GraphQL request: the release `hangar server` with
//! real PostgreSQL (fsync on), a tree of 1,010 spaces (10 divisions, 10 teams
//! in each, 9 sub-teams in each team), 1,000 users holding 10,000 grants,
//! and a stack in every space.
//!
//! - The read of a caller's access alone (the recursive query done once per
//!   request), for a user granted 10 team spaces (about 100 spaces reached)
//!   and for one granted the 10 divisions (every space reached).
//! - Whole requests, one client on a keep-alive connection: `me`, the list of
//!   stacks (filtered to what the caller sees) and one stack with its runs,
//!   as the root admin (no grant read) and as each confined user; the
//!   difference is what spaces add.
//!
//! `cargo bench -p hangar-server --bench spaces` (`-- --quick` for a short run).

mod support;

use std::time::Instant;

use diesel_async::RunQueryDsl;
use serde_json::{Value, json};
use support::{Options, Summary};

const PASSWORD: &str = "Seven-Lanterns-4-Rest!";

#[derive(diesel::QueryableByName)]
struct N {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

async fn count(db: &mut diesel_async::AsyncPgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql).get_result::<N>(db).await.unwrap().n
}

fn row(name: &str, f: &Summary) {
    println!("| {name} | {} | {:.2} ms | {:.2} ms | {:.2} ms |", f.n, f.p50, f.p99, f.max);
}

async fn timed(client: &reqwest::Client, url: &str, token: &str, query: &str, vars: Value, rounds: usize) -> Summary {
    let mut all = Vec::with_capacity(rounds);
    for i in 0..rounds + 20 {
        let t = Instant::now();
        let r = client.post(url).bearer_auth(token).json(&json!({ "query": query, "variables": vars })).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert!(body.get("errors").is_none(), "{body}");
        if i >= 20 {
            all.push(t.elapsed());
        }
    }
    Summary::of(all)
}

fn main() {
    support::main(async move {
        let support::Bench { app, admin, quick } = support::start(Options::default()).await;
        let started = Instant::now();
        let mut db = app.pg.database().connect().await.unwrap();
        // The tree, the users, the grants and the stacks, in SQL: creating
        // them one by one through the API would measure argon2, not spaces.
        for sql in [
            "INSERT INTO spaces (slug, name, parent_id) SELECT 'div-' || d, 'Division ' || d, 1 FROM generate_series(0, 9) d",
            "INSERT INTO spaces (slug, name, parent_id) SELECT 'team-' || d || '-' || t, 'Team ' || d || '-' || t, p.id \
             FROM generate_series(0, 9) d, generate_series(0, 9) t, spaces p WHERE p.slug = 'div-' || d",
            "INSERT INTO spaces (slug, name, parent_id) SELECT 'sub-' || d || '-' || t || '-' || k, 'Sub ' || k, p.id \
             FROM generate_series(0, 9) d, generate_series(0, 9) t, generate_series(0, 8) k, spaces p WHERE p.slug = 'team-' || d || '-' || t",
            "INSERT INTO users (email, password_hash, role) SELECT 'u' || n || '@bench.test', 'x', 'none' FROM generate_series(1, 997) n",
            // Ten grants per bench user on ten different spaces of the 1,010.
            "INSERT INTO space_grants (space_id, user_id, role, granted_by) \
             SELECT s.id, u.id, (ARRAY['reader','writer','admin'])[1 + (u.id + g) % 3], 'bench' \
             FROM users u, generate_series(0, 9) g, LATERAL (SELECT id FROM spaces WHERE id > 1 ORDER BY id OFFSET (u.id * 7 + g * 101) % 1010 LIMIT 1) s \
             WHERE u.email LIKE '%@bench.test'",
            "INSERT INTO stacks (slug, name, repository, branch, tool, tool_version, space_id) \
             SELECT 'st-' || s.slug, s.name, 'https://git.example/infra.git', 'main', 'terraform', '1.0.3', s.id FROM spaces s",
        ] {
            diesel::sql_query(sql).execute(&mut db).await.unwrap();
        }
        // The three measured callers: through the API, with real passwords.
        let create = "mutation($e: String!, $p: String!) { createUser(email: $e, role: NO_ACCESS, password: $p) { id } }";
        let grant = "mutation($s: String!, $u: String!) { grantSpaceRole(space: $s, user: $u, role: WRITER) { slug } }";
        for (email, spaces) in [
            ("teams@bench.example", (0..10).map(|d| format!("team-{d}-{d}")).collect::<Vec<_>>()),
            ("divisions@bench.example", (0..10).map(|d| format!("div-{d}")).collect()),
            ("one@bench.example", vec!["sub-3-4-5".to_string()]),
        ] {
            app.ok(&admin, create, json!({ "e": email, "p": PASSWORD })).await;
            for s in spaces {
                app.ok(&admin, grant, json!({ "s": s, "u": email })).await;
            }
        }
        let spaces = count(&mut db, "SELECT count(*) AS n FROM spaces").await;
        let grants = count(&mut db, "SELECT count(*) AS n FROM space_grants").await;
        let stacks = count(&mut db, "SELECT count(*) AS n FROM stacks").await;
        let users = count(&mut db, "SELECT count(*) AS n FROM users").await;
        println!("seeded {spaces} spaces, {users} users, {grants} grants, {stacks} stacks in {:.1} s\n", started.elapsed().as_secs_f64());
        diesel::sql_query("ANALYZE").execute(&mut db).await.unwrap();

        let rounds = if quick { 100 } else { 1000 };
        println!("| access read alone (one query per request) | reads | p50 | p99 | max |");
        println!("|---|---|---|---|---|");
        for (label, email) in [
            ("10 team grants (~100 spaces reached)", "teams@bench.example"),
            ("10 division grants (all 1,010 spaces reached)", "divisions@bench.example"),
            ("1 grant on a leaf space", "one@bench.example"),
        ] {
            let user = hangar_store::users::user_by_email(&mut db, email).await.unwrap().unwrap();
            let mut all = Vec::with_capacity(rounds);
            let mut reached = 0;
            for _ in 0..rounds {
                let t = Instant::now();
                let a = hangar_store::spaces::user_access(&mut db, user.id, user.role()).await.unwrap();
                all.push(t.elapsed());
                reached = a.seen_spaces().len();
            }
            row(&format!("{label}: {reached} spaces seen"), &Summary::of(all));
        }

        let url = app.url("/graphql");
        let client = support::client(&app);
        let mut tokens = vec![("root admin (no grants read)", admin.clone())];
        for (label, email) in [("10 team grants", "teams@bench.example"), ("10 division grants", "divisions@bench.example")] {
            tokens.push((label, app.login(email, PASSWORD).await));
        }
        let queries: [(&str, &str, Value); 3] = [
            ("`me`", "{ me { email } }", json!({})),
            ("`stacks` (1,010 stacks, filtered)", "{ stacks { slug } }", json!({})),
            ("`stack` with its runs", "query($s: String!) { stack(slug: $s) { slug runs { items { id } } } }", json!({ "s": "st-team-0-0" })),
        ];
        println!("\n| request | caller | requests | p50 | p99 | max |");
        println!("|---|---|---|---|---|---|");
        let mut added = Vec::new();
        for (qname, query, vars) in &queries {
            let mut base: Option<Summary> = None;
            for (who, token) in &tokens {
                let f = timed(&client, &url, token, query, vars.clone(), rounds).await;
                println!("| {qname} | {who} | {} | {:.2} ms | {:.2} ms | {:.2} ms |", f.n, f.p50, f.p99, f.max);
                match &base {
                    None => base = Some(f),
                    Some(b) => added.push(format!("{qname}, {who}: p50 {:+.2} ms, p99 {:+.2} ms", f.p50 - b.p50, f.p99 - b.p99)),
                }
            }
        }
        println!("\nadded over the root admin's request:");
        for a in added {
            println!("- {a}");
        }
    });
}
