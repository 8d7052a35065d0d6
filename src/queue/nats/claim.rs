//! Claiming due deliveries: fetched from each receiver's consumer, within
//! its room; retries not yet due parked until they are.

use super::*;

type Consumer = jetstream::consumer::Consumer<pull::Config>;

/// Longest one claim waits, in all, for deliveries this run published and
/// a first fetch did not get (see `claim_due`).
const FETCH_WAIT: Duration = Duration::from_millis(100);

/// How recent this run's last publish to a receiver must be for a claim to
/// wait for it: later, it was seen or another engine took it.
const FETCH_RECENT: Duration = Duration::from_secs(1);

/// How long past its own expiry a fetch is waited for. JetStream answers a
/// fetch at once (or at its expiry) even when it has nothing; a consumer
/// whose leader changes while a fetch waits may never answer it, and
/// nothing else would end it: the claim, and every delivery after it,
/// would wait forever.
const FETCH_SLACK: Duration = Duration::from_secs(2);

/// Up to `want` messages of `consumer`: those it has now, or with `wait`,
/// the first to come within it. `None` if the fetch failed.
pub(super) async fn fetch(
    consumer: &Consumer,
    receiver: &str,
    want: usize,
    wait: Option<Duration>,
) -> Option<Vec<jetstream::Message>> {
    let mut request = consumer.fetch().max_messages(want);
    if let Some(wait) = wait {
        request = request.expires(wait);
    }
    let limit = wait.unwrap_or_default() + FETCH_SLACK;
    let until = tokio::time::sleep(limit);
    tokio::pin!(until);
    let no_end = || {
        tracing::warn!(
            receiver,
            "no end to a fetch of deliveries from NATS within {limit:?}: fetching again"
        )
    };
    let mut messages = tokio::select! {
        messages = request.messages() => match messages {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(receiver, "cannot fetch deliveries from NATS: {e}");
                return None;
            }
        },
        _ = &mut until => {
            no_end();
            return None;
        }
    };
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            m = messages.next() => match m {
                Some(Ok(m)) => batch.push(m),
                Some(Err(e)) => tracing::warn!(receiver, "a fetch from NATS ended early: {e}"),
                None => return Some(batch),
            },
            // What came is kept; what comes after is delivered again once
            // its ack wait has passed. Nothing at all is no answer.
            _ = &mut until => {
                no_end();
                return (!batch.is_empty()).then_some(batch);
            }
        }
    }
}

