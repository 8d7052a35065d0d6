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
//! only, and there is no resume after a disconnect.
//!
//! So this source:
//! - keeps each object's last state ([`Objects`], bounded) to say what
//!   changed and what it was (`previous`);
//! - after a gap (a reconnect, or events the engine could not take), emits
//!   `COLLECTION.resync` and then the changes found by comparing a fresh
//!   listing (`GET /rest/v0/{collection}s?fields=…`) with what hooks were
//!   last told, so no transition is silently lost;
//! - reads the stream without ever waiting for the engine: events wait in
//!   bounded lanes (one object's events in order), and a full lane is a
//!   gap, read again from scratch;
//! - reconnects with back-off, and says how it is doing in
//!   `GET /v1/sources`, the log and the metrics.

use super::objects::{Fields, Key, Objects, change, fields_of};
use super::{SourceError, SourceState, Status};
use crate::config::XoSourceConfig;
use crate::event::Event;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};

/// The name this source reports under.
pub(crate) const NAME: &str = "xo";
/// Lanes events wait in for the engine: one object's events share a lane,
/// so they are accepted in order.
const LANES: usize = 8;
/// The first pause before reconnecting; it doubles up to
/// `reconnect_max_ms`.
const FIRST_PAUSE: Duration = Duration::from_millis(250);
/// A session that lasted this long starts the pauses over.
const STABLE: Duration = Duration::from_secs(30);
/// Largest listing read, in bytes.
const MAX_LISTING_BYTES: usize = 512 * 1024 * 1024;
/// How long a request other than the stream may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

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

/// One observed event waiting for the engine, with what undoes it if lost.
struct Pending {
    event: Event,
    key: Key,
    /// What hooks knew of the object before this event.
    before: Option<Fields>,
}

/// The source's running state: its settings, HTTP client, objects, lanes.
pub(crate) struct XoSource {
    config: XoSourceConfig,
    base: url::Url,
    token: String,
    client: reqwest::Client,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    objects: Arc<Mutex<Objects>>,
    lanes: Vec<mpsc::Sender<Pending>>,
    /// Set when an event was lost: the stream is read again from scratch.
    lost: Arc<Notify>,
    /// A fresh prefix per engine run, so call ids never repeat across runs.
    run: String,
    seq: u64,
}

