//! Ctrl-C while the host changes: the installer notes it and stops at the next
//! step boundary, so every step either completed or left only temporary names
//! the next run clears.

use std::sync::atomic::Ordering;

use crate::host::Host;

/// From now on SIGINT (and SIGTERM) set the host's interrupted flag instead of
/// killing the installer in the middle of a step.
pub fn catch_interrupt(host: &Host) {
    let flag = host.interrupted.clone();
    let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async move {
            let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else { return };
            loop {
                tokio::select! {
                    r = tokio::signal::ctrl_c() => if r.is_err() { return },
                    _ = term.recv() => {}
                }
                if !flag.swap(true, Ordering::SeqCst) {
                    eprintln!("\ninterrupted: finishing the current step, then stopping (the host stays consistent)");
                }
            }
        });
    });
    if let Err(e) = spawned {
        eprintln!("warning: Ctrl-C cannot be caught ({e}); it would stop the installer at once");
    }
}
