//! The queue on NATS JetStream, shared by several engines.
//!
//! Five streams, named from [`NatsConfig::prefix`] (`P` below):
//! - `P_DELIVERIES` (work-queue retention), one message per pending
//!   delivery on `P.d.<receiver>` (or `P.h.<receiver>`, see below), where `<receiver>` is a hash of its
//!   `host:port`. Each receiver has one durable pull consumer, `r<receiver>`
//!   (its description is the receiver's name), shared by every engine: a
//!   fetch claims, and a claim lasts `ack_wait` unless the engine renews it,
//!   which a live one does every third of that. So a slow or dead receiver
//!   holds up its own consumer only.
//! - `P_DEAD`: dead letters on `P.x.<receiver>.<id>`, kept
//!   `dead_letter_days`.
//! - `P_DELIVERED`: delivered deliveries on `P.o.<receiver>.<id>`, with
//!   their history, kept `delivery.history_hours` (none if 0).
//! - `P_JOURNAL`: accepted post events whose hooks have not finished, on
//!   `P.j`; a ticket is the message's sequence.
//! - `P_KEYS`: the keys of accepted events, one message each on
//!   `P.k.<hash of key>`, holding when it was accepted.
//! - `P_ARCHIVE`, with `[archive]` only: the archive's records on `P.a`,
//!   kept `days` and `max_mib` by JetStream itself (oldest first).
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
//! A commit or a journal entry that waits for a leader longer than
//! `spill_after_ms` is kept on the engine's disk meanwhile (`spill.rs`).
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
use serde::Deserialize;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

mod admin;
mod archive;
mod claim;
mod commit;
mod leases;
mod messages;
mod open;
pub(crate) use open::connect;
mod queue;
mod receivers;
mod record;
mod retry;
mod spill;
#[cfg(test)]
mod tests;

use messages::{delete, next_raw};
use receivers::count_by_receiver;
use record::{Record, token};

/// Most retries not yet due that one engine keeps until they are due.
const PARK_MAX: usize = 4096;

/// How often the receivers (consumers) and what they hold are listed, so
/// that work queued by other engines is seen.
const LIST_EVERY: Duration = Duration::from_millis(500);

/// How long JetStream recognises a `Nats-Msg-Id` it has stored.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

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
    /// Deliveries this run published for it to hand out since its last
    /// fetch, and when it last did.
    published: usize,
    published_at: Option<Instant>,
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
    delivered: stream::Stream,
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
    /// What is kept of attempts and delivered deliveries.
    history: History,
    state: Mutex<State>,
    /// Tells, once what this run held is handed back, that it was.
    released: watch::Sender<bool>,
    renew: tokio::task::JoinHandle<()>,
    /// `P_ARCHIVE`, once this run archived something (see `archive.rs`).
    archive: tokio::sync::OnceCell<stream::Stream>,
    /// How long a request waits for a leader (see `retry.rs`).
    election_wait: Duration,
    stall: Mutex<retry::Stall>,
    /// Where accepted events wait while JetStream elects a leader, for the
    /// engine's own run (see `spill.rs`); none for operator commands.
    spill: Option<Arc<spill::Spill>>,
    forward: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Itself, for work that outlives a call (see `spill.rs`).
    me: std::sync::Weak<NatsQueue>,
}

fn nats_error(e: impl Into<async_nats::Error>) -> QueueError {
    QueueError::Nats(Arc::from(e.into()))
}

impl NatsQueue {
    /// Becomes true once what this run held is handed back (after it is
    /// dropped or [`Queue::release`]d).
    #[cfg(test)]
    pub(crate) fn released(&self) -> watch::Receiver<bool> {
        self.released.subscribe()
    }

    fn subject(&self, receiver_token: &str) -> String {
        format!("{}.d.{receiver_token}", self.streams.prefix)
    }
}

impl Drop for NatsQueue {
    fn drop(&mut self) {
        self.renew.abort();
        if let Some(forward) = self.forward.lock().unwrap().take() {
            forward.abort();
        }
        let release = self.release_now();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(release)),
            Err(_) => {
                let _ = self.released.send(true);
            }
        }
    }
}
