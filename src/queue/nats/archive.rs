//! The archive's records on JetStream: the `P_ARCHIVE` stream, bounded by
//! JetStream itself (`max_age`, `max_bytes`, the oldest dropped first).

use super::*;
use jetstream::consumer::{AckPolicy, DeliverPolicy};

impl NatsQueue {
    fn archive_name(&self) -> String {
        format!("{}_ARCHIVE", self.streams.prefix)
    }

    /// The archive's stream, created with `bounds` (or set to them) on the
    /// first call of this run.
    async fn archive_stream(&self, bounds: ArchiveBounds) -> Result<&stream::Stream, QueueError> {
        self.archive
            .get_or_try_init(|| async {
                let config = stream::Config {
                    name: self.archive_name(),
                    subjects: vec![format!("{}.a", self.streams.prefix)],
                    storage: stream::StorageType::File,
                    num_replicas: self.streams.deliveries.cached_info().config.num_replicas,
                    max_age: bounds.max_age,
                    max_bytes: bounds.max_bytes.min(i64::MAX as u64) as i64,
                    discard: stream::DiscardPolicy::Old,
                    ..Default::default()
                };
                let stream = self
                    .js
                    .get_or_create_stream(config.clone())
                    .await
                    .map_err(nats_error)?;
                let current = &stream.cached_info().config;
                if current.max_age != config.max_age || current.max_bytes != config.max_bytes {
                    // Another engine, or an earlier run, kept other bounds:
                    // the last one started decides.
                    let config = stream::Config {
                        max_age: config.max_age,
                        max_bytes: config.max_bytes,
                        ..current.clone()
                    };
                    self.js.update_stream(config).await.map_err(nats_error)?;
                    return self
                        .js
                        .get_stream(self.archive_name())
                        .await
                        .map_err(nats_error);
                }
                Ok(stream)
            })
            .await
    }

    /// See [`Queue::archive`]: published together, then each ack awaited;
    /// a record larger than the server takes is left out. (JetStream
    /// applies the bounds by itself.)
    pub(super) async fn append_archive(
        &self,
        records: Vec<Archived>,
        bounds: ArchiveBounds,
    ) -> Result<usize, QueueError> {
        self.archive_stream(bounds).await?;
        let subject = format!("{}.a", self.streams.prefix);
        // Room for the subject and the headers JetStream adds.
        let max = self
            .js
            .client()
            .server_info()
            .max_payload
            .saturating_sub(1024);
        let before = records.len();
        let records: Vec<_> = records
            .into_iter()
            .filter(|r| r.record.len() <= max)
            .collect();
        let too_large = before - records.len();
        if too_large > 0 {
            tracing::warn!(
                "{too_large} archived events are larger than the NATS server's max_payload \
                 ({max} bytes with room for headers): not archived; raise max_payload in \
                 nats-server's configuration"
            );
        }
        let mut acks = Vec::with_capacity(records.len());
        for r in records {
            let ack = self
                .js
                .publish(subject.clone(), Bytes::from(r.record))
                .await
                .map_err(nats_error)?;
            acks.push(ack);
        }
        for ack in futures::future::join_all(acks.into_iter().map(|a| a.into_future())).await {
            ack.map_err(nats_error)?;
        }
        Ok(too_large)
    }

    /// See [`Queue::archived`]: one page through a consumer of its own,
    /// which is deleted after.
    pub(super) async fn read_archive(
        &self,
        from_ms: u64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Archived>, QueueError> {
        let stream = match self.js.get_stream(self.archive_name()).await {
            Ok(stream) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(js)
                        if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                return Ok(Vec::new()); // never archived to
            }
            Err(e) => return Err(nats_error(e)),
        };
        let deliver_policy = if after == 0 {
            let nanos = i128::from(from_ms) * 1_000_000;
            DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
                    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
            }
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            }
        };
        let consumer = stream
            .create_consumer(pull::Config {
                deliver_policy,
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(60),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(nats_error)?;
        let name = consumer.cached_info().name.clone();
        let read = async {
            let mut page = Vec::new();
            let mut messages = consumer
                .fetch()
                .max_messages(limit.min(10_000))
                .messages()
                .await
                .map_err(nats_error)?;
            while let Some(message) = messages.next().await {
                let message = message.map_err(nats_error)?;
                let info = message.info().map_err(nats_error)?;
                let at_ms = (info.published.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
                // The first page starts at `from_ms` already; later ones
                // follow a sequence, whatever the clock said.
                if after != 0 || at_ms >= from_ms {
                    page.push(Archived {
                        seq: info.stream_sequence,
                        at_ms,
                        record: message.payload.to_vec(),
                    });
                }
            }
            Ok(page)
        }
        .await;
        if let Err(e) = stream.delete_consumer(&name).await {
            tracing::debug!("the archive's reader {name} stays until it expires: {e}");
        }
        read
    }
}
