//! Policies in Rego, evaluated in-process with `regorus` (no OPA service): a
//! policy is compiled and checked when it is saved ([`Policy::compile`],
//! errors with line and column), and evaluated under a time limit on a thread
//! of its own ([`Evaluator`]), so a runaway policy never holds the caller.
//!
//! Four kinds ([`PolicyKind`]):
//! - **plan** policies see a [`PlanInput`] (the plan as `terraform show -json`
//!   gives it, with the run and the stack) and define `deny` and/or `warn`,
//!   sets of messages: any `deny` fails the run, `warn` messages are shown;
//! - **approval** policies see an [`ApprovalInput`] (the run, its plan
//!   summary, the stack and the reviews so far) and define `approve` and/or
//!   `reject`, booleans: a run may be confirmed only when every attached
//!   approval policy approves and none rejects;
//! - **trigger** policies see a [`TriggerInput`] (a tracked run that ended,
//!   its stack and every stack) and define `trigger`, a set of stack slugs
//!   whose tracked runs start;
//! - **push** policies see a [`PushInput`] (a push to a stack's repository,
//!   with what would happen without them) and define `track`, `propose`
//!   and/or `ignore`, booleans: `ignore` wins over `track` over `propose`,
//!   and when none holds the push is treated as it would be without them.
//!
//! The inputs are defined once, here ([`input`]): the appliance builds them and
//! the README documents them from these types.

mod child;
mod compile;
mod eval;
pub mod input;

pub use compile::{CompileError, MAX_POLICY_BYTES, Policy, PolicyKind};
pub use child::serve_child;
pub use eval::{EvalError, Evaluation, Evaluator, Isolation, Limits, Message, MessageLevel, Outcome};
pub use input::{
    ApprovalInput, PlanInput, PlanSummary, PushEvent, PushInput, ReviewDecision, ReviewInput, RunInput, StackInput, TriggerInput,
};
