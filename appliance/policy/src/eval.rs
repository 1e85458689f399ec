//! Evaluating a compiled policy against an input, under limits.
//!
//! Each evaluation runs on a thread of its own with regorus' cooperative
//! execution timer set, and the caller waits for it only until a deadline a
//! little past that limit: a policy the timer cannot interrupt (one builtin
//! call doing all the work) is abandoned, never waited for. Abandoned threads
//! keep their slot until they end, and there are few slots, so runaway
//! policies cannot pile up threads either; when every slot is taken the
//! evaluation fails as busy instead of waiting.
//!
//! Memory: on a thread ([`Isolation::Thread`]) it is bounded only by the
//! sizes of what goes in (the policy, the input). The appliance evaluates in
//! a child process instead ([`Isolation::Process`]), whose data segment is
//! capped: a policy that allocates without bound ends its own process with
//! "memory limit", never the server's or the drain's. (regorus' own memory
//! limits would need its allocator as the whole process's global allocator.)

use std::num::NonZeroU32;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use regorus::Value;
use serde::{Deserialize, Serialize};

use crate::compile::{Policy, PolicyKind};
use crate::input::{ApprovalInput, PlanInput, PushInput, TriggerInput};

/// The limits every evaluation runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time one evaluation may take, input parsing included.
    pub time: Duration,
    /// Largest input document (JSON bytes).
    pub max_input_bytes: usize,
    /// Evaluations running at once (abandoned ones included).
    pub concurrency: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { time: Duration::from_secs(2), max_input_bytes: 32 * 1024 * 1024, concurrency: 4 }
    }
}

/// What a policy decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// A plan policy with no `deny` and no `warn`.
    Pass,
    /// A plan policy with `warn` messages only.
    Warn,
    /// A plan policy with at least one `deny` message.
    Deny,
    /// An approval policy whose `approve` holds and `reject` does not.
    Approve,
    /// An approval policy whose `reject` holds.
    Reject,
    /// An approval policy with neither: not yet.
    Undecided,
    /// A trigger policy naming at least one stack (its `trigger` messages).
    Trigger,
    /// A push policy whose `track` holds (and `ignore` does not).
    Track,
    /// A push policy whose `propose` holds (and neither `ignore` nor `track`).
    Propose,
    /// A push policy whose `ignore` holds.
    Ignore,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Warn => "warn",
            Outcome::Deny => "deny",
            Outcome::Approve => "approve",
            Outcome::Reject => "reject",
            Outcome::Undecided => "undecided",
            Outcome::Trigger => "trigger",
            Outcome::Track => "track",
            Outcome::Propose => "propose",
            Outcome::Ignore => "ignore",
        }
    }
}

/// Which rule a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageLevel {
    Deny,
    Warn,
    /// A stack a trigger policy starts.
    Trigger,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub level: MessageLevel,
    pub text: String,
}

/// A finished evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub outcome: Outcome,
    /// `deny` messages first, then `warn`, each sorted.
    pub messages: Vec<Message>,
    pub duration: Duration,
}

/// Where evaluations run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Isolation {
    /// On a thread of the calling process.
    #[default]
    Thread,
    /// In a child process, `program args…`, that calls [`serve_child`], its
    /// data segment (heap and private mappings, `RLIMIT_DATA`) capped at
    /// `memory_bytes`.
    Process { program: std::path::PathBuf, args: Vec<String>, memory_bytes: u64 },
}

/// Why an evaluation gave no decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("the policy ran past its time limit of {} ms", .limit.as_millis())]
    TimeLimit { limit: Duration },
    #[error("the policy ran past its memory limit of {} MiB", .limit_bytes / (1024 * 1024))]
    MemoryLimit { limit_bytes: u64 },
    #[error("the input is {size} bytes, more than the {max} bytes a policy may be given")]
    InputTooLarge { size: usize, max: usize },
    #[error("the input is not a JSON document: {message}")]
    Input { message: String },
    #[error("{running} policy evaluations are already running: try again")]
    Busy { running: usize },
    #[error("the policy failed: {message}")]
    Rego { message: String },
    #[error("rule `{rule}` must be {expected}, not {got}")]
    RuleType { rule: &'static str, expected: &'static str, got: String },
    #[error("the policy's thread ended without an answer")]
    Lost,
}

/// Evaluates policies under [`Limits`]. Cheap to clone; clones share the slots.
#[derive(Debug, Clone)]
pub struct Evaluator {
    limits: Limits,
    isolation: Isolation,
    slots: Arc<Slots>,
}

#[derive(Debug)]
struct Slots {
    running: Mutex<usize>,
    freed: Condvar,
}

