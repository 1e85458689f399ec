//! Compiling and evaluating real Rego: the decisions of each kind, errors with
//! line and column, hostile bodies, and the time limit holding against a
//! policy that would run for minutes.

use std::time::{Duration, Instant};

use hangar_policy::{
    ApprovalInput, CompileError, EvalError, Evaluator, Limits, MessageLevel, Outcome, PlanInput, PlanSummary, Policy,
    PolicyKind, PushEvent, PushInput, ReviewDecision, ReviewInput, RunInput, StackInput, TriggerInput,
};

const FORBID_SECRETS: &str = r#"
package hangar.plan

deny contains msg if {
    some rc in input.plan.resource_changes
    rc.type == "hangartest_file"
    startswith(rc.change.after.path, "/etc/")
    msg := sprintf("%s writes under /etc/", [rc.address])
}

warn contains msg if {
    some rc in input.plan.resource_changes
    "delete" in rc.change.actions
    msg := sprintf("%s is destroyed", [rc.address])
}
"#;

const TWO_APPROVALS: &str = r#"
package hangar.approval

approvers := {r.reviewer | some r in input.reviews; r.decision == "approve"; r.is_author != true}

approve if count(approvers) >= 2

reject if {
    some r in input.reviews
    r.decision == "reject"
}
"#;

fn run() -> RunInput {
    RunInput {
        id: 7,
        kind: "tracked".into(),
        state: "PLANNING".into(),
        commit_sha: "0123456789abcdef0123456789abcdef01234567".into(),
        branch: "main".into(),
        triggered_by: "alice@example.com".into(),
        author: Some("alice@example.com".into()),
    }
}

fn stack() -> StackInput {
    StackInput {
        id: 1,
        slug: "net".into(),
        name: "Network".into(),
        labels: vec!["production".into()],
        branch: "main".into(),
        repository: "infra/net".into(),
    }
}

fn plan_input(changes: serde_json::Value) -> PlanInput {
    PlanInput { plan: serde_json::json!({ "format_version": "0.2", "resource_changes": changes }), run: run(), stack: stack() }
}

fn file_change(address: &str, path: &str, actions: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "address": address,
        "type": "hangartest_file",
        "change": { "actions": actions, "after": { "path": path, "content": "x" } }
    })
}

fn review(who: &str, decision: ReviewDecision, is_author: bool) -> ReviewInput {
    ReviewInput {
        reviewer: who.into(),
        role: "writer".into(),
        decision,
        note: String::new(),
        is_author: Some(is_author),
        at: "2026-12-07T00:00:00Z".into(),
    }
}

fn approval_input(reviews: Vec<ReviewInput>) -> ApprovalInput {
    ApprovalInput {
        run: RunInput { state: "UNCONFIRMED".into(), ..run() },
        stack: stack(),
        plan: Some(PlanSummary { add: 1, change: 0, destroy: 0, outputs: 0 }),
        reviews,
    }
}

fn evaluator() -> Evaluator {
    Evaluator::new(Limits { time: Duration::from_millis(500), ..Limits::default() })
}

#[test]
fn a_plan_policy_denies_warns_and_passes() {
    let policy = Policy::compile(PolicyKind::Plan, FORBID_SECRETS).unwrap();
    assert_eq!(policy.package(), "data.hangar.plan");
    let ev = evaluator();

    let denied = ev
        .plan(&policy, &plan_input(serde_json::json!([
            file_change("hangartest_file.motd", "/etc/motd", &["create"]),
            file_change("hangartest_file.old", "/srv/old", &["delete"]),
        ])))
        .unwrap();
    assert_eq!(denied.outcome, Outcome::Deny);
    assert_eq!(denied.messages.len(), 2);
    assert_eq!(denied.messages[0].level, MessageLevel::Deny);
    assert_eq!(denied.messages[0].text, "hangartest_file.motd writes under /etc/");
    assert_eq!(denied.messages[1].level, MessageLevel::Warn);
    assert_eq!(denied.messages[1].text, "hangartest_file.old is destroyed");

    let warned = ev.plan(&policy, &plan_input(serde_json::json!([file_change("hangartest_file.old", "/srv/old", &["delete"])]))).unwrap();
    assert_eq!(warned.outcome, Outcome::Warn);

    let passed = ev.plan(&policy, &plan_input(serde_json::json!([file_change("hangartest_file.a", "/srv/a", &["create"])]))).unwrap();
    assert_eq!(passed.outcome, Outcome::Pass);
    assert!(passed.messages.is_empty());
}

