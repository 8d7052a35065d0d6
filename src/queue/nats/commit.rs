//! The journal and the commit of a batch; an attempt's outcome recorded.

use super::*;

impl NatsQueue {
    /// Journals an accepted post event, unless its key was seen.
    pub(super) async fn journal_event(&self, event: Journaled) -> Result<Option<i64>, QueueError> {
        if let Some(key) = &event.key
            && self.key_seen(key).await?
        {
            return Ok(None);
        }
        let payload = journal_entry(&event);
        // Its uid as its id, so a publish tried again is stored once.
        let subject = format!("{}.j", self.streams.prefix);
        let ack = self
            .store(subject, format!("j.{}", event.uid), payload.into())
            .await?;
        if let Some(key) = &event.key {
            self.accept_key(key).await?;
        }
        Ok(Some(ack.sequence as i64))
    }

    /// Publishes a batch's deliveries, and retires its journaled event.
    pub(super) async fn commit_batch(&self, batch: &Batch) -> Result<Committed, QueueError> {
        if let Some(key) = &batch.key
            && self.key_seen(key).await?
        {
            return Ok(Committed::Duplicate);
        }
        let now = now_ms();
        let mut acks = Vec::new();
        for (d, claimed) in batch
            .claimed
            .iter()
            .map(|d| (d, true))
            .chain(batch.queued.iter().map(|d| (d, false)))
        {
            let receiver = d.receiver();
            let tok = self
                .ride_out("a receiver's consumer", || self.ensure_receiver(&receiver))
                .await?;
            let mut record = Record::of(d, now);
            // Sent at once by this run: out of the consumer's sight.
            let subject = if claimed {
                record.held_until = Some(now + self.lease_ms);
                format!("{}.h.{tok}", self.streams.prefix)
            } else {
                self.subject(&tok)
            };
            let payload = record.encode(&d.body);
            let ack = self
                .publish(subject.clone(), d.id.clone(), payload.clone())
                .await;
            acks.push((record, d.body.clone(), ack, tok, subject, payload));
        }
        // What this run sends itself is held only once the whole batch
        // is in: after a failure the caller sends none of it, and a
        // delivery left held here would be skipped as "being sent" by
        // this run's lease sweep forever. Unheld, it is freed like any
        // lapsed lease (and a retry of the batch is a duplicate).
        let mut held = Vec::new();
        for (record, body, ack, tok, subject, payload) in acks {
            let ack = match ack {
                Ok(ack) => ack.await.map_err(nats_error),
                Err(e) => Err(e),
            };
            let ack = match ack {
                Ok(ack) => ack,
                // No leader for a moment: publish it again, under the same
                // id, until one answers. If the first publish was stored,
                // this one is a duplicate of it, and treated as any
                // duplicate: not held by this run (another's copy may be
                // the one stored), so a delivery to send at once is sent
                // once its lease ends, late rather than twice.
                Err(e) if retry::transient(&e) => {
                    self.store(subject, record.id.clone(), payload).await?
                }
                Err(e) => return Err(e),
            };
            if record.held_until.is_none() && !ack.duplicate {
                self.published(&tok);
            }
            if record.held_until.is_some() && !ack.duplicate {
                held.push(Held {
                    seq: ack.sequence,
                    reply: None,
                    record,
                    body,
                });
            }
        }
        if let Some(key) = &batch.key {
            self.accept_key(key).await?;
        }
        if let Some(ticket) = batch.ticket {
            self.ride_out("a journal entry's removal", || {
                delete(&self.streams.journal, ticket as u64)
            })
            .await?;
        }
        let claimed = held.iter().map(|h| h.record.id.clone()).collect();
        let mut state = self.state.lock().unwrap();
        for h in held {
            state.held.insert(h.record.id.clone(), h);
        }
        Ok(Committed::Done { claimed })
    }