/// A taken slot, given back when the evaluation's thread ends.
pub(crate) struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut n = self.0.running.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        self.0.freed.notify_one();
    }
}

impl Default for Evaluator {
    fn default() -> Self {
        Evaluator::new(Limits::default())
    }
}

impl Evaluator {
    pub fn new(limits: Limits) -> Evaluator {
        Evaluator { limits, isolation: Isolation::Thread, slots: Arc::new(Slots { running: Mutex::new(0), freed: Condvar::new() }) }
    }

    /// The same limits, evaluating as `isolation` says.
    pub fn isolated(limits: Limits, isolation: Isolation) -> Evaluator {
        Evaluator { isolation, ..Evaluator::new(limits) }
    }

    pub fn isolation(&self) -> &Isolation {
        &self.isolation
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Evaluates a plan policy. Blocks for at most about the time limit.
    pub fn plan(&self, policy: &Policy, input: &PlanInput) -> Result<Evaluation, EvalError> {
        self.json(policy, &to_json(input)?)
    }

    /// Evaluates a trigger policy. Blocks for at most about the time limit.
    pub fn trigger(&self, policy: &Policy, input: &TriggerInput) -> Result<Evaluation, EvalError> {
        self.json(policy, &to_json(input)?)
    }

    /// Evaluates a push policy. Blocks for at most about the time limit.
    pub fn push(&self, policy: &Policy, input: &PushInput) -> Result<Evaluation, EvalError> {
        self.json(policy, &to_json(input)?)
    }

    /// Evaluates an approval policy. Blocks for at most about the time limit.
    pub fn approval(&self, policy: &Policy, input: &ApprovalInput) -> Result<Evaluation, EvalError> {
        self.json(policy, &to_json(input)?)
    }

    /// Evaluates `policy` against an input given as JSON (a recorded one, when
    /// replaying). Blocks for at most about the time limit.
    pub fn json(&self, policy: &Policy, input: &str) -> Result<Evaluation, EvalError> {
        if input.len() > self.limits.max_input_bytes {
            return Err(EvalError::InputTooLarge { size: input.len(), max: self.limits.max_input_bytes });
        }
        let started = Instant::now();
        let deadline = started + self.limits.time + grace(self.limits.time);
        let slot = self.take_slot(deadline)?;
        let decided = match &self.isolation {
            Isolation::Thread => on_thread(policy, input, self.limits.time, deadline, slot),
            Isolation::Process { program, args, memory_bytes } => {
                crate::child::evaluate_in_child(program, args, *memory_bytes, policy, input, self.limits.time, deadline, slot)
            }
        };
        decided.map(|(outcome, messages)| Evaluation { outcome, messages, duration: started.elapsed() })
    }

    fn take_slot(&self, deadline: Instant) -> Result<Slot, EvalError> {
        let max = self.limits.concurrency.max(1);
        let mut n = self.slots.running.lock().unwrap_or_else(|p| p.into_inner());
        while *n >= max {
            let wait = deadline.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                return Err(EvalError::Busy { running: *n });
            }
            n = self.slots.freed.wait_timeout(n, wait).unwrap_or_else(|p| p.into_inner()).0;
        }
        *n += 1;
        Ok(Slot(self.slots.clone()))
    }
}

pub(crate) type Decided = Result<(Outcome, Vec<Message>), EvalError>;

/// Evaluates on a thread of its own, waiting for it until `deadline`.
fn on_thread(policy: &Policy, input: &str, limit: Duration, deadline: Instant, slot: Slot) -> Decided {
    let (tx, rx) = mpsc::sync_channel(1);
    let mut engine = policy.engine();
    let (kind, package, input) = (policy.kind(), policy.package().to_string(), input.to_string());
    let spawned = std::thread::Builder::new().name("policy-eval".into()).spawn(move || {
        let _slot = slot;
        let r = evaluate(&mut engine, kind, &package, &input, limit);
        let _ = tx.send(r);
    });
    if let Err(e) = spawned {
        return Err(EvalError::Rego { message: format!("cannot start the evaluation's thread: {e}") });
    }
    let wait = deadline.saturating_duration_since(Instant::now());
    match rx.recv_timeout(wait) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(EvalError::TimeLimit { limit }),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(EvalError::Lost),
    }
}

/// How long past the time limit the caller waits for the timer to fire.
fn grace(limit: Duration) -> Duration {
    limit / 4 + Duration::from_millis(100)
}

fn to_json<T: Serialize>(input: &T) -> Result<String, EvalError> {
    serde_json::to_string(input).map_err(|e| EvalError::Input { message: e.to_string() })
}

