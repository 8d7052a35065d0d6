//! The queue on NATS JetStream, shared by several engines.
//!
//! Four streams, named from [`NatsConfig::prefix`] (`P` below):
//! - `P_DELIVERIES` (work-queue retention), one message per pending
//!   delivery on `P.d.<receiver>` (or `P.h.<receiver>`, see below), where `<receiver>` is a hash of its
//!   `host:port`. Each receiver has one durable pull consumer, `r<receiver>`
//!   (its description is the receiver's name), shared by every engine: a
//!   fetch claims, and a claim lasts `ack_wait` unless the engine renews it,
//!   which a live one does every third of that. So a slow or dead receiver
//!   holds up its own consumer only.
//! - `P_DEAD`: dead letters on `P.x.<receiver>.<id>`, kept
//!   `dead_letter_days`.
//! - `P_JOURNAL`: accepted post events whose hooks have not finished, on
//!   `P.j`; a ticket is the message's sequence.
//! - `P_KEYS`: the keys of accepted events, one message each on
//!   `P.k.<hash of key>`, holding when it was accepted.
//!
//! A delivery's state travels in its message ([`Record`] then the body).
//! Changing it (a retry, a dead letter) publishes the new version before
//! removing the old one: a crash between the two leaves both, and the
//! delivery is sent again (at least once) rather than lost. Every publish
//! has a `Nats-Msg-Id`, so a publish retried after a lost ack is kept once.
//!
//! A delivery the committing engine sends at once (one of a
//! [`Batch`]'s `claimed`) is not fetched: it is published on
//! `P.h.<receiver>`, which no consumer reads, with a lease (`held_until`).
//! Its owner removes it once the attempt is recorded. If the owner dies,
//! any engine moves it to `P.d.<receiver>` once the lease has ended.
//!
//! A retry not yet due that an engine fetches is kept by that engine (and
//! renewed) until it is due, up to [`PARK_MAX`] of them; beyond, it is put
//! back with a delay (a `nak`), and JetStream hands it out again when due.

use super::*;
use crate::config::NatsConfig;
use crate::delivery::QueuedUnder;
use crate::util::now_ms;
use async_nats::jetstream::{self, consumer::pull, stream};
use async_nats::{HeaderMap as NatsHeaders, Subject};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Most retries not yet due that one engine keeps until they are due.
const PARK_MAX: usize = 4096;

/// How often the receivers (consumers) and what they hold are listed, so
/// that work queued by other engines is seen.
const LIST_EVERY: Duration = Duration::from_millis(500);

/// How long JetStream recognises a `Nats-Msg-Id` it has stored.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

/// A delivery's state, stored before its body in its message.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: String,
    hook: String,
    url: String,
    headers: Vec<(String, String)>,
    signed: bool,
    allow: Option<String>,
    attempts: u32,
    created_ms: u64,
    next_ms: u64,
    /// Being sent by the engine that queued it until then (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    held_until: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_status: Option<u16>,
}

impl Record {
    fn of(d: &Delivery, now: u64) -> Record {
        Record {
            id: d.id.clone(),
            hook: d.hook.to_string(),
            url: d.url.to_string(),
            headers: d
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            signed: d.queued.signed,
            allow: d.queued.allow.as_deref().map(str::to_owned),
            attempts: 0,
            created_ms: now,
            next_ms: now,
            held_until: None,
            last_error: None,
            last_status: None,
        }
    }

    fn encode(&self, body: &[u8]) -> Bytes {
        let meta = serde_json::to_vec(self).expect("a record serializes");
        let mut out = Vec::with_capacity(4 + meta.len() + body.len());
        out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(body);
        out.into()
    }

