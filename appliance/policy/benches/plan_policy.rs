//! How long a plan policy takes over a 5,000-resource plan, and what memory
//! it needs: `cargo bench -p hangar-policy --bench plan_policy`.
//!
//! The plan is shaped as `terraform show -json` prints it (resource changes
//! with `before`/`after` values and actions), a third of it files the policy
//! looks at closely. Each evaluation is timed as the appliance runs it: a
//! fresh thread under the time limit, the input parsed from JSON, `deny` and
//! `warn` read. Memory is the process's peak resident size (VmHWM) over the
//! evaluations, beside its size before them.
//!
//! The appliance evaluates in a child process with a memory limit
//! (`Isolation::Process`); the benchmark measures both that and a thread of
//! its own process. It serves as its own child (`plan_policy policy-eval`),
//! and the child's peak is the largest resident size of a reaped child.

use std::time::{Duration, Instant};

use hangar_policy::{Evaluator, Isolation, Limits, Outcome, PlanInput, Policy, PolicyKind, RunInput, StackInput};

const POLICY: &str = r#"package hangar.bench

deny contains msg if {
    some rc in input.plan.resource_changes
    rc.type == "hangartest_file"
    rc.change.after.mode == "0777"
    msg := sprintf("%s would be world-writable", [rc.address])
}

deny contains msg if {
    some rc in input.plan.resource_changes
    "delete" in rc.change.actions
    startswith(rc.address, "hangartest_directory.protected")
    msg := sprintf("%s is protected", [rc.address])
}

warn contains msg if {
    count([rc | some rc in input.plan.resource_changes; "create" in rc.change.actions]) > 1000
    msg := "more than 1,000 resources created at once"
}
"#;

fn plan(resources: usize) -> serde_json::Value {
    let changes: Vec<serde_json::Value> = (0..resources)
        .map(|i| {
            let (ty, mode) = match i % 3 {
                0 => ("hangartest_file", if i == 4_998 { "0777" } else { "0644" }),
                1 => ("hangartest_directory", "0755"),
                _ => ("hangartest_file", "0600"),
            };
            serde_json::json!({
                "address": format!("{ty}.r{i}"),
                "mode": "managed",
                "type": ty,
                "name": format!("r{i}"),
                "provider_name": "hangar.test/hangar/hangartest",
                "change": {
                    "actions": ["create"],
                    "before": null,
                    "after": { "path": format!("/srv/data/{i}/file.txt"), "content": format!("content of resource {i}\n"), "mode": mode },
                    "after_unknown": { "id": true },
                    "before_sensitive": false,
                    "after_sensitive": {}
                }
            })
        })
        .collect();
    serde_json::json!({
        "format_version": "0.2",
        "terraform_version": "1.0.3",
        "variables": { "greeting": { "value": "hello" } },
        "resource_changes": changes,
    })
}

fn vm_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() -> std::process::ExitCode {
    if std::env::args().nth(1).as_deref() == Some("policy-eval") {
        return hangar_policy::serve_child();
    }
    let runs: usize = std::env::args().skip_while(|a| a != "--runs").nth(1).and_then(|n| n.parse().ok()).unwrap_or(50);
    let input = PlanInput {
        plan: plan(5_000),
        run: RunInput {
            id: 1,
            kind: "tracked".into(),
            state: "PLANNING".into(),
            commit_sha: "0".repeat(40),
            branch: "main".into(),
            triggered_by: "alice@example.com".into(),
            author: Some("alice@example.com".into()),
        },
        stack: StackInput {
            id: 1,
            slug: "bench".into(),
            name: "Bench".into(),
            labels: vec![],
            branch: "main".into(),
            repository: "https://git.example/bench.git".into(),
        },
    };
    let json = serde_json::to_string(&input).expect("encode");
    let policy = Policy::compile(PolicyKind::Plan, POLICY).expect("compile");
    let limits = Limits { time: Duration::from_secs(30), ..Limits::default() };
    println!("plan policy over 5,000 resources ({} KiB of input JSON), {runs} evaluations each", json.len() / 1024);
    let rss_before = vm_kib("VmRSS:");
    let hwm_before = vm_kib("VmHWM:");
    let times = measure(&Evaluator::new(limits), &policy, &json, runs);
    let hwm_after = vm_kib("VmHWM:");
    report("on a thread", &times);
    println!("    resident before: {} MiB (peak so far {} MiB); peak while evaluating: {} MiB (+{} MiB)",
        rss_before / 1024, hwm_before / 1024, hwm_after / 1024, hwm_after.saturating_sub(rss_before) / 1024);
    let program = std::env::current_exe().expect("the benchmark's own path");
    let isolation = Isolation::Process { program, args: vec!["policy-eval".into()], memory_bytes: 512 * 1024 * 1024 };
    let rss_before = vm_kib("VmRSS:");
    let times = measure(&Evaluator::isolated(limits, isolation), &policy, &json, runs);
    report("in a child process (the appliance's way), 512 MiB limit", &times);
    let child_peak = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).map(|u| u.max_rss()).unwrap_or(0);
    println!("    child's peak resident: {} MiB; this process's resident after: {} MiB (before: {} MiB)",
        child_peak / 1024, vm_kib("VmRSS:") / 1024, rss_before / 1024);
    std::process::ExitCode::SUCCESS
}

fn measure(evaluator: &Evaluator, policy: &Policy, json: &str, runs: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let ev = evaluator.json(policy, json).expect("evaluate");
        times.push(started.elapsed());
        assert_eq!(ev.outcome, Outcome::Deny);
        assert_eq!(ev.messages.len(), 2, "{:?}", ev.messages);
    }
    times.sort();
    times
}

fn report(how: &str, times: &[Duration]) {
    println!("  {how}: p50 {:.1} ms, p99 {:.1} ms, min {:.1} ms, max {:.1} ms",
        percentile(times, 0.5).as_secs_f64() * 1e3,
        percentile(times, 0.99).as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3);
}
