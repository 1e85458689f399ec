//! `hangar-worker run`: the worker's life. A broker connection brings
//! notifications, a heartbeat loop renews the held run's lease (and catches up
//! with a run's state when a notification was lost), and the run loop — the
//! one background-loop shape — claims a READY run when told or on a periodic
//! poll, and executes it with the engine, one run at a time.
//!
//! With `transport = "http"` there is no broker connection: the run loop
//! holds a long-poll claim open on the server, which answers it with a run
//! as soon as one is READY. The long poll is the idle worker's heartbeat;
//! while a run is held, heartbeats renew its lease as over MQTT, and bring
//! confirmations and cancellations with the run's state.

mod mqtt;
mod outbox;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_runner::{BackgroundWorker, RunnerOptions, Step};
use hangar_types::RunState;
use hangar_types::worker::{
    Heartbeat, MAX_CLAIM_WAIT_SECS, Notification, Phase, PlanUpload, StateReport, ToolSpec,
    Transport, WorkerStatus,
};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use mqtt::{BrokerEvent, options as mqtt_options, probe as probe_broker, topic_filter};

use crate::api::Api;
use crate::config::WorkerConfig;
use crate::engine::{
    self, Decision, EngineOptions, HookError, Refused, RunHooks, RunSpec, StopHandle, StopSignal,
};
use crate::identity::Identity;
use outbox::{Item, Outbox};

/// How long a stopping worker keeps trying to deliver a run's last reports.
const SHUTDOWN_DELIVERY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot prepare {path}")]
    Dir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the broker address is unusable: {reason}")]
    Broker { reason: String },
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
}

/// The run this worker holds.
struct Held {
    run_id: i64,
    stop: StopHandle,
    /// The run's state as the appliance last said it.
    state: watch::Sender<Option<RunState>>,
}

struct Shared {
    cfg: WorkerConfig,
    api: Api,
    held: Mutex<Option<Arc<Held>>>,
    drained: AtomicBool,
    /// Something may be claimable.
    wake: Notify,
    /// The worker was asked to stop.
    stopping: CancellationToken,
}

impl Shared {
    fn held(&self) -> Option<Arc<Held>> {
        self.held.lock().expect("held lock").clone()
    }

    /// The appliance says the held run is in `state`.
    fn run_state(&self, run: i64, state: RunState) {
        let Some(h) = self.held().filter(|h| h.run_id == run) else {
            return;
        };
        h.state.send_replace(Some(state));
        if state.is_terminal() {
            // The engine refuses to stop an apply; anything else ends here.
            h.stop.stop(format!("the run is {state} on the appliance"));
        }
    }
}

/// Runs the worker until `stop` is cancelled. On a stop, a run that is
/// applying is finished first; any other run is stopped and reported.
pub async fn run(
    cfg: WorkerConfig,
    identity: Identity,
    stop: CancellationToken,
) -> Result<(), AgentError> {
    for d in [&cfg.work_dir, &cfg.cache_dir] {
        std::fs::create_dir_all(d).map_err(|source| AgentError::Dir {
            path: d.clone(),
            source,
        })?;
    }
    let api = Api::new(&cfg.server_url, &identity)?;
    let mqtt_opts = match cfg.transport {
        Transport::Mqtt => {
            Some(mqtt::options(&cfg, &identity).map_err(|reason| AgentError::Broker { reason })?)
        }
        Transport::Http => None,
    };
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        api,
        held: Mutex::new(None),
        drained: AtomicBool::new(false),
        wake: Notify::new(),
        stopping: stop.clone(),
    });
    info!(worker = cfg.worker_id, pool = %cfg.pool_name, server = %cfg.server_url, transport = cfg.transport.as_str(), "worker starting");

    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let background = CancellationToken::new();
    // No broker link at all on the HTTP transport.
    let broker = mqtt_opts.map(|opts| {
        tokio::spawn(hangar_runner::run(
            mqtt::BrokerLink::new(opts, cfg.worker_id, events_tx),
            background.clone(),
            mqtt::BrokerLink::runner_options(),
        ))
    });
    let notifications = {
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Some(ev) = events_rx.recv().await {
                match ev {
                    BrokerEvent::Connected => shared.wake.notify_one(),
                    BrokerEvent::Notification(Notification::WorkAvailable { .. }) => {
                        shared.wake.notify_one()
                    }
                    BrokerEvent::Notification(Notification::RunConfirmed { run }) => {
                        shared.run_state(run, RunState::Confirmed)
                    }
                    BrokerEvent::Notification(Notification::RunCanceled { run }) => {
                        if let Some(h) = shared.held().filter(|h| h.run_id == run) {
                            h.stop.stop("canceled on the appliance");
                        }
                    }
                }
            }
        })
    };
    let heartbeat = tokio::spawn(hangar_runner::run(
        Heartbeats {
            shared: shared.clone(),
        },
        background.clone(),
        RunnerOptions {
            exit_deadline: Duration::from_secs(1),
            max_error_backoff: cfg.timing.heartbeat(),
        },
    ));
    // A stop reaches the run in progress at once; the run loop itself only
    // stops between runs.
    let forward = {
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            if let Some(h) = shared.held() {
                h.stop.stop("the worker is shutting down");
            }
        })
    };

    let runner = RunLoop {
        shared: shared.clone(),
    };
    // The run in progress ends itself on a stop (an apply runs to its end), so
    // the deadline only bounds a hang.
    let opts = RunnerOptions {
        exit_deadline: Duration::from_secs(24 * 3600),
        max_error_backoff: Duration::from_secs(30),
    };
    let exit = hangar_runner::run(runner, stop.clone(), opts).await;
    info!(%exit, "run loop ended");
    // One last heartbeat says the worker is going.
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        shared.api.heartbeat(&Heartbeat {
            status: WorkerStatus::Offline,
            run: None,
        }),
    )
    .await;
    background.cancel();
    forward.abort();
    if let Some(broker) = broker {
        let _ = broker.await;
    }
    let _ = heartbeat.await;
    notifications.abort();
    Ok(())
}

