//! Taking a listing: subscribe, list each collection while reading the
//! stream (so XO's buffer for it never fills), fold in what the stream said
//! meanwhile (its last word on an object is at least as recent as the
//! listing), then take the result: silently the first time, after a gap as
//! a `COLLECTION.resync` event followed by every difference from what
//! hooks were last told.

use super::http::{list_path, read_limited, with_id};
use super::{NAME, Sse, XoSource, next_of};
use crate::sources::SourceError;
use crate::sources::objects::{Fields, Key, Known, change, fields_of};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Largest listing read, in bytes.
const MAX_LISTING_BYTES: usize = 256 * 1024 * 1024;
/// How long a request other than the stream may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Objects compared between two yields to the runtime.
const YIELD_EVERY: usize = 1024;

/// What XO listed of one collection, by id; `None`: it cannot list it.
type Listing = Option<BTreeMap<String, Fields>>;

impl XoSource {
    /// Subscribes the connection, lists, and takes the listing (see the
    /// module's doc). `listed`: whether a listing was taken before, so
    /// this one follows a gap.
    pub(super) async fn sync(
        &mut self,
        connection: &str,
        stream: &mut Sse,
        listed: bool,
    ) -> Result<(), SourceError> {
        self.active = self.config.collections.keys().cloned().collect();
        // The stream's last word on each object it spoke of meanwhile.
        let mut said: HashMap<Key, Option<Fields>> = HashMap::new();
        let max = self.config.max_objects;
        let listings = {
            let gap = self.lanes.gap.clone();
            let list = async {
                let listings = self.subscribe_and_list(connection).await?;
                // What was queued before is accepted, or set aside for this
                // listing's comparison.
                gap.close().await;
                Ok::<_, SourceError>(listings)
            };
            tokio::pin!(list);
            loop {
                tokio::select! {
                    listings = &mut list => {
                        let listings = listings?;
                        // What the stream holds already was, more often than
                        // not, sent before the listing was made: it goes
                        // into the fold, not after it.
                        while let Some(event) = futures::FutureExt::now_or_never(next_of(stream, self.config.idle_timeout_ms)) {
                            match event? {
                                Some(event) => self.fold(&event, &mut said, max)?,
                                None => break,
                            }
                        }
                        break listings;
                    }
                    event = next_of(stream, self.config.idle_timeout_ms) => {
                        let event = event?.ok_or(SourceError::Protocol {
                            reason: "the stream ended while listing".into(),
                        })?;
                        self.fold(&event, &mut said, max)?;
                    }
                }
            }
        };
        let complete = self.objects.lock().unwrap().complete();
        let mut total = 0;
        for (collection, listing) in listings {
            let Some(mut truth) = listing else {
                self.active.remove(&collection);
                continue;
            };
            for ((c, id), fields) in &said {
                if *c == collection {
                    match fields {
                        Some(fields) => truth.insert(id.clone(), fields.clone()),
                        None => truth.remove(id),
                    };
                }
            }
            total += truth.len();
            if listed {
                self.compare(&collection, truth, complete).await?;
            } else {
                let mut objects = self.objects.lock().unwrap();
                for (id, fields) in truth {
                    objects.set((collection.clone(), id), fields);
                }
            }
        }
        self.objects.lock().unwrap().listed(total);
        Ok(())
    }

    /// Keeps the stream's word on an object, said while listing.
    fn fold(
        &self,
        event: &eventsource_stream::Event,
        said: &mut HashMap<Key, Option<Fields>>,
        max: usize,
    ) -> Result<(), SourceError> {
        self.status.heard();
        if let Some((collection, action, id, fields)) = self.read(event) {
            if said.len() >= max && !said.contains_key(&(collection.clone(), id.clone())) {
                return Err(SourceError::Overflow { pending: max });
            }
            said.insert((collection, id), (action != "remove").then_some(fields));
        }
        Ok(())
    }

