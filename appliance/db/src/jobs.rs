//! Every kind of job the drain handles, with its payload: one typed set shared
//! by whoever enqueues (the run store, the server's webhook route, the
//! scheduler, the drain itself, and the `runs_vcs_status` trigger of the
//! `vcs` migration) and by the drain that handles them. On the queue a job is
//! its kind (`jobs.kind`) and its payload as JSON (`jobs.payload`); nothing
//! else spells a kind or reads a payload by its keys.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::queue::NewJob;

/// The kinds of job, as `jobs.kind` spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// `run.schedule`: promote a stack's queued runs that may go.
    Schedule,
    /// `runs.reap`: fail runs whose worker lease expired.
    Reap,
    /// `retention.cleanup`: forget what is no longer needed.
    Retention,
    /// `drift.check`: find stacks whose drift schedule fired in a window.
    DriftCheck,
    /// `drift.trigger`: make one stack's drift run.
    DriftTrigger,
    /// `vcs.delivery`: a verified webhook delivery, to parse and act on.
    VcsDelivery,
    /// `vcs.status`: report a run's state to its git server.
    VcsStatus,
    /// `vcs.poll`: list the plain-git integrations' repositories to poll.
    VcsPoll,
    /// `vcs.poll_repo`: poll one repository.
    VcsPollRepo,
    /// `stack.dependents`: a tracked run ended; start (or hold) the runs of
    /// the stacks that depend on its stack.
    Dependents,
    /// `stack.trigger`: a trigger policy named a stack to start.
    TriggerStack,
}

impl JobKind {
    pub const ALL: [JobKind; 11] = [
        JobKind::Schedule,
        JobKind::Reap,
        JobKind::Retention,
        JobKind::DriftCheck,
        JobKind::DriftTrigger,
        JobKind::VcsDelivery,
        JobKind::VcsStatus,
        JobKind::VcsPoll,
        JobKind::VcsPollRepo,
        JobKind::Dependents,
        JobKind::TriggerStack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Schedule => "run.schedule",
            JobKind::Reap => "runs.reap",
            JobKind::Retention => "retention.cleanup",
            JobKind::DriftCheck => "drift.check",
            JobKind::DriftTrigger => "drift.trigger",
            JobKind::VcsDelivery => "vcs.delivery",
            JobKind::VcsStatus => "vcs.status",
            JobKind::VcsPoll => "vcs.poll",
            JobKind::VcsPollRepo => "vcs.poll_repo",
            JobKind::Dependents => "stack.dependents",
            JobKind::TriggerStack => "stack.trigger",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        JobKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Deliveries a failing job of this kind gets before it is dead.
    pub fn max_attempts(self) -> i32 {
        match self {
            // A git server that is down for a while still gets the status.
            JobKind::VcsStatus => 8,
            // The next poll lists the repository again anyway.
            JobKind::VcsPollRepo => 1,
            _ => 5,
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The payload of jobs whose kind says everything: `{}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoPayload {}

/// A stack, by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackRef {
    pub stack: i64,
}

/// A run, by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRef {
    pub run: i64,
}

/// How long dead jobs, deduplication keys and the like are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub days: i64,
}

/// The scheduler's window since its previous tick: `(from, to]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// One occurrence of a stack's drift schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftOccurrence {
    pub stack: i64,
    pub at: DateTime<Utc>,
}

/// A stack a trigger policy named after a run of another stack ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackTrigger {
    pub stack: i64,
    /// The run whose end was evaluated.
    pub run: i64,
    /// The policy that named the stack.
    pub policy: String,
}

/// A webhook delivery as the server verified it, body unparsed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    pub integration: i64,
    /// The vendor's delivery id.
    pub delivery: String,
    /// The vendor's event name (`push`, `pull_request`, …).
    pub event: String,
    /// The JSON body as received.
    pub body: String,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("integration", &self.integration)
            .field("delivery", &self.delivery)
            .field("event", &self.event)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// One repository of a plain-git integration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollRepo {
    pub integration: i64,
    pub repository: String,
}

/// A job, kind and payload together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    Schedule(StackRef),
    Reap(NoPayload),
    Retention(Retention),
    DriftCheck(Window),
    DriftTrigger(DriftOccurrence),
    VcsDelivery(Delivery),
    VcsStatus(RunRef),
    VcsPoll(NoPayload),
    VcsPollRepo(PollRepo),
    Dependents(RunRef),
    TriggerStack(StackTrigger),
}

/// Why a row of the queue is not a job of this set.
#[derive(Debug, thiserror::Error)]
pub enum JobParseError {
    #[error("unknown job kind {kind:?}")]
    UnknownKind { kind: String },
    #[error("payload of a {kind} job")]
    Payload {
        kind: JobKind,
        #[source]
        source: serde_json::Error,
    },
}

impl Job {
    pub fn kind(&self) -> JobKind {
        match self {
            Job::Schedule(_) => JobKind::Schedule,
            Job::Reap(_) => JobKind::Reap,
            Job::Retention(_) => JobKind::Retention,
            Job::DriftCheck(_) => JobKind::DriftCheck,
            Job::DriftTrigger(_) => JobKind::DriftTrigger,
            Job::VcsDelivery(_) => JobKind::VcsDelivery,
            Job::VcsStatus(_) => JobKind::VcsStatus,
            Job::VcsPoll(_) => JobKind::VcsPoll,
            Job::VcsPollRepo(_) => JobKind::VcsPollRepo,
            Job::Dependents(_) => JobKind::Dependents,
            Job::TriggerStack(_) => JobKind::TriggerStack,
        }
    }

