//! Work that must finish even if its caller goes away, run in the caller's
//! own task while the caller waits.
//!
//! Spawning such work and awaiting its task is cancellation-safe, but each
//! spawn is a hand-off: the new task is announced to the other worker
//! threads, which a parked worker pays for with a wake-up (an `eventfd`
//! write and an `epoll_wait` return), about a sixth of the CPU of a pre
//! event decided by one hook (see BENCHMARKS.md). [`MustFinish`] polls the work
//! where the caller is and spawns what is left of it only if the caller is
//! dropped first, so the common case costs no hand-off and a dropped
//! caller still changes nothing.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

/// `work`, polled by whoever awaits this; handed to a task of its own if
/// dropped before it is done.
pub(crate) struct MustFinish<T: Send + 'static> {
    work: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
}

impl<T: Send + 'static> MustFinish<T> {
    pub(crate) fn new(work: impl Future<Output = T> + Send + 'static) -> Self {
        MustFinish {
            work: Some(Box::pin(work)),
        }
    }

    /// Goes on with the work in a task of its own, for work that must keep
    /// running while the caller waits on something else. Aborting the task
    /// drops the work, for work whose result must no longer take effect.
    pub(crate) fn spawn(mut self) -> tokio::task::JoinHandle<T> {
        tokio::spawn(self.work.take().expect("not finished"))
    }
}

impl<T: Send + 'static> Future for MustFinish<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let work = self.work.as_mut().expect("polled after it finished");
        // Work that panicked is dropped with the panic, not handed to a task.
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx)));
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => {
                self.work = None;
                Poll::Ready(output)
            }
            Err(panic) => {
                self.work = None;
                std::panic::resume_unwind(panic)
            }
        }
    }
}

impl<T: Send + 'static> Drop for MustFinish<T> {
    fn drop(&mut self) {
        if let Some(work) = self.work.take() {
            // Outside a runtime, or in one that is shutting down (which
            // refuses the task), the work is dropped, as a task's would be.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                drop(runtime.spawn(work));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::MustFinish;
    use futures::FutureExt;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn work_dropped_midway_finishes_in_a_task() {
        let (gate_tx, gate_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel();
        let mut work = MustFinish::new(async move {
            gate_rx.await.unwrap();
            done_tx.send("finished").unwrap();
        });
        // The caller polls once, then goes away while the work waits.
        assert!((&mut work).now_or_never().is_none());
        drop(work);
        gate_tx.send(()).unwrap();
        assert_eq!(done_rx.await.unwrap(), "finished");
    }

    #[tokio::test]
    async fn work_spawned_then_aborted_stops() {
        let (gate_tx, gate_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let mut work = MustFinish::new(async move {
            gate_rx.await.unwrap();
            done_tx.send(()).unwrap();
        });
        assert!((&mut work).now_or_never().is_none());
        let task = work.spawn();
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        // The work was dropped: its gate is closed and its result never comes.
        assert!(gate_tx.send(()).is_err());
        assert!(done_rx.await.is_err());
    }

    #[tokio::test]
    async fn work_that_panics_is_not_handed_to_a_task() {
        let work = MustFinish::new(async {
            panic!("a bug");
        });
        // The panic reaches the caller; what is left is not spawned (it
        // would panic again: "`async fn` resumed after panicking").
        let caught = std::panic::AssertUnwindSafe(work).catch_unwind().await;
        assert!(caught.is_err());
        let tasks = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        assert_eq!(tasks, 0, "nothing was spawned");
    }

    #[tokio::test]
    async fn work_awaited_runs_in_the_callers_task() {
        tokio::spawn(async {
            let caller = tokio::task::id();
            let ran_in = MustFinish::new(async { tokio::task::id() }).await;
            assert_eq!(ran_in, caller);
        })
        .await
        .unwrap();
    }
}
