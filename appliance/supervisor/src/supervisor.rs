//! The supervisor as a whole: prepares its directories and control socket, runs
//! one task per service in dependency order, applies reloads (added, removed and
//! changed services; unchanged ones untouched) and stops everything in reverse
//! dependency order.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{Plan, ServiceSpec, Settings};
use crate::logs::LogFile;
use crate::protocol::{ServiceStatus, State};
use crate::reaper::Reaper;
use crate::service::{self, Cmd, Runner};
use crate::{SupervisorError, control, notify};

/// Reads the configuration again (on SIGHUP).
pub type Loader = Arc<dyn Fn() -> Result<Settings, Box<dyn std::error::Error + Send + Sync>> + Send + Sync>;

/// What the control socket sees of a service.
#[derive(Debug, Clone)]
pub(crate) struct SlotView {
    pub order: usize,
    pub spec: Arc<ServiceSpec>,
    pub cmds: mpsc::Sender<Cmd>,
    pub status: watch::Receiver<ServiceStatus>,
    pub log: Arc<LogFile>,
}

/// State shared with the control socket.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub slots: RwLock<BTreeMap<String, SlotView>>,
    pub reload_error: Mutex<Option<String>>,
}

struct Slot {
    spec: Arc<ServiceSpec>,
    cmds: mpsc::Sender<Cmd>,
    task: JoinHandle<()>,
    log: Arc<LogFile>,
}

type ReloadRequest = (Result<Settings, SupervisorError>, oneshot::Sender<Result<String, SupervisorError>>);

/// Starts supervisors (see `start`).
#[derive(Debug)]
pub struct Supervisor;

/// A running supervisor.
#[derive(Debug)]
pub struct SupervisorHandle {
    socket: PathBuf,
    stop: CancellationToken,
    reloads: mpsc::Sender<ReloadRequest>,
    task: JoinHandle<()>,
}

impl SupervisorHandle {
    /// The control socket `hangar ctl` connects to.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Asks for everything to stop (in reverse dependency order); see `wait`.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Applies a new configuration; the old one stays when the new one is invalid.
    pub async fn reload(&self, settings: Settings) -> Result<String, SupervisorError> {
        self.reload_with(Ok(settings)).await
    }

    /// Records that re-reading the configuration failed (shown by `ctl status`);
    /// the configuration in force stays.
    pub async fn reload_failed(&self, error: SupervisorError) -> Result<String, SupervisorError> {
        self.reload_with(Err(error)).await
    }

    async fn reload_with(&self, settings: Result<Settings, SupervisorError>) -> Result<String, SupervisorError> {
        let (tx, rx) = oneshot::channel();
        self.reloads.send((settings, tx)).await.map_err(|_| SupervisorError::Gone)?;
        rx.await.map_err(|_| SupervisorError::Gone)?
    }

    /// Waits until every child is stopped and the supervisor has finished.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

fn prepare_dir(path: &Path, group: Option<nix::unistd::Gid>) -> Result<(), SupervisorError> {
    let err = |source| SupervisorError::Prepare {
        path: path.to_path_buf(),
        source,
    };
    if !path.is_dir() {
        std::fs::DirBuilder::new().recursive(true).mode(0o750).create(path).map_err(err)?;
    }
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(gid)).map_err(|e| err(e.into()))?;
    }
    Ok(())
}