/// Evaluates with regorus' execution timer set to `limit`.
pub(crate) fn evaluate(engine: &mut regorus::Engine, kind: PolicyKind, package: &str, input: &str, limit: Duration) -> Decided {
    engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
        limit,
        check_interval: NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN),
    });
    let value = Value::from_json_str(input).map_err(|e| EvalError::Input { message: e.to_string() })?;
    engine.set_input(value);
    match kind {
        PolicyKind::Plan => {
            let deny = strings(rule(engine, package, "deny", limit)?, "deny")?;
            let warn = strings(rule(engine, package, "warn", limit)?, "warn")?;
            let outcome = if !deny.is_empty() {
                Outcome::Deny
            } else if !warn.is_empty() {
                Outcome::Warn
            } else {
                Outcome::Pass
            };
            let messages = deny
                .into_iter()
                .map(|text| Message { level: MessageLevel::Deny, text })
                .chain(warn.into_iter().map(|text| Message { level: MessageLevel::Warn, text }))
                .collect();
            Ok((outcome, messages))
        }
        PolicyKind::Trigger => {
            let stacks = strings(rule(engine, package, "trigger", limit)?, "trigger")?;
            let outcome = if stacks.is_empty() { Outcome::Pass } else { Outcome::Trigger };
            Ok((outcome, stacks.into_iter().map(|text| Message { level: MessageLevel::Trigger, text }).collect()))
        }
        PolicyKind::Approval => {
            let reject = boolean(rule(engine, package, "reject", limit)?, "reject")?;
            let approve = boolean(rule(engine, package, "approve", limit)?, "approve")?;
            let outcome = if reject {
                Outcome::Reject
            } else if approve {
                Outcome::Approve
            } else {
                Outcome::Undecided
            };
            Ok((outcome, Vec::new()))
        }
        PolicyKind::Push => {
            // The most cautious rule that holds wins: ignoring over tracking
            // over proposing; none of them leaves the push to the default.
            let ignore = boolean(rule(engine, package, "ignore", limit)?, "ignore")?;
            let track = boolean(rule(engine, package, "track", limit)?, "track")?;
            let propose = boolean(rule(engine, package, "propose", limit)?, "propose")?;
            let outcome = match (ignore, track, propose) {
                (true, _, _) => Outcome::Ignore,
                (false, true, _) => Outcome::Track,
                (false, false, true) => Outcome::Propose,
                (false, false, false) => Outcome::Undecided,
            };
            Ok((outcome, Vec::new()))
        }
    }
}

/// The value of `package.name`, `Undefined` when the policy does not define it
/// or no body of it holds.
fn rule(engine: &mut regorus::Engine, package: &str, name: &str, limit: Duration) -> Result<Value, EvalError> {
    let results = engine.eval_query(format!("{package}.{name}"), false).map_err(|e| {
        let limited = e.chain().any(|c| {
            c.downcast_ref::<regorus::LimitError>().is_some_and(|l| matches!(l, regorus::LimitError::TimeLimitExceeded { .. }))
        });
        if limited || e.to_string().contains("time limit") {
            EvalError::TimeLimit { limit }
        } else {
            EvalError::Rego { message: e.to_string().lines().next().unwrap_or_default().trim().to_string() }
        }
    })?;
    Ok(results
        .result
        .into_iter()
        .next()
        .and_then(|r| r.expressions.into_iter().next())
        .map(|e| e.value)
        .unwrap_or(Value::Undefined))
}

/// A set (or array) of messages; other members are shown as JSON.
fn strings(v: Value, rule: &'static str) -> Result<Vec<String>, EvalError> {
    let items: Vec<Value> = match v {
        Value::Undefined => return Ok(Vec::new()),
        Value::Set(s) => s.iter().cloned().collect(),
        Value::Array(a) => a.iter().cloned().collect(),
        other => return Err(EvalError::RuleType { rule, expected: "a set of messages", got: describe(&other) }),
    };
    let mut out: Vec<String> = items
        .into_iter()
        .map(|m| match m {
            Value::String(s) => s.to_string(),
            other => other.to_json_str().unwrap_or_else(|_| describe(&other)),
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

fn boolean(v: Value, rule: &'static str) -> Result<bool, EvalError> {
    match v {
        Value::Undefined => Ok(false),
        Value::Bool(b) => Ok(b),
        other => Err(EvalError::RuleType { rule, expected: "a boolean", got: describe(&other) }),
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(_) => "a number".into(),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Set(_) => "a set".into(),
        Value::Object(_) => "an object".into(),
        Value::Undefined => "undefined".into(),
    }
}
