//! What a hook's store holds: its WASI context (nothing granted), its
//! memory limiter, and the `log` import.

use super::component::{v3, wit};
use super::cpu::{Cpu, HasCpu};
use super::{MAX_LOG_LINE, MAX_LOG_LINES};
use crate::util::truncate;
use std::sync::Arc;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Per-call state inside a `Store`.
pub(crate) struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: MemoryLimiter,
    pub(super) hook: Arc<str>,
    pub(super) log_lines: u32,
    pub(super) cpu: Cpu,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit::Host for HostState {}

impl v3::HookImports for HostState {
    fn log(&mut self, level: wit::Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            if self.log_lines == MAX_LOG_LINES + 1 {
                tracing::warn!(target: "wasmhooks::guest", hook = %self.hook, "more than {MAX_LOG_LINES} log lines in one call; dropping the rest");
            }
            return;
        }
        guest_log(&self.hook, level, truncate(&message, MAX_LOG_LINE));
    }
}

/// Writes one guest line under the `wasmhooks::guest` target, with the hook's name.
pub(super) fn guest_log(hook: &str, level: wit::Level, line: &str) {
    match level {
        wit::Level::Debug => tracing::debug!(target: "wasmhooks::guest", hook, "{line}"),
        wit::Level::Info => tracing::info!(target: "wasmhooks::guest", hook, "{line}"),
        wit::Level::Warn => tracing::warn!(target: "wasmhooks::guest", hook, "{line}"),
        wit::Level::Error => tracing::error!(target: "wasmhooks::guest", hook, "{line}"),
    }
}

/// Caps the total linear memory of one store.
pub(super) struct MemoryLimiter {
    pub(super) cap: usize,
    pub(super) used: usize,
    pub(super) exceeded: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.used + desired.saturating_sub(current);
        if total > self.cap {
            // Refuse the growth (memory.grow returns -1); a guest that can't
            // cope traps, and the flag tells us why.
            self.exceeded = true;
            return Ok(false);
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Raised by the epoch callback when a call's deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("deadline reached")]
pub(super) struct DeadlineReached;

impl HasCpu for HostState {
    fn cpu(&mut self) -> &mut Cpu {
        &mut self.cpu
    }
}
