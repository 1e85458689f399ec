//! Everything a run sends to the appliance — state reports, log chunks, the
//! plan and its JSON, `errored.tfstate` — goes through one ordered outbox per run. Each item
//! is retried with back-off until the appliance takes it (a log chunk keeps its
//! sequence number, so a retry never duplicates), so the run goes on while the
//! appliance is unreachable: the lease, not a single request, decides.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hangar_types::RunState;
use hangar_types::worker::{Phase, PlanUpload, StateReport};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::api::{Api, ReportReply};

pub(crate) enum Item {
    Report(StateReport),
    Log {
        phase: Phase,
        seq: u64,
        data: Vec<u8>,
    },
    Plan {
        path: PathBuf,
        upload: PlanUpload,
    },
    /// `terraform show -json` of the plan.
    PlanJson(Vec<u8>),
    ErroredState(Vec<u8>),
}

/// Told when the appliance refuses a report: the run is in this state.
pub(crate) type OnRefused = Arc<dyn Fn(RunState) + Send + Sync>;

pub(crate) struct Outbox {
    tx: Option<mpsc::UnboundedSender<Item>>,
    task: tokio::task::JoinHandle<()>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Outbox {
    pub(crate) fn start(api: Api, run: i64, on_refused: OnRefused) -> Outbox {
        let (tx, mut rx) = mpsc::unbounded_channel::<Item>();
        let task = tokio::spawn(async move {
            while let Some(item) = rx.recv().await {
                deliver(&api, run, item, &on_refused).await;
            }
        });
        Outbox { tx: Some(tx), task }
    }

    pub(crate) fn push(&self, item: Item) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(item);
        }
    }

    /// Delivers everything queued, then ends.
    pub(crate) async fn close(mut self) {
        self.tx = None;
        let _ = (&mut self.task).await;
    }
}

async fn deliver(api: &Api, run: i64, item: Item, on_refused: &OnRefused) {
    let mut pause = Duration::from_millis(200);
    loop {
        let result = match &item {
            Item::Report(r) => match api.report(run, r).await {
                Ok(ReportReply::Accepted(_)) => Ok(()),
                // Already there (the claim may have moved it): nothing refused.
                Ok(ReportReply::Refused(s)) if s.state == r.to => Ok(()),
                Ok(ReportReply::Refused(s)) => {
                    warn!(run_id = run, to = %r.to, state = %s.state, "the appliance refused a state report");
                    on_refused(s.state);
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Item::Log { phase, seq, data } => api.log_chunk(run, *phase, *seq, data.clone()).await,
            Item::Plan { path, upload } => api.upload_plan(run, path, upload).await,
            Item::PlanJson(data) => api.plan_json(run, data.clone()).await,
            Item::ErroredState(data) => api.errored_state(run, data.clone()).await,
        };
        match result {
            Ok(()) => return,
            Err(e) if e.is_transient() => {
                debug!(run_id = run, error = %hangar_types::error_chain(&e), "retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                warn!(run_id = run, error = %hangar_types::error_chain(&e), "the appliance did not take an item of the run");
                return;
            }
        }
    }
}
