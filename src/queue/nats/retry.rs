//! Riding out a JetStream leader election: a request that fails because
//! a stream (or the cluster) has no leader for a moment, or timed out
//! while one is elected, is tried again with short back-off for up to
//! `queue.nats.election_wait_ms`, and its caller waits meanwhile instead
//! of being refused. Every request tried again here writes at most once:
//! publishes keep their `Nats-Msg-Id`, a key is written only if absent,
//! reads and deletes change nothing the second time.

use super::*;
use async_nats::jetstream::context::PublishErrorKind;
use jetstream::ErrorCode;

/// First pause after a failure; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_millis(500);

/// Longest a try may take while others may follow: a publish whose ack was
/// lost with its connection is published again (under its id) on the new
/// one rather than waited for.
const TRY_TIMEOUT: Duration = Duration::from_secs(2);

/// While requests wait for a leader: since when, how many wait now, and
/// how many did (for the metric, the log and `/readyz`).
#[derive(Debug, Default)]
pub(super) struct Stall {
    since: Option<Instant>,
    /// Requests waiting now.
    waiting: usize,
    /// Requests that waited this episode, and those that gave up.
    waited: u64,
    gave_up: u64,
    /// Requests that waited, ever.
    pub(super) total: u64,
}

/// One request waiting for a leader: counted while it lives.
struct Waiting<'a> {
    queue: &'a NatsQueue,
    gave_up: bool,
}