impl Supervisor {
    /// Validates `settings`, takes the control socket and starts every service.
    /// One supervisor per process: it becomes the process's only waiter for
    /// children (see `reaper`).
    pub async fn start(settings: Settings) -> Result<SupervisorHandle, SupervisorError> {
        let plan = settings.plan()?;
        let group = plan.socket_owner.as_ref().map(|o| o.gid);
        prepare_dir(&plan.state_dir, group)?;
        prepare_dir(&plan.log_dir, group)?;
        if let Some(parent) = plan.socket.parent() {
            prepare_dir(parent, group)?;
        }
        let listener = control::bind(&plan).await?;
        service::kill_leftovers(&plan.state_dir);

        let stop = CancellationToken::new();
        let reaper_stop = CancellationToken::new();
        let reaper = Reaper::start(reaper_stop.clone())?;
        let shared = Arc::new(Shared::default());
        let (reload_tx, reload_rx) = mpsc::channel(4);
        let mut core = Core {
            plan: plan.clone(),
            slots: BTreeMap::new(),
            statuses: BTreeMap::new(),
            shared: shared.clone(),
            reaper,
        };
        for spec in plan.services.clone() {
            core.launch(spec, true);
        }
        core.publish();
        let control_stop = CancellationToken::new();
        let control = tokio::spawn(control::serve(listener, shared.clone(), control_stop.clone()));
        notify::ready(&core.summary());
        tracing::info!(socket = %plan.socket.display(), services = plan.services.len(), "supervisor started");

        let socket = plan.socket.clone();
        let stop2 = stop.clone();
        let task = tokio::spawn(async move {
            core.main_loop(stop2, reload_rx).await;
            notify::stopping();
            core.stop_all().await;
            control_stop.cancel();
            let _ = control.await;
            let _ = std::fs::remove_file(&core.plan.socket);
            reaper_stop.cancel();
            tracing::info!("every service stopped");
        });
        Ok(SupervisorHandle {
            socket,
            stop,
            reloads: reload_tx,
            task,
        })
    }
}

struct Core {
    plan: Plan,
    slots: BTreeMap<String, Slot>,
    /// Status channels outlive a service's replacement, so dependants keep watching.
    statuses: BTreeMap<String, Arc<watch::Sender<ServiceStatus>>>,
    shared: Arc<Shared>,
    reaper: Reaper,
}

impl Core {
    fn launch(&mut self, spec: Arc<ServiceSpec>, start: bool) {
        let status = self
            .statuses
            .entry(spec.name.clone())
            .or_insert_with(|| Arc::new(watch::channel(ServiceStatus::new(&spec.name)).0))
            .clone();
        let deps = spec
            .depends_on
            .iter()
            .filter_map(|d| self.statuses.get(d).map(|s| (d.clone(), s.subscribe())))
            .collect();
        let group = self.plan.socket_owner.as_ref().map(|o| o.gid);
        let log = Arc::new(LogFile::new(&self.plan.log_dir, &spec.name, spec.log_max_bytes, spec.log_keep, group));
        let (tx, rx) = mpsc::channel(16);
        let runner = Runner::new(
            spec.clone(),
            status,
            deps,
            rx,
            self.reaper.clone(),
            log.clone(),
            self.plan.state_dir.clone(),
        );
        let span = tracing::info_span!("service", name = %spec.name);
        let task = tokio::spawn(runner.run(start).instrument(span));
        self.slots.insert(
            spec.name.clone(),
            Slot {
                spec,
                cmds: tx,
                task,
                log,
            },
        );
    }

    /// Makes the current services visible to the control socket.
    fn publish(&self) {
        let mut views = BTreeMap::new();
        for (name, slot) in &self.slots {
            let order = self.plan.services.iter().position(|s| &s.name == name).unwrap_or(usize::MAX);
            views.insert(
                name.clone(),
                SlotView {
                    order,
                    spec: slot.spec.clone(),
                    cmds: slot.cmds.clone(),
                    status: self.statuses[name].subscribe(),
                    log: slot.log.clone(),
                },
            );
        }
        *self.shared.slots.write().unwrap_or_else(|e| e.into_inner()) = views;
    }

    fn summary(&self) -> String {
        let ready = self.statuses.values().filter(|s| s.borrow().state == State::Ready).count();
        format!("{ready}/{} services ready", self.statuses.len())
    }

