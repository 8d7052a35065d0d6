//! Publishing, removing and reading messages; the keys of accepted events.

use super::*;

impl NatsQueue {
    /// Publishes one delivery version; returns its sequence, or `None` if
    /// JetStream had it already (same `msg_id`).
    pub(super) async fn publish(
        &self,
        subject: String,
        msg_id: String,
        payload: Bytes,
    ) -> Result<jetstream::context::PublishAckFuture, QueueError> {
        let mut headers = NatsHeaders::new();
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        self.js
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(nats_error)
    }

    /// Takes a message out of the deliveries stream: acks it if it was
    /// claimed through a consumer, else deletes it.
    /// Both are tried again while the stream has no leader (an ack or a
    /// delete twice changes nothing).
    pub(super) async fn remove(&self, held: &Held) -> Result<(), QueueError> {
        self.ride_out("a delivery's removal", || async {
            match &held.reply {
                Some(reply) => {
                    self.js
                        .client()
                        .request(reply.clone(), Bytes::from(jetstream::AckKind::Ack))
                        .await
                        .map_err(nats_error)?;
                    Ok(())
                }
                None => delete(&self.streams.deliveries, held.seq).await,
            }
        })
        .await
    }

    /// Whether `key` was accepted before.
    pub(super) async fn key_seen(&self, key: &str) -> Result<bool, QueueError> {
        let subject = self.key_subject(key);
        self.ride_out("a key read", || async {
            match self
                .streams
                .keys
                .get_last_raw_message_by_subject(&subject)
                .await
            {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(false),
                Err(e) => Err(nats_error(e)),
            }
        })
        .await
    }

    /// Records `key` as accepted now (a copy that raced it changes nothing).
    /// Tried again while there is no leader: a try whose write went
    /// through makes the next one find the key, which is as good.
    pub(super) async fn accept_key(&self, key: &str) -> Result<(), QueueError> {
        let subject = self.key_subject(key);
        let at = now_ms().to_string();
        self.ride_out("a key write", || async {
            let mut headers = NatsHeaders::new();
            headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
            let ack = self
                .js
                .publish_with_headers(subject.clone(), headers, at.clone().into())
                .await
                .map_err(nats_error)?;
            match ack.await {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                    Ok(())
                }
                Err(e) => Err(nats_error(e)),
            }
        })
        .await
    }

    pub(super) fn key_subject(&self, key: &str) -> String {
        format!("{}.k.{}", self.streams.prefix, crate::delivery::uid_of(key))
    }

    /// Every message of `stream` on `filter`, in order, with its sequence.
    pub(super) async fn scan(
        stream: &stream::Stream,
        filter: &str,
        mut each: impl FnMut(u64, &Bytes) -> bool,
    ) -> Result<(), QueueError> {
        let mut seq = 1;
        loop {
            match next_raw(stream, filter, seq).await {
                Ok(m) => {
                    if !each(m.sequence, &m.payload) {
                        return Ok(());
                    }
                    seq = m.sequence + 1;
                }
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => return Ok(()),
                Err(e) => return Err(nats_error(e)),
            }
        }
    }

    pub(super) fn dead_subject(&self, record: &Record) -> String {
        format!(
            "{}.x.{}.{}",
            self.streams.prefix,
            token(&record.receiver()),
            record.id
        )
    }

    pub(super) fn delivered_subject(&self, record: &Record) -> String {
        format!(
            "{}.o.{}.{}",
            self.streams.prefix,
            token(&record.receiver()),
            record.id
        )
    }

    /// Makes the delivery stored at `seq` of `from` (a dead letter or a
    /// delivered one) pending again, due now, with a fresh schedule and its
    /// history.
    pub(super) async fn requeue(
        &self,
        from: &stream::Stream,
        seq: u64,
        payload: &Bytes,
    ) -> Result<bool, QueueError> {
        let Some((mut record, body)) = Record::decode(payload) else {
            return Ok(false);
        };
        let tok = self.ensure_receiver(&record.receiver()).await?;
        record.attempts = 0;
        record.next_ms = now_ms();
        record.held_until = None;
        record.done_ms = None;
        let from_name = &from.cached_info().config.name;
        let ack = self
            .publish(
                self.subject(&tok),
                format!("{}.requeue.{from_name}.{seq}", record.id),
                record.encode(&body),
            )
            .await?;
        ack.await.map_err(nats_error)?;
        self.published(&tok);
        // Pending again either way: a copy left behind is only shown
        // twice, and is deleted at the next replay or purge.
        if let Err(e) = delete(from, seq).await {
            tracing::warn!(id = %record.id, "requeued, but its old copy stays for now: {e}");
        }
        Ok(true)
    }
}

/// The first message of `stream` on `filter` at or after `seq`.
pub(super) async fn next_raw(
    stream: &stream::Stream,
    filter: &str,
    seq: u64,
) -> Result<jetstream::message::StreamMessage, stream::RawMessageError> {
    stream
        .raw_message_builder()
        .sequence(seq)
        .next_by_subject(filter.to_owned())
        .send()
        .await
}

/// Deletes message `seq` of `stream`; one already gone is fine (a delete
/// tried again after its first try went through finds nothing).
pub(super) async fn delete(stream: &stream::Stream, seq: u64) -> Result<(), QueueError> {
    match stream.delete_message(seq).await {
        Ok(_) => Ok(()),
        Err(e) => match e.kind() {
            stream::DeleteMessageErrorKind::JetStream(js) if already_gone(&js) => Ok(()),
            _ => Err(nats_error(e)),
        },
    }
}

/// Whether a delete failed because the message is not there: a single
/// server says so with its own code; a cluster wraps the same "no message
/// found" in a failed delete (10057, status 500).
fn already_gone(e: &jetstream::Error) -> bool {
    let code = e.error_code();
    code == jetstream::ErrorCode::NO_MESSAGE_FOUND
        || code == jetstream::ErrorCode::SEQUENCE_NOT_FOUND
        || (code == jetstream::ErrorCode::STREAM_MESSAGE_DELETE_FAILED
            && e.to_string().contains("no message found"))
}
