//! Xen Orchestra's event stream as a source of observed events: what XO
//! reports of its objects, whoever changed them (XO 5 or 6, `xe`, HA, a
//! backup run), with no XO plugin.
//!
//! XO's side, read from `@xen-orchestra/rest-api/src/events/` at 9ef53890:
//! `GET /rest/v0/events` is a server-sent-events stream that opens with
//! `init` (`{"id": CONNECTION}`) and pings every 30 s; `POST
//! /rest/v0/events/CONNECTION/subscriptions` with `{collection, fields}`
//! subscribes it to a collection; then each change comes as `add`,
//! `update` or `remove` with the object's subscribed fields and
//! `$subscription` (its collection). An update carries the new values
//! only (XO's tasks announce a new task as an update too), and there is no
//! resume after a disconnect.
//!
//! So this source:
//! - keeps each object's last state ([`Objects`], bounded) to say what
//!   changed and what it was (`previous`);
//! - lists each collection after subscribing (`sync.rs`), folding in what
//!   the stream said meanwhile; after a gap (a reconnect, or events the
//!   engine could not take: `lanes.rs`) it emits `COLLECTION.resync` and
//!   then the changes found by comparing that listing with what hooks were
//!   last told: a gap's changes are told as one, none is silently lost,
//!   and each object's events form one history;
//! - reads the stream without ever waiting for the engine;
//! - reconnects with back-off, and says how it is doing in
//!   `GET /v1/sources`, the log and the metrics.

mod http;
mod lanes;
mod sync;

use super::objects::{Key, Known, Objects, change, fields_of};
use super::{SourceError, SourceState, Status};
use crate::config::XoSourceConfig;
use crate::event::Event;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
pub(crate) use http::shown;
use http::{error_chain, refusal};
use lanes::{Lanes, Pending};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The name this source reports under.
pub(crate) const NAME: &str = "xo";
/// The first pause before reconnecting; it doubles up to
/// `reconnect_max_ms`.
const FIRST_PAUSE: Duration = Duration::from_millis(250);
/// A session that lasted this long starts the pauses over.
const STABLE: Duration = Duration::from_secs(30);

type Sse = Pin<
    Box<
        dyn Stream<
                Item = Result<
                    eventsource_stream::Event,
                    eventsource_stream::EventStreamError<reqwest::Error>,
                >,
            > + Send,
    >,
>;

/// The source: its settings, HTTP client, objects and lanes.
pub(crate) struct XoSource {
    config: XoSourceConfig,
    base: url::Url,
    token: String,
    client: reqwest::Client,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    ingest: Arc<Ingest>,
    objects: Arc<Mutex<Objects>>,
    lanes: Lanes,
    /// The collections read this session (one XO cannot list is left out).
    active: BTreeSet<String>,
    /// A fresh prefix per engine run, so call ids never repeat across runs.
    run: String,
    seq: u64,
}

