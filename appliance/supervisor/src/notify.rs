//! systemd integration: with `Type=notify`, the supervisor says when it is ready,
//! reloading and stopping, and how many services are ready. Without
//! NOTIFY_SOCKET every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn reloading() {
    send(&[NotifyState::Reloading, NotifyState::monotonic_usec_now().unwrap_or(NotifyState::Status("reloading"))]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping services")]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

pub fn watchdog() {
    if watchdog_interval().is_some() {
        send(&[NotifyState::Watchdog]);
    }
}

fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Period of status updates, short enough to feed systemd's watchdog.
pub fn tick_interval() -> Duration {
    match watchdog_interval() {
        Some(w) => (w / 2).clamp(Duration::from_millis(100), Duration::from_secs(1)),
        None => Duration::from_secs(1),
    }
}