    fn decode(payload: &Bytes) -> Option<(Record, Bytes)> {
        let len = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?) as usize;
        let meta = payload.get(4..4 + len)?;
        let record = serde_json::from_slice(meta).ok()?;
        Some((record, payload.slice(4 + len..)))
    }

    fn delivery(&self, body: Bytes) -> Option<Delivery> {
        let mut headers = HeaderMap::new();
        for (k, v) in &self.headers {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            );
        }
        Some(Delivery {
            id: self.id.clone(),
            hook: self.hook.as_str().into(),
            url: self.url.parse().ok()?,
            headers,
            body,
            queued: QueuedUnder {
                signed: self.signed,
                allow: self.allow.as_deref().map(Into::into),
            },
        })
    }

    fn receiver(&self) -> String {
        match url::Url::parse(&self.url) {
            Ok(url) => format!(
                "{}:{}",
                url.host_str().unwrap_or(""),
                url.port_or_known_default().unwrap_or(0)
            ),
            Err(_) => String::new(),
        }
    }

    fn info(&self, state: &'static str, body_bytes: usize) -> DeliveryInfo {
        DeliveryInfo {
            id: self.id.clone(),
            hook: self.hook.clone(),
            url: self.url.clone(),
            receiver: url::Url::parse(&self.url)
                .map(|u| crate::delivery::receiver_of(&u))
                .unwrap_or_default(),
            state,
            attempts: self.attempts,
            created_ms: self.created_ms,
            next_ms: (state == "pending").then_some(self.next_ms),
            last_error: self.last_error.clone(),
            last_status: self.last_status,
            body_bytes,
        }
    }
}

/// A receiver's token in subjects and consumer names.
fn token(receiver: &str) -> String {
    use sha2::{Digest, Sha256};
    crate::util::hex(&Sha256::digest(receiver.as_bytes())[..8])
}

/// A delivery this engine run holds: claimed (through a consumer, with the
/// reply subject that acks it) or queued by it with a lease.
#[derive(Debug)]
struct Held {
    seq: u64,
    reply: Option<Subject>,
    record: Record,
    body: Bytes,
}

/// A retry fetched before it is due, kept until then.
#[derive(Debug)]
struct Parked {
    receiver: String,
    held: Held,
}

#[derive(Debug)]
struct Receiver {
    name: String,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    /// Whether it may have something to fetch, as last seen.
    busy: bool,
}

#[derive(Debug, Default)]
struct State {
    /// By token.
    receivers: HashMap<String, Receiver>,
    listed: Option<Instant>,
    held: HashMap<String, Held>,
    parked: Vec<Parked>,
}

/// The streams.
#[derive(Debug, Clone)]
struct Streams {
    prefix: String,
    deliveries: stream::Stream,
    dead: stream::Stream,
    journal: stream::Stream,
    keys: stream::Stream,
}

/// The JetStream queue of one engine run.
pub(crate) struct NatsQueue {
    js: jetstream::Context,
    streams: Streams,
    ack_wait: Duration,
    /// How long a delivery queued as claimed is leased to this run (ms).
    lease_ms: u64,
    state: Mutex<State>,
    /// Tells, once what this run held is handed back, that it was.
    released: watch::Sender<bool>,
    renew: tokio::task::JoinHandle<()>,
}

fn nats_error(e: impl Into<async_nats::Error>) -> QueueError {
    QueueError::Nats(Arc::from(e.into()))
}

