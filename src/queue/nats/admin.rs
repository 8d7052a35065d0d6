//! What operators see and do: the backlog, listings, retries and purges.

use super::*;

impl NatsQueue {
    /// Messages waiting: deliveries and journaled events.
    pub(super) async fn count_backlog(&self) -> Result<usize, QueueError> {
        let deliveries = self
            .streams
            .deliveries
            .get_info()
            .await
            .map_err(nats_error)?;
        let journal = self.streams.journal.get_info().await.map_err(nats_error)?;
        Ok((deliveries.state.messages + journal.state.messages) as usize)
    }

    /// Deliveries in one state, for operators.
    pub(super) async fn list_deliveries(
        &self,
        query: DeliveryQuery,
    ) -> Result<Vec<DeliveryInfo>, QueueError> {
        let p = &self.streams.prefix;
        let filter = query.state;
        let (stream, subject, state) = match filter {
            DeliveryState::Pending | DeliveryState::Failed => {
                (&self.streams.deliveries, format!("{p}.*.*"), "pending")
            }
            DeliveryState::Dead => (&self.streams.dead, format!("{p}.x.>"), "dead"),
        };
        // By id: while a delivery changes state, its old version is
        // removed just after the new one is stored (later in the
        // stream), and only the newest is shown. The stream is in the
        // order of last change, not of creation, so the whole of it is
        // read to find a page's oldest rows: no row is skipped.
        let mut found: HashMap<String, DeliveryInfo> = HashMap::new();
        NatsQueue::scan(stream, &subject, |_, payload| {
            if let Some((record, body)) = Record::decode(payload) {
                let info = record.info(state, body.len());
                if (filter == DeliveryState::Failed && record.attempts == 0) || !query.wants(&info)
                {
                    found.remove(&record.id);
                } else {
                    found.insert(record.id.clone(), info);
                }
            }
            true
        })
        .await?;
        let mut out: Vec<DeliveryInfo> = found.into_values().collect();
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        out.truncate(query.limit);
        Ok(out)
    }

    /// Makes dead letters pending again.
    pub(super) async fn retry_dead(&self, which: DeadLetters) -> Result<usize, QueueError> {
        let p = &self.streams.prefix;
        let subject = match &which {
            DeadLetters::One(id) if !id.is_empty() && !id.contains(['.', '*', '>', ' ']) => {
                format!("{p}.x.*.{id}")
            }
            DeadLetters::One(_) => return Ok(0),
            DeadLetters::All => format!("{p}.x.>"),
        };
        let mut found = Vec::new();
        NatsQueue::scan(&self.streams.dead, &subject, |seq, payload| {
            found.push((seq, payload.clone()));
            true
        })
        .await?;
        let mut n = 0;
        for (seq, payload) in found {
            if self.requeue(seq, &payload).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Pending and dead deliveries per receiver.
    pub(super) async fn depth_by_receiver(&self) -> Result<HashMap<String, Depth>, QueueError> {
        // Counts come from the streams (exact as of now); a consumer's
        // own counts are updated in the background and may lag.
        let p = &self.streams.prefix;
        let pending = count_by_receiver(&self.streams.deliveries, &format!("{p}.*.*")).await?;
        let dead = count_by_receiver(&self.streams.dead, &format!("{p}.x.>")).await?;
        let names: HashMap<String, String> = self
            .consumers()
            .await?
            .into_iter()
            .filter_map(|info| {
                let tok = info.name.strip_prefix('r')?.to_owned();
                Some((tok, info.config.description.unwrap_or_default()))
            })
            .collect();
        let mut out = HashMap::new();
        for (tok, name) in names {
            let pending = pending.get(&tok).copied().unwrap_or(0);
            let dead = dead.get(&tok).copied().unwrap_or(0);
            if pending == 0 && dead == 0 {
                continue;
            }
            let oldest_ms = match next_raw(&self.streams.deliveries, &self.subject(&tok), 1).await {
                Ok(m) => Record::decode(&m.payload).map(|(r, _)| r.created_ms),
                Err(_) => None,
            };
            out.insert(
                name,
                Depth {
                    pending,
                    dead,
                    oldest_ms,
                },
            );
        }
        Ok(out)
    }

    /// Deletes dead letters older than `before_ms`.
    pub(super) async fn purge_dead_before(&self, before_ms: u64) -> Result<usize, QueueError> {
        let mut old = Vec::new();
        let filter = format!("{}.x.>", self.streams.prefix);
        NatsQueue::scan(&self.streams.dead, &filter, |seq, payload| {
            if Record::decode(payload).is_some_and(|(r, _)| r.created_ms <= before_ms) {
                old.push(seq);
            }
            true
        })
        .await?;
        for &seq in &old {
            delete(&self.streams.dead, seq).await?;
        }
        Ok(old.len())
    }

    /// Forgets the keys accepted before `before_ms`.
    pub(super) async fn forget_keys_before(&self, before_ms: u64) -> Result<usize, QueueError> {
        let keys = &self.streams.keys;
        let before = keys.get_info().await.map_err(nats_error)?.state;
        if before.messages == 0 {
            return Ok(0);
        }
        // Keys are stored in the order they were accepted: find the
        // first one accepted after `before_ms`, and purge up to it.
        let filter = format!("{}.k.*", self.streams.prefix);
        let (mut lo, mut hi) = (before.first_sequence, before.last_sequence + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match next_raw(keys, &filter, mid).await {
                Ok(m) => {
                    let at: u64 = std::str::from_utf8(&m.payload)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    if at <= before_ms {
                        lo = m.sequence + 1;
                    } else {
                        hi = mid;
                    }
                }
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => hi = mid,
                Err(e) => return Err(nats_error(e)),
            }
        }
        keys.purge().sequence(lo).await.map_err(nats_error)?;
        let after = keys.get_info().await.map_err(nats_error)?.state;
        Ok(before.messages.saturating_sub(after.messages) as usize)
    }
}