#[test]
fn an_approval_policy_counts_reviewers_who_are_not_the_author() {
    let policy = Policy::compile(PolicyKind::Approval, TWO_APPROVALS).unwrap();
    let ev = evaluator();
    let decide = |reviews| ev.approval(&policy, &approval_input(reviews)).unwrap().outcome;
    assert_eq!(decide(vec![]), Outcome::Undecided);
    assert_eq!(decide(vec![review("alice@example.com", ReviewDecision::Approve, true), review("bob@example.com", ReviewDecision::Approve, false)]), Outcome::Undecided);
    assert_eq!(decide(vec![review("bob@example.com", ReviewDecision::Approve, false), review("carol@example.com", ReviewDecision::Approve, false)]), Outcome::Approve);
    assert_eq!(
        decide(vec![
            review("bob@example.com", ReviewDecision::Approve, false),
            review("carol@example.com", ReviewDecision::Approve, false),
            review("dave@example.com", ReviewDecision::Reject, false),
        ]),
        Outcome::Reject
    );
}

#[test]
fn a_syntax_error_is_refused_with_its_line_and_column() {
    let body = "package hangar.plan\n\ndeny contains msg if {\n    msg := \"x\" +\n}\n";
    match Policy::compile(PolicyKind::Plan, body).unwrap_err() {
        CompileError::Syntax { line, column, message } => {
            // Where the expression that never ends starts.
            assert_eq!((line, column), (4, 9), "{message}");
            assert_eq!(message, "expecting `}` while parsing set");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    // Rego v0 syntax (no `if`) is refused too, at the rule.
    let v0 = "package hangar.plan\n\ndeny[msg] {\n  msg := \"x\"\n}\n";
    let e = Policy::compile(PolicyKind::Plan, v0).unwrap_err();
    assert!(matches!(e, CompileError::Syntax { line: 3, .. }), "{e:?}: {e}");
    assert!(e.to_string().starts_with("line 3, column "), "{e}");
}

#[test]
fn hostile_or_empty_bodies_are_refused_clearly() {
    let huge = format!("package hangar.plan\n# {}\ndeny contains \"x\" if false\n", "x".repeat(200 * 1024));
    let e = Policy::compile(PolicyKind::Plan, &huge).unwrap_err();
    assert!(matches!(e, CompileError::TooLarge { max: 131072, .. }), "{e}");
    assert_eq!(Policy::compile(PolicyKind::Plan, "  \n").unwrap_err(), CompileError::Empty);
    let e = Policy::compile(PolicyKind::Approval, FORBID_SECRETS).unwrap_err();
    assert_eq!(e.to_string(), "a policy of kind approval must define approve or reject");
    let e = Policy::compile(PolicyKind::Plan, "package x[\"1.0\"]\ndeny contains \"m\" if true\n").unwrap_err();
    assert!(matches!(e, CompileError::Package { .. }), "{e:?}");
    assert_eq!("pushy".parse::<PolicyKind>().unwrap_err(), "unknown policy kind \"pushy\" (expected plan, approval, trigger or push)");
    assert_eq!("trigger".parse::<PolicyKind>(), Ok(PolicyKind::Trigger));
}

#[test]
fn a_rule_of_the_wrong_type_is_an_error_not_a_decision() {
    let policy = Policy::compile(PolicyKind::Approval, "package a\napprove := \"yes\"\n").unwrap();
    let e = evaluator().approval(&policy, &approval_input(vec![])).unwrap_err();
    assert_eq!(e, EvalError::RuleType { rule: "approve", expected: "a boolean", got: "a string".into() });
}

#[test]
fn a_slow_policy_stops_at_its_time_limit_and_the_next_one_runs() {
    // About 10^10 steps: minutes without a limit.
    let slow = r#"
package hangar.plan

deny contains msg if {
    n := count([x | some i in numbers.range(1, 100000); some j in numbers.range(1, 100000); x := i * j])
    msg := sprintf("%d", [n])
}
"#;
    let policy = Policy::compile(PolicyKind::Plan, slow).unwrap();
    let ev = evaluator();
    let started = Instant::now();
    let e = ev.plan(&policy, &plan_input(serde_json::json!([]))).unwrap_err();
    assert_eq!(e, EvalError::TimeLimit { limit: Duration::from_millis(500) });
    assert_eq!(e.to_string(), "the policy ran past its time limit of 500 ms");
    // The caller waited no longer than the limit and its grace, with room for a slow machine.
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let fine = Policy::compile(PolicyKind::Plan, FORBID_SECRETS).unwrap();
    assert_eq!(ev.plan(&fine, &plan_input(serde_json::json!([]))).unwrap().outcome, Outcome::Pass);
}

#[test]
fn inputs_over_the_limit_are_refused_before_evaluating() {
    let policy = Policy::compile(PolicyKind::Plan, FORBID_SECRETS).unwrap();
    let ev = Evaluator::new(Limits { max_input_bytes: 1024, ..Limits::default() });
    let big = plan_input(serde_json::json!([{ "padding": "x".repeat(2000) }]));
    assert!(matches!(ev.plan(&policy, &big).unwrap_err(), EvalError::InputTooLarge { max: 1024, .. }));
    assert!(matches!(ev.json(&policy, "{not json").unwrap_err(), EvalError::Input { .. }));
}

const TRIGGER_PRODUCTION: &str = r#"
package hangar.trigger

# After a finished apply, every stack labelled like this one starts.
trigger contains s.slug if {
    input.run.state == "FINISHED"
    some s in input.stacks
    s.slug != input.stack.slug
    some l in s.labels
    l in input.stack.labels
}
"#;

#[test]
fn a_trigger_policy_names_the_stacks_to_start() {
    let policy = Policy::compile(PolicyKind::Trigger, TRIGGER_PRODUCTION).unwrap();
    let ev = evaluator();
    let other = |slug: &str, label: &str| StackInput { id: 9, slug: slug.into(), labels: vec![label.into()], ..stack() };
    let input = |state: &str| TriggerInput {
        run: RunInput { state: state.into(), ..run() },
        stack: stack(),
        stacks: vec![stack(), other("app", "production"), other("db", "production"), other("lab", "staging")],
    };
    let fired = ev.trigger(&policy, &input("FINISHED")).unwrap();
    assert_eq!(fired.outcome, Outcome::Trigger);
    let named: Vec<(MessageLevel, &str)> = fired.messages.iter().map(|m| (m.level, m.text.as_str())).collect();
    assert_eq!(named, [(MessageLevel::Trigger, "app"), (MessageLevel::Trigger, "db")]);
    let quiet = ev.trigger(&policy, &input("FAILED")).unwrap();
    assert_eq!((quiet.outcome, quiet.messages.len()), (Outcome::Pass, 0));
    // A trigger policy must define `trigger`; a boolean there is a type error.
    assert!(Policy::compile(PolicyKind::Trigger, "package hangar.trigger\n\ndeny contains \"x\" if true\n").is_err());
    let wrong = Policy::compile(PolicyKind::Trigger, "package hangar.trigger\n\ntrigger := true\n").unwrap();
    assert!(matches!(ev.trigger(&wrong, &input("FINISHED")), Err(EvalError::RuleType { .. })));
}


/// Documentation-only pushes are ignored, pushes to `release/*` branches are
/// proposed, and a push to the tracked branch that only touches the shared
/// modules is tracked although it changes nothing under the project root.
const PUSHES: &str = r#"
package hangar.push

ignore if {
    count(input.push.paths) > 0
    input.push.paths_complete
    every p in input.push.paths { endswith(p, ".md") }
}

propose if startswith(input.push.branch, "release/")

track if {
    input.push.tracked_branch
    some p in input.push.paths
    startswith(p, "modules/")
}
"#;

#[test]
fn a_push_policy_tracks_proposes_ignores_or_leaves_the_push_alone() {
    let policy = Policy::compile(PolicyKind::Push, PUSHES).unwrap();
    let ev = evaluator();
    let push = |branch: &str, paths: &[&str]| PushInput {
        push: PushEvent {
            repository: "team/infra".into(),
            branch: branch.into(),
            tracked_branch: branch == "main",
            before: Some("a".repeat(40)),
            after: "b".repeat(40),
            pusher: Some("alice".into()),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            paths_complete: true,
            touches_project_root: Some(paths.iter().any(|p| p.starts_with("infra/"))),
        },
        stack: stack(),
        project_root: "infra".into(),
        default: "ignore".into(),
        default_reason: "the push changes nothing under infra".into(),
    };
    let decide = |input: &PushInput| ev.push(&policy, input).unwrap().outcome;
    assert_eq!(decide(&push("main", &["README.md", "docs/a.md"])), Outcome::Ignore);
    assert_eq!(decide(&push("release/1.2", &["infra/main.tf"])), Outcome::Propose);
    assert_eq!(decide(&push("main", &["modules/net/main.tf"])), Outcome::Track);
    assert_eq!(decide(&push("main", &["infra/main.tf"])), Outcome::Undecided);
    // Ignoring wins over everything else that holds.
    assert_eq!(decide(&push("release/1.2", &["CHANGES.md"])), Outcome::Ignore);
    // A push policy must define one of its rules, each a boolean.
    assert!(matches!(
        Policy::compile(PolicyKind::Push, "package hangar.push\n\ntrigger contains \"x\" if true\n"),
        Err(CompileError::NoRules { kind: PolicyKind::Push })
    ));
    let wrong = Policy::compile(PolicyKind::Push, "package hangar.push\n\ntrack := \"yes\"\n").unwrap();
    assert!(matches!(ev.push(&wrong, &push("main", &[])), Err(EvalError::RuleType { rule: "track", .. })));
}
