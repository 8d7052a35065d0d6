//! CPUs for calls, and what a call is charged against its deadline.
//!
//! A call is a future the runtime polls; its wasm runs inside those polls.
//! Each poll holds one of the sandbox's CPU permits (one per CPU), and the
//! call gives its CPU back whenever it is suspended: at an epoch tick (the
//! epoch callback yields), or in a host call that waits (a sleep). So busy
//! hooks take turns every tick, and a hook blocked in a host call holds no
//! CPU while it waits. A host call that returns at once (a log line, most
//! WASI calls) does not suspend the call, and costs nothing here: nothing
//! runs at a guest↔host transition.
//!
//! Its deadline counts its own running time: the CPU time of its thread
//! during each poll (its wasm and the host calls that returned at once),
//! plus the wall time of each suspension in a host call (a sleeping hook
//! times out). Not charged: waiting for a CPU, a suspension at an epoch
//! tick (until the runtime polls the call again), and the time the system
//! gave its thread to other processes. So a hook is never timed out because
//! other hooks, or other programs, ran, and a looping one is stopped within
//! an epoch tick of its deadline however many hooks share the event. The
//! epoch callback runs on the polling thread, inside the poll, so it reads
//! the charge of the poll in progress exactly.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::PollSemaphore;

/// No poll, or no suspension in a host call, in progress.
const IDLE: u64 = u64::MAX;

/// A call's charge so far: shared by the future that runs the call and its
/// store's epoch callback.
#[derive(Clone)]
pub(super) struct CallClock(Arc<Charge>);

struct Charge {
    /// Polls and suspensions that ended, in ns.
    charged: AtomicU64,
    /// The polling thread's CPU time (ns) when the poll in progress began,
    /// or [`IDLE`].
    poll_cpu: AtomicU64,
    /// When the suspension in a host call in progress began, in ns after
    /// `base`, or [`IDLE`].
    host_since: AtomicU64,
    /// The epoch callback made the call yield: its suspension is not charged.
    yielded: AtomicBool,
    base: Instant,
}

impl CallClock {
    pub(super) fn new() -> CallClock {
        CallClock(Arc::new(Charge {
            charged: AtomicU64::new(0),
            poll_cpu: AtomicU64::new(IDLE),
            host_since: AtomicU64::new(IDLE),
            yielded: AtomicBool::new(false),
            base: Instant::now(),
        }))
    }

    /// Time charged to the call, for polls and suspensions that ended.
    pub(super) fn ran(&self) -> Duration {
        Duration::from_nanos(self.0.charged.load(Ordering::Relaxed))
    }

    /// Time charged to the call, the poll in progress included: for the
    /// epoch callback, which runs inside that poll, on its thread.
    pub(super) fn ran_in_poll(&self) -> Duration {
        let start = self.0.poll_cpu.load(Ordering::Relaxed);
        let in_poll = if start == IDLE {
            0
        } else {
            thread_cpu_ns().saturating_sub(start)
        };
        self.ran() + Duration::from_nanos(in_poll)
    }

    /// From the epoch callback: the call yields, and until it is polled
    /// again it is not charged.
    pub(super) fn yielding(&self) {
        self.0.yielded.store(true, Ordering::Relaxed);
    }

    /// [`ran`](Self::ran), plus the suspension in a host call in progress.
    fn ran_now(&self) -> Duration {
        let since = self.0.host_since.load(Ordering::Relaxed);
        let in_host = if since == IDLE {
            Duration::ZERO
        } else {
            self.elapsed().saturating_sub(Duration::from_nanos(since))
        };
        self.ran() + in_host
    }

    fn elapsed(&self) -> Duration {
        self.0.base.elapsed()
    }

    fn charge(&self, ns: u64) {
        self.0.charged.fetch_add(ns, Ordering::Relaxed);
    }