/// Heartbeats as a background loop: one per interval, whatever the last one
/// met (a failure is logged; the next one is on time).
struct Heartbeats {
    shared: Arc<Shared>,
}

impl BackgroundWorker for Heartbeats {
    fn name(&self) -> String {
        "heartbeat".into()
    }

    async fn work(&mut self) -> Result<Step, String> {
        let shared = &self.shared;
        let held = shared.held();
        // On the HTTP transport an idle worker's long poll is its heartbeat.
        if shared.cfg.transport == Transport::Http && held.is_none() {
            return Ok(Step::Idle);
        }
        let status = if shared.drained.load(Ordering::Relaxed) {
            WorkerStatus::Drained
        } else if held.is_some() {
            WorkerStatus::Busy
        } else {
            WorkerStatus::Idle
        };
        let hb = Heartbeat {
            status,
            run: held.as_ref().map(|h| h.run_id),
        };
        match shared.api.heartbeat(&hb).await {
            Ok(reply) => {
                let was = shared.drained.swap(reply.drain, Ordering::Relaxed);
                if was && !reply.drain {
                    shared.wake.notify_one();
                }
                if let (Some(h), Some(state)) = (held, reply.run_state) {
                    shared.run_state(h.run_id, state);
                }
            }
            Err(e) => warn!(error = %hangar_types::error_chain(&e), "heartbeat failed"),
        }
        Ok(Step::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.shared.cfg.timing.heartbeat()).await;
    }
}

/// The run loop: claim, execute, repeat.
struct RunLoop {
    shared: Arc<Shared>,
}

impl RunLoop {
    /// One long poll of the HTTP transport, and the run it brings. The poll
    /// is asked to last `poll_secs` (the server holds it at most its own
    /// bound); a stop ends it at once, and the server lets go of it.
    async fn long_poll(&mut self) -> Result<Step, String> {
        let shared = &self.shared;
        let wait = shared.cfg.timing.poll().min(Duration::from_secs(MAX_CLAIM_WAIT_SECS));
        let reply = tokio::select! {
            r = shared.api.claim_wait(wait) => r.map_err(|e| hangar_types::error_chain(&e))?,
            _ = shared.stopping.cancelled() => return Ok(Step::Idle),
        };
        let was = shared.drained.swap(reply.drain, Ordering::Relaxed);
        if was != reply.drain {
            info!(drained = reply.drain, "the appliance changed this worker's drain");
        }
        if let Some(a) = reply.run {
            execute(shared, a).await;
        }
        // Straight into the next poll: the server does the waiting.
        Ok(Step::Busy)
    }
}

impl BackgroundWorker for RunLoop {
    fn name(&self) -> String {
        format!("worker-{}", self.shared.cfg.worker_id)
    }

    async fn work(&mut self) -> Result<Step, String> {
        if self.shared.cfg.transport == Transport::Http {
            return self.long_poll().await;
        }
        if self.shared.drained.load(Ordering::Relaxed) {
            return Ok(Step::Idle);
        }
        let assignment = match self.shared.api.claim().await {
            Ok(Some(a)) => a,
            Ok(None) => return Ok(Step::Idle),
            Err(e) => return Err(hangar_types::error_chain(&e)),
        };
        execute(&self.shared, assignment).await;
        Ok(Step::Busy)
    }

