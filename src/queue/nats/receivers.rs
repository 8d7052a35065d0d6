//! One durable consumer per receiver, shared by every engine.

use super::*;

impl NatsQueue {
    /// The consumer of `receiver`, created if it is new.
    pub(super) async fn ensure_receiver(&self, receiver: &str) -> Result<String, QueueError> {
        let tok = token(receiver);
        if let Some(r) = self.state.lock().unwrap().receivers.get_mut(&tok) {
            r.busy = true;
            return Ok(tok);
        }
        let consumer = self
            .streams
            .deliveries
            .get_or_create_consumer(
                &format!("r{tok}"),
                pull::Config {
                    durable_name: Some(format!("r{tok}")),
                    description: Some(receiver.to_owned()),
                    filter_subject: self.subject(&tok),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: self.ack_wait,
                    max_deliver: -1,
                    max_ack_pending: 20_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(nats_error)?;
        self.state.lock().unwrap().receivers.insert(
            tok.clone(),
            Receiver {
                name: receiver.to_owned(),
                consumer,
                busy: true,
                published: 0,
                published_at: None,
            },
        );
        Ok(tok)
    }

    /// Notes that this run published a delivery for `tok`'s consumer.
    pub(super) fn published(&self, tok: &str) {
        if let Some(r) = self.state.lock().unwrap().receivers.get_mut(tok) {
            r.busy = true;
            r.published += 1;
            r.published_at = Some(Instant::now());
        }
    }

    /// Every receiver's consumer, with its counts.
    pub(super) async fn consumers(&self) -> Result<Vec<jetstream::consumer::Info>, QueueError> {
        self.streams
            .deliveries
            .consumers()
            .try_collect()
            .await
            .map_err(nats_error)
    }

    /// Lists the receivers, with whether each has anything to fetch, if the
    /// last listing is old.
    pub(super) async fn list_receivers(&self) -> Result<(), QueueError> {
        if self
            .state
            .lock()
            .unwrap()
            .listed
            .is_some_and(|at| at.elapsed() < LIST_EVERY)
        {
            return Ok(());
        }
        let infos = self.consumers().await?;
        let mut fresh = Vec::new();
        {
            let mut state = self.state.lock().unwrap();
            state.listed = Some(Instant::now());
            for info in infos {
                let Some(tok) = info.name.strip_prefix('r') else {
                    continue;
                };
                let busy = info.num_pending > 0 || info.num_ack_pending > 0;
                match state.receivers.get_mut(tok) {
                    Some(r) => r.busy |= busy,
                    None => fresh.push((tok.to_owned(), info, busy)),
                }
            }
        }
        for (tok, info, busy) in fresh {
            let consumer = self
                .streams
                .deliveries
                .get_consumer::<pull::Config>(&info.name)
                .await
                .map_err(nats_error)?;
            let name = info.config.description.unwrap_or_default();
            self.state.lock().unwrap().receivers.insert(
                tok,
                Receiver {
                    name,
                    consumer,
                    busy,
                    published: 0,
                    published_at: None,
                },
            );
        }
        Ok(())
    }
}

/// Messages of `stream` on `filter` per receiver token (the subject's
/// third token).
pub(super) async fn count_by_receiver(
    stream: &stream::Stream,
    filter: &str,
) -> Result<HashMap<String, u64>, QueueError> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut subjects = stream
        .info_with_subjects(filter)
        .await
        .map_err(nats_error)?;
    while let Some(entry) = subjects.next().await {
        let (subject, count) = entry.map_err(nats_error)?;
        if let Some(tok) = subject.split('.').nth(2) {
            *counts.entry(tok.to_owned()).or_default() += count as u64;
        }
    }
    Ok(counts)
}