    /// Subscribes the connection to each collection, then lists each one.
    async fn subscribe_and_list(
        &self,
        connection: &str,
    ) -> Result<Vec<(String, Listing)>, SourceError> {
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
            let response = match self
                .send_ok(self.client.get(url).timeout(REQUEST_TIMEOUT), &what)
                .await
            {
                Ok(response) => response,
                Err(SourceError::Http { status: 404, .. }) => {
                    let why = format!(
                        "XO has no listing of {collection} at /rest/v0/{path}: it is not watched (check sources.xo.collections)"
                    );
                    tracing::error!(source = NAME, "{why}");
                    self.status.skipped(why);
                    listings.push((collection.clone(), None));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let bytes = read_limited(response, MAX_LISTING_BYTES).await?;
            // A listing can be large: parsed off the runtime's threads.
            let parsed =
                tokio::task::spawn_blocking(move || serde_json::from_slice::<Value>(&bytes))
                    .await
                    .map_err(|e| SourceError::Protocol {
                        reason: format!("{what}: parsing failed: {e}"),
                    })?;
            let Ok(Value::Array(list)) = parsed else {
                return Err(SourceError::Protocol {
                    reason: format!("{what}: not a JSON array"),
                });
            };
            let objects = list.into_iter().filter_map(fields_of).collect();
            listings.push((collection.clone(), Some(objects)));
        }
        Ok(listings)
    }

    /// After a gap: `COLLECTION.resync`, accepted before anything else,
    /// then each object that differs from what hooks were last told.
    /// `complete`: whether every object was kept before, so that one
    /// missing from them is new rather than forgotten.
    async fn compare(
        &mut self,
        collection: &str,
        truth: BTreeMap<String, Fields>,
        complete: bool,
    ) -> Result<(), SourceError> {
        self.metrics.source_resync(NAME);
        self.status.resynced();
        let reason = self
            .status
            .gap()
            .unwrap_or_else(|| "the stream was read again".to_owned());
        let (_, marker) = self.observed(
            collection,
            "resync",
            json!({ "reason": reason, "objects": truth.len(), "complete": complete }),
        );
        if let Err(e) = self.ingest.post(marker).await {
            tracing::warn!(
                source = NAME,
                "the engine did not take a resync event ({e})"
            );
            return Err(SourceError::Lost);
        }
        for (n, (id, fields)) in truth.iter().enumerate() {
            if n % YIELD_EVERY == YIELD_EVERY - 1 {
                tokio::task::yield_now().await;
            }
            let key = (collection.to_owned(), id.clone());
            let before = {
                let mut objects = self.objects.lock().unwrap();
                let before = objects.baseline(&key);
                objects.set(key.clone(), fields.clone());
                before
            };
            let body = match &before {
                Known::State(before) => {
                    let c = change(before, fields);
                    if c.changed.is_empty() {
                        continue;
                    }
                    (
                        "update",
                        json!({ "id": id, "object": fields, "previous": c.previous, "changed": c.changed, "resync": true }),
                    )
                }
                Known::Absent => ("add", json!({ "id": id, "object": fields, "resync": true })),
                // Not kept: whether it changed cannot be told.
                Known::Unknown => continue,
            };
            self.emit_waiting(collection, body.0, body.1, key, before)
                .await;
        }
        // Gone meanwhile: known to hooks, not listed now.
        let (kept, lost) = {
            let objects = self.objects.lock().unwrap();
            (objects.ids(collection), objects.lost_ids(collection))
        };
        for id in kept.into_iter().chain(lost) {
            if truth.contains_key(&id) {
                continue;
            }
            let key = (collection.to_owned(), id.clone());
            let before = {
                let mut objects = self.objects.lock().unwrap();
                let before = objects.baseline(&key);
                objects.remove(&key);
                before
            };
            if let Known::State(object) = &before {
                let body = json!({ "id": id, "object": object, "resync": true });
                self.emit_waiting(collection, "remove", body, key, before)
                    .await;
            }
        }
        Ok(())
    }
}