impl NatsQueue {
    /// Connects and creates the streams that do not exist yet.
    pub async fn open(
        nats: &NatsConfig,
        settings: &QueueSettings,
    ) -> Result<Arc<NatsQueue>, QueueError> {
        let connect = |reason: String, source: Option<async_nats::Error>| QueueError::Connect {
            url: nats.url.clone(),
            reason,
            source: source.map(Arc::from),
        };
        let mut options = async_nats::ConnectOptions::new()
            .name("wasmhooks")
            .retry_on_initial_connect()
            .max_reconnects(None);
        if let Some(creds) = &nats.credentials {
            options = options.credentials_file(creds).await.map_err(|e| {
                connect(
                    format!("cannot read the credentials file {}", creds.display()),
                    Some(e.into()),
                )
            })?;
        }
        let servers: Vec<&str> = nats.url.split(',').map(str::trim).collect();
        // A first connection within a few seconds, or a clear error.
        let client = tokio::time::timeout(Duration::from_secs(10), options.connect(servers))
            .await
            .map_err(|_| {
                connect(
                    "no answer within 10 s: is nats-server running there, with JetStream (-js)?"
                        .into(),
                    None,
                )
            })?
            .map_err(|e| connect("cannot connect".into(), Some(e.into())))?;
        tokio::time::timeout(Duration::from_secs(10), async {
            while client.connection_state() != async_nats::connection::State::Connected {
                client.flush().await.ok();
            }
        })
        .await
        .map_err(|_| {
            connect(
                "no answer within 10 s: is nats-server running there, with JetStream (-js)?".into(),
                None,
            )
        })?;
        let room = settings.max_record_bytes;
        let max_payload = client.server_info().max_payload;
        if max_payload < room {
            tracing::warn!(
                "the NATS server takes messages of up to {max_payload} bytes: deliveries with \
                 bodies near max_body_bytes will fail to queue; raise max_payload in \
                 nats-server's configuration to at least {room}"
            );
        }
        let js = jetstream::new(client);
        let p = &nats.prefix;
        let replicas = nats.replicas;
        let make = |name: &str, subjects: Vec<String>| stream::Config {
            name: format!("{p}_{name}"),
            subjects,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        let dead_age = settings.dead_letter_age;
        let configs = [
            stream::Config {
                retention: stream::RetentionPolicy::WorkQueue,
                ..make("DELIVERIES", vec![format!("{p}.d.*"), format!("{p}.h.*")])
            },
            stream::Config {
                max_age: dead_age,
                ..make("DEAD", vec![format!("{p}.x.>")])
            },
            make("JOURNAL", vec![format!("{p}.j")]),
            stream::Config {
                max_messages_per_subject: 1,
                ..make("KEYS", vec![format!("{p}.k.*")])
            },
        ];
        let mut opened = Vec::new();
        for config in configs {
            let name = config.name.clone();
            // A cluster that is still forming (no leader yet, peers not all
            // known) refuses for a while: wait for it, up to a deadline.
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut pause = Duration::from_millis(100);
            let stream = loop {
                match js.get_or_create_stream(config.clone()).await {
                    Ok(stream) => break stream,
                    Err(e) if Instant::now() < deadline => {
                        tracing::warn!(
                            "cannot create or open the stream {name} yet ({e}); retrying"
                        );
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(2));
                    }
                    Err(e) => {
                        return Err(connect(
                            format!(
                                "cannot create or open the stream {name} within 30 s (with \
                                 replicas = {replicas}, the cluster needs that many JetStream \
                                 servers)"
                            ),
                            Some(e.into()),
                        ));
                    }
                }
            };
            opened.push(stream);
        }
        let [deliveries, dead, journal, keys] = <[stream::Stream; 4]>::try_from(opened).unwrap();
        let streams = Streams {
            prefix: p.clone(),
            deliveries,
            dead,
            journal,
            keys,
        };
        let ack_wait = Duration::from_millis(nats.ack_wait_ms);
        let queue = Arc::new_cyclic(|weak: &std::sync::Weak<NatsQueue>| {
            let weak = weak.clone();
            let renew = tokio::spawn(async move {
                let every = ack_wait / 3;
                loop {
                    tokio::time::sleep(every).await;
                    let Some(queue) = weak.upgrade() else { return };
                    queue.renew().await;
                    if let Err(e) = queue.free_expired().await {
                        tracing::warn!("cannot requeue deliveries whose engine died: {e}");
                    }
                }
            });
            NatsQueue {
                js,
                streams,
                ack_wait,
                lease_ms: nats.ack_wait_ms + settings.attempt_timeout.as_millis() as u64,
                state: Mutex::new(State::default()),
                released: watch::channel(false).0,
                renew,
            }
        });
        Ok(queue)
    }

    /// Becomes true once what this run held is handed back (after it is
    /// dropped or [`Queue::release`]d).
    #[cfg(test)]
    pub fn released(&self) -> watch::Receiver<bool> {
        self.released.subscribe()
    }

