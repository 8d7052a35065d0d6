//! What `serve` tells systemd (`Type=notify`), and what it does on
//! `systemctl reload`. Outside systemd (no `NOTIFY_SOCKET`, no
//! `WATCHDOG_USEC`) the notifications are no-ops and `SIGHUP` still
//! reloads the hooks.

use sd_notify::NotifyState;
use wasmhooks::Engine;
use wasmhooks::HookState;

/// Says the engine is ready: its queue is open, its hooks are loaded and
/// it listens. systemd starts the units ordered after it only now. From
/// then on, the status line (`systemctl status`) follows the hooks.
pub(crate) fn ready(engine: &Engine) {
    notify(&[NotifyState::Ready, NotifyState::Status(&status(engine))]);
    let mut changes = engine.hook_changes();
    let engine = engine.clone();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            notify(&[NotifyState::Status(&status(&engine))]);
        }
    });
}

/// Says the engine is stopping, so systemd does not count the time it
/// takes to finish what is in flight as a hang.
pub(crate) fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// On each `SIGHUP` (`ExecReload=` in the unit), reads the hooks folder
/// again ([`Engine::reload`]), telling systemd it is reloading until done.
pub(crate) fn reload_on_hangup(engine: Engine) -> std::io::Result<()> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let mut reloading = vec![NotifyState::Reloading];
            // systemd 253 and later want the time the reload began.
            reloading.extend(NotifyState::monotonic_usec_now());
            notify(&reloading);
            match engine.reload().await {
                Ok(()) => tracing::info!("SIGHUP: hooks folder read again; {}", status(&engine)),
                Err(e) => tracing::error!(
                    "SIGHUP: {:#}; the hooks loaded before keep serving",
                    anyhow::Error::from(e)
                ),
            }
            notify(&[NotifyState::Ready, NotifyState::Status(&status(&engine))]);
        }
    });
    Ok(())
}

/// With `WatchdogSec=` in the unit, pings systemd every quarter of it,
/// each time only once the engine's runtime has run a task and its queue
/// has answered (or failed: an unreachable NATS server is the queue's
/// trouble, shown in `/metrics`, not a hang) within a quarter of it. So a
/// ping is at most half of `WatchdogSec` late while all is well, and one
/// slow answer does not cost a restart; a wedged runtime or queue stops
/// the pings, and systemd restarts the engine, which resumes from its
/// queue.
pub(crate) fn watchdog(engine: Engine) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = period / 4;
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match tokio::time::timeout(every, engine.backlog()).await {
                Ok(_) => notify(&[NotifyState::Watchdog]),
                Err(_) => tracing::error!(
                    "the queue has not answered in {every:?}: not pinging systemd's watchdog \
                     (WatchdogSec={period:?})"
                ),
            }
        }
    });
}

/// `hooks live: N, failing to load: M`: a hook whose new version failed
/// counts in both (its last good version serves).
fn status(engine: &Engine) -> String {
    let hooks = engine.hooks();
    let live = hooks.iter().filter(|h| h.state == HookState::Live).count();
    let failing = hooks.iter().filter(|h| h.last_error.is_some()).count();
    format!("hooks live: {live}, failing to load: {failing}")
}

fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("cannot notify systemd (NOTIFY_SOCKET): {e}");
    }
}
