//! Deliveries: the record a hook's outcome becomes ([`Delivery`]), its ids,
//! the policy it travels with (this file); one HTTP attempt (`attempt.rs`:
//! route, guard, sign, POST, classify), with the SSRF guard (`egress.rs`)
//! and signatures (`signing.rs`); the retry schedule (`schedule.rs`); the
//! circuit breaker (`breaker.rs`); and what is kept of each attempt
//! (`history.rs`).

mod attempt;
mod breaker;
pub(crate) mod egress;
mod error;
pub(crate) mod history;
pub(crate) mod schedule;
pub(crate) mod signing;

pub(crate) use attempt::Sender;
pub use breaker::Circuit;
pub(crate) use breaker::{Breaker, CircuitState, ReceiverView, Transition};
pub(crate) use error::{DeliveryError, EgressError, KeyError};
pub use history::{AttemptOutcome, AttemptRecord};
pub(crate) use schedule::Attempt;

use crate::config::{HookConfig, SettingsError};
use crate::event::Phase;
use crate::util::hex;
use egress::Egress;
use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use signing::Signer;
use std::sync::Arc;

/// One HTTP POST a hook decided on, checked and ready to send.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
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
    /// The policy it was queued under; it is never sent under a weaker one.
    pub queued: QueuedUnder,
}

/// What a delivery was queued under, recorded with it: an attempt must
/// satisfy this as well as the hook's policy at the time of the attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct QueuedUnder {
    /// The hook had a signing secret: the delivery is never sent unsigned.
    pub signed: bool,
    /// The hook's `allow_hosts` (as [`Egress::key`]). `None` for deliveries
    /// queued before this was recorded (state schema 1): then only the
    /// hook's current policy applies.
    pub allow: Option<Arc<str>>,
}

impl QueuedUnder {
    /// What a delivery of a hook with this policy is queued under.
    pub(crate) fn of(policy: &DeliveryPolicy) -> QueuedUnder {
        QueuedUnder {
            signed: policy.signer.is_some(),
            allow: Some(policy.egress_key.as_str().into()),
        }
    }
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

/// Where the outbox reads each hook's policy now (the loaded hooks): a
/// delivery goes out only if its hook's current policy allows it too.
pub(crate) trait PolicySource: Send + Sync {
    /// The live hook's policy; `None` if no hook of that name is loaded.
    fn policy(&self, hook: &str) -> Option<Arc<DeliveryPolicy>>;
}

impl DeliveryPolicy {
    /// `dir` is where a `file:` secret's relative path starts.
    pub(crate) fn new(
        config: &HookConfig,
        dir: &std::path::Path,
    ) -> Result<DeliveryPolicy, SettingsError> {
        let egress = Egress::parse(&config.allow_hosts)
            .map_err(|e| SettingsError::field("allow_hosts", e.to_string()))?;
        let secrets = config.secret.resolve(dir)?;
        let signer = if secrets.is_empty() {
            None
        } else {
            let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
            Some(Signer::parse(&secrets).map_err(|e| SettingsError::Secret(e.to_string()))?)
        };
        Ok(DeliveryPolicy {
            egress_key: egress.key(),
            egress,
            signer,
        })
    }
}

/// Headers the host sets itself; a hook may not.
const RESERVED_HEADERS: [&str; 6] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "webhook-id",
    crate::trace::STORED,
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
        queued: QueuedUnder,
    ) -> Result<Delivery, DeliveryError> {
        let url = Url::parse(url).map_err(|source| DeliveryError::Url {
            url: url.to_owned(),
            source,
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(DeliveryError::Scheme(url));
        }
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| DeliveryError::HeaderName(name.clone()))?;
            if RESERVED_HEADERS.contains(&header.as_str()) {
                return Err(DeliveryError::Reserved(name));
            }
            let value =
                HeaderValue::from_str(&value).map_err(|_| DeliveryError::HeaderValue(name))?;
            map.try_append(header, value)
                .map_err(|_| DeliveryError::TooManyHeaders)?;
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
            queued,
        })
    }

    /// Records the trace context of the hook call that asked for it (see
    /// [`crate::trace`]): kept with the delivery, the parent of each of its
    /// attempts.
    pub(crate) fn set_traceparent(&mut self, traceparent: &str) {
        if let Ok(value) = HeaderValue::from_str(traceparent) {
            self.headers.insert(crate::trace::STORED, value);
        }
    }

    /// The trace context it was queued with, if any.
    pub(crate) fn traceparent(&self) -> Option<&str> {
        let value = self.headers.get(crate::trace::STORED)?;
        value.to_str().ok()
    }

    /// The receiver, as `host:port`: the unit of concurrency limits and
    /// circuit breaking.
    pub(crate) fn receiver(&self) -> String {
        receiver_of(&self.url)
    }
}