    fn subject(&self, receiver_token: &str) -> String {
        format!("{}.d.{receiver_token}", self.streams.prefix)
    }

    /// Requeues the deliveries held under a lease that ended (their engine
    /// died while sending them), oldest first: leases are equally long, so
    /// the first one still running ends the search.
    async fn free_expired(&self) -> Result<(), QueueError> {
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
            delete(&self.streams.deliveries, m.sequence).await?;
        }
    }

    /// Extends the claims this run holds.
    async fn renew(&self) {
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

    /// The consumer of `receiver`, created if it is new.
    async fn ensure_receiver(&self, receiver: &str) -> Result<String, QueueError> {
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
            },
        );
        Ok(tok)
    }

    /// Every receiver's consumer, with its counts.
    async fn consumers(&self) -> Result<Vec<jetstream::consumer::Info>, QueueError> {
        self.streams
            .deliveries
            .consumers()
            .try_collect()
            .await
            .map_err(nats_error)
    }

    /// Lists the receivers, with whether each has anything to fetch, if the
    /// last listing is old.
    async fn list_receivers(&self) -> Result<(), QueueError> {
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
                },
            );
        }
        Ok(())
    }

    /// Publishes one delivery version; returns its sequence, or `None` if
    /// JetStream had it already (same `msg_id`).
    async fn publish(
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
    async fn remove(&self, held: &Held) -> Result<(), QueueError> {
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
    }

    /// Whether `key` was accepted before.
    async fn key_seen(&self, key: &str) -> Result<bool, QueueError> {
        let subject = self.key_subject(key);
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
    }

    /// Records `key` as accepted now (a copy that raced it changes nothing).
    async fn accept_key(&self, key: &str) -> Result<(), QueueError> {
        let mut headers = NatsHeaders::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
        let ack = self
            .js
            .publish_with_headers(self.key_subject(key), headers, now_ms().to_string().into())
            .await
            .map_err(nats_error)?;
        match ack.await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => Ok(()),
            Err(e) => Err(nats_error(e)),
        }
    }

    fn key_subject(&self, key: &str) -> String {
        format!("{}.k.{}", self.streams.prefix, crate::delivery::uid_of(key))
    }

    /// Every message of `stream` on `filter`, in order, with its sequence.
    async fn scan(
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

    /// Hands back what this run holds: others may take it at once.
    fn release_now(&self) -> impl Future<Output = ()> + Send + 'static {
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

    fn dead_subject(&self, record: &Record) -> String {
        format!(
            "{}.x.{}.{}",
            self.streams.prefix,
            token(&record.receiver()),
            record.id
        )
    }

    /// Makes the dead letter at `seq` pending again, due now.
    async fn requeue(&self, seq: u64, payload: &Bytes) -> Result<bool, QueueError> {
        let Some((mut record, body)) = Record::decode(payload) else {
            return Ok(false);
        };
        let tok = self.ensure_receiver(&record.receiver()).await?;
        record.attempts = 0;
        record.next_ms = now_ms();
        record.held_until = None;
        let ack = self
            .publish(
                self.subject(&tok),
                format!("{}.requeue.{seq}", record.id),
                record.encode(&body),
            )
            .await?;
        ack.await.map_err(nats_error)?;
        delete(&self.streams.dead, seq).await?;
        Ok(true)
    }
}

/// The first message of `stream` on `filter` at or after `seq`.
async fn next_raw(
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

/// Messages of `stream` on `filter` per receiver token (the subject's
/// third token).
async fn count_by_receiver(
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

/// Deletes message `seq` of `stream`; one already gone is fine.
async fn delete(stream: &stream::Stream, seq: u64) -> Result<(), QueueError> {
    match stream.delete_message(seq).await {
        Ok(_) => Ok(()),
        Err(e) => match e.kind() {
            stream::DeleteMessageErrorKind::JetStream(js)
                if js.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND
                    || js.error_code() == jetstream::ErrorCode::SEQUENCE_NOT_FOUND =>
            {
                Ok(())
            }
            _ => Err(nats_error(e)),
        },
    }
}

impl Drop for NatsQueue {
    fn drop(&mut self) {
        self.renew.abort();
        let release = self.release_now();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(release)),
            Err(_) => {
                let _ = self.released.send(true);
            }
        }
    }
}