impl XoSource {
    /// Sets the source up (the token read, the HTTP client built) and
    /// starts its lanes; [`XoSource::run`] then reads the stream.
    pub fn new(
        config: XoSourceConfig,
        ingest: Arc<Ingest>,
        status: Arc<Status>,
        metrics: Arc<Metrics>,
    ) -> Result<XoSource, SourceError> {
        let token = config.resolve_token().map_err(|e| SourceError::Setup {
            source_name: NAME,
            reason: e.to_string(),
        })?;
        let base =
            url::Url::parse(config.url.trim_end_matches('/')).map_err(|e| SourceError::Setup {
                source_name: NAME,
                reason: format!("sources.xo.url: {e}"),
            })?;
        let mut client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_keepalive(Duration::from_secs(30));
        if let Some(file) = &config.ca_file {
            let pem = std::fs::read(file).map_err(|e| SourceError::Setup {
                source_name: NAME,
                reason: format!("sources.xo.ca_file {}: {e}", file.display()),
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| SourceError::Setup {
                    source_name: NAME,
                    reason: format!(
                        "sources.xo.ca_file {}: not PEM certificates: {e}",
                        file.display()
                    ),
                })?;
            for cert in certs {
                client = client.add_root_certificate(cert);
            }
        }
        if config.insecure_skip_tls_verify {
            tracing::warn!(
                source = NAME,
                "sources.xo.insecure_skip_tls_verify: any certificate is accepted from {}; anyone on the path can read the token",
                config.url
            );
            client = client.danger_accept_invalid_certs(true);
        }
        let client = client.build().map_err(|e| SourceError::Setup {
            source_name: NAME,
            reason: format!("the HTTP client: {e}"),
        })?;
        let objects = Arc::new(Mutex::new(Objects::new(config.max_objects)));
        let lost = Arc::new(Notify::new());
        let per_lane = config.max_pending.div_ceil(LANES).max(1);
        let lanes = (0..LANES)
            .map(|_| {
                let (tx, rx) = mpsc::channel(per_lane);
                tokio::spawn(lane(
                    rx,
                    ingest.clone(),
                    objects.clone(),
                    lost.clone(),
                    status.clone(),
                    metrics.clone(),
                ));
                tx
            })
            .collect();
        Ok(XoSource {
            config,
            base,
            token,
            client,
            status,
            metrics,
            objects,
            lanes,
            lost,
            run: crate::delivery::new_uid()[..12].to_owned(),
            seq: 0,
        })
    }

    /// Reads the stream for as long as the engine runs: each session until
    /// it fails or XO closes it, then again after a pause.
    pub async fn run(mut self) {
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
            let (state, why) = match ended {
                Ok(()) => (
                    SourceState::Retrying,
                    "XO closed the event stream".to_owned(),
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
                    (state, e.to_string())
                }
            };
            // Jitter, so that engines sharing an XO do not knock together.
            let wait =
                pause + Duration::from_millis(fastrand::u64(0..=pause.as_millis() as u64 / 4));
            if state == SourceState::Refused {
                tracing::error!(source = NAME, url = %self.config.url, "{why}; trying again in {wait:?}");
            } else {
                tracing::warn!(source = NAME, url = %self.config.url, "{why}; reconnecting in {wait:?}");
            }
            self.status.failed(state, why);
            tokio::time::sleep(wait).await;
            pause = (pause * 2).min(Duration::from_millis(self.config.reconnect_max_ms));
        }
    }

