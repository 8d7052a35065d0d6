//! Sending deliveries: one shared HTTP client, timeouts, bounded concurrency,
//! and retries with exponential back-off and jitter.

use crate::config::DeliveryConfig;
use crate::egress::{Egress, Refused};
use crate::signing::Signer;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Semaphore;

/// One HTTP POST a hook decided on, checked and ready to send.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Stable id, sent as `webhook-id` on every attempt so receivers can deduplicate.
    pub id: String,
    /// The hook that asked for it.
    pub hook: Arc<str>,
    /// The receiver.
    pub url: Url,
    /// Request headers, `content-type` included.
    pub headers: HeaderMap,
    /// The request body.
    pub body: bytes::Bytes,
    /// Whether the hook had a signing secret when it asked for this
    /// delivery: if so, it is never sent unsigned.
    pub signed: bool,
}

/// What the operator decided for a hook's deliveries (from its `NAME.toml`).
#[derive(Debug, Default)]
pub(crate) struct DeliveryPolicy {
    /// Where its deliveries may go beyond public addresses.
    pub egress: Egress,
    /// `egress.key()`, computed once: which HTTP client its deliveries use.
    pub egress_key: String,
    /// Its signing secrets.
    pub signer: Option<Signer>,
}

impl DeliveryPolicy {
    /// `dir` is where a `file:` secret's relative path starts.
    pub fn new(
        config: &crate::HookConfig,
        dir: &std::path::Path,
    ) -> Result<DeliveryPolicy, String> {
        let egress = Egress::parse(&config.allow_hosts)?;
        let secrets = config.secret.resolve(dir)?;
        let signer = if secrets.is_empty() {
            None
        } else {
            let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
            Some(Signer::parse(&secrets).map_err(|e| format!("secret: {e}"))?)
        };
        Ok(DeliveryPolicy {
            egress_key: egress.key(),
            egress,
            signer,
        })
    }
}

/// Headers the host sets itself; a hook may not.
const RESERVED_HEADERS: [&str; 5] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "webhook-id",
];

impl Delivery {
    /// Checks a hook's raw delivery: an absolute http(s) URL and valid headers.
    /// Adds `content-type: application/json` unless the hook set one.
    pub(crate) fn new(
        id: String,
        hook: Arc<str>,
        url: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        signed: bool,
    ) -> Result<Delivery, String> {
        let url = Url::parse(url).map_err(|e| format!("delivery URL {url:?} is not valid: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("delivery URL {url} must be http or https"));
        }
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("delivery header name {name:?} is not valid"))?;
            if RESERVED_HEADERS.contains(&header.as_str()) {
                return Err(format!(
                    "delivery header {name:?} is set by the engine, not by hooks"
                ));
            }
            let value = HeaderValue::from_str(&value)
                .map_err(|_| format!("delivery header {name:?} has a value that is not valid"))?;
            map.append(header, value);
        }
        if !map.contains_key(CONTENT_TYPE) {
            map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        Ok(Delivery {
            id,
            hook,
            url,
            headers: map,
            body: body.into(),
            signed,
        })
    }
    /// The receiver, as `host:port`: the unit of concurrency limits and
    /// circuit breaking.
    pub fn receiver(&self) -> String {
        format!(
            "{}:{}",
            self.url.host_str().unwrap_or(""),
            self.url.port_or_known_default().unwrap_or(0)
        )
    }
}

/// A fresh random id for an event as it is accepted.
pub(crate) fn new_uid() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// The id of a hook's `index`-th delivery for the event accepted as `uid`:
/// `msg_` and 128 bits of a hash. Derived rather than random, so running
/// the event again after a crash yields the same `webhook-id`s.
pub(crate) fn delivery_id(uid: &str, hook: &str, index: usize) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(uid.as_bytes());
    h.update([0]);
    h.update(hook.as_bytes());
    h.update([0]);
    h.update(index.to_le_bytes());
    let digest = h.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
}

/// Now, in Unix ms.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// How one attempt ended.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// 2xx.
    Delivered(StatusCode),
    /// Worth trying again: connect error, timeout, 408, 429 or 5xx.
    Retry {
        reason: String,
        status: Option<StatusCode>,
        retry_after: Option<Duration>,
    },
    /// Not worth trying again: 410 Gone, other 3xx/4xx, or a request that can't be built.
    Permanent {
        reason: String,
        status: Option<StatusCode>,
    },
}

/// Where one egress policy's deliveries go out.
struct Route {
    client: reqwest::Client,
    /// The hook's `allow_hosts` plus `delivery.allow_hosts`.
    egress: Egress,
}

/// Finds a hook's delivery policy by name (from the live hooks).
pub(crate) type PolicyLookup = Box<dyn Fn(&str) -> Option<Arc<DeliveryPolicy>> + Send + Sync>;