    /// The journaled events whose deliveries were never committed.
    pub(super) async fn unfinished_events(&self) -> Result<Vec<Journaled>, QueueError> {
        let mut out = Vec::new();
        let filter = format!("{}.j", self.streams.prefix);
        NatsQueue::scan(&self.streams.journal, &filter, |seq, payload| {
            match serde_json::from_slice::<Entry>(payload) {
                Ok(e) => out.push(e.journaled(seq as i64)),
                Err(e) => tracing::error!(seq, "a journal entry in NATS is not valid: {e}"),
            }
            true
        })
        .await?;
        // And those kept on this engine's disk while JetStream had no leader.
        if let Some(spill) = &self.spill {
            for (ticket, entry) in spill.journaled()? {
                match serde_json::from_slice::<Entry>(&entry) {
                    Ok(e) => out.push(e.journaled(ticket)),
                    Err(e) => tracing::error!(
                        ticket,
                        "a journal entry kept on this engine's disk is not valid: {e}"
                    ),
                }
            }
        }
        Ok(out)
    }

    /// Records how an attempt ended: removes (keeping it as delivered),
    /// retries or buries the delivery, with `attempt` in its history.
    pub(super) async fn finish_attempt(
        &self,
        id: String,
        attempts: u32,
        how: Finish,
        attempt: AttemptRecord,
    ) -> Result<(), QueueError> {
        let Some(held) = self.state.lock().unwrap().held.remove(&id) else {
            return Ok(());
        };
        let done = async {
            let mut record = held.record.clone();
            record.attempts = attempts;
            record.held_until = None;
            record.last_status = attempt.status;
            record.last_error = attempt.error.clone();
            record.keep(&attempt, self.history.attempts);
            let mut retried = None;
            let (subject, msg_id) = match how {
                Finish::Delivered if self.history.delivered.is_zero() => (None, ""),
                Finish::Delivered => {
                    record.done_ms = Some(now_ms());
                    (Some(self.delivered_subject(&record)), "done")
                }
                Finish::Retry { at_ms } => {
                    record.next_ms = at_ms;
                    let receiver = record.receiver();
                    let tok = self
                        .ride_out("a receiver's consumer", || self.ensure_receiver(&receiver))
                        .await?;
                    retried = Some(tok.clone());
                    (Some(self.subject(&tok)), "next")
                }
                Finish::Dead => (Some(self.dead_subject(&record)), "dead"),
            };
            if let Some(subject) = subject {
                let msg_id = format!("{id}.{msg_id}.{}", held.seq);
                let stored = self.store(subject, msg_id, record.encode(&held.body));
                match (stored.await, how) {
                    (Ok(ack), _) => {
                        if let (Some(tok), false) = (&retried, ack.duplicate) {
                            self.published(tok);
                        }
                    }
                    // The delivered copy is history: without it, the
                    // delivery is still delivered, not sent again.
                    (Err(e), Finish::Delivered) => {
                        tracing::warn!(%id, "cannot keep a delivered delivery's history in NATS: {e}");
                    }
                    (Err(e), _) => return Err(e),
                }
            }
            self.remove(&held).await
        };
        match done.await {
            Ok(()) => Ok(()),
            Err(e) => {
                // Still held: recording it may be tried again.
                self.state.lock().unwrap().held.insert(id, held);
                Err(e)
            }
        }
    }
}

/// A journal entry as it is kept (in JetStream, or on the engine's disk).
pub(super) fn journal_entry(event: &Journaled) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct JournalEntry<'a> {
        uid: &'a str,
        key: Option<&'a str>,
        hooks: &'a [String],
        payload: &'a str,
    }
    serde_json::to_vec(&JournalEntry {
        uid: &event.uid,
        key: event.key.as_deref(),
        hooks: &event.hooks,
        payload: &event.payload,
    })
    .expect("an entry serializes")
}

/// A journal entry read back.
#[derive(Deserialize)]
struct Entry {
    uid: String,
    key: Option<String>,
    hooks: Vec<String>,
    payload: String,
}

impl Entry {
    fn journaled(self, ticket: i64) -> Journaled {
        Journaled {
            ticket,
            uid: self.uid,
            key: self.key,
            hooks: self.hooks,
            payload: self.payload,
        }
    }
}