    /// One connection: open, subscribe, list (comparing after a gap), then
    /// read changes until it ends.
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
                    crate::sandbox::truncate(&init.data, 200)
                ),
            })?;
        self.status.set(SourceState::Syncing);
        // Subscribe and list while reading the stream, so that XO's buffer
        // for it never fills; what arrives meanwhile is applied after the
        // listing.
        let mut early = Vec::new();
        let listings = {
            let sync = self.subscribe_and_list(&connection);
            tokio::pin!(sync);
            loop {
                tokio::select! {
                    listings = &mut sync => break listings?,
                    event = Self::next_of(&mut stream, self.config.idle_timeout_ms) => {
                        let event = event?.ok_or(SourceError::Protocol { reason: "the stream ended while subscribing".into() })?;
                        if early.len() >= self.config.max_pending {
                            return Err(SourceError::Overflow { pending: self.config.max_pending });
                        }
                        early.push(event);
                    }
                }
            }
        };
        let gap = self.status.gap();
        let objects = self.apply_listings(listings, *listed, gap.as_deref());
        *listed = true;
        for event in early {
            self.on_event(event)?;
        }
        self.status.live(objects);
        self.metrics.source_up(NAME, true);
        tracing::info!(source = NAME, url = %self.config.url, objects, "reading XO's event stream");
        loop {
            tokio::select! {
                event = Self::next_of(&mut stream, self.config.idle_timeout_ms) => match event? {
                    Some(event) => self.on_event(event)?,
                    None => return Ok(()),
                },
                () = self.lost.notified() => return Err(SourceError::Lost),
            }
        }
    }

    async fn next(
        &self,
        stream: &mut Sse,
    ) -> Result<Option<eventsource_stream::Event>, SourceError> {
        Self::next_of(stream, self.config.idle_timeout_ms).await
    }

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

    /// Subscribes the connection to each collection, then lists each one.
    async fn subscribe_and_list(
        &self,
        connection: &str,
    ) -> Result<Vec<(String, Vec<Fields>)>, SourceError> {
        for (collection, fields) in &self.config.collections {
            let fields: Value = if fields.iter().any(|f| f == "*") {
                "*".into()
            } else {
                with_id(fields).into()
            };
            let what = format!("POST /rest/v0/events/{connection}/subscriptions ({collection})");
            let subscribe = self
                .client
                .post(self.url(&format!("events/{connection}/subscriptions")))
                .timeout(REQUEST_TIMEOUT)
                .json(&json!({ "collection": collection, "fields": fields }));
            self.send_ok(subscribe, &what).await?;
        }
        let mut listings = Vec::new();
        for (collection, fields) in &self.config.collections {
            let wanted = if fields.iter().any(|f| f == "*") {
                "*".to_owned()
            } else {
                with_id(fields).join(",")
            };
            let path = list_path(collection);
            let what = format!("GET /rest/v0/{path}");
            let mut url = self.url(&path);
            url.query_pairs_mut().append_pair("fields", &wanted);
            let response = self
                .send_ok(self.client.get(url).timeout(REQUEST_TIMEOUT), &what)
                .await?;
            let bytes = read_limited(response, MAX_LISTING_BYTES).await?;
            let Value::Array(list) =
                serde_json::from_slice(&bytes).map_err(|e| SourceError::Protocol {
                    reason: format!("{what}: not a JSON array: {e}"),
                })?
            else {
                return Err(SourceError::Protocol {
                    reason: format!("{what}: not a JSON array"),
                });
            };
            let objects = list
                .into_iter()
                .filter_map(|o| fields_of(o).map(|(_, f)| f))
                .collect();
            listings.push((collection.clone(), objects));
        }
        Ok(listings)
    }

    /// Takes a fresh listing. The first one is the baseline, silently;
    /// after a gap, each collection gets a `resync` event and the changes
    /// found. Returns how many objects are kept.
    fn apply_listings(
        &mut self,
        listings: Vec<(String, Vec<Fields>)>,
        listed: bool,
        gap: Option<&str>,
    ) -> usize {
        for (collection, list) in listings {
            if !listed {
                let mut objects = self.objects.lock().unwrap();
                for fields in list {
                    let id = fields["id"].as_str().unwrap_or_default().to_owned();
                    objects.set((collection.clone(), id), fields);
                }
                continue;
            }
            self.metrics.source_resync(NAME);
            self.status.resynced();
            let reason = gap.unwrap_or("the stream was read again");
            // With objects forgotten (past max_objects), one missing from
            // them may be new or forgotten: only a complete set tells.
            let complete = self.objects.lock().unwrap().complete();
            let event = self.observed(
                &collection,
                "resync",
                json!({ "reason": reason, "objects": list.len(), "complete": complete }),
            );
            self.send(event, (collection.clone(), String::new()), None);
            let mut seen = HashSet::new();
            for fields in list {
                let id = fields["id"].as_str().unwrap_or_default().to_owned();
                seen.insert(id.clone());
                let key = (collection.clone(), id.clone());
                let baseline = {
                    let mut objects = self.objects.lock().unwrap();
                    let baseline = objects.baseline(&key);
                    objects.set(key.clone(), fields.clone());
                    baseline
                };
                match baseline {
                    Some(Some(before)) => {
                        let c = change(&before, &fields);
                        if !c.changed.is_empty() {
                            let body = json!({
                                "id": id, "object": fields, "previous": c.previous,
                                "changed": c.changed, "resync": true,
                            });
                            let event = self.observed(&collection, "update", body);
                            self.send(event, key, Some(before));
                        }
                    }
                    // Known not to exist to hooks, or unknown in a complete set: new.
                    Some(None) => self.resync_add(&collection, id, fields, key),
                    None if complete => self.resync_add(&collection, id, fields, key),
                    None => {}
                }
            }
            // Gone during the gap: known before, not listed now.
            let (known, lost) = {
                let objects = self.objects.lock().unwrap();
                (objects.ids(&collection), objects.lost_keys())
            };
            let lost = lost
                .into_iter()
                .filter(|(c, _)| *c == collection)
                .map(|(_, id)| id);
            for id in known.into_iter().chain(lost).collect::<HashSet<_>>() {
                if seen.contains(&id) {
                    continue;
                }
                let key = (collection.clone(), id.clone());
                let before = {
                    let mut objects = self.objects.lock().unwrap();
                    let told = objects.baseline(&key).flatten();
                    objects.remove(&key);
                    told
                };
                if let Some(before) = before {
                    let body = json!({ "id": id, "object": before, "resync": true });
                    let event = self.observed(&collection, "remove", body);
                    self.send(event, key, Some(before));
                }
            }
        }
        self.objects.lock().unwrap().len()
    }

    fn resync_add(&mut self, collection: &str, id: String, fields: Fields, key: Key) {
        let body = json!({ "id": id, "object": fields, "resync": true });
        let event = self.observed(collection, "add", body);
        self.send(event, key, None);
    }

    /// One event of the stream.
    fn on_event(&mut self, sse: eventsource_stream::Event) -> Result<(), SourceError> {
        self.status.heard();
        let action = match sse.event.as_str() {
            "add" | "update" | "remove" => sse.event.clone(),
            // `ping`, a second `init`: nothing to do.
            _ => return Ok(()),
        };
        let data: Value = serde_json::from_str(&sse.data).map_err(|e| SourceError::Protocol {
            reason: format!("a `{action}` event whose data is not JSON: {e}"),
        })?;
        let Some(collection) = data["$subscription"].as_str().map(str::to_owned) else {
            tracing::debug!(
                source = NAME,
                "a `{action}` event without $subscription, skipped"
            );
            return Ok(());
        };
        if !self.config.collections.contains_key(&collection) {
            return Ok(());
        }
        let Some((id, fields)) = fields_of(data) else {
            tracing::warn!(source = NAME, %collection, "a `{action}` event without an id, skipped");
            return Ok(());
        };
        let key = (collection.clone(), id.clone());
        if action == "remove" {
            let before = self.objects.lock().unwrap().remove(&key);
            let body =
                json!({ "id": id, "object": before.clone().unwrap_or(fields), "resync": false });
            let event = self.observed(&collection, "remove", body);
            self.send(event, key, before);
            return Ok(());
        }
        let (before, complete) = {
            let mut objects = self.objects.lock().unwrap();
            let complete = objects.complete();
            (objects.set(key.clone(), fields.clone()), complete)
        };
        // XO reports a new task as an `update`: an object never seen, in
        // a complete set, is new whatever the word.
        let action = if before.is_none() && complete {
            "add".to_owned()
        } else {
            action
        };
        let body = match &before {
            Some(before) => {
                let c = change(before, &fields);
                if c.changed.is_empty() {
                    // Nothing hooks would see changed (a field not watched,
                    // or a copy of what the listing said).
                    return Ok(());
                }
                json!({ "id": id, "object": fields, "previous": c.previous, "changed": c.changed, "resync": false })
            }
            None if action == "update" => {
                // Not kept (past max_objects): what it was is not known.
                json!({ "id": id, "object": fields, "previous": null, "changed": null, "resync": false })
            }
            None => json!({ "id": id, "object": fields, "resync": false }),
        };
        let action = if before.is_some() {
            "update"
        } else {
            action.as_str()
        };
        let event = self.observed(&collection, action, body);
        self.send(event, key, before);
        Ok(())
    }

    /// An observed event: `COLLECTION.ACTION`, with `body`'s fields.
    fn observed(&mut self, collection: &str, action: &str, body: Value) -> Event {
        self.seq += 1;
        let mut event = json!({
            "callId": format!("xo-{}-{}", self.run, self.seq),
            "method": format!("{collection}.{action}"),
            "type": "observed",
            "timestamp": crate::delivery::now_ms(),
            "source": NAME,
            "collection": collection,
            "action": action,
        });
        if let (Value::Object(event), Value::Object(body)) = (&mut event, body) {
            event.extend(body);
        }
        self.metrics.source_event(NAME, collection, action);
        Event::from_value(event).expect("an observed event is well formed")
    }

    /// Hands `event` to its lane without waiting; a full lane is a loss,
    /// and the stream is read again from scratch.
    fn send(&mut self, event: Event, key: Key, before: Option<Fields>) {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        let lane = &self.lanes[hasher.finish() as usize % LANES];
        if let Err(e) = lane.try_send(Pending { event, key, before }) {
            let pending = match e {
                mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
            };
            if !pending.key.1.is_empty() {
                self.objects
                    .lock()
                    .unwrap()
                    .lost(pending.key, pending.before);
            }
            self.status.dropped();
            self.metrics.source_failure(NAME, "overflow");
            self.lost.notify_one();
        }
        self.status.emitted();
        self.status.objects(self.objects.lock().unwrap().len());
    }

    /// Sends `request` with the token; XO's answer if it is a 2xx, else
    /// what it means (a refused token, or another failure).
    async fn send_ok(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response, SourceError> {
        let response = request
            .header(reqwest::header::COOKIE, self.cookie())
            .send()
            .await
            .map_err(|e| SourceError::Unreachable {
                url: self.config.url.clone(),
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

    fn cookie(&self) -> String {
        format!("authenticationToken={}", self.token)
    }
}

/// Where XO lists a collection: its REST route, the type lower-cased and
/// plural (`VM` → `vms`, `VM-snapshot` → `vm-snapshots`, `task` → `tasks`).
fn list_path(collection: &str) -> String {
    format!("{}s", collection.to_ascii_lowercase())
}

/// `fields`, with `id` (without which a change cannot be told apart).
fn with_id(fields: &[String]) -> Vec<String> {
    let mut all = fields.to_vec();
    if !all.iter().any(|f| f == "id") {
        all.insert(0, "id".into());
    }
    all
}

/// One lane: hands its events to the engine, one at a time, in order. An
/// event the engine cannot take is a loss, remembered for the resync.
async fn lane(
    mut rx: mpsc::Receiver<Pending>,
    ingest: Arc<Ingest>,
    objects: Arc<Mutex<Objects>>,
    lost: Arc<Notify>,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
) {
    while let Some(pending) = rx.recv().await {
        let method = pending.event.method().to_owned();
        if let Err(e) = ingest.post(pending.event).await {
            tracing::warn!(source = NAME, %method, "the engine did not take an observed event ({e}); it will be found again by a resync");
            if !pending.key.1.is_empty() {
                objects.lock().unwrap().lost(pending.key, pending.before);
            }
            status.dropped();
            metrics.source_failure(NAME, "queue");
            lost.notify_one();
        }
    }
}

/// What XO's answer `status` to `what` means: its refusal of the token
/// (401, 403), or another failure, with what XO said.
fn refusal(status: reqwest::StatusCode, what: &str, text: &str) -> SourceError {
    let said = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.to_owned());
    let said = crate::sandbox::truncate(&said, 300).to_owned();
    if matches!(status.as_u16(), 401 | 403) {
        SourceError::Refused {
            status: status.as_u16(),
            said,
        }
    } else {
        SourceError::Http {
            what: what.to_owned(),
            status: status.as_u16(),
            said,
        }
    }
}

/// The body, up to `max` bytes.
async fn read_limited(response: reqwest::Response, max: usize) -> Result<Vec<u8>, SourceError> {
    let mut bytes = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| SourceError::Stream {
            reason: error_chain(&e),
        })?;
        if bytes.len() + chunk.len() > max {
            return Err(SourceError::Protocol {
                reason: format!("a listing larger than {max} bytes"),
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// An error with its causes, for the log.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collections_are_listed_where_xo_lists_them() {
        assert_eq!(list_path("VM"), "vms");
        assert_eq!(list_path("VM-snapshot"), "vm-snapshots");
        assert_eq!(list_path("task"), "tasks");
        assert_eq!(with_id(&["power_state".into()]), ["id", "power_state"]);
        assert_eq!(with_id(&["id".into(), "x".into()]), ["id", "x"]);
    }
}
