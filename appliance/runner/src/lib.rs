//! The one shape of Hangar's background loops — the drain's consumer, the
//! scheduler, and the worker host's run loop, heartbeats and broker link: do a
//! unit of work, say whether there is more (busy) or not (idle), and wait for
//! work when idle. Shutdown is only observed between units, so a unit is never
//! cut in half; a unit that overruns the exit deadline is abandoned (its work
//! must be safe to redo — leases and idempotent handlers make it so).
//!
//! The supervisor does not use it: each of its services has a task of its own
//! driven by child exits, readiness checks and operator commands
//! (`hangar_supervisor`'s `service` module), which is not a loop of units.

use std::fmt;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

/// What a unit of work found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// There may be more to do right away.
    Busy,
    /// Nothing to do: call `wait_for_work` next.
    Idle,
    /// The loop has finished for good.
    Done,
}

/// A background loop. `work` does one unit; `wait_for_work` returns when more
/// may be there (a notification, a timer). Both are cancelled between calls when
/// the runner is asked to stop; `wait_for_work` may also be dropped mid-way.
pub trait BackgroundWorker: Send + 'static {
    /// For logs.
    fn name(&self) -> String;

    /// One unit of work. Errors are logged and retried after a pause that
    /// grows with consecutive failures.
    fn work(&mut self) -> impl Future<Output = Result<Step, String>> + Send;

    /// Waits until there may be work.
    fn wait_for_work(&mut self) -> impl Future<Output = ()> + Send;

    /// Called once after the last unit (flushes, releases).
    fn finish(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// How a runner stops.
#[derive(Debug, Clone, Copy)]
pub struct RunnerOptions {
    /// How long the unit in progress may take after a stop was asked for.
    pub exit_deadline: Duration,
    /// Longest pause after repeated errors.
    pub max_error_backoff: Duration,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions { exit_deadline: Duration::from_secs(10), max_error_backoff: Duration::from_secs(5) }
    }
}

/// How a runner ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The worker said it was done.
    Done,
    /// Stopped at a unit boundary.
    Stopped,
    /// The unit in progress overran the exit deadline and was abandoned.
    Abandoned,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Exit::Done => "done",
            Exit::Stopped => "stopped",
            Exit::Abandoned => "abandoned at the exit deadline",
        })
    }
}

/// Drives `worker` until it is done or `stop` is cancelled.
pub async fn run<W: BackgroundWorker>(mut worker: W, stop: CancellationToken, opts: RunnerOptions) -> Exit {
    let span = info_span!("background", worker = %worker.name());
    async move {
        let mut failures: u32 = 0;
        let exit = loop {
            if stop.is_cancelled() {
                break Exit::Stopped;
            }
            // The unit runs to completion unless it overruns the deadline after a stop.
            let outcome = {
                let unit = worker.work();
                tokio::pin!(unit);
                tokio::select! {
                    r = &mut unit => Ok(r),
                    _ = stop.cancelled() => Err(match tokio::time::timeout(opts.exit_deadline, &mut unit).await {
                        Ok(_) => Exit::Stopped,
                        Err(_) => Exit::Abandoned,
                    }),
                }
            };
            let result = match outcome {
                Ok(r) => r,
                Err(exit) => break exit,
            };
            match result {
                Ok(Step::Busy) => failures = 0,
                Ok(Step::Done) => break Exit::Done,
                Ok(Step::Idle) => {
                    failures = 0;
                    tokio::select! {
                        _ = worker.wait_for_work() => {}
                        _ = stop.cancelled() => break Exit::Stopped,
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let pause = Duration::from_millis(100u64.saturating_mul(1 << failures.min(10)))
                        .min(opts.max_error_backoff);
                    warn!(error = %e, retry_in = ?pause, "unit of work failed");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stop.cancelled() => break Exit::Stopped,
                    }
                }
            }
        };
        worker.finish().await;
        info!(%exit, "background loop ended");
        exit
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct Counter {
        units: Arc<AtomicU32>,
        completed: Arc<AtomicU32>,
        unit_time: Duration,
        fail_first: u32,
    }

    impl BackgroundWorker for Counter {
        fn name(&self) -> String {
            "counter".into()
        }
        async fn work(&mut self) -> Result<Step, String> {
            let n = self.units.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(self.unit_time).await;
            self.completed.fetch_add(1, Ordering::SeqCst);
            if n <= self.fail_first {
                return Err("not yet".into());
            }
            Ok(if n.is_multiple_of(3) { Step::Idle } else { Step::Busy })
        }
        async fn wait_for_work(&mut self) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn stops_at_a_unit_boundary() {
        let units = Arc::new(AtomicU32::new(0));
        let completed = Arc::new(AtomicU32::new(0));
        let w = Counter { units: units.clone(), completed: completed.clone(), unit_time: Duration::from_millis(50), fail_first: 1 };
        let stop = CancellationToken::new();
        let h = tokio::spawn(run(w, stop.clone(), RunnerOptions::default()));
        tokio::time::sleep(Duration::from_millis(525)).await;
        stop.cancel();
        assert_eq!(h.await.unwrap(), Exit::Stopped);
        assert!(units.load(Ordering::SeqCst) >= 3, "the failed unit was retried");
        assert_eq!(units.load(Ordering::SeqCst), completed.load(Ordering::SeqCst), "no unit was cut short");
    }

    #[tokio::test]
    async fn a_unit_overrunning_the_deadline_is_abandoned() {
        let units = Arc::new(AtomicU32::new(0));
        let w = Counter { units, completed: Arc::default(), unit_time: Duration::from_secs(60), fail_first: 0 };
        let stop = CancellationToken::new();
        let opts = RunnerOptions { exit_deadline: Duration::from_millis(100), ..Default::default() };
        let h = tokio::spawn(run(w, stop.clone(), opts));
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.cancel();
        assert_eq!(h.await.unwrap(), Exit::Abandoned);
    }
}
