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
use std::pin::Pin;
use std::task::{Context, Poll};

/// `work`, polled by whoever awaits this; handed to a task of its own if
/// dropped before it is done.
pub(crate) struct MustFinish<T: Send + 'static> {
    work: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
}

impl<T: Send + 'static> MustFinish<T> {
    pub fn new(work: impl Future<Output = T> + Send + 'static) -> Self {
        MustFinish {
            work: Some(Box::pin(work)),
        }
    }

    /// Drops the work where it stands, for work whose result is no longer
    /// wanted and must not take effect.
    pub fn abandon(mut self) {
        self.work = None;
    }
}

impl<T: Send + 'static> Future for MustFinish<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let work = self.work.as_mut().expect("polled after it finished");
        let output = std::task::ready!(work.as_mut().poll(cx));
        self.work = None;
        Poll::Ready(output)
    }
}

impl<T: Send + 'static> Drop for MustFinish<T> {
    fn drop(&mut self) {
        if let Some(work) = self.work.take() {
            // Outside a runtime (it is shutting down), the work is dropped,
            // as a spawned task would be.
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
    async fn abandoned_work_stops() {
        let (gate_tx, gate_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let mut work = MustFinish::new(async move {
            gate_rx.await.unwrap();
            done_tx.send(()).unwrap();
        });
        assert!((&mut work).now_or_never().is_none());
        work.abandon();
        // The work was dropped: its gate is closed and its result never comes.
        assert!(gate_tx.send(()).is_err());
        assert!(done_rx.await.is_err());
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