/// Sends deliveries. One per engine; cheap to share.
pub(crate) struct Sender {
    config: DeliveryConfig,
    /// What every hook may reach (`delivery.allow_hosts`).
    global: Egress,
    /// One route per distinct hook egress policy (by `egress_key`; "" for
    /// none), built on first use: the guard lives in the client's resolver,
    /// and each client keeps its own connection pool.
    routes: Mutex<HashMap<String, Arc<Route>>>,
    lookup: PolicyLookup,
    /// The last policy seen per hook, for deliveries of a hook since removed.
    known: Mutex<HashMap<String, Arc<DeliveryPolicy>>>,
    in_flight: Semaphore,
    /// In-flight limit per receiver (host and port), so a slow or dead
    /// receiver holds only its own slots, never everyone's.
    per_receiver: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Sender {
    pub fn new(config: &DeliveryConfig, lookup: PolicyLookup) -> Result<Sender, String> {
        let global =
            Egress::parse(&config.allow_hosts).map_err(|e| format!("delivery.allow_hosts: {e}"))?;
        let sender = Sender {
            config: config.clone(),
            global,
            routes: Mutex::default(),
            lookup,
            known: Mutex::default(),
            in_flight: Semaphore::new(config.concurrency.max(1)),
            per_receiver: Mutex::default(),
        };
        sender.route(None)?; // fail now if a client cannot be built
        Ok(sender)
    }

    pub fn config(&self) -> &DeliveryConfig {
        &self.config
    }

    /// The client and merged egress policy for a hook's policy (or for
    /// hooks without one).
    fn route(&self, policy: Option<&DeliveryPolicy>) -> Result<Arc<Route>, String> {
        let key = policy.map_or("", |p| p.egress_key.as_str());
        if let Some(route) = self.routes.lock().unwrap().get(key) {
            return Ok(route.clone());
        }
        let egress = match policy {
            Some(p) => self.global.with(&p.egress),
            None => self.global.clone(),
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(self.config.connect_timeout_ms))
            .timeout(Duration::from_millis(self.config.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would connect for us, past the guard.
            .no_proxy()
            .dns_resolver(Arc::new(egress.clone()).resolver())
            .user_agent(concat!("wasmhooks/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let route = Arc::new(Route { client, egress });
        let mut routes = self.routes.lock().unwrap();
        if routes.len() >= 256 {
            routes.clear(); // policies come from hook files: stay bounded
        }
        routes.insert(key.to_owned(), route.clone());
        Ok(route)
    }

    /// The hook's current policy, else the last one seen.
    fn policy(&self, hook: &str) -> Option<Arc<DeliveryPolicy>> {
        let mut known = self.known.lock().unwrap();
        let Some(policy) = (self.lookup)(hook) else {
            return known.get(hook).cloned();
        };
        if !known.get(hook).is_some_and(|k| Arc::ptr_eq(k, &policy)) {
            known.insert(hook.to_owned(), policy.clone());
        }
        Some(policy)
    }

    /// One POST, holding a concurrency permit only while it is in flight.
    pub async fn attempt(&self, delivery: &Delivery) -> Attempt {
        let permanent = |reason: String| Attempt::Permanent {
            reason,
            status: None,
        };
        let policy = self.policy(&delivery.hook);
        let route = match self.route(policy.as_deref()) {
            Ok(route) => route,
            Err(e) => return permanent(e),
        };
        if let Some(refused) = refused_literal(&route.egress, &delivery.url) {
            return permanent(format!("hook {}: {refused}", delivery.hook));
        }
        let mut headers = delivery.headers.clone();
        headers.insert("webhook-id", header_value(&delivery.id));
        match (policy.as_ref().map(|p| &p.signer), delivery.signed) {
            (Some(Some(signer)), _) => {
                let timestamp = now_ms() / 1000;
                let signature = signer.sign(&delivery.id, timestamp, &delivery.body);
                headers.insert("webhook-timestamp", header_value(&timestamp.to_string()));
                headers.insert("webhook-signature", header_value(&signature));
            }
            (None, true) => {
                return permanent(format!(
                    "hook {} is not loaded, so its signing secret is unknown and the delivery \
                     cannot be signed; load the hook again, then retry this dead letter",
                    delivery.hook
                ));
            }
            _ => {}
        }
        let receiver = self.receiver_slots(delivery.receiver());
        let _receiver = receiver.acquire().await.expect("never closed");
        let _permit = self.in_flight.acquire().await.expect("never closed");
        let request = route
            .client
            .post(delivery.url.clone())
            .headers(headers)
            .body(delivery.body.clone());
        match request.send().await {
            Ok(response) => classify(response.status(), response.headers()),
            Err(e) if e.is_builder() => permanent(format!("request could not be built: {e}")),
            Err(e) => match refused_in(&e) {
                Some(refused) => permanent(format!("hook {}: {refused}", delivery.hook)),
                None => Attempt::Retry {
                    reason: describe(&e),
                    status: None,
                    retry_after: None,
                },
            },
        }
    }

    fn receiver_slots(&self, key: String) -> Arc<Semaphore> {
        let limit = self.config.per_receiver_concurrency.max(1);
        let mut receivers = self.per_receiver.lock().unwrap();
        if receivers.len() >= 1024 && !receivers.contains_key(&key) {
            // Hooks choose URLs: forget idle receivers rather than grow without bound.
            receivers.retain(|_, slots| Arc::strong_count(slots) > 1);
        }
        receivers
            .entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(limit)))
            .clone()
    }

    /// Sends now, retrying per the schedule, for a caller that waits (a
    /// `wait` hook's pre event). Returns the final status, or why it failed
    /// for good.
    pub async fn deliver(&self, delivery: &Delivery) -> Result<StatusCode, String> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.attempt(delivery).await {
                Attempt::Delivered(status) => return Ok(status),
                Attempt::Permanent { reason, .. } => return Err(reason),
                Attempt::Retry {
                    reason,
                    retry_after,
                    ..
                } => {
                    let Some(delay) = self.retry_delay(attempts, retry_after) else {
                        return Err(gave_up(attempts, &reason));
                    };
                    tracing::info!(hook = %delivery.hook, id = %delivery.id, url = %delivery.url, attempts, "{reason}; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// The wait before the next try, after `attempts` tries: the schedule's
    /// delay with jitter, or the receiver's `Retry-After` (capped) if that is
    /// longer. `None` once the schedule is spent.
    pub fn retry_delay(&self, attempts: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let scheduled_ms = *self
            .config
            .retry_schedule_ms
            .get(attempts.checked_sub(1)? as usize)?;
        let jitter = self.config.jitter.clamp(0.0, 1.0);
        let factor = 1.0 + jitter * (fastrand::f64() * 2.0 - 1.0);
        let scheduled = Duration::from_millis((scheduled_ms as f64 * factor) as u64);
        let cap = Duration::from_millis(self.config.max_retry_after_ms);
        Some(scheduled.max(retry_after.map(|r| r.min(cap)).unwrap_or_default()))
    }
}

/// Why a delivery went to dead letters after its schedule was spent.
pub(crate) fn gave_up(attempts: u32, last: &str) -> String {
    format!("gave up after {attempts} attempts; last: {last}")
}

/// Sorts a response into delivered, retry or permanent failure.
pub(crate) fn classify(status: StatusCode, headers: &HeaderMap) -> Attempt {
    if status.is_success() {
        return Attempt::Delivered(status);
    }
    let retryable = status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error();
    if retryable {
        return Attempt::Retry {
            reason: format!("receiver answered {status}"),
            status: Some(status),
            retry_after: retry_after(headers),
        };
    }
    let reason = if status == StatusCode::GONE {
        "receiver answered 410 Gone: it wants no more deliveries".to_owned()
    } else if status.is_redirection() {
        format!("receiver answered {status}; redirects are not followed, use the final URL")
    } else {
        format!("receiver answered {status}, which is not retried")
    };
    Attempt::Permanent {
        reason,
        status: Some(status),
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// A URL whose host is an IP address never reaches the resolver: check it here.
fn refused_literal(egress: &Egress, url: &Url) -> Option<Refused> {
    let ip = match url.host()? {
        url::Host::Ipv4(ip) => std::net::IpAddr::V4(ip),
        url::Host::Ipv6(ip) => std::net::IpAddr::V6(ip),
        url::Host::Domain(_) => return None,
    };
    egress.check(url.host_str().unwrap_or(""), ip).err()
}

/// The guard's refusal, if that is why the request failed.
fn refused_in(e: &reqwest::Error) -> Option<Refused> {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<Refused>() {
            return Some(refused.clone());
        }
        source = cause.source();
    }
    None
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).expect("ids, timestamps and base64 are valid header values")
}

/// A transport error with its cause, e.g. "connect error: Connection refused".
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "could not connect"
    } else if e.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    let mut message = format!("{kind}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_statuses() {
        let h = HeaderMap::new();
        assert!(matches!(
            classify(StatusCode::OK, &h),
            Attempt::Delivered(_)
        ));
        assert!(matches!(
            classify(StatusCode::INTERNAL_SERVER_ERROR, &h),
            Attempt::Retry { .. }
        ));
        assert!(matches!(
            classify(StatusCode::REQUEST_TIMEOUT, &h),
            Attempt::Retry { .. }
        ));
        assert!(matches!(
            classify(StatusCode::GONE, &h),
            Attempt::Permanent { .. }
        ));
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, &h),
            Attempt::Permanent { .. }
        ));
        assert!(matches!(
            classify(StatusCode::FOUND, &h),
            Attempt::Permanent { .. }
        ));
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        match classify(StatusCode::TOO_MANY_REQUESTS, &h) {
            Attempt::Retry { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_bad_deliveries() {
        let hook: Arc<str> = "h".into();
        let id = || "msg_1".to_owned();
        assert!(Delivery::new(id(), hook.clone(), "ftp://x/", vec![], vec![], false).is_err());
        assert!(Delivery::new(id(), hook.clone(), "not a url", vec![], vec![], false).is_err());
        assert!(
            Delivery::new(
                id(),
                hook.clone(),
                "http://x/",
                vec![("bad name".into(), "v".into())],
                vec![],
                false,
            )
            .is_err()
        );
        let d = Delivery::new(
            id(),
            hook,
            "http://x/",
            vec![("content-type".into(), "text/plain".into())],
            vec![],
            false,
        )
        .unwrap();
        assert_eq!(d.headers[CONTENT_TYPE], "text/plain");
    }
}
