//! CPUs for calls, and what a call is charged against its deadline.
//!
//! A call's wasm runs only while it holds one of the sandbox's CPU permits
//! (one per CPU). It gives its CPU back at every host call (an epoch tick
//! included), so busy hooks take turns every few milliseconds, and a hook
//! blocked in a host call (a sleep) holds no CPU while it waits.
//!
//! Its deadline counts its own running time: the CPU time of its thread
//! while its wasm runs, plus the wall time of its host calls (a sleeping
//! hook times out). Not charged: waiting for a CPU, the runtime's delay
//! before it polls the call again after an epoch tick's yield, and the
//! time the system gave its thread to other processes. So a hook is never
//! timed out because other hooks, or other programs, ran, and a looping
//! one is stopped within an epoch tick of its deadline however many hooks
//! share the event.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::ThreadId;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::{CallHook, CallHookHandler, StoreContextMut};

/// What the call is doing now, since when.
enum Segment {
    /// Not in a call.
    Idle,
    /// Running wasm on this thread, since this thread CPU time.
    Wasm { thread: ThreadId, cpu_ns: u64 },
    /// In a host call since then (a yield at an epoch tick is not charged).
    Host { since: Instant, yielded: bool },
}

/// A store's share of the CPUs, and its call's charge.
pub(crate) struct Cpu {
    cpus: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
    segment: Segment,
    clock: CallClock,
}

impl Cpu {
    pub(super) fn new(cpus: Arc<Semaphore>) -> Cpu {
        Cpu {
            cpus,
            held: None,
            segment: Segment::Idle,
            clock: CallClock::default(),
        }
    }

    /// Starts a call: waits for a CPU (not charged). Returns the call's
    /// clock.
    pub(super) async fn begin(&mut self) -> CallClock {
        self.held = Some(acquire(&self.cpus).await);
        self.clock = CallClock::default();
        self.segment = wasm_segment();
        self.clock.clone()
    }

    /// The guest yields at an epoch tick (from the epoch callback): until
    /// it runs again, it is not charged.
    pub(super) fn yielding(&mut self) {
        if let Segment::Host { yielded, .. } = &mut self.segment {
            *yielded = true;
        }
    }

    /// Ends a call: charges what ran last, and gives its CPU back.
    pub(super) fn end(&mut self) {
        self.close_segment();
        self.segment = Segment::Idle;
        self.held = None;
    }

    /// Charges the segment that ends now.
    fn close_segment(&mut self) {
        let charge = match &self.segment {
            Segment::Idle => return,
            Segment::Wasm { thread, cpu_ns } => {
                // A wasm segment runs on one thread: a fiber moves only
                // when suspended, in a host call.
                if *thread == std::thread::current().id() {
                    thread_cpu_ns().saturating_sub(*cpu_ns)
                } else {
                    0
                }
            }
            Segment::Host { since, yielded } => {
                self.clock.host_since.store(NOT_IN_HOST, Ordering::Relaxed);
                if *yielded {
                    0
                } else {
                    since.elapsed().as_nanos() as u64
                }
            }
        };
        self.clock.charged.fetch_add(charge, Ordering::Relaxed);
    }
}

fn wasm_segment() -> Segment {
    Segment::Wasm {
        thread: std::thread::current().id(),
        cpu_ns: thread_cpu_ns(),
    }
}

/// CPU time of the calling thread, in ns.
fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write to; the clock id is a
    // constant every Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    if rc != 0 {
        return 0;
    }
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

async fn acquire(cpus: &Arc<Semaphore>) -> OwnedSemaphorePermit {
    cpus.clone()
        .acquire_owned()
        .await
        .expect("the CPU semaphore is never closed")
}

const NOT_IN_HOST: u64 = u64::MAX;

/// A call's charge so far, readable while the call runs.
#[derive(Clone)]
pub(crate) struct CallClock {
    /// Closed segments, in ns.
    charged: Arc<AtomicU64>,
    /// When the current host call began, in ns after `base`, or
    /// [`NOT_IN_HOST`].
    host_since: Arc<AtomicU64>,
    base: Instant,
}

impl Default for CallClock {
    fn default() -> Self {
        CallClock {
            charged: Arc::default(),
            host_since: Arc::new(AtomicU64::new(NOT_IN_HOST)),
            base: Instant::now(),
        }
    }
}

impl CallClock {
    /// Time charged to the call so far, as of its last host call (the
    /// epoch callback runs in one, so it is exact there).
    pub(super) fn ran(&self) -> Duration {
        Duration::from_nanos(self.charged.load(Ordering::Relaxed))
    }

    /// [`ran`](Self::ran), plus the host call in progress.
    fn ran_now(&self) -> Duration {
        let since = self.host_since.load(Ordering::Relaxed);
        let in_host = if since == NOT_IN_HOST {
            Duration::ZERO
        } else {
            self.base
                .elapsed()
                .saturating_sub(Duration::from_nanos(since))
        };
        self.ran() + in_host
    }

    /// Runs `call` until it ends, or until it has been charged `budget`;
    /// `None` then. For a call blocked in a host call: wasm that runs is
    /// stopped by the epoch callback first.
    pub(super) async fn within<F: Future>(&self, budget: Duration, call: F) -> Option<F::Output> {
        let mut call = std::pin::pin!(call);
        loop {
            let left = budget.saturating_sub(self.ran_now());
            if left.is_zero() {
                return None;
            }
            if let Ok(output) = tokio::time::timeout(left, &mut call).await {
                return Some(output);
            }
        }
    }
}

/// A store's state that accounts its CPU: what [`Handoff`] works on.
pub(crate) trait HasCpu: Send {
    fn cpu(&mut self) -> &mut Cpu;
}

/// Gives the store's CPU back when its guest calls the host, and waits
/// for one (not charged) when the host returns to it.
pub(crate) struct Handoff;

#[async_trait::async_trait]
impl<T: HasCpu> CallHookHandler<T> for Handoff {
    async fn handle_call_event(
        &self,
        mut store: StoreContextMut<'_, T>,
        hook: CallHook,
    ) -> wasmtime::Result<()> {
        let cpu = store.data_mut().cpu();
        match (hook, &cpu.segment) {
            (CallHook::CallingHost, Segment::Wasm { .. }) => {
                cpu.close_segment();
                cpu.held = None;
                let since = cpu.clock.base.elapsed().as_nanos() as u64;
                cpu.clock.host_since.store(since, Ordering::Relaxed);
                cpu.segment = Segment::Host {
                    since: Instant::now(),
                    yielded: false,
                };
            }
            (CallHook::ReturningFromHost, Segment::Host { .. }) => {
                cpu.close_segment();
                // Uncontended, this is ready at once: no suspension.
                let permit = acquire(&cpu.cpus).await;
                let cpu = store.data_mut().cpu();
                cpu.held = Some(permit);
                cpu.segment = wasm_segment();
            }
            _ => {}
        }
        Ok(())
    }
}
