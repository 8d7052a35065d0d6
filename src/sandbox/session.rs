//! A store and its captured stdio, run under a hook's deadline.

use super::component::guest_log;
use super::component::wit;
use super::cpu::CallClock;
use super::host::{DeadlineReached, HostState};
use super::{Failure, HOST_CALL_GRACE, Prepared};
use crate::util::truncate;
use std::sync::Arc;
use tokio::sync::Semaphore;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

/// A store and its captured stdio: used for one call (a fresh instance), or
/// for every call of a warm instance.
pub(super) struct Session {
    pub(super) store: Store<HostState>,
    pub(super) stdout: MemoryOutputPipe,
    pub(super) stderr: MemoryOutputPipe,
    /// A command's stdout is its outcome, not log lines.
    pub(super) is_command: bool,
    /// Bytes of stdout and stderr already logged (the pipes accumulate).
    pub(super) logged: (usize, usize),
    /// The sandbox's CPUs, one of which each poll of a call holds.
    pub(super) cpus: Arc<Semaphore>,
}

impl Session {
    /// Runs `body` under the hook's deadline, logs the stdio it wrote, and
    /// classifies a failure.
    pub(super) async fn run<R>(
        &mut self,
        hook: &Prepared,
        body: impl AsyncFnOnce(
            &mut Store<HostState>,
            &MemoryOutputPipe,
        ) -> wasmtime::Result<Result<R, String>>,
    ) -> Result<R, Failure> {
        let state = self.store.data_mut();
        state.limiter.exceeded = false;
        state.log_lines = 0;
        // The deadline counts the call's own running time (see cpu.rs).
        let clock = CallClock::new();
        let deadline = hook.limits.deadline;
        self.store.set_epoch_deadline(1);
        let charged = clock.clone();
        self.store.epoch_deadline_callback(move |_store| {
            if charged.ran_in_poll() >= deadline {
                Err(wasmtime::Error::new(DeadlineReached))
            } else {
                charged.yielding();
                Ok(UpdateDeadline::Yield(1))
            }
        });
        let run = body(&mut self.store, &self.stdout);
        let result = clock
            .within(&self.cpus, deadline + HOST_CALL_GRACE, run)
            .await
            .ok_or(());
        let ran = clock.ran();
        let stderr_tail = self.log_stdio(&hook.name);
        let is_command = self.is_command;
        let exceeded = self.store.data().limiter.exceeded;
        let memory_cap = || Failure::MemoryCap(hook.limits.memory_bytes / (1024 * 1024));
        match result {
            Err(_elapsed) if exceeded => Err(memory_cap()),
            Err(_elapsed) => Err(Failure::Timeout(deadline, ran)),
            Ok(Ok(Ok(value))) => Ok(value),
            // A command says why it failed on stderr, if anywhere.
            Ok(Ok(Err(message))) => Err(Failure::Returned(match &stderr_tail {
                Some(tail) if is_command => format!("{message}; its stderr ends: {tail}"),
                _ => message,
            })),
            Ok(Err(err)) => Err(if exceeded {
                memory_cap()
            } else if err.is::<DeadlineReached>() {
                Failure::Timeout(deadline, ran)
            } else {
                // The trap and the guest's frames; not the host's backtrace,
                // which `{err:?}` adds under RUST_BACKTRACE and means
                // nothing to a hook's author.
                let mut message = err.root_cause().to_string();
                if let Some(frames) = err.downcast_ref::<wasmtime::WasmBacktrace>() {
                    message = format!("{message}; {frames}");
                }
                if let Some(tail) = stderr_tail {
                    message = format!("{tail} ({message})");
                }
                Failure::Trap(truncate(&message, 4096).to_owned())
            }),
        }
    }

    /// Logs what the call wrote to stdout (info; not a command's, which is
    /// its outcome) and stderr (warn), line by line under the hook's name;
    /// returns stderr's last line, which for a Rust guest is usually the
    /// panic message.
    pub(super) fn log_stdio(&mut self, hook: &str) -> Option<String> {
        let out = self.stdout.contents();
        let out = out.get(self.logged.0..).unwrap_or_default();
        self.logged.0 += out.len();
        if !self.is_command {
            for line in String::from_utf8_lossy(out)
                .lines()
                .filter(|l| !l.trim().is_empty())
            {
                guest_log(hook, wit::Level::Info, line);
            }
        }
        let err = self.stderr.contents();
        let err = err.get(self.logged.1..).unwrap_or_default();
        self.logged.1 += err.len();
        let err = String::from_utf8_lossy(err);
        for line in err.lines().filter(|l| !l.trim().is_empty()) {
            guest_log(hook, wit::Level::Warn, line);
        }
        err.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| truncate(l, 1024).to_owned())
    }
}