impl Queue for NatsQueue {
    /// A delivery queued as claimed is held under a lease that is not
    /// renewed: only one sent at once may be.
    fn claims_last(&self) -> bool {
        false
    }

    fn journal(&self, event: Journaled) -> Fut<'_, Option<i64>> {
        Box::pin(async move {
            if let Some(key) = &event.key
                && self.key_seen(key).await?
            {
                return Ok(None);
            }
            let payload = serde_json::to_vec(&JournalEntry {
                uid: &event.uid,
                key: event.key.as_deref(),
                hooks: &event.hooks,
                payload: &event.payload,
            })
            .expect("an entry serializes");
            let ack = self
                .js
                .publish(format!("{}.j", self.streams.prefix), payload.into())
                .await
                .map_err(nats_error)?
                .await
                .map_err(nats_error)?;
            if let Some(key) = &event.key {
                self.accept_key(key).await?;
            }
            Ok(Some(ack.sequence as i64))
        })
    }

    fn commit(&self, batch: Batch) -> Fut<'_, Committed> {
        Box::pin(async move {
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
                let tok = self.ensure_receiver(&d.receiver()).await?;
                let mut record = Record::of(d, now);
                // Sent at once by this run: out of the consumer's sight.
                let subject = if claimed {
                    record.held_until = Some(now + self.lease_ms);
                    format!("{}.h.{tok}", self.streams.prefix)
                } else {
                    self.subject(&tok)
                };
                let payload = record.encode(&d.body);
                let ack = self.publish(subject, d.id.clone(), payload).await?;
                acks.push((record, d.body.clone(), ack));
            }
            // What this run sends itself is held only once the whole batch
            // is in: after a failure the caller sends none of it, and a
            // delivery left held here would be skipped as "being sent" by
            // this run's lease sweep forever. Unheld, it is freed like any
            // lapsed lease (and a retry of the batch is a duplicate).
            let mut held = Vec::new();
            for (record, body, ack) in acks {
                let ack = ack.await.map_err(nats_error)?;
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
                delete(&self.streams.journal, ticket as u64).await?;
            }
            let claimed = held.iter().map(|h| h.record.id.clone()).collect();
            let mut state = self.state.lock().unwrap();
            for h in held {
                state.held.insert(h.record.id.clone(), h);
            }
            Ok(Committed::Done { claimed })
        })
    }

    fn unfinished(&self) -> Fut<'_, Vec<Journaled>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let filter = format!("{}.j", self.streams.prefix);
            NatsQueue::scan(&self.streams.journal, &filter, |seq, payload| {
                #[derive(Deserialize)]
                struct Entry {
                    uid: String,
                    key: Option<String>,
                    hooks: Vec<String>,
                    payload: String,
                }
                match serde_json::from_slice::<Entry>(payload) {
                    Ok(e) => out.push(Journaled {
                        ticket: seq as i64,
                        uid: e.uid,
                        key: e.key,
                        hooks: e.hooks,
                        payload: e.payload,
                    }),
                    Err(e) => tracing::error!(seq, "a journal entry in NATS is not valid: {e}"),
                }
                true
            })
            .await?;
            Ok(out)
        })
    }

    fn claim(&self, now_ms: u64, limit: usize, room: Room) -> Fut<'_, Claim> {
        Box::pin(async move {
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
            let receivers: Vec<(String, String, jetstream::consumer::Consumer<pull::Config>)> = {
                let state = self.state.lock().unwrap();
                state
                    .receivers
                    .iter()
                    .filter(|(_, r)| r.busy)
                    .map(|(tok, r)| (tok.clone(), r.name.clone(), r.consumer.clone()))
                    .collect()
            };
            for (tok, name, consumer) in receivers {
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
                let batch: Vec<jetstream::Message> = match consumer
                    .fetch()
                    .max_messages(want)
                    .messages()
                    .await
                {
                    Ok(messages) => {
                        messages
                            .filter_map(|m| async move { m.ok() })
                            .collect()
                            .await
                    }
                    Err(e) => {
                        tracing::warn!(receiver = %name, "cannot fetch deliveries from NATS: {e}");
                        continue;
                    }
                };
                if batch.len() < want
                    && let Some(r) = self.state.lock().unwrap().receivers.get_mut(&tok)
                {
                    r.busy = false;
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
        })
    }

    fn finish(&self, id: String, attempts: u32, how: Finish) -> Fut<'_, ()> {
        Box::pin(async move {
            let Some(held) = self.state.lock().unwrap().held.remove(&id) else {
                return Ok(());
            };
            let done = async {
                let mut record = held.record.clone();
                record.attempts = attempts;
                record.held_until = None;
                match &how {
                    Finish::Delivered => {}
                    Finish::Retry {
                        at_ms,
                        error,
                        status,
                    } => {
                        record.next_ms = *at_ms;
                        record.last_error = Some(error.clone());
                        record.last_status = *status;
                        let tok = self.ensure_receiver(&record.receiver()).await?;
                        let msg_id = format!("{id}.next.{}", held.seq);
                        let ack = self
                            .publish(self.subject(&tok), msg_id, record.encode(&held.body))
                            .await?;
                        ack.await.map_err(nats_error)?;
                    }
                    Finish::Dead { error, status } => {
                        record.last_error = Some(error.clone());
                        record.last_status = *status;
                        let msg_id = format!("{id}.dead.{}", held.seq);
                        let ack = self
                            .publish(
                                self.dead_subject(&record),
                                msg_id,
                                record.encode(&held.body),
                            )
                            .await?;
                        ack.await.map_err(nats_error)?;
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
        })
    }

    fn backlog(&self) -> Fut<'_, usize> {
        Box::pin(async move {
            let deliveries = self
                .streams
                .deliveries
                .get_info()
                .await
                .map_err(nats_error)?;
            let journal = self.streams.journal.get_info().await.map_err(nats_error)?;
            Ok((deliveries.state.messages + journal.state.messages) as usize)
        })
    }

    fn list(&self, query: DeliveryQuery) -> Fut<'_, Vec<DeliveryInfo>> {
        Box::pin(async move {
            let p = &self.streams.prefix;
            let filter = query.state;
            let (stream, subject, state) = match filter {
                Filter::Pending | Filter::Failed => {
                    (&self.streams.deliveries, format!("{p}.*.*"), "pending")
                }
                Filter::Dead => (&self.streams.dead, format!("{p}.x.>"), "dead"),
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
                    if (filter == Filter::Failed && record.attempts == 0) || !query.wants(&info) {
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
        })
    }

    fn retry(&self, which: Retry) -> Fut<'_, usize> {
        Box::pin(async move {
            let p = &self.streams.prefix;
            let subject = match &which {
                Retry::Id(id) if !id.is_empty() && !id.contains(['.', '*', '>', ' ']) => {
                    format!("{p}.x.*.{id}")
                }
                Retry::Id(_) => return Ok(0),
                Retry::AllDead => format!("{p}.x.>"),
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
        })
    }

    fn depth(&self) -> Fut<'_, HashMap<String, Depth>> {
        Box::pin(async move {
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
                let oldest_ms =
                    match next_raw(&self.streams.deliveries, &self.subject(&tok), 1).await {
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
        })
    }

    fn purge_dead(&self, before_ms: u64) -> Fut<'_, usize> {
        Box::pin(async move {
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
        })
    }

    fn forget_keys(&self, before_ms: u64) -> Fut<'_, usize> {
        Box::pin(async move {
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
        })
    }

    fn release(&self) -> Fut<'_, ()> {
        Box::pin(async move {
            self.release_now().await;
            Ok(())
        })
    }
}

#[derive(Serialize)]
struct JournalEntry<'a> {
    uid: &'a str,
    key: Option<&'a str>,
    hooks: &'a [String],
    payload: &'a str,
}
