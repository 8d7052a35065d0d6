//! A stand-in for Xen Orchestra's event stream, in XO's exact format, written
//! for these tests from `@xen-orchestra/rest-api/src/events/` (XO 9ef53890):
//!
//! - `GET /rest/v0/events`, authenticated by the `authenticationToken`
//!   cookie (else 401 and XO's error), is a `text/event-stream` that opens
//!   with `event: init` / `data: {"id": CONNECTION}` and pings
//!   (`event: ping`, `data: {"ping": MS}`);
//! - `POST /rest/v0/events/CONNECTION/subscriptions` with
//!   `{"collection", "fields"}` answers 201 `{"id": COLLECTION}` (404 for
//!   an unknown connection);
//! - each change then comes as `add`, `update` or `remove`, with the
//!   object's subscribed fields (lodash `pick`) and `$subscription`; an
//!   update whose subscribed fields did not change is not sent;
//! - `GET /rest/v0/{collection}s?fields=a,b` lists the objects (each with
//!   its `href`).
//!
//! The test changes objects with [`FakeXo::set`], [`FakeXo::add`] and
//! [`FakeXo::remove`], and kills and restarts the server on its port.

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

type Object = Map<String, Value>;

/// The fields a connection subscribed to in a collection: `None` for `*`.
type Fields = Option<Vec<String>>;

struct Connection {
    tx: mpsc::UnboundedSender<String>,
    subscriptions: HashMap<String, Fields>,
}

#[derive(Default)]
struct Xo {
    token: String,
    /// Objects by collection, then id.
    objects: BTreeMap<String, BTreeMap<String, Object>>,
    connections: HashMap<String, Connection>,
    /// Requests seen: "GET /rest/v0/events", …
    requests: Vec<String>,
    /// While set, a listing waits for it before it is made.
    hold: Option<Hold>,
}

/// A listing held: `entered` is told when one arrives; it goes on once
/// `release` resolves.
struct Hold {
    entered: Option<tokio::sync::oneshot::Sender<()>>,
    release: tokio::sync::watch::Receiver<bool>,
}

/// A fake XO serving its event stream on 127.0.0.1.
pub struct FakeXo {
    pub addr: SocketAddr,
    state: Arc<Mutex<Xo>>,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl FakeXo {
    /// Serves on a free port, accepting `token`, pinging every `ping`.
    pub async fn start(token: &str, ping: Duration) -> FakeXo {
        let state = Arc::new(Mutex::new(Xo {
            token: token.into(),
            ..Xo::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let xo = FakeXo {
            addr,
            state,
            server: Mutex::new(None),
        };
        xo.serve(listener, ping);
        xo
    }

    fn serve(&self, listener: tokio::net::TcpListener, ping: Duration) {
        let app = Router::new()
            .route("/rest/v0/events", get(events))
            .route("/rest/v0/events/{id}/subscriptions", post(subscribe))
            .route("/rest/v0/{collection}", get(list))
            .with_state(self.state.clone());
        let pinger = self.state.clone();
        let task = tokio::spawn(async move {
            let ping_task = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ping).await;
                    let xo = pinger.lock().unwrap();
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_millis();
                    for c in xo.connections.values() {
                        let _ = c.tx.send(frame("ping", &json!({ "ping": now })));
                    }
                }
            });
            let _ = axum::serve(listener, app).await;
            ping_task.abort();
        });
        *self.server.lock().unwrap() = Some(task);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops listening and closes every stream, as a crash would.
    pub fn kill(&self) {
        if let Some(task) = self.server.lock().unwrap().take() {
            task.abort();
        }
        self.state.lock().unwrap().connections.clear();
    }

    /// Listens again on the same port.
    pub async fn restart(&self, ping: Duration) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener, ping);
    }

    /// Open streams now (a client gone closes its stream).
    pub fn streams(&self) -> usize {
        let xo = self.state.lock().unwrap();
        xo.connections
            .values()
            .filter(|c| !c.tx.is_closed())
            .count()
    }

    /// Streams opened so far.
    pub fn streams_opened(&self) -> usize {
        let xo = self.state.lock().unwrap();
        xo.requests
            .iter()
            .filter(|r| *r == "GET /rest/v0/events")
            .count()
    }

    /// Holds the next listings before they are made: resolves the first
    /// returned future when one arrives, and lets them go when the second
    /// value is dropped or sent.
    pub fn hold_listings(
        &self,
    ) -> (
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::watch::Sender<bool>,
    ) {
        let (entered_tx, entered) = tokio::sync::oneshot::channel();
        let (release, release_rx) = tokio::sync::watch::channel(false);
        self.state.lock().unwrap().hold = Some(Hold {
            entered: Some(entered_tx),
            release: release_rx,
        });
        (entered, release)
    }

    /// Adds an object (which must have an `id`), as XO announces a new one.
    pub fn add(&self, collection: &str, object: Value) {
        self.add_as(collection, object, "add")
    }

    /// Adds an object, announced as `event`: XO's tasks announce a new task
    /// as an `update` (@xen-orchestra/mixins/Tasks.mjs).
    pub fn add_as(&self, collection: &str, object: Value, event: &str) {
        let Value::Object(object) = object else {
            panic!("an object")
        };
        let id = object["id"].as_str().unwrap().to_owned();
        let mut xo = self.state.lock().unwrap();
        xo.objects
            .entry(collection.into())
            .or_default()
            .insert(id, object.clone());
        xo.broadcast(collection, event, None, &object);
    }

    /// Sets one field of an object.
    pub fn set(&self, collection: &str, id: &str, field: &str, value: Value) {
        let mut xo = self.state.lock().unwrap();
        let object = xo
            .objects
            .get_mut(collection)
            .and_then(|c| c.get_mut(id))
            .unwrap_or_else(|| panic!("no {collection} {id}"));
        let before = object.clone();
        object.insert(field.into(), value);
        let after = object.clone();
        xo.broadcast(collection, "update", Some(&before), &after);
    }

    /// Removes an object.
    pub fn remove(&self, collection: &str, id: &str) {
        let mut xo = self.state.lock().unwrap();
        let object = xo
            .objects
            .get_mut(collection)
            .and_then(|c| c.remove(id))
            .unwrap_or_else(|| panic!("no {collection} {id}"));
        xo.broadcast(collection, "remove", None, &object);
    }
}

