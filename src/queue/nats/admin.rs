//! What operators see and do: the backlog, listings, retries and purges.

use super::*;
use crate::delivery::history::keep_latest;

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
        let filter = query.filter.state;
        let (stream, subject, state) = match filter {
            DeliveryState::Pending | DeliveryState::Failed => {
                (&self.streams.deliveries, format!("{p}.*.*"), "pending")
            }
            DeliveryState::Dead => (&self.streams.dead, format!("{p}.x.>"), "dead"),
            DeliveryState::Delivered => (&self.streams.delivered, format!("{p}.o.>"), "delivered"),
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

    /// One delivery with its history: pending, else delivered, else dead.
    /// A delivery moves on by storing its new copy before removing the old
    /// one, so looking where it goes after where it leaves never misses it
    /// (pending before delivered and dead); a dead letter being replayed
    /// moves back, so a lookup that finds nothing looks once more.
    pub(super) async fn get_delivery(
        &self,
        id: String,
    ) -> Result<Option<DeliveryDetail>, QueueError> {
        if !plain_id(&id) {
            return Ok(None);
        }
        for _ in 0..2 {
            if let Some(found) = self.find_delivery(&id).await? {
                return Ok(Some(self.trimmed(found)));
            }
        }
        Ok(None)
    }

    async fn find_delivery(&self, id: &str) -> Result<Option<DeliveryDetail>, QueueError> {
        let p = &self.streams.prefix;
        // Pending deliveries' subjects do not name them: the newest
        // version, while one replaces another, is the last in the stream.
        let mut found = None;
        NatsQueue::scan(
            &self.streams.deliveries,
            &format!("{p}.*.*"),
            |_, payload| {
                if let Some((record, body)) = Record::decode(payload)
                    && record.id == id
                {
                    found = Some(record.detail("pending", body.len()));
                }
                true
            },
        )
        .await?;
        if found.is_some() {
            return Ok(found);
        }
        for (stream, subject, state) in [
            (
                &self.streams.delivered,
                format!("{p}.o.*.{id}"),
                "delivered",
            ),
            (&self.streams.dead, format!("{p}.x.*.{id}"), "dead"),
        ] {
            match next_raw(stream, &subject, 1).await {
                Ok(m) => {
                    if let Some((record, body)) = Record::decode(&m.payload) {
                        return Ok(Some(record.detail(state, body.len())));
                    }
                }
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {}
                Err(e) => return Err(nats_error(e)),
            }
        }
        Ok(None)
    }

    /// `detail` with the latest [`History::attempts`] attempts only.
    fn trimmed(&self, mut detail: DeliveryDetail) -> DeliveryDetail {
        keep_latest(&mut detail.history, self.history.attempts);
        detail
    }

    /// Makes the deliveries `which` names pending again, due now (with
    /// `dry_run`, counts them): dead letters and delivered deliveries.
    /// Pending ones are refused: any engine may hold one (fetched, or kept
    /// until its retry is due), and no one engine can take it from the
    /// others.
    pub(super) async fn replay(&self, which: Replay, dry_run: bool) -> Result<usize, QueueError> {
        let p = &self.streams.prefix;
        let s = &self.streams;
        // Where to look, and what to take there: by id, the first stream
        // that has it.
        let (sources, filter, id) = match &which {
            Replay::One(id) if plain_id(id) => (
                vec![
                    (&s.dead, format!("{p}.x.*.{id}")),
                    (&s.delivered, format!("{p}.o.*.{id}")),
                ],
                None,
                Some(id.as_str()),
            ),
            Replay::One(_) => return Ok(0),
            Replay::Matching(f) => {
                let source = match f.state {
                    DeliveryState::Dead => (&s.dead, format!("{p}.x.>")),
                    DeliveryState::Delivered => (&s.delivered, format!("{p}.o.>")),
                    DeliveryState::Pending | DeliveryState::Failed => {
                        return Err(QueueError::Unsupported(
                            "a replay of pending deliveries on NATS JetStream: any engine may \
                             be holding one; replay dead letters or delivered deliveries",
                        ));
                    }
                };
                (vec![source], Some(f), None)
            }
        };
        let mut n = 0;
        for (stream, subject) in sources {
            // By id, the newest version (a dead letter replayed and dead
            // again has a new message).
            let mut found: HashMap<String, (u64, Bytes)> = HashMap::new();
            NatsQueue::scan(stream, &subject, |seq, payload| {
                if let Some((record, _)) = Record::decode(payload)
                    && id.is_none_or(|id| record.id == id)
                    && filter.is_none_or(|f| {
                        f.wants(&record.hook, &record.receiver(), record.created_ms)
                    })
                {
                    found.insert(record.id, (seq, payload.clone()));
                }
                true
            })
            .await?;
            if dry_run {
                n += found.len();
            } else {
                for (seq, payload) in found.into_values() {
                    if self.requeue(stream, seq, &payload).await? {
                        n += 1;
                    }
                }
            }
            if id.is_some() && n > 0 {
                break;
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
        let filter = format!("{}.k.*", self.streams.prefix);
        purge_until(&self.streams.keys, &filter, before_ms, |payload| {
            std::str::from_utf8(payload)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
        })
        .await
    }

    /// Deletes the deliveries delivered before `before_ms`.
    pub(super) async fn purge_delivered_before(&self, before_ms: u64) -> Result<usize, QueueError> {
        let filter = format!("{}.o.>", self.streams.prefix);
        purge_until(&self.streams.delivered, &filter, before_ms, |payload| {
            Record::decode(payload)
                .and_then(|(r, _)| r.done_ms)
                .unwrap_or(0)
        })
        .await
    }
}

/// Whether `id` can stand in a subject as one token.
fn plain_id(id: &str) -> bool {
    !id.is_empty()
        && !id
            .chars()
            .any(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
}

/// Purges the messages of `stream` stored up to the first one whose time
/// (`at`, Unix ms) is after `before_ms`: messages are stored about in the
/// order of their time (several engines may store a few out of order).
/// Returns how many were purged.
async fn purge_until(
    stream: &stream::Stream,
    filter: &str,
    before_ms: u64,
    at: impl Fn(&Bytes) -> u64,
) -> Result<usize, QueueError> {
    let before = stream.get_info().await.map_err(nats_error)?.state;
    if before.messages == 0 {
        return Ok(0);
    }
    let (mut lo, mut hi) = (before.first_sequence, before.last_sequence + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match next_raw(stream, filter, mid).await {
            Ok(m) => {
                if at(&m.payload) <= before_ms {
                    lo = m.sequence + 1;
                } else {
                    hi = mid;
                }
            }
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => hi = mid,
            Err(e) => return Err(nats_error(e)),
        }
    }
    stream.purge().sequence(lo).await.map_err(nats_error)?;
    let after = stream.get_info().await.map_err(nats_error)?.state;
    Ok(before.messages.saturating_sub(after.messages) as usize)
}
