//! What this run holds: leases that ended, claims renewed, all handed
//! back when it stops.

use super::*;

impl NatsQueue {
    /// Requeues the deliveries held under a lease that ended (their engine
    /// died while sending them), oldest first: leases are equally long, so
    /// the first one still running ends the search.
    pub(super) async fn free_expired(&self) -> Result<(), QueueError> {
        let filter = format!("{}.h.*", self.streams.prefix);
        let mut seq = 1;
        loop {
            let m = match next_raw(&self.streams.deliveries, &filter, seq).await {
                Ok(m) => m,
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => return Ok(()),
                Err(e) => return Err(nats_error(e)),
            };
            seq = m.sequence + 1;
            let Some((mut record, body)) = Record::decode(&m.payload) else {
                delete(&self.streams.deliveries, m.sequence).await?;
                continue;
            };
            if record.held_until.is_some_and(|until| until > now_ms()) {
                return Ok(());
            }
            let mine = self
                .state
                .lock()
                .unwrap()
                .held
                .get(&record.id)
                .is_some_and(|h| h.seq == m.sequence);
            if mine {
                continue; // still being sent here: it is recorded soon
            }
            record.held_until = None;
            let tok = self.ensure_receiver(&record.receiver()).await?;
            let msg_id = format!("{}.free.{}", record.id, m.sequence);
            let ack = self
                .publish(self.subject(&tok), msg_id, record.encode(&body))
                .await?;
            ack.await.map_err(nats_error)?;
            self.published(&tok);
            delete(&self.streams.deliveries, m.sequence).await?;
        }
    }

    /// Extends the claims this run holds.
    pub(super) async fn renew(&self) {
        let replies: Vec<Subject> = {
            let state = self.state.lock().unwrap();
            let held = state.held.values().filter_map(|h| h.reply.clone());
            let parked = state.parked.iter().filter_map(|p| p.held.reply.clone());
            held.chain(parked).collect()
        };
        let client = self.js.client();
        for reply in replies {
            let _ = client
                .publish(reply, Bytes::from(jetstream::AckKind::Progress))
                .await;
        }
    }

    /// Hands back what this run holds: others may take it at once.
    pub(super) fn release_now(&self) -> impl Future<Output = ()> + Send + 'static {
        let (held, parked) = {
            let mut state = self.state.lock().unwrap();
            let held: Vec<Held> = state.held.drain().map(|(_, h)| h).collect();
            let parked: Vec<Parked> = std::mem::take(&mut state.parked);
            (held, parked)
        };
        let js = self.js.clone();
        let streams = self.streams.clone();
        let released = self.released.clone();
        async move {
            let client = js.client();
            let now = now_ms();
            for p in parked {
                let delay = Duration::from_millis(p.held.record.next_ms.saturating_sub(now));
                if let Some(reply) = p.held.reply {
                    let nak = jetstream::AckKind::Nak(Some(delay));
                    let _ = client.request(reply, Bytes::from(nak)).await;
                }
            }
            for h in held {
                match h.reply {
                    Some(reply) => {
                        let nak = jetstream::AckKind::Nak(None);
                        let _ = client.request(reply, Bytes::from(nak)).await;
                    }
                    None => {
                        // Queued with a lease: queue it again without one.
                        let mut record = h.record.clone();
                        record.held_until = None;
                        let subject = format!("{}.d.{}", streams.prefix, token(&record.receiver()));
                        let mut headers = NatsHeaders::new();
                        headers.insert("Nats-Msg-Id", format!("{}.free.{}", record.id, h.seq));
                        let payload = record.encode(&h.body);
                        if let Ok(ack) = js.publish_with_headers(subject, headers, payload).await
                            && ack.await.is_ok()
                        {
                            let _ = delete(&streams.deliveries, h.seq).await;
                        }
                    }
                }
            }
            let _ = released.send(true);
        }
    }
}