impl Drop for FakeXo {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Xo {
    /// XO's `Listener`: each subscribed connection gets the picked fields,
    /// an update only if they changed.
    fn broadcast(
        &mut self,
        collection: &str,
        event: &str,
        before: Option<&Object>,
        after: &Object,
    ) {
        self.connections.retain(|_, c| {
            let Some(fields) = c.subscriptions.get(collection) else {
                return true;
            };
            let picked = pick(after, fields);
            if let (Some(before), Some(_)) = (before, fields)
                && pick(before, fields) == picked
            {
                return true;
            }
            let mut data = Map::new();
            data.insert("$subscription".into(), collection.into());
            data.extend(picked);
            c.tx.send(frame(event, &Value::Object(data))).is_ok()
        });
    }
}

fn pick(object: &Object, fields: &Fields) -> Object {
    match fields {
        None => object.clone(),
        Some(fields) => object
            .iter()
            .filter(|(k, _)| fields.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn frame(event: &str, data: &Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

fn authenticated(xo: &Xo, headers: &HeaderMap) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .any(|c| c.trim() == format!("authenticationToken={}", xo.token))
}

/// XO's answer to a request without valid credentials.
fn invalid_credentials() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"xo\"")],
        Json(json!({ "error": "invalid credentials" })),
    )
        .into_response()
}

async fn events(State(state): State<Arc<Mutex<Xo>>>, headers: HeaderMap) -> Response {
    let mut xo = state.lock().unwrap();
    xo.requests.push("GET /rest/v0/events".into());
    if !authenticated(&xo, &headers) {
        return invalid_credentials();
    }
    let id = format!("{:032x}", fastrand::u128(..));
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(frame("init", &json!({ "id": id }))).unwrap();
    xo.connections.insert(
        id,
        Connection {
            tx,
            subscriptions: HashMap::new(),
        },
    );
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|f| (Ok::<_, std::convert::Infallible>(f), rx))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache, no-transform"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn subscribe(
    State(state): State<Arc<Mutex<Xo>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut xo = state.lock().unwrap();
    xo.requests
        .push("POST /rest/v0/events/{id}/subscriptions".to_string());
    if !authenticated(&xo, &headers) {
        return invalid_credentials();
    }
    let collection = body["collection"].as_str().unwrap_or_default().to_owned();
    let fields = match &body["fields"] {
        Value::String(s) if s == "*" => None,
        Value::Array(list) => Some(
            list.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => None,
    };
    match xo.connections.get_mut(&id) {
        Some(c) => {
            c.subscriptions.insert(collection.clone(), fields);
            (StatusCode::CREATED, Json(json!({ "id": collection }))).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no such event {id}"), "data": { "id": id, "type": "event" } })),
        )
            .into_response(),
    }
}

async fn list(
    State(state): State<Arc<Mutex<Xo>>>,
    Path(plural): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let held = {
        let mut xo = state.lock().unwrap();
        xo.hold.as_mut().map(|hold| {
            if let Some(entered) = hold.entered.take() {
                let _ = entered.send(());
            }
            hold.release.clone()
        })
    };
    if let Some(mut release) = held {
        let _ = release.wait_for(|go| *go).await;
        state.lock().unwrap().hold = None;
    }
    let mut xo = state.lock().unwrap();
    xo.requests.push(format!("GET /rest/v0/{plural}"));
    if !authenticated(&xo, &headers) {
        return invalid_credentials();
    }
    let collection = xo
        .objects
        .keys()
        .find(|c| format!("{}s", c.to_ascii_lowercase()) == plural)
        .cloned();
    let fields: Fields = match query.get("fields").map(String::as_str) {
        None | Some("*") => None,
        Some(list) => Some(list.split(',').map(str::to_owned).collect()),
    };
    let objects: Vec<Value> = collection
        .and_then(|c| xo.objects.get(&c))
        .map(|objects| {
            objects
                .iter()
                .map(|(id, o)| {
                    let mut picked = pick(o, &fields);
                    picked.insert("href".into(), format!("/rest/v0/{plural}/{id}").into());
                    Value::Object(picked)
                })
                .collect()
        })
        .unwrap_or_default();
    Json(objects).into_response()
}
