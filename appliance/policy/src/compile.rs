//! Compiling a policy: size, syntax (with line and column), package and the
//! rules its kind needs are checked when it is saved, never first when a run
//! needs it.

use std::fmt;
use std::str::FromStr;

use regorus::Engine;

/// Largest policy body accepted (bytes of Rego). Real policies are a few KiB.
pub const MAX_POLICY_BYTES: usize = 128 * 1024;

/// What a policy decides about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// Runs when a plan is ready: `deny` fails the run, `warn` is shown.
    Plan,
    /// Runs before a run awaiting confirmation may be confirmed: `approve`/`reject`.
    Approval,
    /// Runs when a tracked run ends: `trigger`, the slugs of the stacks whose
    /// tracked runs start.
    Trigger,
    /// Runs when a push reaches a stack's repository: `track`, `propose` or
    /// `ignore` decide what it starts instead of the branch and path rules.
    Push,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 4] = [PolicyKind::Plan, PolicyKind::Approval, PolicyKind::Trigger, PolicyKind::Push];

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Plan => "plan",
            PolicyKind::Approval => "approval",
            PolicyKind::Trigger => "trigger",
            PolicyKind::Push => "push",
        }
    }

    /// The rules a policy of this kind is read through; it must define one.
    pub fn rules(self) -> &'static [&'static str] {
        match self {
            PolicyKind::Plan => &["deny", "warn"],
            PolicyKind::Approval => &["approve", "reject"],
            PolicyKind::Trigger => &["trigger"],
            PolicyKind::Push => &["track", "propose", "ignore"],
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PolicyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PolicyKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown policy kind {:?} (expected plan, approval, trigger or push)", s.chars().take(40).collect::<String>()))
    }
}

/// Why a policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("the policy is {size} bytes, more than the {max} bytes allowed")]
    TooLarge { size: usize, max: usize },
    #[error("the policy is empty")]
    Empty,
    #[error("line {line}, column {column}: {message}")]
    Syntax { line: u32, column: u32, message: String },
    /// Regorus refused it without a position (rare: limits of its own).
    #[error("the policy does not compile: {message}")]
    Invalid { message: String },
    #[error("the package {package:?} is not a dotted name of identifiers (like `package hangar.plan`)")]
    Package { package: String },
    #[error("a policy of kind {kind} must define {}", .kind.rules().join(" or "))]
    NoRules { kind: PolicyKind },
}

/// A compiled, checked policy, ready to evaluate (cheap to clone).
#[derive(Clone)]
pub struct Policy {
    kind: PolicyKind,
    /// `data.hangar.plan`
    package: String,
    engine: Engine,
    /// The Rego text, for an evaluation in a process of its own.
    source: std::sync::Arc<str>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy").field("kind", &self.kind).field("package", &self.package).finish_non_exhaustive()
    }
}

/// The name a policy's source carries in regorus' messages.
const SOURCE: &str = "policy.rego";

impl Policy {
    /// Compiles `body` as a policy of `kind`: Rego v1 (OPA 1.0 syntax:
    /// `deny contains msg if { ... }`).
    pub fn compile(kind: PolicyKind, body: &str) -> Result<Policy, CompileError> {
        if body.len() > MAX_POLICY_BYTES {
            return Err(CompileError::TooLarge { size: body.len(), max: MAX_POLICY_BYTES });
        }
        if body.trim().is_empty() {
            return Err(CompileError::Empty);
        }
        let mut engine = Engine::new();
        // Undefined builtins' errors (a sprintf with a bad argument) are errors
        // of the evaluation, not silently undefined values.
        engine.set_strict_builtin_errors(true);
        let package =
            engine.add_policy(SOURCE.to_string(), body.to_string()).map_err(|e| syntax_error(&e.to_string()))?;
        let valid_package = package
            .strip_prefix("data.")
            .is_some_and(|p| p.split('.').all(is_identifier));
        if !valid_package {
            return Err(CompileError::Package { package: package.trim_start_matches("data.").to_string() });
        }
        let mut defines_one = false;
        for rule in kind.rules() {
            defines_one |= engine
                .has_declared_rule_rooted_at(SOURCE, rule)
                .map_err(|e| CompileError::Invalid { message: first_line(&e.to_string()) })?;
        }
        if !defines_one {
            return Err(CompileError::NoRules { kind });
        }
        Ok(Policy { kind, package, engine, source: body.into() })
    }

    pub fn kind(&self) -> PolicyKind {
        self.kind
    }

    /// `data.hangar.plan`
    pub fn package(&self) -> &str {
        &self.package
    }

    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    pub(crate) fn engine(&self) -> Engine {
        self.engine.clone()
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().trim().to_string()
}

/// Reads regorus' message (`--> policy.rego:3:7`, the source line with a
/// caret, then `error: ...`) into line, column and the message.
fn syntax_error(text: &str) -> CompileError {
    let position = text.lines().find_map(|line| {
        let rest = &line[line.find(SOURCE)? + SOURCE.len()..];
        let mut parts = rest.trim_start_matches(':').splitn(3, ':');
        let line_no = parts.next()?.trim().parse::<u32>().ok()?;
        let column = parts.next()?.trim().parse::<u32>().ok()?;
        Some((line_no, column))
    });
    let message = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("error:"))
        .map(|m| m.trim().to_string())
        .unwrap_or_else(|| first_line(text));
    match position {
        Some((line, column)) => CompileError::Syntax { line, column, message },
        None => CompileError::Invalid { message },
    }
}