    async fn main_loop(&mut self, stop: CancellationToken, mut reloads: mpsc::Receiver<ReloadRequest>) {
        let mut tick = tokio::time::interval(notify::tick_interval());
        let mut last_summary = String::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                req = reloads.recv() => {
                    let Some((settings, reply)) = req else { return };
                    notify::reloading();
                    let result = self.reload(settings).await;
                    match &result {
                        Ok(summary) => {
                            tracing::info!(%summary, "configuration reloaded");
                            *self.shared.reload_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        }
                        Err(e) => {
                            let msg = hangar_types::error_chain(e);
                            tracing::error!(error = %msg, "configuration reload failed; the previous configuration stays in force");
                            *self.shared.reload_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
                        }
                    }
                    notify::ready(&self.summary());
                    let _ = reply.send(result);
                }
                _ = tick.tick() => {
                    let summary = self.summary();
                    if summary != last_summary {
                        notify::status(&summary);
                        last_summary = summary;
                    }
                    notify::watchdog();
                }
            }
        }
    }

    async fn reload(&mut self, settings: Result<Settings, SupervisorError>) -> Result<String, SupervisorError> {
        // Logs are reopened on every SIGHUP, even when the new configuration is
        // refused: an external logrotate relies on it.
        for slot in self.slots.values() {
            slot.log.reopen();
        }
        let mut plan = settings?.plan()?;
        for (what, old, new) in [
            ("socket", &self.plan.socket, &plan.socket),
            ("log_dir", &self.plan.log_dir, &plan.log_dir),
            ("state_dir", &self.plan.state_dir, &plan.state_dir),
        ] {
            if old != new {
                tracing::warn!(
                    setting = what,
                    "changing supervisor.{what} takes effect only when the supervisor is restarted"
                );
            }
        }
        plan.socket = self.plan.socket.clone();
        plan.log_dir = self.plan.log_dir.clone();
        plan.state_dir = self.plan.state_dir.clone();

        let old: BTreeSet<String> = self.slots.keys().cloned().collect();
        let new: BTreeSet<String> = plan.services.iter().map(|s| s.name.clone()).collect();
        let removed: Vec<String> = old.difference(&new).cloned().collect();
        let added: Vec<String> = new.difference(&old).cloned().collect();
        let changed: Vec<String> = old
            .intersection(&new)
            .filter(|n| plan.get(n).is_some_and(|s| **s != *self.slots[*n].spec))
            .cloned()
            .collect();

        let mut keep_stopped = BTreeSet::new();
        for name in &changed {
            if self.statuses[name].borrow().state == State::Stopped {
                keep_stopped.insert(name.clone());
            }
        }
        let going: BTreeSet<String> = removed.iter().chain(&changed).cloned().collect();
        self.stop_set(going).await;
        for name in &removed {
            self.statuses.remove(name);
        }
        self.plan = plan;
        for spec in self.plan.services.clone() {
            if added.contains(&spec.name) || changed.contains(&spec.name) {
                let start = !keep_stopped.contains(&spec.name);
                self.launch(spec, start);
            }
        }
        self.publish();
        let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
        Ok(format!(
            "added: {}; removed: {}; changed: {}; unchanged: {}",
            list(&added),
            list(&removed),
            list(&changed),
            old.intersection(&new).count() - changed.len()
        ))
    }

    /// Stops every service, dependants before their dependencies.
    async fn stop_all(&mut self) {
        let all: BTreeSet<String> = self.slots.keys().cloned().collect();
        self.stop_set(all).await;
        self.publish();
    }

    /// Stops and removes the slots in `names`, in rounds: a service is stopped
    /// once none of the others still in the set depends on it.
    async fn stop_set(&mut self, mut names: BTreeSet<String>) {
        while !names.is_empty() {
            let mut round: Vec<String> = names
                .iter()
                .filter(|n| {
                    !names
                        .iter()
                        .any(|o| self.slots.get(o).is_some_and(|s| s.spec.depends_on.contains(n)))
                })
                .cloned()
                .collect();
            if round.is_empty() {
                round = names.iter().cloned().collect();
            }
            let mut waits = Vec::new();
            for name in &round {
                names.remove(name);
                if let Some(slot) = self.slots.remove(name) {
                    let (tx, rx) = oneshot::channel();
                    let _ = slot.cmds.send(Cmd::Shutdown(tx)).await;
                    waits.push(async move {
                        let _ = rx.await;
                        let _ = slot.task.await;
                    });
                }
            }
            futures::future::join_all(waits).await;
        }
    }
}

/// How long `ctl start --wait` may wait for a service at most.
pub(crate) fn wait_limit(spec: &ServiceSpec) -> Duration {
    spec.ready_timeout + spec.stop_timeout + Duration::from_secs(10)
}