impl NatsQueue {
    /// Fetches due deliveries from the receivers with room.
    pub(super) async fn claim_due(
        &self,
        now_ms: u64,
        limit: usize,
        room: Room,
    ) -> Result<Claim, QueueError> {
        self.list_receivers().await?;
        let mut claim = Claim::default();
        let mut taken: HashMap<String, usize> = HashMap::new();
        let left = |taken: &HashMap<String, usize>, receiver: &str| {
            room.of(receiver)
                .saturating_sub(taken.get(receiver).copied().unwrap_or(0))
        };
        let mut next_due: Option<u64> = None;
        let mut due_at = |at: u64| next_due = Some(next_due.map_or(at, |n| n.min(at)));
        // Retries kept until due, first.
        {
            let mut state = self.state.lock().unwrap();
            let state = &mut *state;
            state.parked.sort_by_key(|p| p.held.record.next_ms);
            let mut keep = Vec::new();
            for p in std::mem::take(&mut state.parked) {
                let ready = p.held.record.next_ms <= now_ms;
                if ready && claim.claimed.len() < limit && left(&taken, &p.receiver) > 0 {
                    *taken.entry(p.receiver.clone()).or_default() += 1;
                    if let Some(delivery) = p.held.record.delivery(p.held.body.clone()) {
                        claim.claimed.push(Claimed {
                            delivery,
                            attempts: p.held.record.attempts,
                        });
                    }
                    state.held.insert(p.held.record.id.clone(), p.held);
                } else {
                    if !room.paused.contains_key(&p.receiver) {
                        due_at(p.held.record.next_ms);
                    }
                    keep.push(p);
                }
            }
            state.parked = keep;
        }
        let receivers: Vec<(String, String, Consumer, usize)> = {
            let state = self.state.lock().unwrap();
            state
                .receivers
                .iter()
                .filter(|(_, r)| r.busy)
                .map(|(tok, r)| {
                    let recent = r.published_at.is_some_and(|at| at.elapsed() < FETCH_RECENT);
                    let published = if recent { r.published } else { 0 };
                    (tok.clone(), r.name.clone(), r.consumer.clone(), published)
                })
                .collect()
        };
        let mut wait_left = FETCH_WAIT;
        for (tok, name, consumer, published) in receivers {
            if let Some(&until) = room.paused.get(&name) {
                due_at(until);
                continue;
            }
            let want = left(&taken, &name).min(limit - claim.claimed.len());
            if want == 0 {
                continue;
            }
            // A failing fetch skips this receiver only: what was taken
            // from others is held, and must be returned.
            let Some(mut batch) = fetch(&consumer, &name, want, None).await else {
                continue;
            };
            // JetStream tells a consumer of a new message a moment after
            // acknowledging its publish: a fetch just after can come back
            // empty. If this run just published more than came back, one
            // more fetch waits for them, while none is there (other engines
            // may have taken them), `FETCH_WAIT` at most for the whole claim.
            let mut unwaited = false;
            if batch.len() < want.min(published) {
                if wait_left.is_zero() {
                    // No time left in this claim to wait for them: the
                    // receiver stays busy, its count kept, for the next.
                    unwaited = true;
                } else {
                    let began = Instant::now();
                    let more = fetch(&consumer, &name, want - batch.len(), Some(wait_left)).await;
                    wait_left = wait_left.saturating_sub(began.elapsed());
                    batch.extend(more.into_iter().flatten());
                }
            }
            if !unwaited && let Some(r) = self.state.lock().unwrap().receivers.get_mut(&tok) {
                // Published to since this claim began: not dry.
                if batch.len() < want && r.published <= published {
                    r.busy = false;
                }
                // Seen, or taken by another engine: not waited for again.
                r.published = r.published.saturating_sub(published);
            }
            let real_now = crate::util::now_ms();
            for m in batch {
                let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
                let message = m.message;
                let Some(reply) = message.reply.clone() else {
                    continue;
                };
                let client = self.js.client();
                let Some((record, body)) = Record::decode(&message.payload) else {
                    tracing::error!(subject = %message.subject, seq, "a message in the NATS deliveries stream is not a delivery: dropped");
                    let _ = client
                        .publish(reply, Bytes::from(jetstream::AckKind::Term))
                        .await;
                    continue;
                };
                // What to answer JetStream, decided under the lock.
                let answer = {
                    let mut state = self.state.lock().unwrap();
                    if state.held.contains_key(&record.id) {
                        // An older version of one this run sends: the
                        // newer one is the one kept.
                        Some(jetstream::AckKind::Ack)
                    } else {
                        let held = Held {
                            seq,
                            reply: Some(reply.clone()),
                            record,
                            body,
                        };
                        let next = held.record.next_ms;
                        if next > now_ms {
                            due_at(next);
                            if state.parked.len() < PARK_MAX {
                                state.parked.push(Parked {
                                    receiver: name.clone(),
                                    held,
                                });
                                None
                            } else {
                                let wait = next.saturating_sub(real_now);
                                Some(jetstream::AckKind::Nak(Some(Duration::from_millis(wait))))
                            }
                        } else if let Some(delivery) = held.record.delivery(held.body.clone()) {
                            *taken.entry(name.clone()).or_default() += 1;
                            claim.claimed.push(Claimed {
                                delivery,
                                attempts: held.record.attempts,
                            });
                            state.held.insert(held.record.id.clone(), held);
                            None
                        } else {
                            tracing::error!(id = %held.record.id, "a delivery in NATS cannot be read back: dropped");
                            Some(jetstream::AckKind::Term)
                        }
                    }
                };
                if let Some(answer) = answer {
                    let _ = client.publish(reply, Bytes::from(answer)).await;
                }
            }
        }
        claim.next_due = next_due;
        Ok(claim)
    }
}