/// The receiver of `url`, as `host:port`.
pub(crate) fn receiver_of(url: &url::Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

/// A fresh random id for an event as it is accepted.
pub(crate) fn new_uid() -> String {
    crate::util::random_id()
}

/// The id of an event recognised by its `key` (method, call id and phase):
/// the same event sent again gets the same id, and so the same
/// `webhook-id`s.
pub(crate) fn uid_of(key: &str) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(key.as_bytes())[..16])
}

/// How the id of a delivery a system event caused begins (`msg_` for any
/// other): its dead letters raise no further alert, so alerts cannot feed
/// on their own dead letters, even after a restart or a replay (its
/// receiver's circuit changing still does, once per change, summarised).
pub(crate) const SYSTEM_ID_PREFIX: &str = "sys_";

/// The id of a hook's `index`-th delivery for the event accepted as `uid`:
/// `msg_` (`sys_` for a system event's) and 128 bits of a hash. Derived
/// rather than random, so running the event again after a crash yields
/// the same `webhook-id`s.
pub(crate) fn delivery_id(uid: &str, hook: &str, index: usize, phase: Phase) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(uid.as_bytes());
    h.update([0]);
    h.update(hook.as_bytes());
    h.update([0]);
    h.update(index.to_le_bytes());
    let prefix = if phase == Phase::System {
        SYSTEM_ID_PREFIX
    } else {
        "msg_"
    };
    format!("{prefix}{}", hex(&h.finalize()[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_deliveries() {
        let hook: Arc<str> = "h".into();
        let id = || "msg_1".to_owned();
        let q = QueuedUnder::default;
        assert!(Delivery::new(id(), hook.clone(), "ftp://x/", vec![], vec![], q()).is_err());
        assert!(Delivery::new(id(), hook.clone(), "not a url", vec![], vec![], q()).is_err());
        assert!(
            Delivery::new(
                id(),
                hook.clone(),
                "http://x/",
                vec![("bad name".into(), "v".into())],
                vec![],
                q(),
            )
            .is_err()
        );
        let d = Delivery::new(
            id(),
            hook,
            "http://x/",
            vec![("content-type".into(), "text/plain".into())],
            vec![],
            q(),
        )
        .unwrap();
        assert_eq!(d.headers[CONTENT_TYPE], "text/plain");
    }

    /// The engine's own headers: a hook cannot set its `webhook-id`, nor
    /// the trace context its attempts are children of (a hook's
    /// `traceparent` is its own business, replaced as sent with tracing on).
    #[test]
    fn a_hook_cannot_set_the_engines_headers() {
        let with = |name: &str| {
            let headers = vec![(name.to_owned(), "00-1-2-01".to_owned())];
            let q = QueuedUnder::default();
            Delivery::new("msg_1".into(), "h".into(), "http://x/", headers, vec![], q)
        };
        for name in ["webhook-id", "X-Wasmhooks-Traceparent"] {
            let refused = matches!(with(name), Err(DeliveryError::Reserved(n)) if n == name);
            assert!(refused, "{name}");
        }
        assert_eq!(with("traceparent").unwrap().traceparent(), None);
    }
}