    /// The payload as stored in `jobs.payload`.
    pub fn payload(&self) -> serde_json::Value {
        let v = match self {
            Job::Schedule(p) => serde_json::to_value(p),
            Job::Reap(p) | Job::VcsPoll(p) => serde_json::to_value(p),
            Job::Retention(p) => serde_json::to_value(p),
            Job::DriftCheck(p) => serde_json::to_value(p),
            Job::DriftTrigger(p) => serde_json::to_value(p),
            Job::VcsDelivery(p) => serde_json::to_value(p),
            Job::VcsStatus(p) | Job::Dependents(p) => serde_json::to_value(p),
            Job::VcsPollRepo(p) => serde_json::to_value(p),
            Job::TriggerStack(p) => serde_json::to_value(p),
        };
        // Structs of numbers, strings and times always serialize.
        v.unwrap_or_default()
    }

    /// The job a queue row holds.
    pub fn parse(kind: &str, payload: &serde_json::Value) -> Result<Job, JobParseError> {
        let kind = JobKind::parse(kind).ok_or_else(|| JobParseError::UnknownKind { kind: kind.chars().take(64).collect() })?;
        fn de<T: serde::de::DeserializeOwned>(kind: JobKind, v: &serde_json::Value) -> Result<T, JobParseError> {
            T::deserialize(v).map_err(|source| JobParseError::Payload { kind, source })
        }
        Ok(match kind {
            JobKind::Schedule => Job::Schedule(de(kind, payload)?),
            JobKind::Reap => Job::Reap(de(kind, payload)?),
            JobKind::Retention => Job::Retention(de(kind, payload)?),
            JobKind::DriftCheck => Job::DriftCheck(de(kind, payload)?),
            JobKind::DriftTrigger => Job::DriftTrigger(de(kind, payload)?),
            JobKind::VcsDelivery => Job::VcsDelivery(de(kind, payload)?),
            JobKind::VcsStatus => Job::VcsStatus(de(kind, payload)?),
            JobKind::VcsPoll => Job::VcsPoll(de(kind, payload)?),
            JobKind::VcsPollRepo => Job::VcsPollRepo(de(kind, payload)?),
            JobKind::Dependents => Job::Dependents(de(kind, payload)?),
            JobKind::TriggerStack => Job::TriggerStack(de(kind, payload)?),
        })
    }

    /// The job ready to enqueue on the default queue, with its kind's attempts.
    pub fn to_new(&self) -> NewJob {
        let kind = self.kind();
        NewJob::new(kind.as_str(), self.payload()).max_attempts(kind.max_attempts())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_job() -> Vec<Job> {
        let at = "2026-01-02T03:04:05Z".parse().unwrap();
        vec![
            Job::Schedule(StackRef { stack: 3 }),
            Job::Reap(NoPayload {}),
            Job::Retention(Retention { days: 30 }),
            Job::DriftCheck(Window { from: at, to: at }),
            Job::DriftTrigger(DriftOccurrence { stack: 3, at }),
            Job::VcsDelivery(Delivery { integration: 1, delivery: "d".into(), event: "push".into(), body: "{}".into() }),
            Job::VcsStatus(RunRef { run: 9 }),
            Job::VcsPoll(NoPayload {}),
            Job::VcsPollRepo(PollRepo { integration: 1, repository: "https://git.example/a.git".into() }),
            Job::Dependents(RunRef { run: 9 }),
            Job::TriggerStack(StackTrigger { stack: 3, run: 9, policy: "after-network".into() }),
        ]
    }

    #[test]
    fn every_kind_round_trips_through_the_queue_row() {
        let jobs = every_job();
        assert_eq!(jobs.iter().map(Job::kind).collect::<Vec<_>>(), JobKind::ALL.to_vec());
        for job in jobs {
            let new = job.to_new();
            assert_eq!(new.kind, job.kind().as_str());
            assert_eq!(Job::parse(&new.kind, &new.payload).unwrap(), job);
            assert_eq!(JobKind::parse(job.kind().as_str()), Some(job.kind()));
        }
    }

    #[test]
    fn payloads_are_the_documented_json() {
        assert_eq!(Job::Schedule(StackRef { stack: 3 }).payload(), serde_json::json!({ "stack": 3 }));
        assert_eq!(Job::VcsStatus(RunRef { run: 9 }).payload(), serde_json::json!({ "run": 9 }));
        assert_eq!(Job::Reap(NoPayload {}).payload(), serde_json::json!({}));
    }

    #[test]
    fn malformed_rows_name_what_is_wrong() {
        let e = Job::parse("no.such.kind", &serde_json::json!({})).unwrap_err();
        assert_eq!(e.to_string(), "unknown job kind \"no.such.kind\"");
        let e = Job::parse("run.schedule", &serde_json::json!({ "stack": "x" })).unwrap_err();
        assert!(matches!(e, JobParseError::Payload { kind: JobKind::Schedule, .. }), "{e:?}");
        let e = Job::parse("vcs.status", &serde_json::json!({ "run": 1, "extra": true })).unwrap_err();
        assert!(matches!(e, JobParseError::Payload { kind: JobKind::VcsStatus, .. }), "{e:?}");
        assert!(Job::parse("runs.reap", &serde_json::Value::Null).is_err());
    }
}