impl XoSource {
    /// Sets the source up (the token read, the HTTP client built) and
    /// starts its lanes; [`XoSource::run`] then reads the stream.
    pub(super) fn new(
        config: XoSourceConfig,
        ingest: Arc<Ingest>,
        status: Arc<Status>,
        metrics: Arc<Metrics>,
    ) -> Result<XoSource, SourceError> {
        let setup = |reason: String| SourceError::Setup {
            source_name: NAME,
            reason,
        };
        let token = config
            .resolve_token()
            .map_err(|e| setup(e.to_string()))?
            .trim()
            .to_owned();
        let base = url::Url::parse(config.url.trim_end_matches('/'))
            .map_err(|e| setup(format!("sources.xo.url: {e}")))?;
        let mut client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_keepalive(Duration::from_secs(30));
        if let Some(file) = &config.ca_file {
            let pem = std::fs::read(file)
                .map_err(|e| setup(format!("sources.xo.ca_file {}: {e}", file.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                setup(format!(
                    "sources.xo.ca_file {}: not PEM certificates: {e}",
                    file.display()
                ))
            })?;
            for cert in certs {
                client = client.add_root_certificate(cert);
            }
        }
        if config.insecure_skip_tls_verify {
            tracing::warn!(
                source = NAME,
                "sources.xo.insecure_skip_tls_verify: any certificate is accepted from {}; anyone on the path can read the token",
                shown(&config.url)
            );
            client = client.danger_accept_invalid_certs(true);
        }
        let client = client
            .build()
            .map_err(|e| setup(format!("the HTTP client: {e}")))?;
        let objects = Arc::new(Mutex::new(Objects::new(config.max_objects)));
        let lanes = Lanes::start(config.max_pending, &ingest, &objects, &status, &metrics);
        Ok(XoSource {
            active: config.collections.keys().cloned().collect(),
            config,
            base,
            token,
            client,
            status,
            metrics,
            ingest,
            objects,
            lanes,
            run: crate::util::random_id()[..12].to_owned(),
            seq: 0,
        })
    }

    /// Reads the stream for as long as the engine runs: each session until
    /// it fails or XO closes it, then again after a pause.
    pub(super) async fn run(mut self) {
        let url = shown(&self.config.url);
        let mut pause = FIRST_PAUSE;
        // Set once the objects hold a listing: a later session then says
        // there was a gap, and compares.
        let mut listed = false;
        loop {
            let started = Instant::now();
            let ended = self.session(&mut listed).await;
            self.metrics.source_up(NAME, false);
            if started.elapsed() > STABLE {
                pause = FIRST_PAUSE;
            }
            let (state, why, kind) = match ended {
                Ok(()) => (
                    SourceState::Retrying,
                    "XO closed the event stream".to_owned(),
                    "closed",
                ),
                Err(e) => {
                    self.metrics.source_failure(NAME, e.kind());
                    let state = if matches!(e, SourceError::Refused { .. }) {
                        // Not worth knocking again soon.
                        pause = Duration::from_millis(self.config.reconnect_max_ms);
                        SourceState::Refused
                    } else {
                        SourceState::Retrying
                    };
                    (state, e.to_string(), e.kind())
                }
            };
            // Jitter, so that engines sharing an XO do not knock together.
            let jitter = fastrand::u64(0..=pause.as_millis() as u64 / 4);
            let wait = pause + Duration::from_millis(jitter);
            if state == SourceState::Refused {
                tracing::error!(source = NAME, %url, "{why}; trying again in {wait:?}");
            } else {
                tracing::warn!(source = NAME, %url, "{why}; reconnecting in {wait:?}");
            }
            self.status.failed(state, why, kind);
            tokio::time::sleep(wait).await;
            pause = (pause * 2).min(Duration::from_millis(self.config.reconnect_max_ms));
        }
    }

    /// One connection: open, subscribe, list (comparing after a gap), then
    /// read changes until it ends, or until events are lost.
    async fn session(&mut self, listed: &mut bool) -> Result<(), SourceError> {
        self.status.set(SourceState::Connecting);
        let events = self
            .client
            .get(self.url("events"))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        let response = self.send_ok(events, "GET /rest/v0/events").await?;
        let mut stream: Sse = Box::pin(response.bytes_stream().eventsource());
        let init = self.next(&mut stream).await?.ok_or(SourceError::Protocol {
            reason: "the stream ended before its `init` event".into(),
        })?;
        let connection = (init.event == "init")
            .then(|| serde_json::from_str::<Value>(&init.data).ok())
            .flatten()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
            .ok_or_else(|| SourceError::Protocol {
                reason: format!(
                    "expected an `init` event with an id first, got `{}`: {}",
                    init.event,
                    crate::util::truncate(&init.data, 200)
                ),
            })?;
        self.status.set(SourceState::Syncing);
        self.sync(&connection, &mut stream, *listed).await?;
        *listed = true;
        let objects = self.objects.lock().unwrap().len();
        self.status.live(objects);
        self.metrics.source_up(NAME, true);
        tracing::info!(source = NAME, url = %shown(&self.config.url), objects, "reading XO's event stream");
        let idle = self.config.idle_timeout_ms;
        let gap = self.lanes.gap.clone();
        loop {
            tokio::select! {
                // A loss first: nothing more reaches hooks until a listing.
                biased;
                () = gap.opened() => return Err(SourceError::Lost),
                event = next_of(&mut stream, idle) => match event? {
                    Some(event) => self.on_event(event),
                    None => return Ok(()),
                },
            }
        }
    }

    async fn next(
        &self,
        stream: &mut Sse,
    ) -> Result<Option<eventsource_stream::Event>, SourceError> {
        next_of(stream, self.config.idle_timeout_ms).await
    }

    /// One event of the stream; one that cannot be read is logged and
    /// skipped.
    fn on_event(&mut self, sse: eventsource_stream::Event) {
        self.status.heard();
        let Some((collection, action, id, fields)) = self.read(&sse) else {
            return;
        };
        let key = (collection.clone(), id.clone());
        if action == "remove" {
            let before = self.objects.lock().unwrap().remove(&key);
            let object = match &before {
                Known::State(before) => before.clone(),
                // It never existed to hooks.
                Known::Absent => return,
                Known::Unknown => fields,
            };
            let body = json!({ "id": id, "object": object, "resync": false });
            self.emit(&collection, "remove", body, key, before);
            return;
        }
        let before = self
            .objects
            .lock()
            .unwrap()
            .set(key.clone(), fields.clone());
        let (action, body) = match &before {
            Known::State(before) => {
                let c = change(before, &fields);
                if c.changed.is_empty() {
                    // Nothing hooks would see changed (a field not watched).
                    return;
                }
                let body = json!({ "id": id, "object": fields, "previous": c.previous, "changed": c.changed, "resync": false });
                ("update", body)
            }
            // XO announces a new task as an `update`: new whatever the word.
            Known::Absent => (
                "add",
                json!({ "id": id, "object": fields, "resync": false }),
            ),
            // Not kept (past max_objects): what it was is not known.
            Known::Unknown if action == "update" => (
                "update",
                json!({ "id": id, "object": fields, "previous": null, "changed": null, "resync": false }),
            ),
            Known::Unknown => (
                "add",
                json!({ "id": id, "object": fields, "resync": false }),
            ),
        };
        self.emit(&collection, action, body, key, before);
    }

    /// An `add`, `update` or `remove` of a watched collection, read:
    /// collection, action, id, fields.
    fn read(
        &self,
        sse: &eventsource_stream::Event,
    ) -> Option<(String, String, String, super::objects::Fields)> {
        let action = sse.event.as_str();
        if !matches!(action, "add" | "update" | "remove") {
            // `ping`, a second `init`: nothing to do.
            return None;
        }
        let Ok(data) = serde_json::from_str::<Value>(&sse.data) else {
            tracing::warn!(
                source = NAME,
                "a `{action}` event whose data is not JSON, skipped: {}",
                crate::util::truncate(&sse.data, 200)
            );
            return None;
        };
        let collection = data["$subscription"].as_str()?.to_owned();
        if !self.active.contains(&collection) {
            return None;
        }
        let Some((id, fields)) = fields_of(data) else {
            tracing::warn!(source = NAME, %collection, "a `{action}` event without an id, skipped");
            return None;
        };
        Some((collection, action.to_owned(), id, fields))
    }

    /// An observed event: `COLLECTION.ACTION`, with `body`'s fields.
    fn observed(&mut self, collection: &str, action: &str, body: Value) -> (u64, Event) {
        self.seq += 1;
        let mut event = json!({
            "callId": format!("xo-{}-{}", self.run, self.seq),
            "method": format!("{collection}.{action}"),
            "type": "observed",
            "timestamp": crate::util::now_ms(),
            "source": NAME,
            "collection": collection,
            "action": action,
        });
        if let (Value::Object(event), Value::Object(body)) = (&mut event, body) {
            event.extend(body);
        }
        self.metrics.source_event(NAME, collection, action);
        (
            self.seq,
            Event::from_value(event).expect("an observed event is well formed"),
        )
    }

    /// Makes and queues an observed event about `key`, without waiting.
    fn emit(&mut self, collection: &str, action: &str, body: Value, key: Key, before: Known) {
        let (seq, event) = self.observed(collection, action, body);
        self.lanes.send(Pending {
            seq,
            event,
            key,
            before,
        });
        self.status.objects(self.objects.lock().unwrap().len());
    }

    /// Makes and queues an observed event about `key`, waiting for room.
    async fn emit_waiting(
        &mut self,
        collection: &str,
        action: &str,
        body: Value,
        key: Key,
        before: Known,
    ) {
        let (seq, event) = self.observed(collection, action, body);
        self.lanes
            .send_waiting(Pending {
                seq,
                event,
                key,
                before,
            })
            .await;
        self.status.objects(self.objects.lock().unwrap().len());
    }

    /// Sends `request` with the token; XO's answer if it is a 2xx, else
    /// what it means (a refused token, or another failure).
    async fn send_ok(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response, SourceError> {
        let mut cookie =
            reqwest::header::HeaderValue::try_from(format!("authenticationToken={}", self.token))
                .map_err(|_| SourceError::Setup {
                source_name: NAME,
                reason: "sources.xo.token holds characters a cookie cannot".into(),
            })?;
        cookie.set_sensitive(true);
        let response = request
            .header(reqwest::header::COOKIE, cookie)
            .send()
            .await
            .map_err(|e| SourceError::Unreachable {
                url: shown(&self.config.url),
                reason: error_chain(&e),
            })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        Err(refusal(status, what, &text))
    }

    fn url(&self, path: &str) -> url::Url {
        let mut url = self.base.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}/rest/v0/{path}"));
        url
    }
}

/// The stream's next event; an error if it broke or stayed silent too long.
async fn next_of(
    stream: &mut Sse,
    idle_ms: u64,
) -> Result<Option<eventsource_stream::Event>, SourceError> {
    match tokio::time::timeout(Duration::from_millis(idle_ms), stream.next()).await {
        Err(_) => Err(SourceError::Silent { ms: idle_ms }),
        Ok(None) => Ok(None),
        Ok(Some(Ok(event))) => Ok(Some(event)),
        Ok(Some(Err(e))) => Err(SourceError::Stream {
            reason: e.to_string(),
        }),
    }
}