    /// Runs `call`, each poll holding one of `cpus`, until it ends, or
    /// until it has been charged `budget`: `None` then. For a call
    /// suspended in a host call: wasm that runs is stopped by the epoch
    /// callback first.
    pub(super) async fn within<F: Future>(
        &self,
        cpus: &Arc<Semaphore>,
        budget: Duration,
        call: F,
    ) -> Option<F::Output> {
        let mut call = pin!(call);
        let mut cpus = PollSemaphore::new(cpus.clone());
        // The CPU this call holds, between polls only while it waits for one.
        let mut held = None;
        let mut metered = pin!(std::future::poll_fn(|cx| {
            // Back from a suspension: a host call's wait counts (up to now,
            // not while waiting for a CPU); a yield's does not.
            let since = self.0.host_since.swap(IDLE, Ordering::Relaxed);
            if since != IDLE {
                let waited = self.elapsed().saturating_sub(Duration::from_nanos(since));
                self.charge(waited.as_nanos() as u64);
            }
            if held.is_none() {
                match cpus.poll_acquire(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(permit) => {
                        held = Some(permit.expect("the CPU semaphore is never closed"))
                    }
                }
            }
            let start = thread_cpu_ns();
            self.0.poll_cpu.store(start, Ordering::Relaxed);
            let polled = call.as_mut().poll(cx);
            self.0.poll_cpu.store(IDLE, Ordering::Relaxed);
            self.charge(thread_cpu_ns().saturating_sub(start));
            if polled.is_pending() {
                held = None;
                if !self.0.yielded.swap(false, Ordering::Relaxed) {
                    let now = self.elapsed().as_nanos() as u64;
                    self.0.host_since.store(now, Ordering::Relaxed);
                }
            }
            polled
        }));
        loop {
            let left = budget.saturating_sub(self.ran_now());
            if left.is_zero() {
                return None;
            }
            if let Ok(output) = tokio::time::timeout(left, metered.as_mut()).await {
                return Some(output);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_millis(20);

    fn one_cpu() -> Arc<Semaphore> {
        Arc::new(Semaphore::new(1))
    }

    /// Spins for `d` of this thread's CPU time.
    fn spin(d: Duration) {
        let start = thread_cpu_ns();
        while thread_cpu_ns() - start < d.as_nanos() as u64 {}
    }

    #[tokio::test]
    async fn running_is_charged_and_stops_at_the_budget() {
        let clock = CallClock::new();
        let ran = clock
            .within(&one_cpu(), BUDGET, async { spin(Duration::from_millis(5)) })
            .await;
        assert!(ran.is_some());
        assert!(clock.ran() >= Duration::from_millis(5), "{:?}", clock.ran());

        // Spinning in slices, suspended in between (as a hook's wasm is by
        // the epoch callback, without its yield): the budget ends it.
        let clock = CallClock::new();
        let cpus = one_cpu();
        let spun = clock.within(&cpus, BUDGET, async {
            loop {
                spin(Duration::from_millis(2));
                tokio::task::yield_now().await;
            }
        });
        assert!(spun.await.is_none());
        assert!(clock.ran() >= BUDGET, "{:?}", clock.ran());
    }

    #[tokio::test]
    async fn waiting_in_a_host_call_is_charged() {
        let clock = CallClock::new();
        let cpus = one_cpu();
        let slept = clock.within(&cpus, BUDGET, tokio::time::sleep(BUDGET * 5));
        assert!(slept.await.is_none(), "a sleeping call times out");
        assert!(clock.ran_now() >= BUDGET);
    }

    #[tokio::test]
    async fn a_yield_and_waiting_for_a_cpu_are_not_charged() {
        let clock = CallClock::new();
        let yielder = clock.clone();
        let cpus = one_cpu();
        let yielded = clock.within(&cpus, BUDGET, async move {
            // As the epoch callback does: the call yields, and the runtime
            // runs something else (60 ms) before it polls the call again.
            yielder.yielding();
            tokio::spawn(async { std::thread::sleep(BUDGET * 3) });
            tokio::task::yield_now().await;
        });
        assert!(yielded.await.is_some());
        assert!(clock.ran() < BUDGET, "{:?}", clock.ran());

        let cpus = Arc::new(Semaphore::new(0));
        let clock = CallClock::new();
        let freed = cpus.clone();
        tokio::spawn(async move {
            tokio::time::sleep(BUDGET * 3).await;
            freed.add_permits(1);
        });
        let waited = clock.within(&cpus, BUDGET, async {}).await;
        assert!(waited.is_some(), "waiting for a CPU is not charged");
        assert!(clock.ran() < BUDGET, "{:?}", clock.ran());
    }

    #[tokio::test]
    async fn a_call_holds_a_cpu_only_while_it_runs() {
        let cpus = one_cpu();
        let clock = CallClock::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let held_meanwhile = Arc::new(AtomicBool::new(true));
        let (probe, seen) = (cpus.clone(), held_meanwhile.clone());
        let call = clock.within(&cpus, Duration::from_secs(5), async move {
            // Suspended in a "host call": its CPU is free for others.
            let free = tokio::spawn(async move {
                let acquired = tokio::time::timeout(Duration::from_secs(2), probe.acquire());
                acquired.await.is_ok()
            });
            seen.store(!free.await.unwrap(), Ordering::Relaxed);
            let _ = tx.send(());
        });
        call.await.unwrap();
        rx.await.unwrap();
        assert!(!held_meanwhile.load(Ordering::Relaxed));
        assert_eq!(cpus.available_permits(), 1, "given back at the end");
    }
}