    async fn wait_for_work(&mut self) {
        let poll = self.shared.cfg.timing.poll();
        tokio::select! {
            _ = self.shared.wake.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

async fn execute(shared: &Arc<Shared>, a: hangar_types::worker::RunAssignment) {
    let run_id = a.run_id;
    info!(run_id, kind = %a.kind, stack = %a.stack.slug, "claimed a run");
    let (stop, signal) = StopSignal::new();
    let (state_tx, state_rx) = watch::channel(None);
    let held = Arc::new(Held {
        run_id,
        stop: stop.clone(),
        state: state_tx,
    });
    *shared.held.lock().expect("held lock") = Some(held.clone());
    let on_refused: outbox::OnRefused = {
        let held = held.clone();
        Arc::new(move |state: RunState| {
            held.state.send_replace(Some(state));
            held.stop
                .stop(format!("the appliance ended the run ({state})"));
        })
    };
    let outbox = Outbox::start(shared.api.clone(), run_id, on_refused);
    let hooks = AgentHooks {
        shared: shared.clone(),
        run_id,
        outbox: &outbox,
        state: state_rx,
    };
    let dir = shared.cfg.work_dir.join(format!("run-{run_id}"));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = EngineOptions {
        cache_dir: shared.cfg.cache_dir.clone(),
        vcs_ca: shared.cfg.vcs_ca.clone(),
        appliance_ca: Some(shared.cfg.paths.ca.clone()),
        stop_grace: shared.cfg.timing.stop_grace(),
        chunks: Default::default(),
    };
    let spec = RunSpec::from(&a);
    let outcome = engine::execute(&spec, &dir, &opts, &hooks, &signal).await;
    info!(run_id, state = %outcome.state, "run done on this worker; delivering what is left");
    drop(hooks);
    // Delivered however long the appliance is away (the lease decides), unless
    // the worker is stopping: then for a bounded time only.
    let stopping = shared.stopping.clone();
    tokio::select! {
        _ = outbox.close() => {}
        _ = async {
            stopping.cancelled().await;
            tokio::time::sleep(SHUTDOWN_DELIVERY).await;
        } => warn!(run_id, "stopping without delivering everything: the appliance is unreachable"),
    }
    *shared.held.lock().expect("held lock") = None;
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        warn!(run_id, dir = %dir.display(), error = %e, "cannot remove the run's work directory");
    }
}

/// The engine's hooks over the worker API.
struct AgentHooks<'o> {
    shared: Arc<Shared>,
    run_id: i64,
    outbox: &'o Outbox,
    state: watch::Receiver<Option<RunState>>,
}

impl RunHooks for AgentHooks<'_> {
    async fn report(&self, report: StateReport) -> Result<(), Refused> {
        // Refusals come back through the outbox and stop the run.
        if let Some(state) = *self.state.borrow()
            && state.is_terminal()
        {
            return Err(Refused { state });
        }
        self.outbox.push(Item::Report(report));
        Ok(())
    }

    async fn log_chunk(&self, phase: Phase, seq: u64, data: Vec<u8>) {
        self.outbox.push(Item::Log { phase, seq, data });
    }

    async fn download_tool(&self, tool: &ToolSpec, dest: &Path) -> Result<(), HookError> {
        let mut pause = Duration::from_millis(500);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.shared.api.download(&tool.url, dest).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() && attempts < 5 => {
                    warn!(run_id = self.run_id, error = %hangar_types::error_chain(&e), "tool download failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => return Err(Box::new(e)),
            }
        }
    }

    async fn upload_plan(&self, path: &Path, upload: PlanUpload) -> Result<(), HookError> {
        self.outbox.push(Item::Plan {
            path: path.to_path_buf(),
            upload,
        });
        Ok(())
    }

    async fn upload_plan_json(&self, data: Vec<u8>) -> Result<(), HookError> {
        self.outbox.push(Item::PlanJson(data));
        Ok(())
    }

    async fn upload_errored_state(&self, data: Vec<u8>) -> Result<(), HookError> {
        self.outbox.push(Item::ErroredState(data));
        Ok(())
    }

    async fn confirmation(&self) -> Decision {
        let mut rx = self.state.clone();
        let poll = self.shared.cfg.timing.poll();
        loop {
            match *rx.borrow_and_update() {
                Some(RunState::Confirmed) | Some(RunState::Applying) => return Decision::Apply,
                Some(s) if s.is_terminal() => return Decision::Ended(s),
                _ => {}
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { std::future::pending::<()>().await },
                _ = tokio::time::sleep(poll) => {
                    // A safety net for a lost notification and a missed heartbeat.
                    if let Ok(s) = self.shared.api.run_status(self.run_id).await {
                        self.shared.run_state(self.run_id, s.state);
                    }
                }
            }
        }
    }
}