impl<'a> Waiting<'a> {
    fn start(queue: &'a NatsQueue, what: &str, e: &QueueError) -> Waiting<'a> {
        let mut stall = queue.stall.lock().unwrap();
        stall.waiting += 1;
        stall.waited += 1;
        stall.total += 1;
        if stall.since.is_none() {
            stall.since = Some(Instant::now());
            tracing::warn!(
                "JetStream has no leader for a moment ({what}: {e}); requests wait for one, \
                 each up to {:?} (queue.nats.election_wait_ms), instead of being refused",
                queue.election_wait
            );
        }
        Waiting {
            queue,
            gave_up: false,
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut stall = self.queue.stall.lock().unwrap();
        stall.waiting -= 1;
        stall.gave_up += u64::from(self.gave_up);
        if stall.waiting == 0
            && let Some(since) = stall.since.take()
        {
            let (waited, gave_up) = (
                std::mem::take(&mut stall.waited),
                std::mem::take(&mut stall.gave_up),
            );
            tracing::info!(
                "no request waits for JetStream any more, after {:.1?}: {waited} waited, \
                 {gave_up} of them gave up (refused)",
                since.elapsed()
            );
        }
    }
}

impl NatsQueue {
    /// Runs `request` until it succeeds, fails for good, or
    /// `election_wait` has passed since it was first tried (then its last
    /// error is returned): each try within what is left of that, and
    /// within [`TRY_TIMEOUT`] while more may follow. `what` names it in
    /// the log.
    pub(super) async fn ride_out<T, F, Fut>(
        &self,
        what: &str,
        mut request: F,
    ) -> Result<T, QueueError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, QueueError>>,
    {
        if self.election_wait.is_zero() {
            return request().await;
        }
        let deadline = Instant::now() + self.election_wait;
        let mut waiting = None;
        let mut pause = FIRST_PAUSE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let result = match tokio::time::timeout(left.min(TRY_TIMEOUT), request()).await {
                Ok(result) => result,
                Err(_) => Err(no_answer(left.min(TRY_TIMEOUT))),
            };
            let e = match result {
                Ok(value) => return Ok(value),
                Err(e) if transient(&e) => e,
                Err(e) => return Err(e),
            };
            if Instant::now() + pause >= deadline {
                if let Some(w) = waiting.as_mut() {
                    let w: &mut Waiting = w;
                    w.gave_up = true;
                }
                return Err(e);
            }
            if waiting.is_none() {
                waiting = Some(Waiting::start(self, what, &e));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// Publishes `payload` on `subject` under `msg_id` and waits for its ack,
    /// riding out an election.
    pub(super) async fn store(
        &self,
        subject: String,
        msg_id: String,
        payload: Bytes,
    ) -> Result<jetstream::publish::PublishAck, QueueError> {
        self.ride_out(&format!("publish on {subject}"), || async {
            self.publish(subject.clone(), msg_id.clone(), payload.clone())
                .await?
                .await
                .map_err(nats_error)
        })
        .await
    }

    /// How long requests have been waiting for a leader now, if some are.
    pub(super) fn stalled_for(&self) -> Option<Duration> {
        self.stall.lock().unwrap().since.map(|s| s.elapsed())
    }
}

/// A try that took longer than it was given: as JetStream's own timeouts.
fn no_answer(after: Duration) -> QueueError {
    let e = std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer from JetStream within {after:?}"),
    );
    QueueError::Nats(Arc::new(e))
}

/// Whether `e` is what JetStream answers while a leader is elected (or a
/// node is lost): a timeout, no responders, or a "no leader / not
/// available" API error. A refusal (a wrong sequence, a message too
/// large, a missing stream that stays missing) is not.
pub(super) fn transient(e: &QueueError) -> bool {
    let QueueError::Nats(e) = e else { return false };
    let e: &(dyn std::error::Error + 'static) = &**e;
    if let Some(e) = e.downcast_ref::<std::io::Error>() {
        return e.kind() == std::io::ErrorKind::TimedOut; // `no_answer`
    }
    if let Some(e) = e.downcast_ref::<jetstream::context::PublishError>() {
        return match e.kind() {
            PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
            // What "no responders" becomes: the stream has no leader.
            | PublishErrorKind::StreamNotFound => true,
            PublishErrorKind::Other => source_is_transient(e),
            _ => false,
        };
    }
    if let Some(e) = e.downcast_ref::<async_nats::RequestError>() {
        return request_transient(e);
    }
    if let Some(e) = e.downcast_ref::<stream::LastRawMessageError>() {
        return match e.kind() {
            stream::LastRawMessageErrorKind::JetStream(js) => api_transient(&js),
            stream::LastRawMessageErrorKind::Other => source_is_transient(e),
            _ => false,
        };
    }
    if let Some(e) = e.downcast_ref::<stream::DeleteMessageError>() {
        return match e.kind() {
            stream::DeleteMessageErrorKind::JetStream(js) => api_transient(&js),
            stream::DeleteMessageErrorKind::TimedOut => true,
            stream::DeleteMessageErrorKind::Request => source_is_transient(e),
        };
    }
    if let Some(e) = e.downcast_ref::<stream::ConsumerError>() {
        return match e.kind() {
            stream::ConsumerErrorKind::JetStream(js) => api_transient(&js),
            stream::ConsumerErrorKind::TimedOut => true,
            stream::ConsumerErrorKind::Request => source_is_transient(e),
            _ => false,
        };
    }
    false
}

/// A core request that timed out or found nobody to answer it.
fn request_transient(e: &async_nats::RequestError) -> bool {
    matches!(
        e.kind(),
        async_nats::RequestErrorKind::TimedOut | async_nats::RequestErrorKind::NoResponders
    )
}

/// A JetStream API error that says there is no leader, for now.
fn api_transient(e: &jetstream::Error) -> bool {
    let permanent = [
        ErrorCode::JETSTREAM_NOT_ENABLED,
        ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT,
        ErrorCode::INSUFFICIENT_RESOURCES,
    ];
    let no_leader = [
        ErrorCode::CLUSTER_NOT_AVAILABLE,
        ErrorCode::CLUSTER_NOT_LEADER,
        ErrorCode::CLUSTER_NOT_ACTIVE,
        ErrorCode::STREAM_OFFLINE,
        ErrorCode::CONSUMER_OFFLINE,
    ];
    no_leader.contains(&e.error_code()) || (e.code() == 503 && !permanent.contains(&e.error_code()))
}

/// Whether an error's cause says there is no leader, or no answer, for now.
fn source_is_transient(e: &dyn std::error::Error) -> bool {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(js) = s.downcast_ref::<jetstream::Error>() {
            return api_transient(js);
        }
        if let Some(r) = s.downcast_ref::<async_nats::RequestError>() {
            return request_transient(r);
        }
        if let Some(r) = s.downcast_ref::<jetstream::context::RequestError>() {
            return matches!(
                r.kind(),
                jetstream::context::RequestErrorKind::TimedOut
                    | jetstream::context::RequestErrorKind::NoResponders
            );
        }
        source = s.source();
    }
    false
}
